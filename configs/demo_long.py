"""``--config=configs/demo_long.py`` in a checkout: the config is
``isnet_jax/configs/demo_long.py``."""

from isnet_jax.configs.demo_long import get_config

__all__ = ["get_config"]
