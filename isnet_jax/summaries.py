"""TensorBoard summaries behind CLU's ``MetricWriter``, written to any ``etils.epath`` path.

CLU's own ``SummaryWriter`` goes through TensorFlow's file system, whose GCS client has a
fixed endpoint and different credentials handling from the rest of the run. Here tensorboardX
encodes the events (no TensorFlow involved) and every byte of a ``gs://`` events file goes
through ``etils.epath`` (gcsfs), like Orbax's metadata and our eval outputs: one storage
path for the whole workdir, the same variables, the same emulator in the rehearsal.

    writer = summaries.create_writer(workdir)             # logging + TensorBoard events
    writer.write_scalars(step, {"loss": 0.5})

Cloud Storage objects cannot be appended to, so a ``gs://`` events file is spooled locally
and every flush rewrites the whole object with everything written so far: what TensorFlow's
own GCS file does. A flush happens at the first write after ``flush_secs`` (120 s), on
``writer.flush()`` and when the writer closes; events since the last flush are lost if the
process is killed (as with TF's writer).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging
from clu.metric_writers import interface, multi_writer
from clu.metric_writers.async_writer import AsyncMultiWriter
from clu.metric_writers.logging_writer import LoggingWriter
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


class TensorBoardWriter(interface.MetricWriter):
    """TensorBoard events in ``logdir`` (a local folder or ``gs://...``), via tensorboardX.

    Scalars, images (N, H, W, C) or (H, W, C), texts, histograms, audio and hparams, readable
    by ``tensorboard --logdir``: scalars as TensorBoard's classic ``simple_value``, images as
    PNGs (N > 1: one per tag ``KEY/i``). Tags are kept exactly as given ("10-20%/psnr"), as
    TensorFlow's writer keeps them; tensorboardX's own ``add_*`` would rewrite "%" to "_".
    """

    def __init__(self, logdir: epath.PathLike, flush_secs: float = 120) -> None:
        super().__init__()
        self.logdir = os.fspath(epath.Path(logdir))
        record_writer.directory_check(self.logdir)
        # One events file per writer: pid and a counter keep two writers started in the
        # same second (a resume, a second eval) from overwriting each other's file.
        suffix = f".{os.getpid()}.{next(_WRITERS)}"
        # tensorboardX's synchronous events file, not its FileWriter: that one's flush()
        # leaves events queued for its thread unwritten. The writes run on CLU's
        # AsyncWriter thread anyway, and flush() here means everything so far is stored.
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

    def write_summaries(self, step: int, values: Mapping[str, Any],
                        metadata: Mapping[str, Any] | None = None) -> None:
        raise NotImplementedError("TensorBoardWriter writes no raw TF summaries")

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

    def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
        logging.log_first_n(logging.WARNING, "TensorBoardWriter writes no videos.", 1)

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
        for key, value in audios.items():
            for i, clip in enumerate(np.asarray(value)):
                self._add(step, tbx_summary.audio(key, clip, sample_rate), f"{key}/{i}")

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for key, value in texts.items():
            self._add(step, tbx_summary.text(key, value), key)

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: Mapping[str, int] | None = None) -> None:
        for key, value in arrays.items():
            bins = (num_buckets or {}).get(key)
            self._add(step, tbx_summary.histogram(key, np.asarray(value), "auto", bins), key)

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


def create_writer(logdir: epath.PathLike | None, *, just_logging: bool = False,
                  asynchronous: bool = True) -> multi_writer.MultiWriter:
    """Logging plus TensorBoard events in ``logdir``: ``clu.metric_writers.
    create_default_writer`` with ``TensorBoardWriter`` in place of TF's summary writer.
    ``just_logging`` (the other hosts of a multi-host run): logging only."""
    writers: list[interface.MetricWriter] = [LoggingWriter()]
    if logdir is not None and not just_logging:
        writers.append(TensorBoardWriter(logdir))
    return AsyncMultiWriter(writers) if asynchronous else multi_writer.MultiWriter(writers)
