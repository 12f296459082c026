"""The configs (ml_collections, one ``get_config()`` per file), shipped in the package so that an
installed isnet_jax runs the demo with no checkout; the top-level ``configs/*.py`` of a checkout
re-export them for ``--config=configs/NAME.py``. What ``--config`` and its overrides say when they
go wrong is the command line's (``isnet_jax.cli.define_config_flag``).
"""

from __future__ import annotations

import pathlib

DEMO = pathlib.Path(__file__).resolve().parent / "demo.py"
