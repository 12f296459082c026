"""What every command line here shares: its parser, exit codes, Ctrl-C, and the model flags.

A mistake the user can fix (``errors.UserError``, or a bad flag: ``ArgumentParser``) is one line,
``error: <message>``, and exit status 2; Ctrl-C is one line and status 130; any other exception
is a bug and keeps its traceback (``run_cli``). ``python -m isnet_jax.inpaint`` and
``python -m isnet_jax.app`` choose their checkpoint and crop settings with the same flags
(``add_model_arguments``). Library loops that must not stop half-way through a step (training)
use ``ctrl_c_deferred`` and ``check_interrupted``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

from isnet_jax.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes (a bad flag or value) are one ``error:`` line and status 2, as
    a ``UserError`` is; argparse's own prints the usage block first."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


_ctrl_c = threading.Event()
_deferring = threading.Event()


def _on_sigint(signum, frame) -> None:
    if _deferring.is_set() and not _ctrl_c.is_set():
        _ctrl_c.set()
        print("Ctrl-C: stopping after the current step (Ctrl-C again stops at once)",
              file=sys.stderr, flush=True)
        return
    _ctrl_c.set()
    raise KeyboardInterrupt


def check_interrupted() -> None:
    """Raises ``KeyboardInterrupt`` when Ctrl-C came inside ``ctrl_c_kept`` and was deferred
    or lost.

    Python raises the interrupt wherever the main thread is; inside a garbage-collector or
    weakref callback (JAX runs one at every collection) the exception is printed as "ignored"
    and dropped, and the work would go on. Long loops call this at each step."""
    if _ctrl_c.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_kept() -> Iterator[None]:
    """While inside: Ctrl-C raises ``KeyboardInterrupt`` as usual and is also recorded, so
    ``check_interrupted`` raises it again when Python dropped it in a callback (whose "ignored"
    report is not printed). From the main thread only; elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    unraisable_hook = sys.unraisablehook

    def quiet_lost_interrupt(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            unraisable_hook(unraisable)

    sys.unraisablehook = quiet_lost_interrupt
    try:
        yield
    finally:
        _ctrl_c.clear()
        sys.unraisablehook = unraisable_hook
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def ctrl_c_deferred(enabled: bool = True) -> Iterator[None]:
    """While inside (and ``enabled``): a first Ctrl-C is only recorded, and
    ``check_interrupted`` raises it at the loop's next safe point; a second one raises at once.

    For loops whose steps must not be cut in half: a training step donates its input state, so
    an interrupt between the call and the assignment of its result would leave no state to
    save. Outside ``ctrl_c_kept`` (a Python caller) it installs the same handler itself."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    own = previous is not _on_sigint
    if own:
        signal.signal(signal.SIGINT, _on_sigint)
    _deferring.set()
    try:
        yield
    finally:
        _deferring.clear()
        if own:
            _ctrl_c.clear()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


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
        with ctrl_c_kept():
            return body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C); {interrupted}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------------------------
# The model flags of ``inpaint`` and ``app``


def add_model_arguments(parser: argparse.ArgumentParser, *, crop_margin: int) -> None:
    """The flags that choose the checkpoint and how a photo meets the network's size
    (``crop_margin``: the inpainter's default margin)."""
    parser.add_argument(
        "--checkpoint", required=True,
        help="training workdir, its checkpoints/ folder, or a converted folder")
    parser.add_argument(
        "--step", type=int, default=None, help="checkpoint step to load (default: the latest)")
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


def generator_line(meta: Mapping[str, Any], source: Any) -> str:
    """``generator isnet (blocks=4, step 1000) from SOURCE``: what a command loaded."""
    return (f"generator {meta.get('generator')} (blocks={meta.get('blocks')}, step "
            f"{meta.get('step')}) from {source}")
