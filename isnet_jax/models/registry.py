"""Generators by their config name (``config.model.generator``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from isnet_jax import errors
from isnet_jax.models.ablation import BaseModel, BaseModelFF, UNetGenerator
from isnet_jax.models.generator import WIDTH, Generator
from isnet_jax.sizes import MULTIPLE  # noqa: F401 - models.MULTIPLE, as before

GENERATORS: dict[str, type[nnx.Module]] = {
    "isnet": Generator,
    "basemodel": BaseModel,
    "basemodel_ff": BaseModelFF,
    "unet": UNetGenerator,
}


def create_generator(
    name: str = "isnet",
    blocks: int = 4,
    *,
    width: int = WIDTH,
    dtype: jnp.dtype = jnp.float32,
    remat: bool = False,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Builds a generator by its config name (``config.model.generator``); ``width``
    (``config.model.width``) is ISNet's alone, the ablations keep the release's."""
    if name not in GENERATORS:
        raise errors.ConfigError(
            f"unknown generator {name!r} (config.model.generator); choose one of "
            f"{', '.join(GENERATORS)}"
        )
    if name == "isnet":
        return Generator(blocks, width=width, dtype=dtype, remat=remat, rngs=rngs)
    if width != WIDTH:
        raise errors.ConfigError(
            f"config.model.width={width} is for the isnet generator; {name!r} has the "
            f"release's widths only: leave model.width at {WIDTH}")
    return GENERATORS[name](blocks, dtype=dtype, remat=remat, rngs=rngs)


def count_params(module: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param`` entries; spectral-norm vectors excluded)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
