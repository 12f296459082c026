"""ISNet's networks: generators, discriminator and the VGG19 loss network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from isnet_jax.models.discriminator import Discriminator
from isnet_jax.models.generator import Generator
from isnet_jax.models.layers import Conv, SpectralState, init_weights, pixel_shuffle
from isnet_jax.models.vgg import VGG19

GENERATORS = ("isnet", "basemodel", "basemodel_ff", "unet")


def create_generator(
    name: str = "isnet",
    blocks: int = 4,
    *,
    dtype: jnp.dtype = jnp.float32,
    remat: bool = False,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Builds a generator by its config name (``config.model.generator``)."""
    if name == "isnet":
        return Generator(blocks, dtype=dtype, remat=remat, rngs=rngs)
    if name in ("basemodel", "basemodel_ff", "unet"):
        from isnet_jax.models import ablation  # the Table 1 variants

        return ablation.create(name, dtype=dtype, rngs=rngs)
    raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")


def count_params(module: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param`` entries; spectral-norm vectors excluded)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


__all__ = [
    "Conv",
    "Discriminator",
    "GENERATORS",
    "Generator",
    "SpectralState",
    "VGG19",
    "count_params",
    "create_generator",
    "init_weights",
    "pixel_shuffle",
]
