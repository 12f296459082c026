"""Loss terms against the official release's values on the golden vectors, and loss options."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from isnet_jax import convert, losses
from isnet_jax.models.layers import SpectralState
from isnet_jax.models.vgg import load_vgg19


@pytest.fixture(scope="module")
def golden_terms(golden_dir):
    g = convert.load_official_generator(golden_dir / "InpaintingModel_gen.pth")
    d = convert.load_official_discriminator(golden_dir / "InpaintingModel_dis.pth")
    vgg = load_vgg19(golden_dir / "vgg19_features.pth")
    g_def, g_params, g_spec = nnx.split(g, nnx.Param, SpectralState)
    d_def, d_params, d_spec = nnx.split(d, nnx.Param, SpectralState)
    vgg_def, vgg_state = nnx.split(vgg)
    nets = losses.Networks(g_def, d_def, vgg_def, losses.VGG_LAYERS)
    z = np.load(golden_dir / "golden.npz")
    terms, pred, _, _ = losses.compute_terms(
        nets, (g_params, g_spec), (d_params, d_spec), vgg_state,
        jnp.asarray(z["images"]), jnp.asarray(z["masks"]), train=False,
    )
    meta = json.loads((golden_dir / "golden.json").read_text())
    return terms, pred, z, meta["losses_eval_mode_unweighted"]


@pytest.mark.parametrize("term", ["l1", "perceptual", "style", "g_adv", "feature_matching"])
@pytest.mark.slow
def test_unweighted_term_matches_release(golden_terms, term):
    terms, _, _, ref = golden_terms
    assert abs(float(terms[term]) - ref[term]) <= 1e-3 * abs(ref[term]), (float(terms[term]), ref)


@pytest.mark.slow
def test_d_hinge_matches_release_minus_its_constant_offset(golden_terms):
    # The release evaluates the real side as 1 + mean(relu(1 - D)): 0.5 above the standard form.
    terms, _, _, ref = golden_terms
    expected = ref["d_hinge"] - 0.5
    assert abs(float(terms["d_loss"]) - expected) <= 1e-3 * abs(expected)


@pytest.mark.slow
def test_prediction_is_the_release_eval_output(golden_terms):
    _, pred, z, _ = golden_terms
    assert float(jnp.max(jnp.abs(pred - z["out_eval"]))) < 1e-4


def test_gan_loss_options():
    real, fake = jnp.array([[2.0, -0.5]]), jnp.array([[-3.0, 0.25]])
    assert float(losses.discriminator(real, fake, "hinge")) == pytest.approx(
        (np.mean([0.0, 1.5]) + np.mean([0.0, 1.25])) / 2
    )
    sig = lambda x: 1 / (1 + np.exp(-np.asarray(x)))  # noqa: E731
    bce_real = -np.mean(np.log(sig(real)))
    bce_fake = -np.mean(np.log(1 - sig(fake)))
    assert float(losses.discriminator(real, fake, "nsgan")) == pytest.approx(
        (bce_real + bce_fake) / 2, rel=1e-5
    )
    lsgan = (np.mean((sig(real) - 1) ** 2) + np.mean(sig(fake) ** 2)) / 2
    assert float(losses.discriminator(real, fake, "lsgan")) == pytest.approx(lsgan, rel=1e-5)
    assert float(losses.generator_adversarial(fake, "hinge")) == pytest.approx(-np.mean(fake))
    with pytest.raises(ValueError, match="gan_type"):
        losses.discriminator(real, fake, "wgan")


def test_gram_matches_numpy():
    f = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    flat = f.reshape(2, 15, 4)
    expected = np.einsum("bnc,bnd->bcd", flat, flat) / (4 * 15)
    np.testing.assert_allclose(np.asarray(losses.gram(jnp.asarray(f))), expected, rtol=1e-5)
