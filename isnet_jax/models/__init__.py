"""ISNet's networks: generators, discriminator and the VGG19 loss network.

Generators by config name (``config.model.generator``): ``isnet`` -> ``Generator``, and Table 1's
ablations ``basemodel`` -> ``BaseModel``, ``basemodel_ff`` -> ``BaseModelFF``, ``unet`` ->
``UNetGenerator``. Each is ``Name(blocks=4, *, dtype=float32, remat=False, rngs=...)``; ISNet's
also takes ``width`` (32, the release's).
``build_networks(config)`` gives the initialised G and D a config describes, ``load_vgg`` its VGG19.
"""

from isnet_jax.models.ablation import BaseModel, BaseModelFF, UNetGenerator
from isnet_jax.models.build import (
                                    abstract_networks,
                                    build_networks,
                                    compute_dtype,
                                    load_vgg,
                                    uses_vgg,
)
from isnet_jax.models.discriminator import Discriminator
from isnet_jax.models.generator import WIDTH, Generator
from isnet_jax.models.layers import Conv, SpectralState, init_weights, pixel_shuffle
from isnet_jax.models.registry import GENERATORS, MULTIPLE, count_params, create_generator
from isnet_jax.models.vgg import VGG19

__all__ = [
    "BaseModel",
    "BaseModelFF",
    "Conv",
    "Discriminator",
    "GENERATORS",
    "MULTIPLE",
    "Generator",
    "SpectralState",
    "UNetGenerator",
    "VGG19",
    "WIDTH",
    "abstract_networks",
    "build_networks",
    "compute_dtype",
    "count_params",
    "create_generator",
    "init_weights",
    "load_vgg",
    "pixel_shuffle",
    "uses_vgg",
]
