"""The configs (ml_collections, one ``get_config()`` per file), shipped in the package so that an
installed isnet_jax runs the demo with no checkout; the top-level ``configs/*.py`` of a checkout
re-export them for ``--config=configs/NAME.py``.

Also what ``--config`` and its ``--config.FIELD=VALUE`` overrides mean when they go wrong: a file
that does not load, or a field the config lacks, is one ``error:`` line that names the fix
(``define_config_flag``, ``parse_flags``) instead of absl's traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
import re
import sys
from collections.abc import Callable

from absl import flags
from ml_collections import config_flags

from isnet_jax import cli

DEMO = pathlib.Path(__file__).resolve().parent / "demo.py"


def define_config_flag(
    default: str | None = str(DEMO), *, lock_config: bool = True
) -> flags.FlagHolder:
    """``--config`` (default: the demo), whose overrides ml_collections applies to ``sys.argv``
    as the flag is defined: a bad override is one ``error:`` line and status 2."""
    named = f"default: {pathlib.Path(default).name}" if default else "required"
    try:
        return config_flags.DEFINE_config_file(
            "config", default, f"Training configuration file (configs/*.py; {named}); "
            "--config.FIELD=VALUE overrides one of its fields (configs/default.py lists them).",
            lock_config=lock_config)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        _exit(explain(sys.argv, e))


def parse_flags(config: Callable[[], flags.FlagHolder]) -> Callable[[list[str]], list[str]]:
    """absl's flag parser (``app.run(flags_parser=...)``) with config problems as one line."""

    def parse(argv: list[str]) -> list[str]:
        try:
            rest = flags.FLAGS(argv)
            list(config().value.keys())  # a config file that failed to load raises on first use
            return rest
        except flags.Error as e:  # already one clear line ("flag --x=y: ...")
            _exit(f"{e}; see --help")
        except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
            _exit(explain(argv, e))

    return parse


def _exit(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(cli.EXIT_USER_ERROR)


def explain(argv: list[str], error: Exception) -> str:
    """A config file that does not load, or an override of a field the config lacks, in words."""
    text = str(error)
    missing = re.search(r"No such file or directory: '([^']+)'", text)
    if missing or "Failed loading config file" in text:
        path = missing.group(1) if missing else "the --config file"
        examples = sorted(p.name for p in DEMO.parent.glob("*.py") if p.stem != "__init__")
        return (f"cannot load the config file {path} ({text.splitlines()[-1].strip()}); pass "
                f"--config=configs/NAME.py (in a checkout; installed: {DEMO.parent}/NAME.py) "
                f"with one of {', '.join(examples)}")
    key = re.match(r"""^['"\\]*([\w.]+)""", text.strip())
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    bad = [o for o in overrides if key and o.endswith("." + key.group(1))] or overrides
    if bad:
        fields = _field_names(_load(_config_path(argv)))
        close = difflib.get_close_matches(bad[0][len("--config."):], fields, n=1)
        hint = f"; did you mean --config.{close[0]}?" if close else ""
        return f"{bad[0]}: the config has no such field{hint}"
    return f"bad --config or override: {text.splitlines()[0]}"


def _load(path: str):
    spec = importlib.util.spec_from_file_location("_isnet_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _config_path(argv: list[str]) -> str:
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return given[-1] if given else str(DEMO)


def _field_names(config, prefix: str = "") -> list[str]:
    names = []
    for key, value in config.items():
        names.append(prefix + key)
        if hasattr(value, "items"):
            names += _field_names(value, prefix + key + ".")
    return names
