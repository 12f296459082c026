"""Table 1's ablation generators: exact release parameter counts, forward, train mode, jit,
block counts and remat, and the one-to-one mapping of their leaves onto the release's keys."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers.paths import RELEASE_GENERATOR_KEYS, data_file

from isnet_jax import errors, models
from isnet_jax.models import SpectralState, count_params, create_generator, layers

# Trainable parameters of the release's RFFNet_base, RFFNet_fusion, UnetGeneratorSame.
RELEASE_PARAMS = {
    "basemodel": 16_516_995,
    "basemodel_ff": 14_610_083,
    "unet": 24_403_715,
}
VARIANTS = tuple(RELEASE_PARAMS)
CLASSES = {"basemodel": models.BaseModel, "basemodel_ff": models.BaseModelFF,
           "unet": models.UNetGenerator}
# What one residual block (two bias-free 3x3 convs) less per branch per stage removes:
# branch 0 is 32 wide in all four stages, branch 1 enters stages 1..3 at 64, 128, 256 wide,
# 2 * 9 * (4 * 32^2 + 64^2 + 128^2 + 256^2) = 1,622,016: the step between ISNet's counts in
# docs/reference/isnet.md (24,774,307 - 23,152,291), whose stages have the same branches.
# The UNet's middle block is two 3x3 512->512 convs with biases: 2 * (9 * 512^2 + 512).
PARAMS_PER_BLOCK = {"basemodel": 1_622_016, "basemodel_ff": 1_622_016, "unet": 4_719_616}
SIZE = 32  # the smallest size all three take (BaseModel needs multiples of 16, UNet of 8)


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


@pytest.mark.parametrize("name", VARIANTS)
def test_param_counts_match_release(name):
    model = nnx.eval_shape(lambda: CLASSES[name](rngs=nnx.Rngs(0)))
    assert count_params(model) == RELEASE_PARAMS[name]
    assert type(nnx.eval_shape(lambda: create_generator(name, rngs=nnx.Rngs(0)))) is CLASSES[name]
    assert CLASSES[name].__name__ in models.__all__


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("blocks", [1, 3])
def test_blocks_is_honoured(name, blocks):
    model = nnx.eval_shape(lambda: create_generator(name, blocks, rngs=nnx.Rngs(0)))
    assert model.blocks == blocks
    assert count_params(model) == RELEASE_PARAMS[name] - (4 - blocks) * PARAMS_PER_BLOCK[name]


@pytest.mark.parametrize("name", ["isnet", *VARIANTS])
def test_blocks_out_of_range_names_the_field(name):
    with pytest.raises(errors.ConfigError, match=r"model\.blocks must be 1\.\.4.*got 5"):
        create_generator(name, 5, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name,stages", [
    ("isnet", 4), ("basemodel", 4), ("basemodel_ff", 4), ("unet", 4 + 1 + 3),  # UNet: blocks=1
])
def test_remat_is_honoured(name, stages):
    """``remat`` puts each stage (UNet: each encoder step, middle block and decoder step) under
    ``jax.checkpoint``; counted in the traced forward (abstract, nothing compiled)."""
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)

    def checkpoints(remat: bool) -> int:
        model = nnx.eval_shape(lambda: create_generator(name, 1, remat=remat, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(model)
        jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x, train=True))(state, x)
        return sum(eqn.primitive == checkpoint_p for eqn in jaxpr.eqns)

    checkpoint_p = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive
    assert checkpoints(False) == 0
    assert checkpoints(True) == stages


# Each variant's training step compiles for 10 s and more on 2 cores; ISNet's own step stays in
# the inner loop (tests/test_train.py).
@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
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


@pytest.mark.slow
def test_unet_eager_bfloat16_compute():
    model = _build("unet", jnp.bfloat16)
    x = _masked_batch(1)[:1, :16, :16]
    y = model(x)
    assert y.shape == (1, 16, 16, 3) and y.dtype == jnp.float32
    assert bool(jnp.all((y >= 0) & (y <= 1)))


def test_wrong_size_and_unknown_name_are_rejected():
    model = nnx.eval_shape(lambda: models.BaseModel(rngs=nnx.Rngs(0)))
    with pytest.raises(errors.ConfigError, match="multiple of 16"):
        model(jnp.zeros((1, 24, 24, 3)))
    with pytest.raises(errors.ConfigError, match="unknown generator 'isnet_lite'.*basemodel_ff"):
        create_generator("isnet_lite", rngs=nnx.Rngs(0))


# ---- every state leaf maps one to one onto the release's state-dict keys ----

_BASE_KEYS = (
    (r"stem\.shortcut", "layer1.downsample"),
    (r"stem\.conv1", "layer1.conv_block.1"),
    (r"stem\.conv2", "layer1.conv_block.4"),
    (r"stages\.(\d)\.blocks(\d)\.layers\.(\d+)\.conv1", r"stage\1.branches.\2.\3.conv_block.1"),
    (r"stages\.(\d)\.blocks(\d)\.layers\.(\d+)\.conv2", r"stage\1.branches.\2.\3.conv_block.4"),
    (r"stages\.(\d)\.down0\.layers\.(\d)\.conv", r"stage\1.fuse_layers.1.0.\2.0"),
    (r"stages\.(\d)\.down1\.conv", r"stage\1.fuse_layers.1.1.0"),
    (r"stages\.(\d)\.reduce(\d)\.conv", r"stage\1.fused_branches.\2.0.0"),
)

# Per variant: (regex on the nnx module path, torch module) from the release's module names
# (ablation/network_base.py, ablation/network_fusion.py, src/networks.py). Parameter names
# map as kernel -> weight_orig (SN conv) or weight (plain conv), u -> weight_u, v -> weight_v.
TORCH_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "basemodel": _BASE_KEYS + ((r"final", "final_layer"),),
    "basemodel_ff": _BASE_KEYS + ((r"final1", "final_layer.0"), (r"final2", "final_layer.2")),
    "unet": (
        (r"encoder\.0", "encoder.1"),
        (r"encoder\.1", "encoder.4"),
        (r"encoder\.2", "encoder.7"),
        (r"encoder\.3", "encoder.10"),
        (r"middle\.layers\.(\d)\.conv1", r"middle.\1.conv_block.1"),
        (r"middle\.layers\.(\d)\.conv2", r"middle.\1.conv_block.4"),
        (r"decoder\.0", "decoder.0"),
        (r"decoder\.1", "decoder.3"),
        (r"decoder\.2", "decoder.6"),
        (r"final", "decoder.10"),
    ),
}


def torch_keys(name: str, model: nnx.Module) -> dict[tuple, str]:
    """Every state leaf of ``model`` (parameters and SN vectors) -> the release's key."""
    flat = [path for path, _ in nnx.to_flat_state(nnx.state(model))]
    sn_modules = {path[:-1] for path in flat if path[-1] == "u"}
    keys = {}
    for path in flat:
        *module, leaf = (str(p) for p in path)
        module_path = ".".join(module)
        matches = [re.fullmatch(pattern, module_path).expand(torch_module)
                   for pattern, torch_module in TORCH_KEYS[name]
                   if re.fullmatch(pattern, module_path)]
        assert len(matches) == 1, f"{module_path}: {len(matches)} torch modules"
        kernel = "weight_orig" if path[:-1] in sn_modules else "weight"
        suffix = {"kernel": kernel, "u": "weight_u", "v": "weight_v", "bias": "bias"}[leaf]
        keys[path] = f"{matches[0]}.{suffix}"
    return keys


@pytest.mark.parametrize("name", VARIANTS)
def test_torch_key_map_covers_every_leaf(name):
    model = nnx.eval_shape(lambda: CLASSES[name](rngs=nnx.Rngs(0)))
    keys = torch_keys(name, model)
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


@pytest.mark.parametrize("name", ["basemodel", "basemodel_ff"])
def test_two_stream_keys_are_the_release_isnet_keys_less_its_subpixel_convs(name):
    """The release's ablation files build their stem and stages with the same module names as
    its ISNet (RFFNet); only the sub-pixel up convs (``fuse_layers.0.1``) are gone."""
    listing = data_file(RELEASE_GENERATOR_KEYS).read_text().splitlines()
    isnet = {line.split("\t")[0] for line in listing if line.startswith(("layer1.", "stage"))}
    ours = {key for key in torch_keys(name, nnx.eval_shape(
        lambda: CLASSES[name](rngs=nnx.Rngs(0)))).values() if not key.startswith("final_layer")}
    assert ours == {key for key in isnet if ".fuse_layers.0.1." not in key}


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
    np.testing.assert_allclose(layers.upsample_bilinear(jnp.asarray(x), factor), expected,
                               rtol=1e-6, atol=1e-6)


def test_conv_transpose_matches_scatter_definition():
    layer = models.ablation.ConvTranspose(3, 2, 4, stride=2, padding=1, rngs=nnx.Rngs(0))
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
    norm = models.ablation.instance_norm(3, dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert not jax.tree.leaves(nnx.state(norm))  # affine=False: nothing to train or save
    # A large mean: a one-pass E[x^2] - E[x]^2 variance would lose digits here.
    x = np.random.default_rng(2).normal(300.0, 2.0, size=(2, 4, 5, 3)).astype(np.float32)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(1, 2), keepdims=True), x64.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(norm(jnp.asarray(x)), (x64 - mean) / np.sqrt(var + 1e-5),
                               rtol=1e-4, atol=1e-4)
