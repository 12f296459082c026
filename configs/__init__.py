"""The configs, for ``--config=configs/NAME.py`` in a checkout: each file here re-exports
``isnet_jax/configs/NAME.py``, which is where they live (inside the package, so an installed
isnet_jax ships them). Write a new config there, or anywhere, importing
``isnet_jax.configs.default``."""
