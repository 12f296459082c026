"""``--config=configs/default.py`` in a checkout: the config is ``isnet_jax/configs/default.py``."""

from isnet_jax.configs.default import get_config

__all__ = ["get_config"]
