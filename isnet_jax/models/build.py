"""The networks a config describes: G and D initialised, VGG19 loaded, the compute dtype."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from flax import nnx

from isnet_jax import errors, weights
from isnet_jax.models import registry
from isnet_jax.models.discriminator import Discriminator
from isnet_jax.models.layers import init_weights
from isnet_jax.models.vgg import VGG19, convert_torchvision, load_vgg19

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """``config.compute_dtype``: what activations and convolutions run in (parameters stay
    float32)."""
    name = config.get("compute_dtype", "float32")
    if name not in COMPUTE_DTYPES:
        raise errors.ConfigError(
            f"config.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {name!r}")
    return jnp.dtype(name)


def uses_vgg(config: ml_collections.ConfigDict) -> bool:
    return config.loss.perceptual_weight != 0 or config.loss.style_weight != 0


def build_networks(config: ml_collections.ConfigDict) -> tuple[nnx.Module, nnx.Module]:
    """``(generator, discriminator)`` as NNX modules with float32 parameters, initialised as
    ``config.model.init`` says (the release's scheme by default, as its
    ``BaseNetwork.init_weights``) from ``config.seed``."""
    rngs = nnx.Rngs(config.seed)
    g, d = (init_weights(m, config.model.init, config.model.init_scale, rngs=rngs)
            for m in abstract_networks(config))
    return g, d


def abstract_networks(config: ml_collections.ConfigDict) -> tuple[nnx.Module, nnx.Module]:
    """``(generator, discriminator)`` with the structure ``config`` describes and abstract
    values: what ``init_weights`` fills, or a checkpoint restores into. The constructors' own
    draws would only be thrown away (and lengthen the initialiser's compilation)."""
    dtype = compute_dtype(config)
    g = nnx.eval_shape(lambda: registry.create_generator(
        config.model.generator, config.model.blocks, width=config.model.width,
        dtype=dtype, remat=config.remat, rngs=nnx.Rngs(0)))
    return g, nnx.eval_shape(lambda: Discriminator(dtype=dtype, rngs=nnx.Rngs(0)))


def load_vgg(config: ml_collections.ConfigDict) -> VGG19:
    """VGG19 for the perceptual and style losses, from ``config.loss.vgg_weights``: a path, or
    "" / "vgg19" for torchvision's ImageNet VGG19, fetched into the weights cache on first use
    (``isnet_jax.weights``; in a run of several processes, process 0 downloads). Missing or
    wrong weights stop the run rather than silently giving random VGG features."""
    path = weights.resolve(config.loss.vgg_weights, "vgg19", convert_torchvision)
    with weights.local_copy(path) as local:
        return load_vgg19(local, normalization=config.loss.vgg_normalization,
                          dtype=compute_dtype(config))
