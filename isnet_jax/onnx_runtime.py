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
do). It is written once per checkpoint content to ``<cache root>/onnx/<key>.onnx`` (the cache
root of ``compilation_cache``), the key a SHA-256 of the generator's weights, their names and
shapes, and the exporter's opset: a retrained or different checkpoint gets its own file,
the same weights from another folder find theirs. The ``MAX_MODELS`` most recently used
files are kept.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile

import jax
import numpy as np
from flax import nnx

from isnet_jax import compilation_cache, errors, extras

RUNTIMES = ("auto", "jax", "onnx")
EXTRA = "export"
FOLDER = "onnx"
MAX_MODELS = 4
PREDICTION = "prediction"


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise errors.ConfigError(
            f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def usable() -> str | None:
    """Why ``auto`` cannot run onnxruntime here, or None when it can."""
    if jax.default_backend() != "cpu":
        return f"JAX runs on {jax.default_backend()}"
    missing = [m for m in ("onnxruntime", "onnx") if not extras.installed(m)]
    if missing:
        return f"{' and '.join(missing)} not installed ({extras.pip_install(EXTRA)})"
    return None


def content_key(generator: nnx.Module) -> str:
    """SHA-256 of what the ONNX graph is made from: every weight (name, shape, dtype, bytes),
    the generator's class and the exporter's opset."""
    from isnet_jax.export import onnx_graph

    digest = hashlib.sha256(f"{type(generator).__name__} opset {onnx_graph.OPSET}".encode())
    for path, value in jax.tree_util.tree_leaves_with_path(nnx.state(generator)):
        array = np.ascontiguousarray(jax.device_get(value))
        digest.update(f"{jax.tree_util.keystr(path)} {array.shape} {array.dtype}".encode())
        digest.update(array.tobytes())
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


def cached_model(generator: nnx.Module, folder: pathlib.Path | None = None) -> pathlib.Path:
    """The ONNX file of ``generator`` in ``folder`` (default ``<cache root>/onnx``): written
    if missing (beside it, then renamed: a run killed half-way leaves no broken file)."""
    import onnx

    from isnet_jax import export
    from isnet_jax.export import onnx_graph

    folder = folder or compilation_cache.cache_root() / FOLDER
    path = folder / f"{content_key(generator)}.onnx"
    if path.exists():
        os.utime(path)  # recently used: kept by the pruning below
        return path
    model = _with_prediction(onnx_graph.build(generator, export.Shape()))
    folder.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial", dir=folder)
    os.close(fd)
    try:
        os.chmod(partial, 0o644)  # as a file the user saves (mkstemp's is 0o600)
        onnx.save(model, partial)
        os.replace(partial, path)
    except BaseException:
        pathlib.Path(partial).unlink(missing_ok=True)
        raise
    for old in sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime)[:-MAX_MODELS]:
        old.unlink(missing_ok=True)
    return path


class OnnxGenerator:
    """``generator(images * known)`` in onnxruntime's CPU provider: float32 NHWC in and out,
    any batch and any height and width that are multiples of 16."""

    def __init__(self, generator: nnx.Module, folder: pathlib.Path | None = None) -> None:
        extras.require("onnxruntime", EXTRA, "--runtime onnx")
        extras.require("onnx", EXTRA, "--runtime onnx")
        import onnxruntime as ort

        self.path = cached_model(generator, folder)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # its warnings about unused initialisers concern no user
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray, known: np.ndarray) -> np.ndarray:
        (prediction,) = self.session.run(
            [PREDICTION], {"image": np.ascontiguousarray(images, np.float32),
                           "mask": np.ascontiguousarray(known, np.float32)})
        return prediction
