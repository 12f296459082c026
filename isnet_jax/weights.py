"""The publishers' weight files this project knows, fetched on first use, checked and cached.

    from isnet_jax import weights
    path = weights.fetch("vgg19")        # ~/.cache/isnet_jax/vgg19-dcbb9e9d/vgg19.npz
    path = weights.resolve(config.loss.vgg_weights, "vgg19")  # "" or a name: fetched

``KNOWN`` lists each file: its publisher's URL, the SHA-256 the publisher gives (or the prefix its
file name carries, torch hub's convention), its size, its licence and what it becomes here. The
first ``fetch`` streams it to a temporary file beside its place in the cache, checks size and
hash, converts it as ``python -m isnet_jax.convert`` does (VGG19 to ``vgg19.npz``, the FID
Inception to ``inception_fid.npz``; the LPIPS files are read as published), and renames the
result into place: a download killed at any point leaves no file a later run takes for
complete. Later calls find the file and download nothing. Where no network reaches the
publisher, the error names the file, its URL and the path to put it at by hand; the next
``fetch`` checks that file and takes it in.

The cache is ``$ISNET_JAX_CACHE``, ``~/.cache/isnet_jax`` by default; a ``gs://`` folder works
too (through etils.epath), so that one host of a pod downloads and the others read. In a run of
several JAX processes only process 0 downloads; the others wait for it, then read the cache
(and fetch it themselves where their cache is not the one process 0 wrote).

One override, for tests and rehearsals only: ``$ISNET_JAX_WEIGHTS_TABLE``, the path of a JSON
file (a list of objects with the fields of ``Known``) that replaces ``KNOWN``, so that a local
server can stand in for the publishers.

The release's own ISNet weights are known by name too, but their hosts (mega.nz, Google Drive)
have no plain download: fetching them says where they are and which ``convert`` command to run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping

from absl import logging

from isnet_jax import atomic, errors

CACHE_VARIABLE = "ISNET_JAX_CACHE"
TABLE_VARIABLE = "ISNET_JAX_WEIGHTS_TABLE"
DEFAULT_CACHE = "~/.cache/isnet_jax"

_CHUNK = 1 << 20
_TIMEOUT_S = 60  # per connection attempt and per read: a stalled server is an error, not a hang
# A partial download untouched for this long belongs to a process that is gone (a live one
# writes to it every chunk, or converts it within minutes): the next fetch removes it.
_ABANDONED_S = 3600
# Other processes wait this long for process 0's download (548 MB at 0.2 MB/s).
_WAIT_S = 3 * 3600


@dataclasses.dataclass(frozen=True)
class Known:
    """One file the project knows.

    ``file`` is the publisher's file name (and the name to put it under, in the cache folder,
    by hand); ``sha256`` the whole hex digest or a prefix of it; ``converts_to`` "vgg19",
    "inception" or "" (used as published). ``url`` is "" for files without a plain download,
    whose ``page`` says where they are and ``how`` what to do with them.
    """

    name: str
    what: str
    file: str
    url: str
    sha256: str
    size: int | None
    licence: str
    converts_to: str = ""
    page: str = ""
    how: str = ""

    @property
    def folder(self) -> str:
        """The cache folder of the ready file: the name and the hash, so that a table whose
        file changed never takes the old one."""
        return f"{self.name}-{self.sha256[:8]}"

    @property
    def ready_file(self) -> str:
        return _CONVERTED.get(self.converts_to, self.file)


# What a converts_to entry's file becomes: convert(source, target) writes it.
Converter = Callable[[pathlib.Path, pathlib.Path], None]
_CONVERTED = {"vgg19": "vgg19.npz", "inception": "inception_fid.npz"}  # convert's names
_TORCHVISION = "BSD-3-Clause (torchvision); trained on ImageNet, whose terms of access apply"
_RELEASE_PAGE = "https://github.com/GuardSkill/Large-Scale-Feature-Inpainting"


def _release(name: str, dataset: str, host: str) -> Known:
    folder = f"weights/{dataset.lower()}"
    return Known(
        name=name, what=f"the ISNet release's {dataset} weights", file="InpaintingModel_gen.pth",
        url="", sha256="", size=None, licence="CC BY-NC 4.0 (the release)", page=_RELEASE_PAGE,
        how=f"its README's \"Getting Started\" links them ({host}, no plain download): save "
            f"InpaintingModel_gen.pth (and InpaintingModel_dis.pth), then run `python -m "
            f"isnet_jax.convert --generator InpaintingModel_gen.pth --discriminator "
            f"InpaintingModel_dis.pth --output {folder}` and pass {folder} (--checkpoint, or "
            f"config.init_from)")


# Sizes: torchvision's files as torch hub's download progress reports them (the server's
# Content-Length) in public training logs, several agreeing for each; pytorch-fid's as two
# independent public manifests record it. Hashes: the prefix each file name carries (torch hub
# checks the same). lpips' linear layers: the files that lpips 0.1.4's wheel on PyPI ships
# (lpips/weights/v0.1/, the same files as the repository's), whose size and whole SHA-256 were
# computed from `pip download --no-deps lpips`.
KNOWN: Mapping[str, Known] = {k.name: k for k in (
    Known("vgg19", "torchvision's ImageNet VGG19", "vgg19-dcbb9e9d.pth",
          "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "dcbb9e9d", 574673361,
          _TORCHVISION, converts_to="vgg19"),
    Known("vgg16", "torchvision's ImageNet VGG16", "vgg16-397923af.pth",
          "https://download.pytorch.org/models/vgg16-397923af.pth", "397923af", 553433881,
          _TORCHVISION),
    Known("alexnet", "torchvision's ImageNet AlexNet", "alexnet-owt-7be5be79.pth",
          "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79", 244408911,
          _TORCHVISION),
    Known("inception", "pytorch-fid's FID Inception", "pt_inception-2015-12-05-6726825d.pth",
          "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
          "pt_inception-2015-12-05-6726825d.pth", "6726825d", 95628359,
          "Apache-2.0 (pytorch-fid; ported from TensorFlow's inception-2015-12-05)",
          converts_to="inception"),
    Known("lpips_alex", "lpips' v0.1 linear layers for AlexNet", "lpips-v0.1-alex.pth",
          "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/"
          "weights/v0.1/alex.pth",
          "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", 6009,
          "BSD-2-Clause (lpips)"),
    Known("lpips_vgg", "lpips' v0.1 linear layers for VGG16", "lpips-v0.1-vgg.pth",
          "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/"
          "weights/v0.1/vgg.pth",
          "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", 7289,
          "BSD-2-Clause (lpips)"),
    _release("isnet_places2", "Places2", "mega.nz"),
    _release("isnet_celeba", "CelebA", "Google Drive"),
)}


class DownloadError(errors.UserError, OSError):
    """The publisher could not be reached, answered with an error, or sent less than the file."""


class HashMismatchError(errors.UserError, ValueError):
    """A file whose size or SHA-256 is not the publisher's."""


class CacheError(errors.UserError, OSError):
    """The cache folder cannot be written (read-only, full, no permission)."""


class NoDownloadError(errors.UserError):
    """A known file without a plain download: the message says where it is."""


# ---------------------------------------------------------------------------------------------
# The table and the cache


def table() -> Mapping[str, Known]:
    """``KNOWN``, or the table that ``$ISNET_JAX_WEIGHTS_TABLE`` names (tests, rehearsals)."""
    path = os.environ.get(TABLE_VARIABLE)
    if not path:
        return KNOWN
    fields = {f.name for f in dataclasses.fields(Known)}
    try:
        rows = json.loads(pathlib.Path(path).read_text())
        entries = [Known(**row) for row in rows]
    except (OSError, ValueError, TypeError) as e:
        raise errors.ConfigError(
            f"${TABLE_VARIABLE}={path}: not a readable JSON list of objects with the fields "
            f"{', '.join(sorted(fields))} ({e}); unset it to use the built-in table") from None
    return {k.name: k for k in entries}


def cache_dir() -> str:
    """``$ISNET_JAX_CACHE`` (a local folder or ``gs://...``), by default ``~/.cache/isnet_jax``."""
    value = os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE
    return value if _remote(value) else os.path.abspath(os.path.expanduser(value))


def _remote(path: str) -> bool:
    return "://" in path


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts)


def entry(name: str) -> Known:
    """The known file called ``name``; ``errors.ConfigError`` listing the names otherwise."""
    known = table()
    if name not in known:
        raise errors.ConfigError(
            f"no known weights are called {name!r}; known: {', '.join(known)} (or give a path)")
    return known[name]


def path_of(name: str) -> str:
    """Where ``fetch(name)`` puts (or finds) its ready file."""
    known = entry(name)
    return _join(cache_dir(), known.folder, known.ready_file)


def by_hand_path(name: str) -> str:
    """Where a user puts the publisher's file when no download is possible."""
    return _join(cache_dir(), entry(name).file)


def resolve(value: str, name: str, convert: Converter | None = None) -> str:
    """What a config field naming a weight file means: "" (the default) fetches ``name``, a
    known name fetches that file (``fetch``), anything else is a path, returned as it is."""
    if not value:
        return fetch(name, convert)
    if value in table():
        return fetch(value, convert)
    return value


# ---------------------------------------------------------------------------------------------
# Fetching


def fetch(name: str, convert: Converter | None = None) -> str:
    """The path (local or ``gs://``) of known file ``name``, checked and converted, in the
    cache: downloaded and converted on the first call, found on later ones.

    ``convert(source, target)`` writes the file a ``converts_to`` entry becomes (what ``python
    -m isnet_jax.convert`` writes): the network's own module has it (``models.vgg.
    convert_torchvision``, ``evaluators.fid.convert_pytorch_fid``), and its caller passes it,
    since this module sits below the networks (``models.build`` resolves VGG19 through it).

    Raises ``DownloadError`` (no network, host unreachable, an HTTP error, a cut download: the
    message names the file, its URL and where to put it by hand), ``HashMismatchError`` (the
    download is deleted), ``CacheError`` (the cache cannot be written), ``NoDownloadError`` (the
    release's own weights), ``errors.ConfigError`` (an unknown name): all ``errors.UserError``.
    In a run of several JAX processes, process 0 downloads and the others wait for it.
    """
    known = entry(name)
    if not known.url:
        raise NoDownloadError(f"{known.what} ({known.file}) are on {known.page}: {known.how}")
    if known.converts_to and convert is None:
        raise TypeError(f"fetch({name!r}) needs the converter to {known.converts_to}")
    jax = sys.modules.get("jax")  # only a run that uses JAX can be one of several processes
    if jax is not None and jax.process_count() > 1:
        return _fetch_as_one_of_several(known, jax.process_index(), convert)
    return _fetch(known, convert)


def _fetch_as_one_of_several(known: Known, index: int, convert: Converter | None) -> str:
    from isnet_jax import sharding

    client = sharding.coordination_client()
    key = f"isnet_jax/weights/{known.folder}"
    if index == 0:
        try:
            path = _fetch(known, convert)
        except Exception as e:  # the others must not wait for a file that will not come
            client.key_value_set(key, f"error:{e}", allow_overwrite=True)
            raise
        client.key_value_set(key, "ok", allow_overwrite=True)
        return path
    try:
        status = client.blocking_key_value_get(key, _WAIT_S * 1000)
    except Exception as e:  # noqa: BLE001 - the store's RPC errors have no own type
        raise DownloadError(
            f"process {index} waited {_WAIT_S // 3600} h for process 0 to fetch {known.file} "
            f"into {cache_dir()} and gave up ({str(e).splitlines()[0][:200]})") from None
    if status.startswith("error:"):
        raise DownloadError(f"process 0 could not fetch {known.file}: {status[6:]}")
    # A cache shared with process 0 (gs://, a network disk) has it now; a host's own disk
    # does not, and that host downloads it too.
    return _fetch(known, convert)


def _fetch(known: Known, convert: Converter | None) -> str:
    cache = cache_dir()
    ready = _join(cache, known.folder, known.ready_file)
    with _cache_errors(cache, "read"):
        if _exists(ready):
            return ready
    if _remote(cache):
        return _fetch_into_remote(known, cache, ready, convert)
    return _fetch_into_local(known, pathlib.Path(cache), pathlib.Path(ready), convert)


def _exists(path: str) -> bool:
    if _remote(path):
        from etils import epath

        return epath.Path(path).exists()
    return os.path.exists(path)


def _fetch_into_local(known: Known, cache: pathlib.Path, ready: pathlib.Path,
                      convert: Converter | None) -> str:
    with _cache_errors(cache):
        ready.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(ready.parent)
        by_hand = cache / known.file
        if by_hand.is_file():
            _check_file(known, by_hand)
            logging.info("Taking in %s (%s), checked.", by_hand, known.what)
            _install(known, by_hand, ready, convert)
            by_hand.unlink(missing_ok=True)  # taken in: the ready file replaces it
            return str(ready)
        if not known.converts_to:
            with atomic.written(ready) as partial, partial.open("wb") as f:
                _download(known, f, cache)
            return str(ready)
        # The download is only the converter's input: a temporary file beside the cache entry
        # (same disk), gone whatever happens; a killed run's is removed by _remove_abandoned.
        with tempfile.NamedTemporaryFile(prefix=f".{known.file}.", suffix=".partial",
                                         dir=ready.parent) as download:
            _download(known, download, cache)
            download.flush()
            _install(known, pathlib.Path(download.name), ready, convert)
    return str(ready)


def _fetch_into_remote(known: Known, cache: str, ready: str, convert: Converter | None) -> str:
    """A ``gs://`` cache: downloaded and converted in a local temporary folder, then written
    to the bucket under a temporary name and renamed."""
    from etils import epath

    with tempfile.TemporaryDirectory(prefix="isnet_jax_weights-") as local:
        local = pathlib.Path(local)
        source = local / known.file
        by_hand = epath.Path(_join(cache, known.file))
        with _cache_errors(cache, "read"):
            found = by_hand.exists()
        if found:
            with _cache_errors(cache, "read"), by_hand.open("rb") as src, \
                    open(source, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            _check_file(known, source, shown=str(by_hand))
        else:
            with open(source, "wb") as f:
                _download(known, f, cache)
        converted = local / known.ready_file if known.converts_to else source
        if known.converts_to:
            _convert(known, convert, source, converted)
        target = epath.Path(ready)
        partial = target.parent / f".{known.ready_file}.{uuid.uuid4().hex[:12]}.partial"
        with _cache_errors(cache):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(converted, "rb") as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                partial.rename(target)
            finally:
                if partial.exists():
                    partial.unlink()
    return ready


@contextlib.contextmanager
def _cache_errors(cache: str | os.PathLike, verb: str = "write") -> Iterator[None]:
    """An ``OSError`` of the cache itself (read-only, full, no permission, a bucket out of
    reach) as ``CacheError``."""
    try:
        yield
    except errors.UserError:
        raise
    except OSError as e:
        able = {"write": "writable", "read": "readable"}[verb]
        raise CacheError(
            f"cannot {verb} the weights cache {cache} ({e.strerror or e}); make it {able} or "
            f"set {CACHE_VARIABLE} to a folder that is") from None


def _remove_abandoned(folder: pathlib.Path) -> None:
    now = time.time()
    for partial in (*folder.glob(".*.partial"), *folder.glob(".*.partial-*")):
        with contextlib.suppress(OSError):  # another process may be removing it too
            if now - partial.stat().st_mtime > _ABANDONED_S:
                partial.unlink()


def _unreachable(known: Known, cache: str | os.PathLike, reason: str) -> DownloadError:
    return DownloadError(
        f"cannot download {known.file} from {known.url} ({reason}); download it by hand and "
        f"put it at {_join(os.fspath(cache), known.file)}, where the next run checks it and "
        "takes it in")


def _download(known: Known, f, cache: str | os.PathLike) -> None:
    """Streams ``known.url`` into the open file ``f``, then checks its size and hash."""
    request = urllib.request.Request(known.url, headers={"User-Agent": "isnet_jax"})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise _unreachable(known, cache, f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _unreachable(known, cache, str(e.reason)) from None
    except (OSError, http.client.HTTPException) as e:
        raise _unreachable(known, cache, str(e) or type(e).__name__) from None
    digest, received = hashlib.sha256(), 0
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else known.size
        logging.info("Downloading %s (%s%s) from %s into the weights cache %s, once.",
                     known.file, known.what, f", {total / 1e6:.1f} MB" if total else "",
                     known.url, cache)
        progress = _Progress(known.file, total)
        try:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _unreachable(known, cache, f"the connection broke after {received} "
                                       f"bytes: {str(e) or type(e).__name__}") from None
                if not chunk:
                    break
                digest.update(chunk)
                with _cache_errors(cache):
                    f.write(chunk)
                received += len(chunk)
                progress.update(received)
        finally:  # also on an error: its line must start on a line of its own
            progress.done(received)
    if length and length.isdigit() and received != int(length):
        raise _unreachable(known, cache, f"the server sent {received} of its {length} bytes")
    _check(known, received, digest.hexdigest(), f"the download of {known.url}",
           "it was deleted; try again, and if it persists the file at that URL changed: get it "
           "from its publisher by hand")


def _check_file(known: Known, path: pathlib.Path, shown: str = "") -> None:
    """A file put in the cache by hand (``shown``: where the user put it) is the publisher's."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    _check(known, path.stat().st_size, digest.hexdigest(), shown or str(path),
           f"replace it with {known.url}")


def _check(known: Known, size: int, sha256: str, what: str, fix: str) -> None:
    if known.size is not None and size != known.size:
        raise HashMismatchError(
            f"{what} ({known.file}) is {size} bytes, not the publisher's {known.size}: refused; "
            f"{fix}")
    if not sha256.startswith(known.sha256.lower()):
        raise HashMismatchError(
            f"{what} ({known.file}) has SHA-256 {sha256}, not the publisher's "
            f"{known.sha256}{'...' if len(known.sha256) < 64 else ''}: refused; {fix}")


def _install(known: Known, source: pathlib.Path, ready: pathlib.Path,
             convert: Converter | None) -> None:
    """The checked ``source`` becomes ``ready`` whole (``atomic.written``): converted, or
    copied."""
    with atomic.written(ready) as partial:
        if known.converts_to:
            _convert(known, convert, source, partial)
        else:
            shutil.copyfile(source, partial)


def _convert(known: Known, convert: Converter, source: pathlib.Path,
             target: pathlib.Path) -> None:
    """What ``python -m isnet_jax.convert --vgg19 / --inception`` writes, into ``target``."""
    logging.info("Converting %s (%s) to isnet_jax's %s.", known.file, known.what,
                 known.ready_file)
    convert(source, target)


# ---------------------------------------------------------------------------------------------
# Reading a cached file


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """``path`` itself, or for a ``gs://`` file a local temporary copy of it (removed after
    the block): what the loaders, which read local files, are given."""
    if not _remote(path):
        yield path
        return
    from etils import epath

    with tempfile.TemporaryDirectory(prefix="isnet_jax_weights-") as local:
        copy = os.path.join(local, epath.Path(path).name)
        try:
            with epath.Path(path).open("rb") as src, open(copy, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        except FileNotFoundError:
            raise errors.MissingFileError(f"{path} does not exist; check the path") from None
        yield copy


# ---------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """Bytes, rate and time left of a download, on stderr.

    On a terminal: one line redrawn at most 4 times a second. Elsewhere (a batch job's log, a
    pod's output) redrawing makes one endless line, so a file of at least 32 MB gets one line
    per tenth (11 at most), enough to see a stalled download; a smaller one takes seconds and
    gets none.
    """

    _LARGE = 32 << 20

    def __init__(self, label: str, total: int | None, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.label, self.total = label, total
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = self.tty or (total or 0) >= self._LARGE
        self.start = self.last = time.monotonic()
        self.next_tenth = 1
        if self.enabled and not self.tty:
            self._line(0, time.monotonic())

    def update(self, received: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last >= 0.25:
                self.last = now
                self._line(received, now)
        elif self.total and received * 10 >= self.next_tenth * self.total:
            self.next_tenth = received * 10 // self.total + 1
            self._line(received, now)

    def done(self, received: int) -> None:
        if self.enabled and self.tty:
            self._line(received, time.monotonic(), end="\n")

    def _line(self, received: int, now: float, end: str = "") -> None:
        elapsed = max(now - self.start, 1e-6)
        rate = received / elapsed
        text = f"{self.label}: {received / 1e6:.1f}"
        if self.total:
            text += f" of {self.total / 1e6:.1f} MB ({100 * received // self.total}%)"
            left = (self.total - received) / rate if rate > 0 else None
            if left is not None and received < self.total:
                text += f", {rate / 1e6:.1f} MB/s, {int(left) // 60}:{int(left) % 60:02d} left"
        else:
            text += f" MB, {rate / 1e6:.1f} MB/s"
        if self.tty:
            self.stream.write(f"\r{text}\033[K{end}")
        else:
            self.stream.write(f"downloading {text}\n")
        self.stream.flush()
