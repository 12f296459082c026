"""A run's scalars, images and hyperparameters: in the log and in TensorBoard event files.

    writer = summaries.create_writer(workdir)             # logging + TensorBoard events
    writer.write_scalars(step, {"loss": 0.5})
    writer.flush()                                        # everything so far is stored

The interface is CLU's ``MetricWriter`` (the part of it this project writes), without CLU's
``metric_writers`` package, which imports TensorFlow on import (clu 0.0.12): TensorFlow is no
part of the default install. ``LoggingWriter`` writes the log lines CLU's writes;
``TensorBoardWriter`` the events, through tensorboardX (no TensorFlow involved) and
``etils.epath``; ``Writer`` sends each call to both on a background thread, as CLU's
``AsyncMultiWriter`` does, so encoding images and uploading to a bucket stay out of the loop.

Every byte of a ``gs://`` events file goes through ``etils.epath`` (gcsfs), like Orbax's
metadata and our eval outputs: one storage path for the whole workdir, the same variables, the
same emulator in the rehearsal. Cloud Storage objects cannot be appended to, so a ``gs://``
events file is spooled locally and every flush rewrites the whole object with everything
written so far: what TensorFlow's own GCS file does. A flush happens at the first write after
``flush_secs`` (120 s), on ``writer.flush()`` and when the writer closes; events since the
last flush are lost if the process is killed (as with TF's writer).
"""

from __future__ import annotations

import abc
import concurrent.futures
import functools
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from absl import logging
from etils import epath
from tensorboardX import record_writer
from tensorboardX import summary as tbx_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2, summary_pb2

# Spooled in memory up to this size, then in a local temporary file.
_SPOOL_BYTES = 8 << 20
_WRITERS = itertools.count()


class _BucketEventsFile:
    """A tensorboardX record file in a bucket: buffered, whole object rewritten at each flush."""

    def __init__(self, path: str) -> None:
        self._path = epath.Path(path)
        self._spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
        self._uploaded = -1

    def write(self, data: bytes) -> None:
        self._spool.write(data)

    def flush(self) -> None:
        size = self._spool.tell()
        if size == self._uploaded:
            return
        self._spool.seek(0)
        with self._path.open("wb") as f:
            shutil.copyfileobj(self._spool, f)
        self._spool.seek(size)
        self._uploaded = size

    def close(self) -> None:
        if not self._spool.closed:
            self.flush()
            self._spool.close()


class _BucketFactory:
    """tensorboardX's hook for URL schemes (``record_writer.register_writer_factory``)."""

    def open(self, path: str) -> _BucketEventsFile:
        return _BucketEventsFile(path)

    def directory_check(self, path: str) -> None:
        pass  # buckets have no directories to create


# tensorboardX's own "gs" factory uploads through google-cloud-storage: replaced by epath's.
record_writer.register_writer_factory("gs", _BucketFactory())


class MetricWriter(abc.ABC):
    """Where a run's values go. ``step`` is the training step; ``images`` are uint8 or [0, 1]
    float arrays (N, H, W, C) or (H, W, C)."""

    @abc.abstractmethod
    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def write_images(self, step: int, images: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

    def flush(self) -> None:  # noqa: B027 - nothing buffered unless a writer says so
        """Stores everything written so far."""

    def close(self) -> None:
        self.flush()


class LoggingWriter(MetricWriter):
    """INFO log lines, CLU's: ``[STEP] a=0.5, b=2``, ``[STEP] Got images: {...}.`` and
    ``[Hyperparameters] {...}``."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in sorted(scalars.items())]
        logging.info("[%d] %s", step, ", ".join(values))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        logging.info("[%d] Got images: %s.", step,
                     {k: np.shape(v) for k, v in images.items()})

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        logging.info("[Hyperparameters] %s", hparams)

    def flush(self) -> None:
        logging.flush()


class TensorBoardWriter(MetricWriter):
    """TensorBoard events in ``logdir`` (a local folder or ``gs://...``), via tensorboardX.

    Scalars as TensorBoard's classic ``simple_value``, images (N, H, W, C) or (H, W, C) as PNGs
    (N > 1: one per tag ``KEY/i``), hyperparameters as the hparams plugin's session start,
    readable by ``tensorboard --logdir``. Tags are kept exactly as given ("10-20%/psnr"), as
    TensorFlow's writer keeps them; tensorboardX's own ``add_*`` would rewrite "%" to "_".
    """

    def __init__(self, logdir: epath.PathLike, flush_secs: float = 120) -> None:
        self.logdir = os.fspath(epath.Path(logdir))
        record_writer.directory_check(self.logdir)
        # One events file per writer: pid and a counter keep two writers started in the
        # same second (a resume, a second eval) from overwriting each other's file.
        suffix = f".{os.getpid()}.{next(_WRITERS)}"
        # tensorboardX's synchronous events file, not its FileWriter: that one's flush()
        # leaves events queued for its thread unwritten. The writes run on Writer's thread
        # anyway, and flush() here means everything so far is stored.
        self._events = EventsWriter(os.path.join(self.logdir, "events"), suffix)
        self._flush_secs = flush_secs
        self._flushed_at = time.monotonic()

    def _add(self, step: int | None, summary, tag: str | None = None) -> None:
        if tag is not None:
            for value in summary.value:
                value.tag = tag
        event = event_pb2.Event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = int(step)
        self._events.write_event(event)
        if time.monotonic() - self._flushed_at > self._flush_secs:
            self.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for key, value in scalars.items():  # NaN too (an undefined SSIM), without a warning
            value = summary_pb2.Summary.Value(tag=key, simple_value=float(np.asarray(value)))
            self._add(step, summary_pb2.Summary(value=[value]))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        for key, value in images.items():
            value = np.asarray(value)
            batch = value[None] if value.ndim == 3 else value
            for i, image in enumerate(batch):
                tag = key if len(batch) == 1 else f"{key}/{i}"
                self._add(step, tbx_summary.image(key, image, dataformats="HWC"), tag)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        # The session's start only, in this run's own events file, as CLU's TF writer does:
        # TensorBoard then infers the metric columns from the scalars. (tensorboardX's
        # add_hparams would open a second run in a subfolder, with no metric columns.)
        _, start, _ = tbx_summary.hparams(dict(hparams), {})
        self._add(None, start)

    def flush(self) -> None:
        self._events.flush()
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        self._events.close()


class Writer(MetricWriter):
    """Several writers as one. Asynchronous: each call is queued for one background thread
    and returns at once; the writers see the calls in order; ``flush()`` waits for the queue
    and then flushes them. A background write's exception is raised by the next call (or
    ``flush``/``close``) in the caller's thread: an unwritable bucket stops the run."""

    def __init__(self, writers: Iterable[MetricWriter], *, asynchronous: bool = True) -> None:
        self.writers = list(writers)
        self._pool = (concurrent.futures.ThreadPoolExecutor(1, "summaries")
                      if asynchronous else None)
        self._pending: list[concurrent.futures.Future] = []

    def _each(self, method: str, *args, **kwargs) -> None:
        self._check(wait=False)
        for writer in self.writers:
            call = functools.partial(getattr(writer, method), *args, **kwargs)
            if self._pool is None:
                call()
            else:
                self._pending.append(self._pool.submit(call))

    def _check(self, *, wait: bool) -> None:
        """Raises the first failed background write's exception (all, when ``wait``)."""
        while self._pending and (wait or self._pending[0].done()):
            self._pending.pop(0).result()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self._each("write_scalars", step, dict(scalars))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        self._each("write_images", step, dict(images))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._each("write_hparams", dict(hparams))

    def flush(self) -> None:
        self._check(wait=True)
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        try:
            self._check(wait=True)
        finally:
            for writer in self.writers:
                writer.close()
            if self._pool is not None:
                self._pool.shutdown()


def create_writer(logdir: epath.PathLike | None, *, just_logging: bool = False,
                  asynchronous: bool = True) -> Writer:
    """Logging plus TensorBoard events in ``logdir`` (what CLU's ``create_default_writer``
    makes, with ``TensorBoardWriter`` in place of TF's summary writer). ``just_logging`` (the
    other hosts of a multi-host run): logging only."""
    writers: list[MetricWriter] = [LoggingWriter()]
    if logdir is not None and not just_logging:
        writers.append(TensorBoardWriter(logdir))
    return Writer(writers, asynchronous=asynchronous)
