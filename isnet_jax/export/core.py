"""The export's core, shared by every format (``isnet_jax.export`` re-exports its public names):
the inpainting function every format holds, the input shapes an export accepts, and the folder
with its ``export.json``, built beside ``output`` and renamed into place when complete."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isnet_jax import atomic, errors, masks
from isnet_jax.models import MULTIPLE
from isnet_jax.models.layers import Conv

FORMATS = ("stablehlo", "savedmodel", "tflite", "onnx")
META_FILE = "export.json"
MODEL_FILES = {
    "stablehlo": "inpaint.stablehlo",
    "savedmodel": "saved_model.pb",
    "tflite": "inpaint.tflite",
    "onnx": "inpaint.onnx",
}
INPUTS = ("image", "mask")
OUTPUT = "composite"


@dataclasses.dataclass(frozen=True)
class Shape:
    """The input shape an export accepts: ``None`` leaves a dimension dynamic."""

    batch: int | None = None
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        if self.batch is not None and self.batch < 1:
            raise errors.ConfigError(f"--batch must be at least 1, got {self.batch}")
        for name in ("height", "width"):
            n = getattr(self, name)
            if n is not None and (n <= 0 or n % MULTIPLE):
                raise errors.ConfigError(
                    f"--{name} must be a positive multiple of {MULTIPLE} (four 2x "
                    f"down-samplings), got {n}; try {max(MULTIPLE, round(n / MULTIPLE) * MULTIPLE)}"
                )

    @property
    def fixed(self) -> bool:
        return None not in (self.batch, self.height, self.width)

    def dims(self, channels: int) -> list[int | None]:
        return [self.batch, self.height, self.width, channels]

    def describe(self) -> str:
        def dim(n, name):
            return name if n is None else str(n)

        return (f"({dim(self.batch, 'B')}, {dim(self.height, 'H')}, {dim(self.width, 'W')}, "
                "3|1)")


# What a fixed-shape format gets when no size is given: one 256 x 256 image, the training size.
FIXED_DEFAULT = Shape(1, 256, 256)
FIXED_SHAPE_FORMATS = ("tflite",)


def shape_for(fmt: str, shape: Shape | None) -> Shape:
    """``shape`` completed for ``fmt``: a fixed-shape format fills what is unset from
    ``FIXED_DEFAULT``."""
    shape = shape or Shape()
    if fmt in FIXED_SHAPE_FORMATS:
        shape = Shape(*(d if d is not None else f
                        for d, f in zip(dataclasses.astuple(shape),
                                        dataclasses.astuple(FIXED_DEFAULT), strict=True)))
    return shape


# --------------------------------------------------------------------------------------------
# The function every format holds
# --------------------------------------------------------------------------------------------


def fold_spectral_norm(generator: nnx.Module) -> nnx.Module:
    """A copy of ``generator`` whose spectrally normalised convs are plain convs holding
    ``W / sigma`` (eval mode: sigma from the stored ``u``, ``v``, no power iteration).

    Its eval-mode forward equals the original's (the same kernel, computed once instead of at
    every call); it has nothing left to train or iterate.
    """
    folded = nnx.clone(generator)
    for _, module in nnx.iter_modules(folded):
        if isinstance(module, Conv) and module.spectral_norm:
            module.kernel = nnx.Param(module.normalized_kernel(train=False))
            module.spectral_norm = False
            del module.u, module.v
    return folded


def inpaint_function(generator: nnx.Module) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``inpaint(image, mask) -> composite`` (see ``isnet_jax.export``) as a pure JAX function
    of its two inputs: the folded weights are constants of it."""
    graphdef, state = nnx.split(fold_spectral_norm(generator))

    def inpaint(image: jax.Array, mask: jax.Array) -> jax.Array:
        image = image.astype(jnp.float32)
        mask = mask.astype(jnp.float32)
        # As the release and Inpainter: the network sees the image with its holes zeroed.
        prediction = nnx.merge(graphdef, state)(image * mask, train=False)
        return masks.composite(image, mask, prediction.astype(jnp.float32))

    return inpaint


def folded_weights(generator: nnx.Module) -> dict[str, np.ndarray]:
    """Every parameter of the folded generator as a numpy array, keyed by its dotted path
    (``stages.1.up1.layers.0.conv.kernel``)."""
    state = nnx.state(fold_spectral_norm(generator))
    return {".".join(map(str, path)): np.asarray(v[...])
            for path, v in nnx.to_flat_state(state)}


# --------------------------------------------------------------------------------------------
# Writing a folder
# --------------------------------------------------------------------------------------------


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise errors.ConfigError(
            f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def check_output(output: pathlib.Path, overwrite: bool) -> None:
    """Refuses an ``output`` that exists (unless ``overwrite``) or is a file."""
    if output.exists() and not output.is_dir():
        raise errors.OutputExistsError(
            f"--output {output} is a file; give a folder path for the export")
    if output.exists() and not overwrite:
        raise errors.OutputExistsError(
            f"--output {output} exists; pass --overwrite to replace it, or choose a new folder")


# Each format's writer ``write(generator, folder, shape) -> details for export.json``, imported
# on use: each format's dependencies are optional (the export extra).
_WRITERS = {
    "stablehlo": ("stablehlo", "write"),
    "savedmodel": ("tf", "write_savedmodel"),
    "tflite": ("tf", "write_tflite"),
    "onnx": ("onnx_graph", "write"),
}


def _writer(fmt: str) -> Callable[..., dict[str, Any]]:
    module, name = _WRITERS[fmt]
    return getattr(importlib.import_module(f"isnet_jax.export.{module}"), name)


def export(
    generator: nnx.Module,
    fmt: str,
    output: str | pathlib.Path,
    *,
    shape: Shape | None = None,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Writes ``generator``'s inpainting function in format ``fmt`` to the folder ``output``.

    Args:
      generator: an ISNet generator (``onnx`` needs ``isnet``; the others take any generator
        of ``isnet_jax.models``), in eval mode as restored.
      fmt: one of ``FORMATS``.
      shape: fixed dimensions; unset ones stay dynamic (TFLite: ``FIXED_DEFAULT`` fills them).
      overwrite: replace an existing ``output`` folder (only once the new one is complete).
      meta: what to record about the source in ``export.json`` (``checkpoint.restore_generator``'s
        meta: generator, blocks, step...).
    Returns the folder written. Raises ``errors.UserError`` for a mistake in the arguments,
    before anything is written.
    """
    check_format(fmt)
    output = pathlib.Path(output)
    check_output(output, overwrite)
    shape = shape_for(fmt, shape)
    write = _writer(fmt)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic.written(output, folder=True) as partial:  # replaces output (overwrite) when done
        details = write(generator, partial, shape)
        record = {
            "format": fmt,
            "model": MODEL_FILES[fmt],
            "function": "composite = inpaint(image, mask)",
            "inputs": {
                "image": {"shape": shape.dims(3), "dtype": "float32",
                          "meaning": "RGB in [0, 1], NHWC"},
                "mask": {"shape": shape.dims(1), "dtype": "float32",
                         "meaning": "1 = known pixel, 0 = hole"},
            },
            "output": {"name": OUTPUT, "shape": shape.dims(3), "dtype": "float32",
                       "meaning": "the prediction in the holes, the image where known"},
            "size_multiple": MULTIPLE,
            "source": _jsonable(meta or {}),
            **details,
        }
        (partial / META_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return output


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
            for k, v in meta.items()}


def export_checkpoint(
    checkpoint_path: str | pathlib.Path,
    fmt: str,
    output: str | pathlib.Path,
    *,
    step: int | None = None,
    shape: Shape | None = None,
    overwrite: bool = False,
) -> pathlib.Path:
    """``export`` of the generator in a training workdir, its ``checkpoints/`` folder or a
    folder written by ``python -m isnet_jax.convert`` (latest step unless ``step``).

    The arguments are checked before the checkpoint is read, and the checkpoint before anything
    is written."""
    from isnet_jax import checkpoint

    check_format(fmt)
    output = pathlib.Path(output)
    check_output(output, overwrite)
    shape_for(fmt, shape)
    generator, meta = checkpoint.restore_generator(checkpoint_path, step)
    meta = {**meta, "checkpoint": str(checkpoint_path)}
    return export(generator, fmt, output, shape=shape, overwrite=overwrite, meta=meta)


def read_meta(folder: str | pathlib.Path) -> dict[str, Any]:
    """An export folder's ``export.json``."""
    return json.loads((pathlib.Path(folder) / META_FILE).read_text())
