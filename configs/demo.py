"""``--config=configs/demo.py`` in a checkout: the config is ``isnet_jax/configs/demo.py``."""

from isnet_jax.configs.demo import get_config

__all__ = ["get_config"]
