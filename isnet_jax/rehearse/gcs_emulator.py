"""A local Cloud Storage bucket: ``gcp-storage-emulator`` on 127.0.0.1, for tests and rehearsals.

    with gcs_emulator.Emulator(bucket="isnet") as emulator:
        env = dict(os.environ, **emulator.env)   # for subprocesses, or
        emulator.export()                        # for this process (before any client starts)
        ... python -m isnet_jax.main --workdir=gs://isnet/run ...

Only the clients' standard variables point them at it, so what runs here runs unchanged
against a real bucket:

  TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING   TensorStore (Orbax's array I/O)
  STORAGE_EMULATOR_HOST, EPATH_USE_TF=false                 etils.epath through fsspec/gcsfs
                                                            (Orbax's metadata, TFDS, our files)
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false                   gcsfs: skip the bucket-type probe
                                                            (a gRPC API the emulator lacks;
                                                            else one warning per file access)
  CLOUD_STORAGE_EMULATOR_ENDPOINT                           google-cloud-cpp: ArrayRecord's
                                                            reader of a gs:// TFDS data_dir

etils.epath decides once per process, at its first path, whether gs:// goes through
TensorFlow: set these before anything touches a path (``export()`` early, or in the
environment of a subprocess).

TensorFlow's own GCS client (``tf.io.gfile``) has a fixed endpoint and cannot be pointed at
an emulator. The emulator keeps its objects on disk in ``data_dir``, so ``stop()`` then
``start()`` (same port) is a bucket outage that loses nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import portpicker

_START_TIMEOUT_S = 30.0


# Runs the emulator's CLI in the child, with these fixes:
# - On Linux it first asks for SIGTERM when the process that started it dies
#   (PR_SET_PDEATHSIG), even by kill -9, so no emulator outlives a killed test run or
#   rehearsal; elsewhere atexit and stop() are all there is. (A preexec_fn would do the same
#   but makes subprocess fork the multithreaded JAX process instead of vfork-exec it.)
# - Its media downloads get the x-goog-generation header that real GCS sends and the emulator
#   (2026.7) omits: TensorStore reads an object's generation from it, takes a missing one for
#   0, and then refuses the conditional write that OCDBT makes to its manifest ("Malformed
#   StorageGeneration"): Orbax saves failed at random without it.
# - A ranged download (TensorStore reads one array of a checkpoint's OCDBT data file, tens of
#   MB, per request) read the whole object from disk to slice out the range: a multi-host
#   restore of a tiny model's 270 MB took 80 s, and requests queued that long timed out in the
#   client and were retried with back-off. It reads the range alone (through a per-request
#   get_file on the storage object: safe because the emulator's HTTPServer is single-threaded,
#   one request at a time).
# - The listening socket's queue holds 1,024 connections, not http.server's 5: the hosts'
#   TensorStore clients open dozens at once, and a connection the queue drops is retried by
#   TCP a second or more later.
# - objects.move (POST .../o/SRC/moveTo/o/DST), which real GCS serves and gcsfs uses for every
#   rename: the emulator answered 501, which gcsfs retries with back-off before copying, so
#   setting aside an unfinished checkpoint step took 90 s and logged a traceback per file.
# - Its metadata file (every object ever written, deleted ones too: 7 days of soft delete) is
#   rewritten as indented JSON, by Python's slow encoder, after every write and delete: 29 ms a
#   write once 2,000 objects exist, so a test session's bucket slowed every save and rename.
#   Compact JSON (the C encoder) and hard deletes (nothing here reads soft-deleted objects).
_LAUNCHER = r"""
import ctypes, os, runpy, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(0)
import http.server, re
http.server.HTTPServer.request_queue_size = 1024
from gcp_storage_emulator.handlers import objects
class _OnDisk:
    def __init__(self, path):
        self.path = path
    def __len__(self):
        return os.path.getsize(self.path)
    def __getitem__(self, part):
        with open(self.path, "rb") as f:
            f.seek(part.start)
            return f.read(part.stop - part.start)
_download = objects.download
def download(request, response, storage, *args, **kwargs):
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    try:
        obj = storage.get_file_obj(bucket, name)
    except Exception:
        obj = {}
    if (re.fullmatch(r"^\s*bytes=([0-9]+)-([0-9]*)$", request.get_header("range", None) or "")
            and not storage._use_memory_fs):
        path = storage._store._disk_path(storage._object_path(bucket, name))
        if path.is_file():
            storage.get_file = lambda *a, **k: _OnDisk(path)
    try:
        _download(request, response, storage, *args, **kwargs)
    finally:
        storage.__dict__.pop("get_file", None)
    if obj.get("generation") and response.status.value in (200, 206):
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
objects.download = download
from http import HTTPStatus
from gcp_storage_emulator import server, settings
from gcp_storage_emulator.exceptions import NotFound
def move(request, response, storage, *args, **kwargs):
    bucket, source = request.params["bucket_name"], request.params["object_id"]
    try:
        moved = objects._copy(request.base_url, storage, bucket, source, bucket,
                              request.params["dest_object_id"])
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    objects._delete(storage, bucket, source)
    response.json(moved)
server.HANDLERS = tuple(
    (rf"^{prefix}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
     rf"(?P<dest_object_id>.*[^/]+)$", {"POST": move})
    for prefix in (settings.API_ENDPOINT, "")) + tuple(server.HANDLERS)
import json
from gcp_storage_emulator import storage
def write_meta(self):
    data = {key: getattr(self, key) for key in
            ("buckets", "objects", "resumable", "bucket_iam_policies", "soft_deleted")}
    self._store.write_bytes(".meta", json.dumps(data, separators=(",", ":")).encode())
storage.Storage._write_config_to_file = write_meta
storage.DEFAULT_SOFT_DELETE_RETENTION_SECONDS = 0
sys.argv = ["gcp-storage-emulator"] + sys.argv[2:]
runpy.run_module("gcp_storage_emulator", run_name="__main__")
"""


class Emulator:
    """One ``gcp-storage-emulator`` subprocess serving ``bucket`` on 127.0.0.1.

    ``data_dir``: where the objects live (default: a temporary folder removed by ``close()``).
    ``port``: default a free one, kept across ``stop()``/``start()``.
    """

    def __init__(self, bucket: str = "isnet", *, data_dir: str | os.PathLike | None = None,
                 port: int | None = None) -> None:
        self.bucket = bucket
        self.port = port or portpicker.pick_unused_port()
        self._own_dir = data_dir is None
        self.data_dir = str(data_dir or tempfile.mkdtemp(prefix="isnet_gcs_emulator_"))
        self._process: subprocess.Popen | None = None
        self._log: Any = None
        atexit.register(self.close)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The variables that point TensorStore and etils.epath (gcsfs) at this emulator."""
        return {
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "STORAGE_EMULATOR_HOST": self.url,
            "EPATH_USE_TF": "false",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
        }

    def path(self, *parts: str) -> str:
        """``gs://BUCKET/part/...``."""
        return "/".join([f"gs://{self.bucket}", *parts])

    def export(self) -> None:
        """Sets ``env`` in this process's ``os.environ``. Clients read them when first used
        (etils.epath at its first path, gcsfs per endpoint), so call this early."""
        os.environ.update(self.env)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Emulator:
        """Starts the emulator (creating the bucket if new) and waits until it answers."""
        if self.running:
            return self
        log_path = os.path.join(self.data_dir, "emulator.log")
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(os.getpid()), "--data-dir", self.data_dir,
             "start",
             "--host", "127.0.0.1", "--port", str(self.port),
             "--default-bucket", self.bucket, "--quiet"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C reaches only us, and stop() ends it in order.
            start_new_session=True,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                self._close_log()
                with open(log_path, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(
                    f"gcp-storage-emulator exited with status {self._process.returncode} on "
                    f"port {self.port} (log {log_path}):\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}", timeout=2):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"gcp-storage-emulator did not answer on {self.url} within "
                        f"{_START_TIMEOUT_S:.0f} s (log {log_path})") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stops the emulator (SIGTERM, then SIGKILL after 10 s); the objects stay on disk."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_log()

    def close(self) -> None:
        """Stops the emulator and removes its objects if it made the data folder itself."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        atexit.unregister(self.close)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()  # also on KeyboardInterrupt


@contextlib.contextmanager
def exported(emulator: Emulator):
    """``emulator.env`` set in ``os.environ`` for the block, the previous values restored."""
    saved = {k: os.environ.get(k) for k in emulator.env}
    emulator.export()
    try:
        yield emulator
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
