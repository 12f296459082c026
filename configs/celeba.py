"""``--config=configs/celeba.py`` in a checkout: the config is ``isnet_jax/configs/celeba.py``."""

from isnet_jax.configs.celeba import get_config

__all__ = ["get_config"]
