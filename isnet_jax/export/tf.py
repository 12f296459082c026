"""TensorFlow SavedModel (TF Serving) through jax2tf, and TFLite converted from it.

SavedModel: signature ``serving_default`` with inputs ``image``, ``mask`` and output
``composite``; the folded weights are TF variables (the SavedModel's ``variables/``), the
computation is the JAX function serialised as StableHLO inside an ``XlaCallModule`` op, which
TensorFlow compiles with XLA (a TensorFlow about as new as the jax that wrote it: 2.21 with
jax 0.10.2 here). Batch, height and width stay
dynamic unless fixed.

TFLite: the same function at a fixed shape, converted by ``tf.lite.TFLiteConverter``, which
lowers the StableHLO to TFLite's built-in ops (CONV_2D, TANH, ...): no Flex (Select TF) ops, so
the plain LiteRT runtime (``ai_edge_litert``, or TFLite on Android / iOS) runs it. Signature
``serving_default``, inputs ``image``, ``mask``, output ``composite``.

Why the quick check of an earlier try was "far off" (max difference 1.0): it ran a randomly
initialised generator. Its spectral-norm vectors are random directions, not yet iterated, so
``sigma = u . W v`` is a random and often tiny number, the normalised kernels are huge and the
network saturates: float32 rounding differences between two runtimes flip pixels from 0 to 1.
A converted or trained generator is well conditioned, and the exports match JAX to about 1e-6.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

import jax
import numpy as np
from flax import nnx

from isnet_jax import extras, masks
from isnet_jax.export import core
from isnet_jax.models import MULTIPLE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up chatter, not our warnings


def _tf():
    return extras.import_tensorflow("the savedmodel and tflite exports")


def _polymorphic(shape: core.Shape, channels: int) -> str:
    b = "b" if shape.batch is None else str(shape.batch)
    h = f"{MULTIPLE}*h" if shape.height is None else str(shape.height)
    w = f"{MULTIPLE}*w" if shape.width is None else str(shape.width)
    return f"({b}, {h}, {w}, {channels})"


def inpaint_module(generator: nnx.Module, shape: core.Shape):
    """A ``tf.Module`` holding the folded weights as variables, and ``serving_default``."""
    tf = _tf()
    from jax.experimental import jax2tf

    graphdef, state = nnx.split(core.fold_spectral_norm(generator))
    leaves, treedef = jax.tree.flatten(state)

    def apply(weights, image, mask):
        g = nnx.merge(graphdef, jax.tree.unflatten(treedef, weights))
        return masks.composite(image, mask, g(image * mask, train=False))

    converted = jax2tf.convert(
        apply,
        polymorphic_shapes=[None, _polymorphic(shape, 3), _polymorphic(shape, 1)],
        with_gradient=False,
        native_serialization_platforms=("cpu", "cuda", "tpu"),
    )
    module = tf.Module()
    # Variables, not constants folded into the serialised module: saving and loading an 80 MB
    # constant inside a graph attribute takes ten times as long.
    module.weights = [tf.Variable(np.asarray(x), trainable=False) for x in leaves]

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec(shape.dims(3), tf.float32, name="image"),
                         tf.TensorSpec(shape.dims(1), tf.float32, name="mask")],
    )
    def serving_default(image, mask):
        return {core.OUTPUT: converted(module.weights, image, mask)}

    module.serving_default = serving_default
    return module


def save(generator: nnx.Module, folder: pathlib.Path, shape: core.Shape):
    tf = _tf()
    module = inpaint_module(generator, shape)
    signature = module.serving_default.get_concrete_function()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": signature})
    return module, signature


def write_savedmodel(generator: nnx.Module, folder: pathlib.Path,
                     shape: core.Shape) -> dict[str, Any]:
    tf = _tf()
    save(generator, folder, shape)
    return {
        "signature": "serving_default",
        "tensorflow_version": tf.__version__,
        "load": "tf.saved_model.load(DIR).signatures['serving_default'](image=..., mask=...)"
                "['composite']",
    }


def write_tflite(generator: nnx.Module, folder: pathlib.Path, shape: core.Shape) -> dict[str, Any]:
    tf = _tf()
    if not shape.fixed:
        raise ValueError(f"TFLite exports need a fixed shape, got {shape}")
    with tempfile.TemporaryDirectory(prefix="isnet_tflite_") as tmp:
        save(generator, pathlib.Path(tmp), shape)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, ["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        model = converter.convert()
    (folder / core.MODEL_FILES["tflite"]).write_bytes(model)
    return {
        "signature": "serving_default",
        "tensorflow_version": tf.__version__,
        "load": "ai_edge_litert.interpreter.Interpreter(model_path=PATH)"
                ".get_signature_runner()(image=..., mask=...)['composite']",
    }

