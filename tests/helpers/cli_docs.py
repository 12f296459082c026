"""``tools/make_cli_docs.py`` as a module: the list of command lines and how docs/cli.md is
made, for the tests that hold the parsers and the page to each other."""

import importlib.util
import pathlib
import sys

_PATH = pathlib.Path(__file__).resolve().parents[2] / "tools" / "make_cli_docs.py"
_spec = importlib.util.spec_from_file_location("make_cli_docs", _PATH)
docs = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = docs  # dataclasses look their module up while the file runs
_spec.loader.exec_module(docs)
