"""Table 1's ablation generators: exact release parameter counts, forward, train mode, jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from isnet_jax.models import SpectralState, ablation, count_params, create_generator

# Trainable parameters of the release's RFFNet_base, RFFNet_fusion, UnetGeneratorSame.
RELEASE_PARAMS = {
    "basemodel": 16_516_995,
    "basemodel_ff": 14_610_083,
    "unet": 24_403_715,
}
SIZE = 32  # the smallest size all three take (BaseModel needs multiples of 16, UNet of 8)


@pytest.fixture(autouse=True, scope="module")
def _linear_time_tracing():
    """Tracing these models is quadratic with jax 0.10 + flax 0.12 (20-40 s per eval_shape here).

    NNX's ``Variable.set_value`` probes ``value.sharding``; on a tracer that raises an
    AttributeError whose message (``_origin_msg``) walks every equation traced so far. Upstream
    drops that message part (jax-ml/jax#40041); doing the same here changes only error text.
    """
    from jax._src.interpreters import partial_eval as pe

    original = getattr(pe.DynamicJaxprTracer, "_origin_msg", None)
    if original is None:
        yield
        return
    pe.DynamicJaxprTracer._origin_msg = lambda self: ""
    yield
    pe.DynamicJaxprTracer._origin_msg = original


def _build(name: str, dtype: jnp.dtype = jnp.float32) -> nnx.Module:
    """The variant with torch-default-like random values drawn by numpy.

    The constructor runs abstractly (``nnx.eval_shape``); filling ~20M values from numpy takes a
    fraction of a second, where eager ``nnx.Rngs`` init compiles a few ops per layer shape (tens
    of seconds on a busy CPU). ``layers.Conv``'s initialiser is tested with the ISNet generator,
    ``ConvTranspose``'s below.
    """
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: create_generator(name, dtype=dtype, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        kind = path[-1].key
        if kind in ("u", "v"):
            vec = rng.normal(size=leaf.shape).astype(np.float32)
            return vec / np.linalg.norm(vec)
        bound = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]) if kind == "kernel" else 64.0)
        return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)

    pure = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def _masked_batch(seed: int = 0) -> jax.Array:
    k1, k2 = jax.random.split(jax.random.key(seed))
    image = jax.random.uniform(k1, (2, SIZE, SIZE, 3))
    mask = (jax.random.uniform(k2, (2, SIZE, SIZE, 1)) > 0.3).astype(jnp.float32)
    return image * mask


@pytest.mark.parametrize("name", ablation.VARIANTS)
def test_param_counts_match_release(name):
    model = nnx.eval_shape(lambda: create_generator(name, rngs=nnx.Rngs(0)))
    assert count_params(model) == RELEASE_PARAMS[name]


@pytest.mark.parametrize("name", ablation.VARIANTS)
def test_jit_train_then_eval(name):
    """One train-mode forward (one power iteration per SN conv), then eval from its state.

    A fresh model's u, v are random unit vectors, as torch's are; with the ablation models'
    unbounded LeakyReLU an eval forward from them can overflow, as it would in torch, so eval is
    checked after a train step, which is how the models are used.
    """
    model = _build(name)
    graphdef, state = nnx.split(model)
    x = _masked_batch()

    @jax.jit
    def train_then_eval(state, x):
        m = nnx.merge(graphdef, state)
        y_train = m(x, train=True)
        after_train = nnx.state(m)
        y_eval = m(x, train=False)
        return y_train, y_eval, after_train, nnx.state(m)

    y_train, y_eval, after_train, after_eval = train_then_eval(state, x)
    for y in (y_train, y_eval):
        assert y.shape == (2, SIZE, SIZE, 3) and y.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all((y >= 0) & (y <= 1)))
    assert float(jnp.std(y_eval)) > 0  # not a constant image

    def sn_leaves(s):
        return jax.tree.leaves(nnx.split_state(s, SpectralState, ...)[0])

    initial = jax.tree.leaves(nnx.state(model, SpectralState))
    if name == "unet":  # no spectral norm anywhere: train and eval are the same function
        assert not initial
        np.testing.assert_array_equal(y_train, y_eval)
        return
    # Train updates u, v in every SN conv, including the ones whose output BaseModel never uses
    # (stage 3's branch 1), as the release does; eval leaves them alone and, from the same u, v,
    # computes the same sigma, hence the same image.
    changed = [not np.allclose(a, b) for a, b in zip(initial, sn_leaves(after_train), strict=True)]
    assert initial and all(changed), f"{changed.count(False)} SN vectors unchanged by train"
    for a, b in zip(sn_leaves(after_train), sn_leaves(after_eval), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(y_eval, y_train, rtol=1e-6, atol=1e-6)


def test_unet_eager_bfloat16_compute():
    model = _build("unet", jnp.bfloat16)
    x = _masked_batch(1)[:1, :16, :16]
    y = model(x)
    assert y.shape == (1, 16, 16, 3) and y.dtype == jnp.float32
    assert bool(jnp.all((y >= 0) & (y <= 1)))


def test_wrong_size_is_rejected():
    model = nnx.eval_shape(lambda: create_generator("basemodel", rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="multiple of 16"):
        model(jnp.zeros((1, 24, 24, 3)))
    with pytest.raises(ValueError, match="unknown ablation generator"):
        ablation.create("isnet_lite", dtype=jnp.float32, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", ablation.VARIANTS)
def test_torch_key_map_covers_every_leaf(name):
    model = nnx.eval_shape(lambda: ablation.create(name, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    keys = ablation.torch_keys(name, model)
    assert len(set(keys.values())) == len(keys)
    if name != "unet":
        assert keys[("stages", 1, "blocks1", "layers", 3, "conv1", "kernel")] == (
            "stage1.branches.1.3.conv_block.1.weight_orig")
        assert keys[("stages", 3, "down0", "layers", 3, "conv", "u")] == (
            "stage3.fuse_layers.1.0.3.0.weight_u")
        assert keys[("stages", 2, "reduce1", "conv", "v")] == "stage2.fused_branches.1.0.0.weight_v"
        assert keys[("stem", "shortcut", "kernel")] == "layer1.downsample.weight"
    if name == "basemodel":
        assert keys[("final", "bias")] == "final_layer.bias"
    if name == "basemodel_ff":
        assert keys[("final2", "kernel")] == "final_layer.2.weight"
        assert keys[("final1", "kernel")] == "final_layer.0.weight_orig"
    if name == "unet":
        assert keys[("decoder", 2, "kernel")] == "decoder.6.weight"
        assert keys[("final", "bias")] == "decoder.10.bias"
        assert keys[("middle", "layers", 0, "conv2", "bias")] == "middle.0.conv_block.4.bias"


# ---- the parameter-free ops against direct numpy transcriptions of torch's definitions ----


def _torch_bilinear_1d(a: np.ndarray, factor: int, axis: int) -> np.ndarray:
    n = a.shape[axis]
    out = []
    for o in range(n * factor):
        src = max((o + 0.5) / factor - 0.5, 0.0)
        i0 = int(src)
        i1 = i0 + 1 if i0 < n - 1 else i0
        lam = src - i0
        out.append((1 - lam) * np.take(a, i0, axis) + lam * np.take(a, i1, axis))
    return np.stack(out, axis)


@pytest.mark.parametrize("factor", [2, 8, 16])
def test_upsample_bilinear_matches_torch_formula(factor):
    x = np.random.default_rng(0).normal(size=(1, 3, 2, 2)).astype(np.float32)
    expected = _torch_bilinear_1d(_torch_bilinear_1d(x, factor, 1), factor, 2)
    np.testing.assert_allclose(ablation.upsample_bilinear(jnp.asarray(x), factor), expected,
                               rtol=1e-6, atol=1e-6)


def test_conv_transpose_matches_scatter_definition():
    layer = ablation.ConvTranspose(3, 2, 4, stride=2, padding=1, rngs=nnx.Rngs(0))
    assert not np.any(np.asarray(layer.bias[...]))  # the release's init: bias 0
    rng = np.random.default_rng(1)
    layer.kernel[...] = jnp.asarray(rng.normal(size=(4, 4, 3, 2)).astype(np.float32))
    layer.bias[...] = jnp.asarray(rng.normal(size=(2,)).astype(np.float32))
    x = rng.normal(size=(1, 3, 5, 3)).astype(np.float32)
    w, b = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    # torch: out[s*i - p + kh, s*j - p + kw] += x[i, j] @ w[kh, kw]; crop to (H-1)*s - 2p + k.
    full = np.zeros((1, (3 - 1) * 2 + 4, (5 - 1) * 2 + 4, 2), np.float32)
    for i in range(3):
        for j in range(5):
            full[0, 2 * i:2 * i + 4, 2 * j:2 * j + 4] += np.einsum("c,hwco->hwo", x[0, i, j], w)
    expected = full[:, 1:-1, 1:-1] + b
    y = layer(jnp.asarray(x))
    assert y.shape == (1, 6, 10, 2)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_instance_norm_per_sample_per_channel():
    x = np.random.default_rng(2).normal(3.0, 2.0, size=(2, 4, 5, 3)).astype(np.float32)
    y = np.asarray(ablation.instance_norm(jnp.asarray(x)))
    mean, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)
