"""ONNX, written node by node with the onnx package from the folded weights.

The graph is the generator's module tree, walked here module by module (each ``_emit_*``
mirrors that class's ``__call__``) into standard ONNX ops in NCHW: Conv, Tanh, Add,
Concat, DepthToSpace in ``CRD`` mode (PyTorch's pixel-shuffle channel order, which our
``pixel_shuffle`` follows), Mul, Sub; one Transpose at each end keeps the NHWC interface of
every other format. Opset 17, IR version 8: onnxruntime, ONNX Runtime Web and Mobile, and
other runtimes load it. Batch, height and width are named dynamic dimensions (``batch``,
``height``, ``width``) unless fixed. The parity tests hold the graph to the JAX model.

Why not a converter: jax2onnx (0.17.1) writes a graph that onnxruntime refuses
("[ShapeInferenceError] Incompatible dimensions" at an Add). Its NHWC -> NCHW pass removes
the transposes around convs but leaves the old NHWC shapes in the graph's ``value_info``, so a
tensor that is (1, 32, 64, 64) is declared (1, 64, 64, 32); onnxruntime's shape inference
trusts the declaration and the next Add of a declared and an inferred tensor fails.
``tools/jax2onnx_repro.py`` (in a checkout) reproduces it in a dozen lines and holds the report
for its maintainers. (Dropping the ``value_info`` makes such a graph load, but jax2onnx
pins orbax-checkpoint below 0.11.37, which our stack is past, so it cannot be a dependency.)
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from isnet_jax import errors
from isnet_jax.export import core
from isnet_jax.models.generator import ConvAct, ResBlock, Stage, Stem, TwoStream, Up
from isnet_jax.models.layers import Conv, Sequential

OPSET = 17
IR_VERSION = 8


class _Graph:
    """Collects nodes and initialisers; every method returns the name of its output tensor."""

    def __init__(self) -> None:
        import onnx  # the export extra

        self.onnx = onnx
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self._name(prefix)
        self.initializers.append(
            self.onnx.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self._name(op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(
            op_type, inputs, [output], name=f"{op_type}_{self.count}", **attrs))
        return output

    def conv(self, conv: Conv, x: str) -> str:
        if conv.spectral_norm:
            raise AssertionError("fold spectral norm before emitting (fold_spectral_norm)")
        kernel = np.transpose(np.asarray(conv.kernel[...], np.float32), (3, 2, 0, 1))  # OIHW
        inputs = [x, self.const(kernel)]
        if conv.bias is not None:
            inputs.append(self.const(np.asarray(conv.bias[...], np.float32), "b"))
        p = conv.padding
        return self.op("Conv", inputs, kernel_shape=list(kernel.shape[2:]), pads=[p, p, p, p],
                       strides=[conv.stride] * 2, dilations=[conv.dilation] * 2)


def _act(g: _Graph, module: nnx.Module, x: str) -> str:
    if module.act is not jnp.tanh:
        raise errors.ConfigError(
            "the ONNX export writes ISNet's generator (tanh activations); export this "
            "generator as stablehlo or savedmodel instead")
    return g.op("Tanh", [x])


def _emit(g: _Graph, module: Any, x: str) -> str:
    if isinstance(module, Conv):
        return g.conv(module, x)
    if isinstance(module, Sequential):
        for layer in module.layers:
            x = _emit(g, layer, x)
        return x
    if isinstance(module, ResBlock):
        y = g.conv(module.conv2, _act(g, module, g.conv(module.conv1, x)))
        return _act(g, module, g.op("Add", [x, y]))
    if isinstance(module, ConvAct):
        return _act(g, module, g.conv(module.conv, x))
    if isinstance(module, Up):
        # DepthToSpace "CRD": input channel c*4 + i*2 + j -> channel c at offset (i, j),
        # PyTorch's PixelShuffle and our pixel_shuffle; "DCR" is TensorFlow's order.
        shuffled = g.op("DepthToSpace", [g.conv(module.conv, x)], blocksize=2, mode="CRD")
        return _act(g, module, shuffled)
    if isinstance(module, Stem):
        y = g.conv(module.conv2, _act(g, module, g.conv(module.conv1, x)))
        return _act(g, module, g.op("Add", [y, g.conv(module.shortcut, x)]))
    raise errors.ConfigError(
        f"the ONNX export has no rule for {type(module).__name__}: it writes ISNet's generator; "
        "export this generator as stablehlo or savedmodel instead")


def _emit_stage(g: _Graph, stage: Stage, xs: list[str]) -> list[str]:
    x0 = _emit(g, stage.blocks0, xs[0])
    if stage.k == 0:
        y0, y1 = x0, _emit(g, stage.down0, x0)
    else:
        x1 = _emit(g, stage.blocks1, xs[1])
        y0 = g.op("Concat", [x0, _emit(g, stage.up1, x1)], axis=1)
        y1 = g.op("Concat", [_emit(g, stage.down0, x0), _emit(g, stage.down1, x1)], axis=1)
    return [_emit(g, stage.reduce0, y0), _emit(g, stage.reduce1, y1)]


def _emit_generator(g: _Graph, generator: TwoStream, x: str) -> str:
    """``TwoStream.__call__`` for ISNet's switches (sub-pixel up-sampling, final fusion)."""
    if not isinstance(generator, TwoStream) or not generator.final_fusion or not all(
            isinstance(getattr(s, "up1", Sequential([])), Sequential) for s in generator.stages):
        raise errors.ConfigError(
            f"the ONNX export writes ISNet's generator, not {type(generator).__name__}; export "
            "this generator as stablehlo or savedmodel instead")
    xs = [_emit(g, generator.stem, x)]
    for stage in generator.stages:
        xs = _emit_stage(g, stage, xs)
    y = g.op("Concat", [xs[0], _emit(g, generator.up, xs[1])], axis=1)
    y = g.conv(generator.final2, _act(g, generator, g.conv(generator.final1, y)))
    # to_image: (tanh(y) + 1) / 2; halving is exact, as is JAX's division by 2.
    one, half = g.const(np.float32(1.0), "one"), g.const(np.float32(0.5), "half")
    return g.op("Mul", [g.op("Add", [g.op("Tanh", [y]), one]), half])


def build(generator: nnx.Module, shape: core.Shape):
    """The ``onnx.ModelProto`` of ``composite = inpaint(image, mask)`` (NHWC float32)."""
    g = _Graph()
    helper, TensorProto = g.onnx.helper, g.onnx.TensorProto
    folded = core.fold_spectral_norm(generator)
    dims = [shape.batch or "batch", shape.height or "height", shape.width or "width"]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [*dims, 3])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [*dims, 1])
    output = helper.make_tensor_value_info(core.OUTPUT, TensorProto.FLOAT, [*dims, 3])

    masked = g.op("Transpose", [g.op("Mul", ["image", "mask"])], perm=[0, 3, 1, 2])
    prediction = g.op("Transpose", [_emit_generator(g, folded, masked)], perm=[0, 2, 3, 1])
    # masks.composite: prediction * (1 - mask) + image * mask.
    hole = g.op("Sub", [g.const(np.float32(1.0), "one"), "mask"])
    g.op("Add", [g.op("Mul", [prediction, hole]), g.op("Mul", ["image", "mask"])],
         output=core.OUTPUT)

    graph = helper.make_graph(g.nodes, "isnet_inpaint", [image, mask], [output],
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="isnet_jax.export")
    model.ir_version = IR_VERSION
    g.onnx.checker.check_model(model)
    return model


def write(generator: nnx.Module, folder: pathlib.Path, shape: core.Shape) -> dict[str, Any]:
    import onnx

    model = build(generator, shape)
    onnx.save(model, str(folder / core.MODEL_FILES["onnx"]))
    return {
        "opset": OPSET,
        "onnx_version": onnx.__version__,
        "load": "onnxruntime.InferenceSession(PATH).run(['composite'], "
                "{'image': ..., 'mask': ...})[0]",
    }
