"""Model structure: parameter counts of the release, spectral norm, pixel shuffle, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from isnet_jax import errors, models
from isnet_jax.models import layers


def test_promised_model_names_are_exported():
    """Issues #2 and #12 name these; each is built by name in this file or test_ablation.py."""
    for name in ("Generator", "Discriminator", "UNetGenerator", "VGG19", "BaseModel",
                 "BaseModelFF"):
        assert name in models.__all__ and isinstance(getattr(models, name), type), name
    assert set(models.GENERATORS) == {"isnet", "basemodel", "basemodel_ff", "unet"}


@pytest.mark.parametrize(
    "blocks,expected", [(4, 24_774_307), (3, 23_152_291), (2, 21_530_275), (1, 19_908_259)]
)
def test_generator_parameter_count_matches_release(blocks, expected):
    g = nnx.eval_shape(lambda: models.Generator(blocks, rngs=nnx.Rngs(0)))
    assert models.count_params(g) == expected


def test_discriminator_parameter_count_matches_release():
    d = nnx.eval_shape(lambda: models.Discriminator(rngs=nnx.Rngs(0)))
    assert models.count_params(d) == 2_763_776


def test_vgg19_has_torchvision_feature_shapes():
    vgg = nnx.eval_shape(lambda: models.VGG19(rngs=nnx.Rngs(0)))
    # torchvision vgg19.features: 20,024,384 parameters.
    assert models.count_params(vgg) == 20_024_384
    graphdef, state = nnx.split(vgg)
    feats = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x),
        state,
        jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
    )
    assert feats["relu1_1"].shape == (1, 32, 32, 64)
    assert feats["relu3_4"].shape == (1, 8, 8, 256)
    assert feats["relu5_4"].shape == (1, 2, 2, 512)


def _torch_pixel_shuffle_reference(x, r):
    """PyTorch's definition: out[c, h*r+i, w*r+j] = in[c*r*r + i*r + j, h, w]."""
    b, h, w, cin = x.shape
    c = cin // (r * r)
    out = np.zeros((b, h * r, w * r, c), x.dtype)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                out[:, i::r, j::r, ch] = x[:, :, :, ch * r * r + i * r + j]
    return out


def test_pixel_shuffle_uses_pytorch_channel_order():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 8)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(layers.pixel_shuffle(jnp.asarray(x), 2)), _torch_pixel_shuffle_reference(x, 2)
    )


def test_spectral_norm_converges_to_unit_singular_value_and_eval_is_pure():
    conv = layers.Conv(24, 40, 3, padding=1, rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(conv)

    @jax.jit
    def power_steps(state):
        def body(_, s):
            module = nnx.merge(graphdef, s, copy=True)
            module(jnp.zeros((1, 4, 4, 24)), train=True)
            return nnx.state(module)

        return jax.lax.fori_loop(0, 200, body, state)

    state = power_steps(state)
    conv = nnx.merge(graphdef, state)
    w = np.asarray(layers.kernel_matrix(conv.normalized_kernel(train=False)))
    assert abs(np.linalg.svd(w, compute_uv=False)[0] - 1.0) < 1e-3

    before = jax.tree.map(np.asarray, nnx.state(conv, layers.SpectralState))
    conv(jnp.ones((1, 4, 4, 24)), train=False)
    after = jax.tree.map(np.asarray, nnx.state(conv, layers.SpectralState))
    jax.tree.map(np.testing.assert_array_equal, before, after)

    conv(jnp.ones((1, 4, 4, 24)), train=True)
    changed = jax.tree.map(np.asarray, nnx.state(conv, layers.SpectralState))
    assert not np.array_equal(changed["u"], after["u"]) or not np.array_equal(
        changed["v"], after["v"]
    )


def test_spectral_norm_keeps_the_raw_kernel_as_parameter():
    conv = layers.Conv(8, 8, 3, padding=1, rngs=nnx.Rngs(0))
    raw = np.asarray(conv.kernel[...])
    conv(jnp.ones((1, 4, 4, 8)), train=True)
    np.testing.assert_array_equal(np.asarray(conv.kernel[...]), raw)


@pytest.mark.slow
def test_generator_output_range_and_size_check():
    # Jitted: one program, where eager mode compiles each of the forward's operations.
    g = models.Generator(1, rngs=nnx.Rngs(0))
    forward = nnx.jit(lambda g, x: g(x, train=False))
    y = forward(g, jnp.full((1, 32, 48, 3), 0.5))
    assert y.shape == (1, 32, 48, 3)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with pytest.raises(ValueError, match="multiple of 16"):
        forward(g, jnp.zeros((1, 40, 32, 3)))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters():
    g = models.Generator(1, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(g, nnx.Param)))
    # Train mode: an untrained model's u, v are random (as the release's), so eval mode would
    # divide by an arbitrary sigma; one power iteration makes it a real estimate.
    forward = nnx.jit(lambda g, x: g(x, train=True))  # one program each, not op by op
    y = forward(g, jnp.full((1, 16, 16, 3), 0.5))
    assert y.dtype == jnp.float32
    ref = forward(models.Generator(1, rngs=nnx.Rngs(0)), jnp.full((1, 16, 16, 3), 0.5))
    assert float(jnp.max(jnp.abs(y - ref))) < 0.05


@pytest.mark.parametrize("shape", [(2, 8, 10, 3), (1, 9, 11, 5)])
def test_vgg_max_pool_matches_reduce_window_value_and_gradient(shape):
    from isnet_jax.models import vgg

    def reference(x):  # XLA's own max pool and its select-and-scatter gradient
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    rng = np.random.default_rng(0)
    # Small integers: most windows hold ties, where only the first maximum (row-major) may
    # take the gradient; odd sizes leave a last row / column outside every window.
    x = jnp.asarray(rng.integers(0, 3, shape).astype(np.float32))
    weights = jnp.asarray(rng.standard_normal(reference(x).shape).astype(np.float32))
    np.testing.assert_array_equal(vgg.max_pool_2x2(x), reference(x))
    got = jax.grad(lambda x: jnp.sum(vgg.max_pool_2x2(x) * weights))(x)
    want = jax.grad(lambda x: jnp.sum(reference(x) * weights))(x)
    assert np.count_nonzero(np.asarray(want)) == weights.size  # one winner per window
    np.testing.assert_array_equal(got, want)


def _convs(module):
    return [m for _, m in nnx.iter_modules(module) if isinstance(getattr(m, "kernel", None),
                                                                   nnx.Param)]


# Every block count and the BaseModel variants build from the same Conv class as these.
@pytest.mark.parametrize("build", [
    lambda r: models.Generator(1, rngs=r),
    lambda r: models.Discriminator(rngs=r),
    lambda r: models.UNetGenerator(rngs=r),
], ids=["isnet", "discriminator", "unet"])
@pytest.mark.slow
def test_release_initialisation_statistics(build):
    """docs/reference/isnet.md, "Initialisation": kernels ~ N(0, 0.001), biases 0, u and v random
    unit vectors with no power iteration."""
    module = build(nnx.Rngs(0))
    convs = _convs(module)
    kernels = np.concatenate([np.asarray(c.kernel[...]).ravel() for c in convs])
    assert abs(kernels.std() - layers.RELEASE_INIT_STD) < 0.01 * layers.RELEASE_INIT_STD
    assert abs(kernels.mean()) < 5 * layers.RELEASE_INIT_STD / np.sqrt(kernels.size)
    for conv in convs:
        k = np.asarray(conv.kernel[...])
        if k.size >= 10_000:  # each big kernel on its own, too
            assert abs(k.std() - layers.RELEASE_INIT_STD) < 0.05 * layers.RELEASE_INIT_STD
        if conv.bias is not None:
            assert not np.any(np.asarray(conv.bias[...]))
    spectral = [c for c in convs if getattr(c, "spectral_norm", False)]
    assert len(spectral) > 0 or isinstance(module, models.UNetGenerator)
    cosines = []
    for conv in spectral:
        u, v = np.asarray(conv.u[...], np.float64), np.asarray(conv.v[...], np.float64)
        np.testing.assert_allclose([np.linalg.norm(u), np.linalg.norm(v)], 1.0, rtol=1e-5)
        # After a power iteration v would be exactly W^T u / |W^T u|; drawn independently, the
        # two are unrelated directions.
        wtu = np.asarray(layers.kernel_matrix(conv.kernel[...]), np.float64).T @ u
        cosines.append(abs(v @ wtu) / np.linalg.norm(wtu))
    if cosines:
        assert np.mean(cosines) < 0.2, np.mean(cosines)


@pytest.mark.slow  # D's eager build and a QR per kernel: 6-13 s
def test_orthogonal_initialisation_makes_every_kernel_an_isometry():
    d = models.Discriminator(rngs=nnx.Rngs(0))  # wide (64 x 48) and tall (1 x 8192) matrices
    d = models.init_weights(d, "orthogonal", 0.02, rngs=nnx.Rngs(1))
    for conv in _convs(d):
        w = np.asarray(layers.kernel_matrix(conv.kernel[...]), np.float64)
        assert np.sqrt(np.mean(w**2)) == pytest.approx(0.02, rel=1e-4)
        s = np.linalg.svd(w, compute_uv=False)
        assert s.max() / s.min() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="unknown init scheme 'xavier'"):
        models.init_weights(d, "xavier", rngs=nnx.Rngs(0))


def _kernel_shapes(module) -> dict[str, tuple[int, ...]]:
    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return {"/".join(map(str, path)): tuple(v.shape) for path, v in flat if len(v.shape) == 4}


def test_a_narrower_generator_scales_every_inner_channel_count():
    """``model.width`` (tests and rehearsals): every kernel of the release's width 32 has, at
    width 8, a quarter of its channels on each side, except the image's own 3 channels."""
    full = _kernel_shapes(nnx.eval_shape(lambda: models.Generator(1, rngs=nnx.Rngs(0))))
    narrow = _kernel_shapes(nnx.eval_shape(lambda: models.Generator(1, width=8,
                                                                    rngs=nnx.Rngs(0))))
    assert set(full) == set(narrow) and len(full) > 20
    for key, (kh, kw, cin, cout) in full.items():
        assert narrow[key] == (kh, kw, cin if cin == 3 else cin // 4,
                               cout if cout == 3 else cout // 4), key
    graphdef, state = nnx.split(nnx.eval_shape(lambda: models.Generator(1, width=8,
                                                                      rngs=nnx.Rngs(0))))
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                         jax.ShapeDtypeStruct((1, 32, 48, 3), jnp.float32))
    assert out.shape == (1, 32, 48, 3)
    with pytest.raises(errors.ConfigError, match="model.width=8 is for the isnet generator"):
        models.create_generator("unet", 1, width=8, rngs=nnx.Rngs(0))
