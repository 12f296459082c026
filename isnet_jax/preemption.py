"""SIGTERM in a one-process run: finish the step in flight, save a checkpoint, stop."""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging


class TerminationRequest:
    """Turns SIGTERM into "save a checkpoint after this step and stop" in a one-process run.

    SLURM, Kubernetes, ``docker stop`` and spot-VM shutdowns send SIGTERM some seconds before
    killing; by default Python dies on it and the steps since the last checkpoint are lost.
    Runs of several processes get the same from JAX's preemption service through Orbax's
    ``reached_preemption`` (every host must save at the same step, which a local flag cannot
    promise), so the handler is installed only for one process, and only from the main thread.
    """

    def __init__(self):
        self.received = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if not self.received:
            logging.warning("SIGTERM received: saving a checkpoint after the current step.")
        self.received = True

    def __enter__(self) -> TerminationRequest:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
