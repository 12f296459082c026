"""A local stand-in for the publishers of ``isnet_jax.weights``: an HTTP server on 127.0.0.1
serving small real-format files, and the table (``$ISNET_JAX_WEIGHTS_TABLE``) that points the
known names at it. The rehearsal of a paper config serves its VGG19 so (``write_vgg19``), and
the tests their stand-ins.

    with WeightsServer({"lpips-v0.1-alex.pth": path}) as server:
        table = write_table(tmp_path / "table.json", server, {"lpips_alex": path})
        env = {weights.TABLE_VARIABLE: str(table), weights.CACHE_VARIABLE: str(cache)}

The server counts the requests for each file (``server.requests``), and can misbehave per file:
``"cut"`` sends the whole length in its header, half the bytes, then closes; ``"hold"`` sends
half and waits until ``server.release()`` (or 60 s), so a test can kill the downloading process
with the file half written; ``"corrupt"`` flips the last byte. ``stop()`` then ``start()`` is
the publisher going down and coming back on the same port.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import hashlib
import http.server
import json
import os
import pathlib
import shutil
import tempfile
import threading

import numpy as np

from isnet_jax import weights
from isnet_jax.models import vgg
from isnet_jax.torch_io.pth import save_pth

MODES = ("whole", "cut", "hold", "corrupt")


class WeightsServer:
    """Serves ``files`` (URL file name -> local path) at ``http://127.0.0.1:PORT/NAME``."""

    def __init__(self, files: dict[str, pathlib.Path]):
        self.files = {name: pathlib.Path(path) for name, path in files.items()}
        self.modes: dict[str, str] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self._released = threading.Event()
        self._holding = threading.Event()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> WeightsServer:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                name = self.path.lstrip("/")
                server.requests[name] += 1
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name].read_bytes()
                mode = server.modes.get(name, "whole")
                if mode == "corrupt":
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if mode in ("cut", "hold"):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    if mode == "hold":
                        server._holding.set()
                        server._released.wait(60)
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def log_message(self, *args):  # quiet: the test's output is the client's
                pass

        # Port 0 the first time; the same port when started again after stop().
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the port (connections are refused until ``start()``)."""
        self.release()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = None
        self._released.clear()

    def wait_holding(self, timeout: float = 60) -> bool:
        """True once a ``"hold"`` download has sent its first half."""
        return self._holding.wait(timeout)

    def release(self) -> None:
        self._released.set()

    def __enter__(self) -> WeightsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def write_table(path: pathlib.Path, server: WeightsServer,
                files: dict[str, pathlib.Path], **changes) -> pathlib.Path:
    """A weights table (``$ISNET_JAX_WEIGHTS_TABLE``) of the built-in entries named in
    ``files``, each pointing at ``server`` and at its stand-in file's own hash and size.

    ``changes`` (``{name: {field: value}}``) alter entries, e.g. a wrong hash. The release's
    entries (no download) are kept as they are.
    """

    rows = []
    for known in weights.KNOWN.values():
        if known.name in files:
            stand_in = pathlib.Path(files[known.name])
            known = dataclasses.replace(known, url=server.url(known.file),
                                        sha256=sha256(stand_in), size=stand_in.stat().st_size)
        elif known.url:
            continue  # not served: a test must not reach the real publisher
        known = dataclasses.replace(known, **changes.get(known.name, {}))
        rows.append(dataclasses.asdict(known))
    pathlib.Path(path).write_text(json.dumps(rows, indent=1))
    return pathlib.Path(path)


def serve(files: dict[str, pathlib.Path]) -> WeightsServer:
    """A server for stand-ins keyed by known name (``{"vgg19": path}``), each at its
    publisher's file name."""

    return WeightsServer({weights.KNOWN[name].file: path for name, path in files.items()})


def write_vgg19(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A random VGG19 in torchvision's layout (``features`` alone: ``0.weight`` ... ``34.bias``,
    the real file's shapes, about 80 MB), written as torch.save does
    (``isnet_jax.torch_io.pth``)."""

    rng = np.random.default_rng(seed)
    sd, cin = collections.OrderedDict(), 3
    channels = [v for v in vgg.CFG if v != "M"]
    for index, cout in zip(vgg.TORCH_INDICES, channels, strict=True):
        scale = np.sqrt(2.0 / (9 * cin))
        sd[f"{index}.weight"] = (scale * rng.standard_normal((cout, cin, 3, 3))).astype(np.float32)
        sd[f"{index}.bias"] = (0.01 * rng.standard_normal(cout)).astype(np.float32)
        cin = cout
    save_pth(sd, path)
    return pathlib.Path(path)


def keep_offline() -> None:
    """Points this process (and its subprocesses) at an empty weights cache of its own and at
    a table whose every download is refused (127.0.0.1, port 9): no test reaches a publisher
    or reads the user's cache, and one that fetches without a stand-in fails at once."""


    folder = pathlib.Path(tempfile.mkdtemp(prefix="isnet_jax_test_weights-"))
    atexit.register(shutil.rmtree, folder, True)
    rows = [dataclasses.asdict(dataclasses.replace(k, url=f"http://127.0.0.1:9/{k.file}")
                               if k.url else k) for k in weights.KNOWN.values()]
    (folder / "offline.json").write_text(json.dumps(rows, indent=1))
    os.environ[weights.CACHE_VARIABLE] = str(folder / "cache")
    os.environ[weights.TABLE_VARIABLE] = str(folder / "offline.json")
