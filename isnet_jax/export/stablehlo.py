"""StableHLO through ``jax.export``: a serialised, versioned module any JAX program runs.

    exported = jax.export.deserialize(open("DIR/inpaint.stablehlo", "rb").read())
    composite = exported.call(image, mask)

The program needs jax only (not isnet_jax, not flax). The module is lowered for CPU, CUDA and
TPU at once; batch, height and width are symbolic (``b``, ``16*h``, ``16*w``) unless fixed.
XLA-based runtimes other than JAX (IREE, PJRT plugins) read the same StableHLO bytecode
(``exported.mlir_module_serialized``).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from isnet_jax.export import core
from isnet_jax.models import MULTIPLE

PLATFORMS = ("cpu", "cuda", "tpu")


def input_specs(shape: core.Shape) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """The two inputs' abstract shapes, symbolic where ``shape`` leaves a dimension open
    (height and width as ``16 * h``: the export only accepts multiples of 16)."""
    b, h, w = jax.export.symbolic_shape("b, h, w")
    dims = (
        shape.batch if shape.batch is not None else b,
        shape.height if shape.height is not None else MULTIPLE * h,
        shape.width if shape.width is not None else MULTIPLE * w,
    )
    return (jax.ShapeDtypeStruct((*dims, 3), jnp.float32),
            jax.ShapeDtypeStruct((*dims, 1), jnp.float32))


def export(generator: nnx.Module, shape: core.Shape) -> jax.export.Exported:
    fn = jax.jit(core.inpaint_function(generator))
    return jax.export.export(fn, platforms=PLATFORMS)(*input_specs(shape))


def write(generator: nnx.Module, folder: pathlib.Path, shape: core.Shape) -> dict[str, Any]:
    exported = export(generator, shape)
    (folder / core.MODEL_FILES["stablehlo"]).write_bytes(exported.serialize())
    return {
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "jax_version": jax.__version__,
        "load": "jax.export.deserialize(open(PATH, 'rb').read()).call(image, mask)",
    }
