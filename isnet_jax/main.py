"""``python -m isnet_jax.main --config=configs/celeba.py --workdir=DIR [--mode=train|eval]``.

Trains (resuming from DIR's latest checkpoint) or evaluates a checkpoint. Without ``--config``
it runs ``isnet_jax/configs/demo.py`` (shipped in the package): a small model on bundled
photographs, on the CPU, no download. A mistake the user can fix (``errors.UserError``: a bad
path, config file or override, missing weights, a damaged checkpoint) ends as one ``error:``
line and exit status 2; Ctrl-C as one line and 130; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
import gc
import importlib.util
import logging as logging_lib
import os
import pathlib
import re
import sys
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from isnet_jax import cli, configs, errors, liveness

# The configs ship inside the package: an installed isnet_jax runs the demo with no checkout.
_DEMO = pathlib.Path(configs.__file__).resolve().parent / "demo.py"

_CONFIG: flags.FlagHolder | None = None  # defined in run(): it parses overrides as it is made
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and summaries.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train, or evaluate a checkpoint.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "--mode=eval: a checkpoint directory or a step of WORKDIR (default latest)."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Initialise jax.distributed (auto-detected on Cloud TPU and SLURM; otherwise pass the "
    "three flags below).",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_LOST_HOST_TIMEOUT = flags.DEFINE_integer(
    "lost_host_timeout", liveness.DEFAULT_TIMEOUT_S,
    "Several processes: seconds without a sign of life from another process before this one "
    f"stops, naming it (exit status {liveness.EXIT_LOST_HOST}); 0: wait for JAX's heartbeat.")
_VERBOSE_LIBRARIES = flags.DEFINE_bool(
    "verbose_libraries", False, "Keep Orbax's and grain's INFO logs (hidden by default)."
)


class _QuietLibraries(logging_lib.Filter):
    """Drops Orbax's and grain's INFO chatter (dozens of lines a save); keeps their warnings."""

    _NOISY = ("/orbax/", "/grain/", "/array_record/")

    def filter(self, record: logging_lib.LogRecord) -> bool:
        return record.levelno >= logging_lib.WARNING or not any(
            part in record.pathname for part in self._NOISY
        )


def _config_error(argv: list[str], error: Exception) -> str:
    """A config file that does not load, or an override of a field the config lacks, in words."""
    text = str(error)
    missing = re.search(r"No such file or directory: '([^']+)'", text)
    if missing or "Failed loading config file" in text:
        path = missing.group(1) if missing else "the --config file"
        examples = sorted(p.name for p in _DEMO.parent.glob("*.py") if p.stem != "__init__")
        return (f"cannot load the config file {path} ({text.splitlines()[-1].strip()}); pass "
                f"--config=configs/NAME.py (in a checkout; installed: {_DEMO.parent}/NAME.py) "
                f"with one of {', '.join(examples)}")
    key = re.match(r"""^['"\\]*([\w.]+)""", text.strip())
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    bad = [o for o in overrides if key and o.endswith("." + key.group(1))] or overrides
    if bad:
        fields = _field_names(_load_config(_config_path(argv)))
        close = difflib.get_close_matches(bad[0][len("--config."):], fields, n=1)
        hint = f"; did you mean --config.{close[0]}?" if close else ""
        return f"{bad[0]}: the config has no such field{hint}"
    return f"bad --config or override: {text.splitlines()[0]}"


def _load_config(path: str):
    spec = importlib.util.spec_from_file_location("_isnet_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _config_path(argv: list[str]) -> str:
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return given[-1] if given else str(_DEMO)


def _field_names(config, prefix: str = "") -> list[str]:
    names = []
    for key, value in config.items():
        names.append(prefix + key)
        if hasattr(value, "items"):
            names += _field_names(value, prefix + key + ".")
    return names


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config problems as one ``error:`` line instead of a traceback."""
    try:
        rest = flags.FLAGS(argv)
        list(_CONFIG.value.keys())  # a config file that failed to load raises on first use
        return rest
    except flags.Error as e:  # already one clear line ("flag --x=y: ...")
        print(f"error: {e}; see --help", file=sys.stderr)
    except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
        print(f"error: {_config_error(argv, e)}", file=sys.stderr)
    sys.exit(cli.EXIT_USER_ERROR)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _VERBOSE_LIBRARIES.value:
        logging.get_absl_handler().addFilter(_QuietLibraries())
    explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _DISTRIBUTED.value or any(v is not None for v in explicit):
        jax.distributed.initialize(*explicit)
    # TensorFlow (TFDS, TensorBoard) must not take accelerator memory from JAX.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    logging.info("JAX process %d of %d, %d local / %d global devices (%s).",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].device_kind)
    watchdog = liveness.watch(_LOST_HOST_TIMEOUT.value)
    try:
        with cli.ctrl_c_kept():
            if _MODE.value == "train":
                from isnet_jax import train

                train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
            else:
                from isnet_jax import evaluate

                evaluate.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value)
    except errors.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        _leave(cli.EXIT_USER_ERROR)
    except Exception:
        if watchdog is None:
            raise
        # Several processes: JAX's exit waits up to 5 minutes for the others, which wait in a
        # collective for this one; leaving now lets their watchdogs name it within seconds.
        traceback.print_exc()
        watchdog.explain(sys.exc_info()[1])
        _leave(1)
    if watchdog is not None:  # finished: the others must not take its silence for a loss
        watchdog.stop()


def _leave(status: int) -> None:
    """Flushes and exits at once. Everything is saved and waited for by now; Python's own
    teardown with XLA's, grain's and Orbax's threads still running can hang or crash after an
    interrupt (seen: a segfault when Ctrl-C came during compilation), and after a failed
    restore TensorStore's threads print "Event loop is closed" tracebacks while it runs."""
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _define_config_flag() -> flags.FlagHolder:
    """``--config`` (and ``--config.FIELD=VALUE`` overrides, which ml_collections applies to
    ``sys.argv`` as the flag is defined): a bad override is one ``error:`` line."""
    try:
        return config_flags.DEFINE_config_file(
            "config", str(_DEMO), "Training configuration file (configs/*.py).",
            lock_config=True)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: {_config_error(sys.argv, e)}", file=sys.stderr)
        sys.exit(cli.EXIT_USER_ERROR)


def run() -> None:
    global _CONFIG
    _CONFIG = _define_config_flag()
    flags.mark_flags_as_required(["workdir"])
    try:
        app.run(main, flags_parser=_parse_flags)
    except KeyboardInterrupt:
        pass
    else:
        return
    # Training has saved and waited for its last completed step by now. Out of the except
    # block the traceback's frames are free: collecting them lets the data loader's semaphores
    # be released before os._exit (else the resource tracker warns of "leaked" ones).
    gc.collect()
    print("interrupted (Ctrl-C); the same command resumes a training run from its last "
          "checkpoint", file=sys.stderr)
    _leave(cli.EXIT_INTERRUPTED)


if __name__ == "__main__":
    run()
