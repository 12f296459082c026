"""Ctrl-C inside long loops: deferred to a safe point, and never lost.

A training step donates its input state, so an interrupt between the call and the assignment of
its result would leave no state to save: ``ctrl_c_deferred`` records a first Ctrl-C and
``check_interrupted`` raises it at the loop's next safe point (a second one raises at once).
``ctrl_c_kept`` makes sure an interrupt that Python dropped in a callback still stops the work.
Library loops (training, inpainting) use these; the command lines' own handling (one line,
exit status 130) is ``isnet_jax.cli``.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

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
