"""The generator in onnxruntime: what ``Inpainter`` runs on a CPU when it can.

At the sizes crop mode and the web page run (256 px), onnxruntime runs our ONNX export of the
4-block generator 1.64x as fast as XLA:CPU (issue 29, ``python -m isnet_jax.benchmarks.export``
on a quiet 2-core Xeon: 0.82 s against 1.34 s a forward; SavedModel 0.98, TFLite 0.99,
StableHLO-in-JAX 1.23), and its first forward needs no compilation. ``runtime``:

  auto  onnxruntime when JAX's default backend is the CPU, onnxruntime and onnx are installed
        and the ONNX export writes this generator (ISNet's); otherwise JAX (XLA), which is
        what runs on a GPU or TPU
  jax   XLA, through ``jax.jit``
  onnx  onnxruntime; a ``MissingExtraError`` if it is not installed

The graph is ``export.onnx_graph``'s (spectral norm folded, the parity tests hold it to the
JAX model), with the generator's raw prediction as a second output ``prediction``: what
``Inpainter`` pastes (resize mode up-samples the whole prediction, so the composite would not
do). It is written once to ``<cache root>/onnx/<key>.onnx`` (the cache root of
``compilation_cache``); the ``MAX_MODELS`` most recently used files are kept. Two keys:

- a checkpoint's (``checkpoint_key``, what ``Inpainter.from_checkpoint`` uses): a SHA-256 of
  every file of the step's ``meta`` and ``generator`` items (path, size and bytes), the
  exporter's opset and ``KEY_VERSION``. Orbax writes a step once and never rewrites it, so the
  same bytes are the same weights; any change to those files (retrained, re-converted, copied
  over, truncated) is another key, hence a new export, never a stale one. A folder copied
  elsewhere keeps its key. The checkpoint's ``meta`` travels in the file (``META_PROPERTY``),
  so that a run that finds its export (``OnnxGenerator.cached``) reads no Orbax checkpoint and
  imports neither JAX nor flax nor orbax: Python, numpy, PIL and onnxruntime are all it starts.
- a generator's (``content_key``, for ``Inpainter(generator)``): a SHA-256 of its weights, their
  names and shapes, and the opset: the same weights from anywhere find their file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from isnet_jax import atomic, compilation_cache, errors, extras

if TYPE_CHECKING:
    from flax import nnx

RUNTIMES = ("auto", "jax", "onnx")
EXTRA = "export"
FOLDER = "onnx"
MAX_MODELS = 4
PREDICTION = "prediction"
# export.onnx_graph.OPSET, repeated here so that a cached export is found without importing
# the exporter (JAX and flax); tests/test_onnx_runtime.py holds the two equal.
OPSET = 17
# Bumped when what a checkpoint key covers changes: older cached files are then never found.
KEY_VERSION = 1
META_PROPERTY = "isnet_jax.checkpoint_meta"  # the ONNX metadata entry holding meta (JSON)
ITEMS = ("meta", "generator")  # checkpoint.META, checkpoint.GENERATOR: what the export is made of


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise errors.ConfigError(
            f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def jax_backend() -> str:
    """JAX's default backend; without importing JAX when it can only be the CPU: JAX is not
    imported yet and ``JAX_PLATFORMS`` names the CPU first, or it is unset and nothing that
    gives JAX another backend is installed (``accelerator_hints``)."""
    if "jax" not in sys.modules:
        platforms = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME")
        if platforms and platforms.split(",")[0].strip().lower() == "cpu":
            return "cpu"
        if not platforms and not accelerator_hints():
            return "cpu"
    import jax

    return jax.default_backend()


@functools.cache
def accelerator_hints() -> tuple[str, ...]:
    """What could give JAX a backend other than the CPU (none: the CPU is all it has), looked
    up once a process where JAX looks (``jax._src.xla_bridge``): PJRT plugins (the
    ``jax_plugins`` namespace package and entry points: CUDA, ROCm, Metal),
    ``PJRT_NAMES_AND_LIBRARY_PATHS``, and libtpu (the package, ``TPU_LIBRARY_PATH``, or a TPU
    VM's ``/dev/accel*``)."""
    hints = [e.value for e in importlib.metadata.entry_points(group="jax_plugins")]
    hints += [name for name in ("jax_plugins", "libtpu") if extras.installed(name)]
    hints += [v for v in ("PJRT_NAMES_AND_LIBRARY_PATHS", "TPU_LIBRARY_PATH") if os.environ.get(v)]
    hints += [str(p) for p in pathlib.Path("/dev").glob("accel*")]
    return tuple(hints)


def usable() -> str | None:
    """Why ``auto`` cannot run onnxruntime here, or None when it can."""
    backend = jax_backend()
    if backend != "cpu":
        return f"JAX runs on {backend}"
    missing = [m for m in ("onnxruntime", "onnx") if not extras.installed(m)]
    if missing:
        return f"{' and '.join(missing)} not installed ({extras.pip_install(EXTRA)})"
    return None


def content_key(generator: nnx.Module) -> str:
    """SHA-256 of what the ONNX graph is made from: every weight (name, shape, dtype, bytes),
    the generator's class and the exporter's opset."""
    import jax
    from flax import nnx

    digest = hashlib.sha256(f"{type(generator).__name__} opset {OPSET}".encode())
    for path, value in jax.tree_util.tree_leaves_with_path(nnx.state(generator)):
        array = np.ascontiguousarray(jax.device_get(value))
        digest.update(f"{jax.tree_util.keystr(path)} {array.shape} {array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def step_folder(path: str | os.PathLike, step: int | None = None) -> pathlib.Path | None:
    """The local step folder ``checkpoint.resolve`` chooses for ``path`` and ``step``, found
    without Orbax (the same places, in the same order: ``path``, ``path/checkpoints``, or a
    step folder's parent; the newest step unless ``step``); None when there is none, or for a
    bucket (``gs://``): the caller then asks Orbax, which says what is wrong."""
    if "://" in str(path):
        return None
    path = pathlib.Path(path)
    candidates = [path, path / "checkpoints"]
    if path.name.isdigit():
        candidates.insert(0, path.parent)
        step = int(path.name) if step is None else step
    for directory in candidates:
        try:
            steps = {int(p.name): p for p in directory.iterdir()
                     if p.name.isdigit() and p.is_dir()}
        except OSError:  # not a folder, or not readable: as resolve, try the next
            continue
        if steps:
            return steps.get(max(steps) if step is None else step)
    return None


def checkpoint_key(folder: pathlib.Path) -> str | None:
    """SHA-256 of a step folder's ``ITEMS``: each file's path in the step, size and bytes, in
    path order, after ``KEY_VERSION`` and the opset; None if an item is not there."""
    digest = hashlib.sha256(f"checkpoint files {KEY_VERSION} opset {OPSET}".encode())
    for item in ITEMS:
        if not (folder / item).is_dir():
            return None
        for file in sorted(p for p in (folder / item).rglob("*") if p.is_file()):
            with open(file, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                # The size ahead of the bytes: no two file lists hash the same stream.
                digest.update(f"{file.relative_to(folder).as_posix()}\0{size}\0".encode())
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
    return digest.hexdigest()


def _with_prediction(model):
    """``model`` (``onnx_graph.build``'s) with the generator's output as ``PREDICTION`` too:
    the first input of the product the composite's ``Add`` sums (``prediction * (1 - mask)``)."""
    from onnx import TensorProto, helper

    from isnet_jax.export import OUTPUT

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    product = producers[producers[OUTPUT].input[0]]
    graph.node.append(helper.make_node("Identity", [product.input[0]], [PREDICTION],
                                       name="Identity_prediction"))
    dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    graph.output.append(helper.make_tensor_value_info(PREDICTION, TensorProto.FLOAT, dims))
    return model


def _folder(folder: pathlib.Path | None) -> pathlib.Path:
    return folder or compilation_cache.cache_root() / FOLDER


def cached_model(
    generator: nnx.Module,
    folder: pathlib.Path | None = None,
    *,
    key: str | None = None,
    meta: dict[str, Any] | None = None,
) -> pathlib.Path:
    """The ONNX file of ``generator`` in ``folder`` (default ``<cache root>/onnx``), named by
    ``key`` (default ``content_key(generator)``): written if missing, with ``meta`` in it
    (beside it, then renamed: a run killed half-way leaves no broken file)."""
    import onnx

    from isnet_jax import export
    from isnet_jax.export import onnx_graph

    folder = _folder(folder)
    path = folder / f"{key or content_key(generator)}.onnx"
    if path.exists():
        os.utime(path)  # recently used: kept by the pruning below
        return path
    model = _with_prediction(onnx_graph.build(generator, export.Shape()))
    if meta is not None:
        onnx.helper.set_model_props(model, {META_PROPERTY: json.dumps(meta)})
    folder.mkdir(parents=True, exist_ok=True)
    with atomic.written(path) as partial:
        onnx.save(model, str(partial))
    for old in sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime)[:-MAX_MODELS]:
        old.unlink(missing_ok=True)
    return path


class OnnxGenerator:
    """``generator(images * known)`` in onnxruntime's CPU provider: float32 NHWC in and out,
    any batch and any height and width that are multiples of 16. ``meta``: the checkpoint's,
    as the file holds it (empty for a ``content_key`` file)."""

    def __init__(self, path: pathlib.Path) -> None:
        extras.require("onnxruntime", EXTRA, "--runtime onnx")
        import onnxruntime as ort

        self.path = path
        options = ort.SessionOptions()
        options.log_severity_level = 3  # its warnings about unused initialisers concern no user
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta: dict[str, Any] = json.loads(props.get(META_PROPERTY, "{}"))

    @classmethod
    def export(
        cls,
        generator: nnx.Module,
        folder: pathlib.Path | None = None,
        *,
        key: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> OnnxGenerator:
        """Runs ``generator``'s ONNX export (``cached_model``: made once per key)."""
        extras.require("onnxruntime", EXTRA, "--runtime onnx")
        extras.require("onnx", EXTRA, "--runtime onnx")
        return cls(cached_model(generator, folder, key=key, meta=meta))

    @classmethod
    def cached(cls, key: str, folder: pathlib.Path | None = None) -> OnnxGenerator | None:
        """The export made earlier under ``key`` with a checkpoint's meta in it, or None (not
        made yet, or pruned by another run meanwhile: the caller then makes it)."""
        path = _folder(folder) / f"{key}.onnx"
        if not path.exists() or not extras.installed("onnxruntime"):
            return None
        try:
            found = cls(path)
            os.utime(path)  # recently used: kept by cached_model's pruning
        except Exception:  # noqa: BLE001 - onnxruntime's load errors share no base class
            # Gone since the check, say: the caller's export path makes it again, or reports
            # what is wrong with it.
            return None
        return found if found.meta else None

    def __call__(self, images: np.ndarray, known: np.ndarray) -> np.ndarray:
        (prediction,) = self.session.run(
            [PREDICTION], {"image": np.ascontiguousarray(images, np.float32),
                           "mask": np.ascontiguousarray(known, np.float32)})
        return prediction
