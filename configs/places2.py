"""``--config=configs/places2.py`` in a checkout: the config is ``isnet_jax/configs/places2.py``."""

from isnet_jax.configs.places2 import get_config

__all__ = ["get_config"]
