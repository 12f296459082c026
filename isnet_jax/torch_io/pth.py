"""Reads (and writes) PyTorch ``.pth`` files without PyTorch.

``torch.save`` (PyTorch >= 1.6) writes a zip archive: ``<name>/data.pkl`` is a protocol-2 pickle
of the saved object in which every tensor is a call to ``torch._utils._rebuild_tensor_v2`` on a
storage that the pickle names by a persistent id ``('storage', torch.FloatStorage, key, device,
numel)``; the storage's raw bytes are the record ``<name>/data/<key>``, in the byte order that
``<name>/byteorder`` names (little endian when absent).

Unpickling runs whatever callables the pickle names, so a weights file from the internet is
untrusted code. The reader here resolves only the handful of globals that tensors, storages and
ordered dicts need and refuses every other one before anything is called, much like
``torch.load(weights_only=True)``. Tensors come back as numpy arrays with their storage's dtype.

Files written before PyTorch 1.6 (``_use_new_zipfile_serialization=False``, and every model-zoo
file of that era: torchvision's ``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``,
``vgg19-dcbb9e9d.pth``, lpips' ``weights/v0.1/*.pth``) are a plain sequence instead: the pickled
magic number, protocol version 1001 and a system-info dict, then the object's pickle (persistent
ids ``('storage', type, key, location, numel, view)``), then the pickled list of storage keys,
then each storage as an int64 element count followed by its raw bytes. The same restricted
unpickler reads them.

Only when a file is valid but beyond this reader (the tar format of PyTorch < 0.4, a tensor type
it does not know) and torch is importable, it falls back to ``torch.load(weights_only=True)``
and logs so.
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import os
import pathlib
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from isnet_jax import errors

_log = logging.getLogger(__name__)

# torch.save's pre-1.6 format opens with this number, pickled.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_STORAGE_NAMES = {dtype: name for name, dtype in _STORAGE_DTYPES.items()}

# Where torch.save writes each storage: aligned so that torch.load(mmap=True) can map it.
_ALIGNMENT = 64


class PthError(errors.UserError, ValueError):
    """A ``.pth`` (or converted ``.npz``) weights file that cannot be (or must not be) loaded:
    corrupt, truncated, hostile, or another network's; the message names the file."""


class _Unsupported(Exception):
    """A file that looks valid but needs more than this reader knows (torch may read it)."""


class _Refused(Exception):
    """The pickle asks for something a weights file never needs."""


# ---------------------------------------------------------------------------------------------
# Objects the unpickler hands to the pickle instead of torch's. __slots__ and a refusing
# __setstate__ keep a crafted pickle's BUILD opcode from rewriting them.


class _Sealed:
    __slots__ = ()

    def __setstate__(self, state):
        raise _Refused(f"it tries to set the state of a {type(self).__name__.lstrip('_')} object")


class _StorageType(_Sealed):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype


class _TensorType(_Sealed):
    """``torch.Tensor`` / ``torch.nn.Parameter`` as ``_rebuild_from_type_v2`` names them."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Storage(_Sealed):
    """A flat typed buffer. A legacy file's bytes follow the pickle, so ``data`` may be filled
    after the tensors that view it were unpickled; a legacy storage view is a slice of its root."""

    __slots__ = ("dtype", "numel", "data", "root", "root_offset", "views")

    def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None = None,
                 root: _Storage | None = None, root_offset: int = 0):
        self.dtype = dtype
        self.numel = numel
        self.data = data
        self.root = root
        self.root_offset = root_offset
        self.views: dict[tuple, _Tensor] = {}

    def array(self) -> np.ndarray:
        if self.root is not None:
            return self.root.array()[self.root_offset : self.root_offset + self.numel]
        if self.data is None:
            raise _Refused("a tensor uses a storage whose bytes are not in the file")
        return self.data


class _Tensor(_Sealed):
    """A strided view of a storage, copied out when first asked for (see ``_Storage``)."""

    __slots__ = ("storage", "offset", "size", "stride", "_array")

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            flat = self.storage.array()
            if 0 in self.size:
                self._array = np.zeros(self.size, flat.dtype)
            else:
                view = np.lib.stride_tricks.as_strided(
                    flat[self.offset :], shape=self.size,
                    strides=[s * flat.itemsize for s in self.stride], writeable=False,
                )
                self._array = np.array(view, order="C")
        return self._array


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _Refused(f"a tensor's {what} is {value!r}, not a tuple of non-negative ints")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _Tensor:
    """torch's ``_rebuild_tensor`` / ``_rebuild_tensor_v2``: a strided view of a storage.

    The same view of the same storage gives the same array, so tensors that torch saved as one
    (a module registered under two names) stay one object.
    """
    if not isinstance(storage, _Storage):
        raise _Refused(f"a tensor is built on a {type(storage).__name__}, not a storage")
    (offset,) = _ints((storage_offset,), "storage offset")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise _Refused(f"a tensor's size {size} and stride {stride} differ in length")
    view_key = (offset, size, stride)
    if view_key in storage.views:
        return storage.views[view_key]
    # as_strided reads raw memory: every element of the view must lie inside the storage.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if 0 not in size and last >= storage.numel:
        raise _Refused(
            f"a tensor of size {size}, stride {stride} at offset {offset} reaches element {last} "
            f"of a storage of {storage.numel}"
        )
    return storage.views.setdefault(view_key, _Tensor(storage, offset, size, stride))


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, state=None) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise _Refused(f"a parameter wraps a {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state) -> _Tensor:
    if not isinstance(new_type, _TensorType):
        raise _Refused(f"a tensor is rebuilt as a {type(new_type).__name__}")
    if func not in (_rebuild_tensor, _rebuild_parameter) or not isinstance(args, tuple):
        raise _Refused("a tensor is rebuilt by something other than torch's tensor functions")
    return func(*args)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorType("Tensor"),
    ("torch.nn.parameter", "Parameter"): _TensorType("Parameter"),
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED``; storages come from ``storage(pid)``."""

    def __init__(self, stream: io.BufferedIOBase, storage: Callable[[Any], _Storage] | None):
        super().__init__(stream)
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is not None:
            return found
        if module == "torch" or module.startswith("torch."):
            raise _Unsupported(
                f"its pickle asks for {module}.{name}, which this reader does not know"
            )
        raise _Refused(f"its pickle asks for {module}.{name}, which a weights file never needs")

    def persistent_load(self, pid: Any) -> _Storage:
        if self._storage is None:
            raise _Refused(f"its header pickle names a persistent object {pid!r}")
        return self._storage(pid)


def _storage_type(storage_type: Any, key: Any, numel: Any) -> np.dtype:
    if not isinstance(storage_type, _StorageType):
        raise _Refused(f"a storage has type {storage_type!r}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise _Refused(f"a storage is named {key!r} with {numel!r} elements")
    return storage_type.dtype


class _ZipStorages:
    """torch.save's zip format: storage ``key`` is the record ``<prefix>/data/<key>``."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        self._archive = archive
        self._prefix = prefix
        self._big_endian = big_endian
        self._storages: dict[str, _Storage] = {}

    def __call__(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"its pickle names a persistent object {pid!r}, not a storage")
        _, storage_type, key, _location, numel = pid
        dtype = _storage_type(storage_type, key, numel)
        if key not in self._storages:
            record = f"{self._prefix}/data/{key}"
            try:
                raw = self._archive.read(record)
            except KeyError:
                raise PthError(f"record {record} is missing from the archive") from None
            if len(raw) < numel * dtype.itemsize:
                raise PthError(
                    f"record {record} holds {len(raw)} bytes, less than {numel} x {dtype.name}"
                )
            array = np.frombuffer(raw, dtype.newbyteorder(">" if self._big_endian else "<"), numel)
            self._storages[key] = _Storage(dtype, numel, array.astype(dtype.newbyteorder("=")))
        return self._storages[key]


class _LegacyStorages:
    """The pre-1.6 format: storages are declared by the pickle and filled after it."""

    def __init__(self):
        self.roots: dict[str, _Storage] = {}
        self._views: dict[str, _Storage] = {}

    def __call__(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise _Refused(f"its pickle names a persistent object {pid!r}, not a storage")
        _, storage_type, key, _location, numel, view = pid
        dtype = _storage_type(storage_type, key, numel)
        root = self.roots.setdefault(key, _Storage(dtype, numel))
        if root.dtype != dtype or root.numel != numel:
            raise _Refused(f"storage {key} is declared twice with different types or sizes")
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise _Refused(f"storage {key} has a view {view!r}")
        view_key, offset, view_numel = view
        (offset, view_numel) = _ints((offset, view_numel), "storage view")
        if offset + view_numel > numel:
            raise _Refused(f"a view of storage {key} reaches past its {numel} elements")
        return self._views.setdefault(
            str(view_key), _Storage(dtype, view_numel, root=root, root_offset=offset)
        )


# ---------------------------------------------------------------------------------------------
# Reading


def load_pth(path: str | os.PathLike) -> Any:
    """Loads a ``torch.save`` file as Python containers of numpy arrays.

    Returns what was saved with every tensor replaced by a numpy array of its dtype (dicts and
    ordered dicts become plain dicts, insertion order kept). Raises ``errors.MissingFileError``
    (a ``FileNotFoundError``) for a missing file and ``PthError`` for anything that is not a
    loadable weights file.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise errors.MissingFileError(f"{path} does not exist; check the path of the weights file")
    if path.is_dir():
        raise PthError(f"{path} is a folder, not a .pth file; pass the file inside it")
    try:
        return _read(path)
    except _Unsupported as unsupported:
        why = str(unsupported)
        try:
            import torch  # noqa: F401 - only to know whether the fallback exists
        except ImportError:
            raise PthError(
                f"cannot read {path}: {why}. Install PyTorch so that torch.load(weights_only=True) "
                "can read it, or re-save it with a current torch.save as a plain state dict"
            ) from None
        _log.warning("%s: %s; reading it with torch.load(weights_only=True) instead", path, why)
        return _torch_load(path)


def _read(path: pathlib.Path) -> Any:
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_HEAD))
    if not head:
        raise PthError(f"{path} is empty (0 bytes); download or copy the checkpoint again")
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and not head.startswith(_LEGACY_HEAD):
        if tarfile.is_tarfile(path):
            raise _Unsupported("it is in torch.save's tar format (PyTorch < 0.4)")
        if head.startswith(b"PK\x03\x04"):
            raise PthError(
                f"{path} is a truncated or corrupt zip archive (it starts as one but has no "
                "end); download or copy it again"
            )
        raise PthError(
            f"{path} is not a PyTorch checkpoint: torch.save writes zip archives or, before "
            "PyTorch 1.6, a sequence of pickles, and this is neither; pass the .pth file itself"
        )
    try:
        return _read_zip(path) if is_zip else _read_legacy(path)
    except PthError as e:
        if str(path) in str(e):
            raise
        raise PthError(f"{path} is corrupt: {e}; download or copy it again") from None
    except _Refused as e:
        raise PthError(f"refusing to load {path}: {e}; nothing was executed") from None
    except _Unsupported:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError) as e:
        raise PthError(
            f"{path} is corrupt or truncated ({e or type(e).__name__}); download or copy it again"
        ) from None
    except Exception as e:  # noqa: BLE001 - any other failure of a hostile or broken pickle
        raise PthError(
            f"{path} is corrupt: unpickling it failed with {type(e).__name__}: {e}; download or "
            "copy it again"
        ) from None


def _read_zip(path: pathlib.Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            npz = any(n.endswith(".npy") for n in names)
            what = "a NumPy .npz archive" if npz else "a zip archive"
            raise PthError(
                f"{path} is {what}, not a PyTorch checkpoint (torch.save puts exactly one "
                f"<name>/data.pkl inside; found {len(pickles)}); pass the .pth file itself"
            )
        prefix = pickles[0][: -len("/data.pkl")]
        big_endian = False
        if f"{prefix}/byteorder" in names:
            big_endian = archive.read(f"{prefix}/byteorder").strip() == b"big"
        storages = _ZipStorages(archive, prefix, big_endian)
        return _plain(_Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load())


_LEGACY_PROTOCOL = 1001


def _read_legacy(path: pathlib.Path) -> Any:
    stream = io.BytesIO(path.read_bytes())

    def header() -> Any:
        return _Unpickler(stream, None).load()

    if header() != _LEGACY_MAGIC:
        raise PthError(f"{path} does not start with torch.save's magic number; download or "
                       "copy it again")
    protocol = header()
    if protocol != _LEGACY_PROTOCOL:
        raise _Unsupported(f"it has legacy protocol version {protocol!r}, not {_LEGACY_PROTOCOL}")
    sys_info = header()
    if not isinstance(sys_info, dict):
        raise _Refused(f"its system-info header is a {type(sys_info).__name__}, not a dict")
    order = "<" if sys_info.get("little_endian", True) else ">"
    storages = _LegacyStorages()
    obj = _Unpickler(stream, storages).load()
    keys = header()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _Refused("its list of storage keys is not a list of strings")
    for key in keys:
        storage = storages.roots.get(key)
        if storage is None:
            raise _Refused(f"it stores bytes for storage {key}, which its pickle never uses")
        raw = stream.read(8)
        if len(raw) < 8:
            raise PthError(f"{path} is truncated: the bytes of storage {key} are missing; "
                           "download or copy it again")
        (numel,) = struct.unpack(order + "q", raw)
        if numel != storage.numel:
            raise PthError(f"{path} is corrupt: storage {key} holds {numel} elements, its "
                           f"tensors were saved with {storage.numel}; download or copy it again")
        nbytes = numel * storage.dtype.itemsize
        raw = stream.read(nbytes)
        if len(raw) < nbytes:
            raise PthError(f"{path} is truncated: storage {key} has {len(raw)} of its {nbytes} "
                           "bytes; download or copy it again")
        storage.data = np.frombuffer(raw, storage.dtype.newbyteorder(order)).astype(
            storage.dtype.newbyteorder("=")
        )
    return _plain(obj)


def _plain(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.array
    if isinstance(obj, _Storage):
        return obj.array()
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    raise _Refused(f"it holds a bare {type(obj).__name__.lstrip('_')} object, not weights")


def _torch_load(path: pathlib.Path) -> Any:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's own errors, reworded with the file name
        raise PthError(f"torch.load(weights_only=True) refused {path}: {e}") from None

    def plain(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.dtype == torch.bfloat16:
                return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            return x.numpy().copy()
        if isinstance(x, Mapping):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(plain(v) for v in x)
        return x

    return plain(obj)


# ---------------------------------------------------------------------------------------------
# Writing: the same layout torch.save produces, so torch.load (and the release) reads it.


class _PickleWriter:
    """Emits protocol-2 opcodes for dicts, lists, tuples, scalars and numpy arrays as tensors."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.storages: list[bytes] = []
        self.keys: dict[int, tuple[str, np.ndarray]] = {}  # id(array) -> storage key, array

    def _global(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode()

    def _ordered_dict(self) -> None:
        self._global("collections", "OrderedDict")
        self.out += b")R"

    def write(self, x: Any) -> None:
        out = self.out
        if x is None:
            out += b"N"
        elif isinstance(x, bool):
            out += b"\x88" if x else b"\x89"
        elif isinstance(x, int):
            if 0 <= x < 256:
                out += b"K" + bytes([x])
            elif 0 <= x < 65536:
                out += b"M" + struct.pack("<H", x)
            elif -(2**31) <= x < 2**31:
                out += b"J" + struct.pack("<i", x)
            else:
                raw = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
                out += b"\x8a" + bytes([len(raw)]) + raw
        elif isinstance(x, float):
            out += b"G" + struct.pack(">d", x)
        elif isinstance(x, str):
            raw = x.encode("utf-8")
            out += b"X" + struct.pack("<I", len(raw)) + raw
        elif isinstance(x, np.ndarray | np.generic):
            self._tensor(np.asarray(x))
        elif isinstance(x, Mapping):
            if isinstance(x, collections.OrderedDict):
                self._ordered_dict()
            else:
                out += b"}"
            if x:
                out += b"("
                for k, v in x.items():
                    self.write(k)
                    self.write(v)
                out += b"u"
        elif isinstance(x, list):
            out += b"]"
            if x:
                out += b"("
                for v in x:
                    self.write(v)
                out += b"e"
        elif isinstance(x, tuple):
            if 1 <= len(x) <= 3:
                for v in x:
                    self.write(v)
                out += b"\x85\x86\x87"[len(x) - 1 : len(x)]
            else:
                out += b"("
                for v in x:
                    self.write(v)
                out += b"t"
        else:
            raise TypeError(f"save_pth cannot write a {type(x).__name__}")

    def _tensor(self, array: np.ndarray) -> None:
        name = _STORAGE_NAMES.get(array.dtype.newbyteorder("="))
        if name is None:
            raise TypeError(f"save_pth cannot write arrays of dtype {array.dtype}")
        # One array under two names is one storage, as torch saves an aliased module.
        key, _ = self.keys.setdefault(id(array), (str(len(self.storages)), array))
        if int(key) == len(self.storages):
            little = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
            self.storages.append(little.tobytes())
        stride, step = [], 1
        for n in reversed(array.shape):
            stride.insert(0, step)
            step *= n
        self._global("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # the argument tuple, then the persistent id tuple
        self.write("storage")
        self._global("torch", name)
        self.write(key)
        self.write("cpu")
        self.write(int(array.size))
        self.out += b"tQ"
        self.write(0)
        self.write(tuple(int(n) for n in array.shape))
        self.write(tuple(stride))
        self.write(False)
        self._ordered_dict()
        self.out += b"tR"


def save_pth(obj: Any, path: str | os.PathLike) -> None:
    """Writes ``obj`` (nested dicts / lists of numpy arrays and scalars) as ``torch.save`` does.

    Arrays become tensors on the CPU; ``collections.OrderedDict`` stays one (as state dicts
    are). The archive has torch's records, each storage 64-byte aligned, so ``torch.load`` reads
    it, e.g. to hand weights trained here back to the PyTorch release.
    """
    path = pathlib.Path(path)
    writer = _PickleWriter()
    writer.write(obj)
    writer.out += b"."
    prefix = path.stem or "archive"
    digest = int.from_bytes(hashlib.sha1(bytes(writer.out)).digest(), "big")
    records = [
        ("data.pkl", bytes(writer.out)),
        (".format_version", b"1"),
        (".storage_alignment", str(_ALIGNMENT).encode()),
        ("byteorder", b"little"),
        *((f"data/{i}", raw) for i, raw in enumerate(writer.storages)),
        ("version", b"3\n"),
        (".data/serialization_id", str(digest).zfill(40)[:40].encode()),
    ]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, raw in records:
            info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            # Pad the local header's extra field so the record's bytes start on the alignment.
            start = archive.fp.tell() + 30 + len(info.filename.encode()) + 4
            pad = -start % _ALIGNMENT
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB", as torch writes
            archive.writestr(info, raw)
