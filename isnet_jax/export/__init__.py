"""Export a generator for deployment outside Python JAX: StableHLO, SavedModel, TFLite, ONNX.

    python -m isnet_jax.export --checkpoint CKPT --format stablehlo --output DIR

Python:

    from isnet_jax import export
    export.export_checkpoint("CKPT", "onnx", "DIR")           # or
    export.export(generator, "savedmodel", "DIR", meta={...})

Every format holds the same function, the whole inpainting step:

    composite = inpaint(image, mask)
      image      float32 (B, H, W, 3) in [0, 1], RGB (what is in the holes does not matter)
      mask       float32 (B, H, W, 1), 1 = known pixel, 0 = hole
      composite  float32 (B, H, W, 3): the generator's prediction in the holes, ``image``
                 exactly where ``mask`` is 1

H and W are multiples of 16. Spectral normalisation is folded into plain kernels once, at export
(eval mode: ``W / sigma`` from the stored power-iteration vectors), so no format carries ``u``,
``v`` or the power iteration. Batch, height and width stay dynamic unless ``Shape`` fixes them;
TFLite is exported at a fixed shape (``FIXED_DEFAULT``: mobile delegates plan for one).

Each export writes a folder: the model file(s) (``MODEL_FILES``) and ``export.json`` (what was
exported, from which checkpoint, the input and output names and shapes). The folder is built
beside ``output`` and renamed into place when complete: a failed export leaves nothing.

The shared core (the function every format holds, the folder, ``export.json``) is ``core``; the
formats live in submodules, each with its own optional dependencies (the ``export`` extra):
``stablehlo`` (jax.export), ``tf`` (SavedModel through jax2tf, TFLite converted from it),
``onnx_graph`` (the ONNX graph written with the onnx package from the folded weights). The
command line is ``__main__``.
"""

from isnet_jax.export.core import (
    FIXED_DEFAULT,
    FIXED_SHAPE_FORMATS,
    FORMATS,
    INPUTS,
    META_FILE,
    MODEL_FILES,
    OUTPUT,
    Shape,
    check_format,
    check_output,
    export,
    export_checkpoint,
    fold_spectral_norm,
    folded_weights,
    inpaint_function,
    read_meta,
    shape_for,
)

__all__ = [
    "FIXED_DEFAULT",
    "FIXED_SHAPE_FORMATS",
    "FORMATS",
    "INPUTS",
    "META_FILE",
    "MODEL_FILES",
    "OUTPUT",
    "Shape",
    "check_format",
    "check_output",
    "export",
    "export_checkpoint",
    "fold_spectral_norm",
    "folded_weights",
    "inpaint_function",
    "read_meta",
    "shape_for",
]
