"""ISNet's training losses (the release's defaults, which match paper eq. 2), and the loss
terms of one training step (``compute_terms``: the release's G and three D calls).

All functions take NHWC float32 arrays and return float32 scalars averaged over the global
batch. Images are in [0, 1]; masks are 1 = known pixel, 0 = hole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from isnet_jax import errors
from isnet_jax.models.layers import SpectralState

PERCEPTUAL_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLE_LAYERS = ("relu2_2", "relu3_4", "relu4_4", "relu5_2")
VGG_LAYERS = tuple(sorted(set(PERCEPTUAL_LAYERS + STYLE_LAYERS)))
GAN_TYPES = ("hinge", "nsgan", "lsgan")


def l1(pred: jax.Array, image: jax.Array, mask: jax.Array) -> jax.Array:
    """``mean|pred - image| / mean(1 - mask)``: the release's L1, normalised by the hole fraction.

    The normaliser is the hole fraction of the whole batch, as in the release (not per image).
    """
    return jnp.mean(jnp.abs(pred - image)) / jnp.mean(1.0 - mask)


def _check_gan_type(gan_type: str) -> None:
    if gan_type not in GAN_TYPES:
        raise errors.ConfigError(f"loss.gan_type must be one of {GAN_TYPES}, got {gan_type!r}")


def discriminator(real_logits: jax.Array, fake_logits: jax.Array, gan_type: str = "hinge"):
    """D loss, ``(loss(real, 1) + loss(fake, 0)) / 2``; callers pass ``fake`` already detached.

    hinge: the standard form ``mean(relu(1 - real)) + mean(relu(1 + fake))`` over 2. (The
    release computes the real side as ``1 + mean(relu(1 - real))``: a constant 0.5 above this,
    same gradient.) nsgan / lsgan apply a sigmoid to the logits first, as the release's
    discriminator does (``use_sigmoid = gan_type != 'hinge'``) before BCE / MSE.
    """
    _check_gan_type(gan_type)
    if gan_type == "hinge":
        real = jnp.mean(jax.nn.relu(1.0 - real_logits))
        fake = jnp.mean(jax.nn.relu(1.0 + fake_logits))
    elif gan_type == "nsgan":
        bce = optax.sigmoid_binary_cross_entropy
        real = jnp.mean(bce(real_logits, jnp.ones_like(real_logits)))
        fake = jnp.mean(bce(fake_logits, jnp.zeros_like(fake_logits)))
    else:
        real = jnp.mean(jnp.square(jax.nn.sigmoid(real_logits) - 1.0))
        fake = jnp.mean(jnp.square(jax.nn.sigmoid(fake_logits)))
    return (real + fake) / 2.0


def generator_adversarial(fake_logits: jax.Array, gan_type: str = "hinge") -> jax.Array:
    """G's adversarial term: ``-mean(D(pred))`` for hinge, ``loss(fake, 1)`` otherwise."""
    _check_gan_type(gan_type)
    if gan_type == "hinge":
        return -jnp.mean(fake_logits)
    if gan_type == "nsgan":
        return jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)))
    return jnp.mean(jnp.square(jax.nn.sigmoid(fake_logits) - 1.0))


def feature_matching(fake_feats: Sequence[jax.Array], real_feats: Sequence[jax.Array]):
    """Sum over D's activations of ``mean|D_i(pred) - D_i(image)|`` (real side detached)."""
    return sum(
        jnp.mean(jnp.abs(f - jax.lax.stop_gradient(r)))
        for f, r in zip(fake_feats, real_feats, strict=True)
    )


def perceptual(pred_feats: Mapping[str, jax.Array], real_feats: Mapping[str, jax.Array]):
    """Sum over relu1_1 .. relu5_1 of ``mean|phi(pred) - phi(image)|``."""
    return sum(jnp.mean(jnp.abs(pred_feats[n] - real_feats[n])) for n in PERCEPTUAL_LAYERS)


def gram(f: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C, C), ``F^T F / (C * H * W)``; float32 accumulation."""
    b, h, w, c = f.shape
    f = f.reshape(b, h * w, c)
    g = jnp.einsum("bnc,bnd->bcd", f, f, preferred_element_type=jnp.float32)
    return g / (c * h * w)


def style(pred_feats: Mapping[str, jax.Array], real_feats: Mapping[str, jax.Array]):
    """Sum over relu2_2, relu3_4, relu4_4, relu5_2 of ``mean|Gram(phi(pred)) - Gram(phi(gt))|``."""
    return sum(
        jnp.mean(jnp.abs(gram(pred_feats[n]) - gram(real_feats[n]))) for n in STYLE_LAYERS
    )


# ---------------------------------------------------------------------------------------------
# The terms of one training step
# ---------------------------------------------------------------------------------------------

# Loss terms in a fixed order: the non-finite report names them by bit (and "g_loss" last).
TERMS = ("l1", "g_adv", "feature_matching", "perceptual", "style", "d_loss")
_WEIGHT_FIELDS = {
    "l1": "l1_weight",
    "g_adv": "adversarial_weight",
    "feature_matching": "feature_matching_weight",
    "perceptual": "perceptual_weight",
    "style": "style_weight",
}
GAN_TERMS = ("g_adv", "feature_matching")


def loss_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    return {t: float(config.loss[f]) for t, f in _WEIGHT_FIELDS.items()}


def gan_ramp(config: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
    """The factor on G's adversarial and feature-matching weights at ``step`` (0-based):
    0 before ``config.loss.gan_start_step``, then rising linearly to 1 over
    ``config.loss.gan_ramp_steps``. The release has neither (factor 1 throughout); D trains
    from the first step either way."""
    start, ramp = config.loss.gan_start_step, config.loss.gan_ramp_steps
    if start == 0 and ramp == 0:
        return jnp.ones((), jnp.float32)
    return jnp.clip((step.astype(jnp.float32) - start + 1.0) / max(ramp, 1), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Networks:
    """Static structure (graph definitions) of the networks; their state is the train state's."""

    g_def: Any
    d_def: Any
    vgg_def: Any | None  # None when the perceptual and style weights are both 0
    vgg_layers: tuple[str, ...] = ()


def compute_terms(nets: Networks, g_vars, d_vars, vgg_state, image, mask, *,
                  gan_type: str = "hinge", train: bool = True):
    """Unweighted loss terms of one step, as the release's ``process()`` computes them.

    One forward pass of G, then three calls of D in the release's order, each (in training)
    advancing D's power iteration once: ``D(image)``, ``D(stop_grad(pred))``, ``D(pred)``. D's
    loss comes from the first two; G's adversarial and feature-matching terms from the third
    (feature matching against the first call's activations). Gradients are routed so that one
    ``jax.grad`` of the *sum* of all terms gives each network exactly its own gradient: D's loss
    sees the prediction detached, G's terms see D's parameters detached.

    Args:
      g_vars, d_vars: ``(params, spectral_state)`` of G and D.
      image: (B, H, W, 3) ground truth in [0, 1]; mask: (B, H, W, 1), 1 = known.
    Returns:
      ``(terms, pred, new_g_spectral, new_d_spectral)``; ``terms`` maps TERMS to scalars.
    """
    # copy=True: fresh Variables at this trace level, so the power iteration may update them.
    g = nnx.merge(nets.g_def, *g_vars, copy=True)
    pred = g(image * mask, train=train)
    d = nnx.merge(nets.d_def, *d_vars, copy=True)
    real_logits, real_feats = d(image, train=train)
    fake_logits_detached, _ = d(jax.lax.stop_gradient(pred), train=train)
    # G's call: D's weights detached, its power iteration continuing from the second call's.
    d_for_g = nnx.merge(
        nets.d_def, jax.lax.stop_gradient(d_vars[0]), nnx.state(d, SpectralState), copy=True)
    fake_logits, fake_feats = d_for_g(pred, train=train)
    terms = {
        "l1": l1(pred, image, mask),
        "g_adv": generator_adversarial(fake_logits, gan_type),
        "feature_matching": feature_matching(fake_feats, real_feats),
        "d_loss": discriminator(real_logits, fake_logits_detached, gan_type),
    }
    if nets.vgg_def is not None:
        vgg = nnx.merge(nets.vgg_def, jax.lax.stop_gradient(vgg_state), copy=True)
        # Ground-truth features: computed once, and no gradient flows into them.
        real_vgg = jax.lax.stop_gradient(vgg(image, outputs=nets.vgg_layers))
        pred_vgg = vgg(pred, outputs=nets.vgg_layers)
        terms["perceptual"] = perceptual(pred_vgg, real_vgg)
        terms["style"] = style(pred_vgg, real_vgg)
    else:
        terms["perceptual"] = terms["style"] = jnp.zeros((), jnp.float32)
    new_spectral = nnx.state(g, SpectralState), nnx.state(d_for_g, SpectralState)
    return terms, pred, *new_spectral
