"""What every command line here shares: its parser, exit codes, Ctrl-C, and the model flags.

A mistake the user can fix (``errors.UserError``, or a bad flag: ``ArgumentParser``) is one line,
``error: <message>``, and exit status 2; Ctrl-C is one line and status 130; any other exception
is a bug and keeps its traceback (``run_cli``). ``python -m isnet_jax.inpaint`` and
``python -m isnet_jax.app`` choose their checkpoint and crop settings with the same flags
(``add_model_arguments``); every command names a checkpoint ``--checkpoint PATH --step N``
(``add_checkpoint_arguments``), and an old spelling of a flag keeps working with one warning
line (``ArgumentParser.add_deprecated_alias``; docs/cli.md lists them all). ``--config`` and
its overrides go wrong as one line too (``define_config_flag``, ``parse_flags``). A library
module never imports this one: loops that must not stop half-way through a step (training,
inpainting) use ``isnet_jax.interrupts``.
"""

from __future__ import annotations

import argparse
import contextvars
import difflib
import gc
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from absl import flags
from ml_collections import config_flags

from isnet_jax import configs, interrupts
from isnet_jax.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes (a bad flag or value) are one ``error:`` line and status 2, as
    a ``UserError`` is; argparse's own prints the usage block first. An old spelling of a flag
    stays accepted through ``add_deprecated_alias``."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)

    def parse_known_args(self, args=None, namespace=None):
        if _capturing.get():
            raise _Captured(self)
        return super().parse_known_args(args, namespace)

    def add_deprecated_alias(
        self, old: str, new: str, *, translate: Callable[[str], dict[str, Any]] | None = None,
        use: str | None = None,
    ) -> None:
        """Accepts ``old`` as the flag ``new`` (already added) and warns once per use:
        ``warning: OLD is deprecated; use NEW`` on stderr.

        ``translate``: for an old flag whose value now goes to several flags (``--export
        DIR@STEP`` -> ``--checkpoint DIR --step STEP``): the value -> ``{dest: value}`` (raise
        ``argparse.ArgumentTypeError`` for a bad one); ``use`` then says what to write instead.
        Hidden from ``--help``; ``deprecated_aliases`` lists them (docs/cli.md)."""
        target = self._option_string_actions[new]
        if target.required:  # argparse's own check would not see the alias's use
            raise ValueError(f"{new} is required: an alias of it is not supported")
        if translate is None:
            kwargs = dict(nargs=target.nargs, const=target.const, type=target.type,
                          choices=target.choices, metavar=target.metavar)
        else:
            kwargs = dict(type=translate)
        self.add_argument(old, action=_DeprecatedAlias, dest=target.dest,
                          default=argparse.SUPPRESS, help=argparse.SUPPRESS, target=target,
                          use=use or new, translate=translate is not None, **kwargs)

    def deprecated_aliases(self) -> dict[str, str]:
        """``{old flag: what to write instead}`` for every ``add_deprecated_alias``."""
        return {old: action.use for action in self._actions
                if isinstance(action, _DeprecatedAlias) for old in action.option_strings}


class _DeprecatedAlias(argparse.Action):
    """An old spelling: does what its ``target`` flag does, after one warning line."""

    def __init__(self, option_strings, dest, *, target: argparse.Action, use: str,
                 translate: bool, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.target, self.use, self.translate = target, use, translate

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated; use {self.use}", file=sys.stderr,
              flush=True)
        if self.translate:
            for dest, value in values.items():
                setattr(namespace, dest, value)
        else:
            self.target(parser, namespace, values, self.target.option_strings[-1])


class _Captured(Exception):
    def __init__(self, parser: ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


_capturing: contextvars.ContextVar[bool] = contextvars.ContextVar("capturing", default=False)


def parser_of(parse: Callable[[list[str]], Any]) -> ArgumentParser:
    """The ``ArgumentParser`` that a command line's ``parse`` (its ``parse_args`` or ``main``,
    which takes ``argv``) builds, taken at its ``parse_args`` call: nothing is parsed or run.
    For docs/cli.md and the tests that hold it to the parsers."""
    token = _capturing.set(True)
    try:
        parse([])
    except _Captured as captured:
        return captured.parser
    finally:
        _capturing.reset(token)
    raise TypeError(f"{parse.__module__}.{parse.__qualname__} parsed no cli.ArgumentParser")


def step_in_path(value: str, assign: str = " ") -> str | None:
    """The fix for ``PATH@STEP`` given where a checkpoint's path belongs (the step has its own
    flag), or None; ``assign``: how the command line joins a flag and its value (" " or "=").
    A path that exists as written is left alone."""
    head, sep, tail = value.rpartition("@")
    if sep and head and tail.isdigit() and not os.path.exists(value):
        return (f"{value}: the step has its own flag; write --checkpoint{assign}{head} "
                f"--step{assign}{tail}")
    return None


def checkpoint_path(value: str) -> str:
    """argparse ``type`` of ``--checkpoint``: a path (``PATH@STEP`` is one line naming
    ``--step``)."""
    if (fix := step_in_path(value)) is not None:
        raise argparse.ArgumentTypeError(fix)
    return value


def _loop_closed(kind, value) -> bool:
    return kind is RuntimeError and str(value) == "Event loop is closed"


def _abandoned_read(value) -> bool:
    return str(value).startswith("Encountered error while reading")


class _AbandonedReads(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for Orbax's abandoned reads: a
    read task collected while its event loop still runs is reported through the ``asyncio``
    logger, not through ``sys.unraisablehook``."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not ("exception was never retrieved" in str(record.msg) and _abandoned_read(exc))


def quiet_abandoned_reads() -> None:
    """When a restore fails, Orbax abandons its other array reads: as they are finalised (at
    exit at the latest) Python prints each one's exception with TensorStore's whole spec, and
    a read that completes after Orbax closed its event loop prints "Event loop is closed" from
    TensorStore's callback thread, and a read task collected while the loop still runs is
    logged by asyncio ("Task exception was never retrieved"): hundreds of lines after the one
    error that matters. Those messages, and only those, are dropped. Process-wide hooks: each
    command line installs them (``run_cli``, ``main``); a library leaves them to its caller."""
    if getattr(sys.unraisablehook, "isnet_jax_quiet_reads", False):
        return
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

    def unraisable(info) -> None:
        if not (_abandoned_read(info.exc_value)
                or _loop_closed(type(info.exc_value), info.exc_value)):
            previous_unraisable(info)

    def excepthook(kind, value, traceback) -> None:
        if not _loop_closed(kind, value):
            previous_except(kind, value, traceback)

    unraisable.isnet_jax_quiet_reads = True
    sys.unraisablehook, sys.excepthook = unraisable, excepthook
    logging.getLogger("asyncio").addFilter(_AbandonedReads())


class _QuietLibraries(logging.Filter):
    """Drops Orbax's and grain's INFO chatter (dozens of lines a save), fsspec's (a line per
    file gcsfs opens in a ``gs://`` workdir) and JAX's report of the accelerators it did not
    find; keeps every warning."""

    _NOISY = ("/orbax/", "/grain/", "/array_record/", "/fsspec/", "/jax/_src/xla_bridge.py")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(
            part in record.pathname for part in self._NOISY
        )


def quiet_library_logs(handler: logging.Handler) -> None:
    """Routes the libraries' INFO lines that concern no user away from ``handler``."""
    handler.addFilter(_QuietLibraries())


def leave(status: int) -> None:
    """Flushes and exits at once. Everything is saved and waited for by now; Python's own
    teardown with XLA's, grain's and Orbax's threads still running can hang or crash after an
    interrupt (seen: a segfault when Ctrl-C came during compilation), and after a failed
    restore TensorStore's threads print "Event loop is closed" tracebacks while it runs."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def leave_interrupted(resume: str) -> None:
    """The end of a command stopped by Ctrl-C: one line, ``resume`` (how to go on), 130."""
    # Out of the except block the traceback's frames are free: collecting them lets the data
    # loader's semaphores be released before os._exit (else the resource tracker warns of
    # "leaked" ones).
    gc.collect()
    print(f"interrupted (Ctrl-C); {resume}", file=sys.stderr)
    leave(EXIT_INTERRUPTED)


def run_cli(body: Callable[[], int], interrupted: str) -> int:
    """Runs a command-line tool's work and returns its exit status.

    A ``UserError`` is printed as one line, ``error: <message>``, and gives ``EXIT_USER_ERROR``;
    Ctrl-C gives one line, ``interrupted (Ctrl-C); <interrupted>``, and ``EXIT_INTERRUPTED``;
    any other exception is a bug and propagates with its traceback.
    """
    quiet_abandoned_reads()
    try:
        with interrupts.ctrl_c_kept():
            return body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C); {interrupted}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------------------------
# The model flags of ``inpaint`` and ``app``


CHECKPOINT_HELP = "training workdir, its checkpoints/ folder, or a converted folder"


def add_checkpoint_arguments(
    parser: argparse.ArgumentParser, *, required: bool = True, help: str = CHECKPOINT_HELP,
) -> None:
    """``--checkpoint PATH`` and ``--step N``: how every command names a checkpoint and its
    step (``PATH@STEP`` is not taken: one ``error:`` line names ``--step``)."""
    parser.add_argument("--checkpoint", required=required, type=checkpoint_path,
                        metavar="PATH", help=help)
    parser.add_argument("--step", type=int, default=None, metavar="N",
                        help="checkpoint step (default: the latest)")


def add_model_arguments(parser: argparse.ArgumentParser, *, crop_margin: int) -> None:
    """The flags that choose the checkpoint and how a photo meets the network's size
    (``crop_margin``: the inpainter's default margin)."""
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--size", type=int, default=256,
        help="network resolution for resize and crop modes: the model's training size "
        "(default: %(default)s)")
    parser.add_argument(
        "--crop-margin", type=int, default=crop_margin,
        help="crop mode: context in image pixels around each group of holes "
        "(default: %(default)s)")
    parser.add_argument(
        "--crop-above", type=int, default=None,
        help="auto mode: crop images whose longer side exceeds this many pixels "
        "(default: twice --size)")
    parser.add_argument(
        "--runtime", choices=("auto", "jax", "onnx"), default="auto",
        help="what runs the generator: onnx (onnxruntime, the fastest on a CPU), jax (XLA), "
        "or auto: onnx on a CPU when onnxruntime is installed, else jax (default: %(default)s)")


def add_compilation_cache_argument(parser: argparse.ArgumentParser) -> None:
    """``--compilation-cache PATH|off``: where compiled programs are kept between runs
    (``isnet_jax.compilation_cache``)."""
    from isnet_jax import compilation_cache

    parser.add_argument("--compilation-cache", default=None, metavar="PATH|off",
                        help=compilation_cache.FLAG_HELP)


def check_model_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *, multiple: int
) -> None:
    """``--size`` a positive multiple of ``multiple`` (the network's), ``--crop-margin`` >= 0."""
    if args.size <= 0 or args.size % multiple:
        parser.error(f"--size must be a positive multiple of {multiple}, got {args.size}")
    if args.crop_margin < 0:
        parser.error(f"--crop-margin must be at least 0, got {args.crop_margin}")


def load_inpainter(args: argparse.Namespace, **options: Any) -> Any:
    """The ``Inpainter`` the model flags choose (``add_model_arguments``), its compiled programs
    kept where ``--compilation-cache`` says; ``options``: the command's own (``mode``).

    An export already cached for onnxruntime is taken first, JAX unimported: the compilation
    cache is set up (which imports JAX) only when the model has to be restored."""
    from isnet_jax import compilation_cache
    from isnet_jax.inpainter import Inpainter

    options = dict(size=args.size, margin=args.crop_margin, crop_above=args.crop_above,
                   runtime=args.runtime, **options)
    found = Inpainter.from_cached_export(args.checkpoint, args.step, **options)
    if found is not None:
        return found
    compilation_cache.enable(args.compilation_cache)
    return Inpainter.from_checkpoint(args.checkpoint, args.step, **options)


def cached_export_note(inpainter: Any) -> str:
    """What ran instead of XLA, for ``compilation_cache.report`` when JAX was never imported
    (``onnxruntime, cached export PATH``)."""
    return f"onnxruntime, cached export {inpainter.onnx_path}"


def running_on(inpainter: Any) -> str:
    """``running on cpu with onnx (onnxruntime, PATH)``: where and in what the generator runs
    (JAX is asked only when it runs the generator: an onnxruntime run never imports it)."""
    if inpainter.runtime == "onnx":
        where = "cpu"  # onnxruntime's CPU provider, whatever JAX has
    else:
        import jax

        where = f"{jax.devices()[0].platform} ({jax.device_count()} device(s))"
    return f"running on {where} with {inpainter.runtime} ({inpainter.runtime_note})"


def generator_line(meta: Mapping[str, Any], source: Any) -> str:
    """``generator isnet (blocks=4, step 1000) from SOURCE``: what a command loaded."""
    return (f"generator {meta.get('generator')} (blocks={meta.get('blocks')}, step "
            f"{meta.get('step')}) from {source}")


# ---------------------------------------------------------------------------------------------
# ``--config`` and its overrides (``python -m isnet_jax.main``)


def define_config_flag(
    default: str | None = str(configs.DEMO), *, lock_config: bool = True
) -> flags.FlagHolder:
    """``--config`` (default: the demo), whose overrides ml_collections applies to ``sys.argv``
    as the flag is defined: an override of a field the config lacks is one ``error:`` line and
    status 2."""
    named = f"default: {pathlib.Path(default).name}" if default else "required"
    try:
        return config_flags.DEFINE_config_file(
            "config", default, f"Training configuration file (configs/*.py; {named}); "
            "--config.FIELD=VALUE overrides one of its fields (configs/default.py lists them).",
            lock_config=lock_config)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises these for an override it cannot apply; which one is found by
        # checking each against the config's fields, not by reading the message.
        _config_error(_unknown_field(sys.argv) or f"bad --config override: {_first_line(e)}")


def parse_flags(config: Callable[[], flags.FlagHolder]) -> Callable[[list[str]], list[str]]:
    """absl's flag parser (``app.run(flags_parser=...)``) with config problems as one line."""

    def parse(argv: list[str]) -> list[str]:
        try:
            rest = flags.FLAGS(argv)
            list(config().value.keys())  # a config file that failed to load raises on first use
            return rest
        except flags.Error as e:  # already one clear line ("flag --x=y: ...")
            _config_error(f"{e}; see --help")
        except Exception as e:  # noqa: BLE001 - a config file's own code may raise anything
            path = _config_path(argv)
            examples = sorted(p.name for p in configs.DEMO.parent.glob("*.py")
                              if p.stem != "__init__")
            reason = str(e).strip().splitlines()[-1].strip() if str(e).strip() else ""
            _config_error(
                f"cannot load the config file {path} ({type(e).__name__}: {reason}); pass "
                f"--config=configs/NAME.py (in a checkout; installed: {configs.DEMO.parent}/"
                f"NAME.py) with one of {', '.join(examples)}")

    return parse


def _config_error(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _unknown_field(argv: list[str]) -> str | None:
    """The first ``--config.FIELD`` override whose field the config lacks, in words."""
    fields = _field_names(configs.load(_config_path(argv)))
    for flag in (a.split("=", 1)[0] for a in argv if a.startswith("--config.")):
        name = flag[len("--config."):]
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean --config.{close[0]}?" if close else ""
            return f"{flag}: the config has no such field{hint}"
    return None


def _config_path(argv: list[str]) -> str:
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return given[-1] if given else str(configs.DEMO)


def _field_names(config, prefix: str = "") -> list[str]:
    names = []
    for key, value in config.items():
        names.append(prefix + key)
        if hasattr(value, "items"):
            names += _field_names(value, prefix + key + ".")
    return names
