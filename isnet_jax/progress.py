"""The training loop's progress report: steps per second, how far, the time left.

    progress = ProgressReport(num_train_steps=700, writer=writer, every_steps=50)
    for step in ...:
        with progress.timed("data"):
            batch = next(it)
        ...
        progress(step)
    # at step 50: "Progress: 1.9 steps/s, 7.1% (50/700), ETA: 5m (1m : 2.0% data)"

What CLU's ``periodic_actions.ReportProgress`` reports (its line, and the scalars
``steps_per_sec`` and ``uptime``), without CLU's ``periodic_actions``, which imports its
TensorFlow-importing ``metric_writers``. The rate is measured between two reports, so the
first call (usually right after compilation) only starts the clock.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator

from absl import logging

from isnet_jax import summaries


def format_seconds(seconds: float) -> str:
    """``1d10h17m``, ``3h0m``, ``0m``: whole minutes, with days and hours when there are any."""
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return f"{f'{days}d' if days else ''}{f'{hours}h' if hours else ''}{minutes}m"


class ProgressReport:
    """Called after every step; every ``every_steps`` steps and at ``num_train_steps`` it logs
    one ``Progress:`` line and writes ``steps_per_sec`` and ``uptime`` (seconds since it was
    made) to ``writer``. ``timed(name)`` blocks add their share of the time to the line."""

    def __init__(self, *, num_train_steps: int, writer: summaries.MetricWriter | None,
                 every_steps: int) -> None:
        self.num_train_steps, self.writer, self.every_steps = num_train_steps, writer, every_steps
        self._start = time.monotonic()
        self._last: tuple[int, float] | None = None  # (step, time) of the last report
        self._parts: dict[str, float] = collections.defaultdict(float)

    def __call__(self, step: int) -> bool:
        """Reports if ``step`` is due (not on the first call); returns whether it did."""
        now = time.monotonic()
        if self._last is None:
            self._last = (step, now)
            return False
        last_step, last_time = self._last
        due = (self.every_steps and step % self.every_steps == 0) or step == self.num_train_steps
        if step == last_step or not due:
            return False
        steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
        message = f"{steps_per_sec:.1f} steps/s"
        if self.num_train_steps:
            eta = (self.num_train_steps - step) / steps_per_sec
            message += (f", {100 * step / self.num_train_steps:.1f}% "
                        f"({step}/{self.num_train_steps}), ETA: {format_seconds(eta)}")
        if self._parts:
            total = now - self._start
            message += " ({} : {})".format(format_seconds(total), ", ".join(
                f"{100 * seconds / total:.1f}% {name}"
                for name, seconds in sorted(self._parts.items())))
        logging.info("Progress: %s", message)
        if self.writer is not None:
            self.writer.write_scalars(step, {"steps_per_sec": steps_per_sec})
            self.writer.write_scalars(step, {"uptime": now - self._start})
        self._last = (step, now)
        return True

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Counts the block's wall time as ``name`` in the report (Python time: a block that
        only dispatches device work counts the dispatch)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self._parts[name] += time.monotonic() - start
