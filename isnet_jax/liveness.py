"""A lost host in a multi-process run: one line naming it, and a stop within a bound.

When one process of a pod slice dies (kill -9, a kernel panic, a VM taken away), the others
wait for it inside the next collective. JAX's coordination service notices after its heartbeat
timeout (100 s by default) and then aborts every process from a C++ thread: a FATAL log, a
C++ stack trace and every Python thread's stack, with the lost task's number on the line after
"stopped sending heartbeats". Its callback for that moment cannot be set from Python (jaxlib
0.10 passes it an ``absl::Status`` it cannot convert: the process dies of ``std::bad_cast``).

So each process also beats in the coordination service's key-value store, from a daemon
thread, and watches the others' beats: a process whose beat has not moved for ``timeout``
seconds (and that did not say it finished) is lost. The watcher then prints one line,

    error: process 3 of 4 stopped or was lost (no sign of life for 20 s; it failed, was killed
    or its machine went away: its own log says which); stopping this one too. Restart every
    process with the same command: training resumes from the newest complete checkpoint

and ends the process with ``EXIT_LOST_HOST``. Losing process 0, which serves the store, is
named the same way from the failing store calls. JAX's own heartbeat stays as the backstop.
"""

from __future__ import annotations

import os
import sys
import threading
import time

EXIT_LOST_HOST = 3  # documented in README ("Before you rent a TPU")
DEFAULT_TIMEOUT_S = 60
_PREFIX = "isnet_jax/alive/"
_DONE = "done"


class Watchdog:
    """Beats every ``timeout / 4`` s and watches the other processes' beats (see the module)."""

    def __init__(self, client, process_index: int, process_count: int, timeout: float):
        self.client, self.index, self.count = client, process_index, process_count
        self.timeout = timeout
        self._stop = threading.Event()
        self._beats = 0
        self._thread = threading.Thread(target=self._run, name="isnet_jax_liveness",
                                        daemon=True)

    def start(self) -> Watchdog:
        self._beat()
        self._thread.start()
        return self

    def _beat(self, value: str | None = None) -> None:
        self._beats += 1
        self.client.key_value_set(f"{_PREFIX}{self.index}", value or str(self._beats),
                                  allow_overwrite=True)

    def _run(self) -> None:
        seen: dict[int, tuple[str, float]] = {}
        start = time.monotonic()
        failing_since = None
        while not self._stop.wait(self.timeout / 4):
            now = time.monotonic()
            try:
                self._beat()
                beats = dict(self.client.key_value_dir_get(_PREFIX))
                failing_since = None
            except Exception as e:  # noqa: BLE001 - the store's RPC errors have no own type
                # Process 0 serves the store: calls fail once it is gone.
                failing_since = failing_since or now
                if now - failing_since > self.timeout and not self._stop.is_set():
                    self._lost(0, f"the coordination service it runs does not answer: "
                               f"{str(e).splitlines()[0][:120]}")
                continue
            for other in range(self.count):
                if other == self.index:
                    continue
                value = beats.get(f"{_PREFIX}{other}")
                if value == _DONE:
                    continue
                last_value, last_change = seen.get(other, (None, start))
                if value != last_value:
                    seen[other] = (value, now)
                elif now - last_change > self.timeout and not self._stop.is_set():
                    self._lost(other, f"no sign of life for {now - last_change:.0f} s")

    def _lost(self, other: int, why: str) -> None:
        print(f"error: process {other} of {self.count} stopped or was lost ({why}; it failed, "
              "was killed or its machine went away: its own log says which); stopping this one "
              "too. Restart every process with the same command: training resumes from the "
              "newest complete checkpoint",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Not sys.exit: the main thread is blocked in a collective that will never finish.
        os._exit(EXIT_LOST_HOST)

    def explain(self, error: BaseException) -> None:
        """After ``error`` ended this process's work: when it says a peer's connection closed
        (CPU collectives notice a killed peer at once), waits for the watch to name the lost
        process, which ends this one. Returns when no process is found lost in time."""
        if not any(s in str(error) for s in ("by peer", "Gloo", "UNAVAILABLE")):
            return
        print(f"A connection to another process failed; checking for up to {self.timeout:.0f} s "
              "which process was lost.", file=sys.stderr, flush=True)
        time.sleep(self.timeout * 1.5)

    def stop(self) -> None:
        """This process finished its work: the others must not take its silence for a loss."""
        self._stop.set()
        try:
            self._beat(_DONE)
        except Exception:  # noqa: BLE001, S110 - the store may be gone already; nothing to tell
            pass


def watch(timeout: float = DEFAULT_TIMEOUT_S) -> Watchdog | None:
    """Starts the watchdog in a multi-process run (after ``jax.distributed.initialize``);
    None for one process or ``timeout <= 0``."""
    import jax

    if jax.process_count() == 1 or timeout <= 0:
        return None
    from isnet_jax import sharding

    return Watchdog(sharding.coordination_client(), jax.process_index(), jax.process_count(),
                    timeout).start()
