"""The configs (ml_collections, one ``get_config()`` per file), shipped in the package so that an
installed isnet_jax runs the demo with no checkout; the top-level ``configs/*.py`` of a checkout
re-export them for ``--config=configs/NAME.py``. What ``--config`` and its overrides say when they
go wrong is the command line's (``isnet_jax.cli.define_config_flag``).
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

DEMO = pathlib.Path(__file__).resolve().parent / "demo.py"


def load(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config that ``--config=path`` gives, without the flag (the file's ``get_config()``)."""
    spec = importlib.util.spec_from_file_location("_isnet_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
