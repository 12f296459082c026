"""Minimal reproduction of why jax2onnx's graph of our generator does not load in onnxruntime.

    pip install --no-deps jax2onnx==0.17.1 onnx-ir sympy mpmath   # not a dependency of ours
    python tools/jax2onnx_repro.py

Needs only jax, numpy, onnx, onnxruntime and jax2onnx (not isnet_jax's models). It prints the
onnxruntime error, then every tensor whose shape jax2onnx declares in ``graph.value_info``
differently from what ONNX's own shape inference finds, then shows that the same graph with
``value_info`` dropped loads and computes what JAX computes. Exit status 0 when the bug
reproduces, 1 when it does not (fixed upstream).

The report for jax2onnx's maintainers:

  Title: NHWC->NCHW conv rewrite leaves stale NHWC shapes in value_info; onnxruntime then
  rejects the model ("[ShapeInferenceError] Incompatible dimensions" at an Add)

  jax2onnx 0.17.1, jax 0.10.2, onnx 1.23.2, onnxruntime 1.32.0, opset 23 (default).
  A stem of two convs plus a 1x1 shortcut, two residual blocks and a conv, all NHWC
  ``lax.conv_general_dilated`` with tanh (the script below, 8x8 input, 4 channels) exports
  without error, but ``onnxruntime.InferenceSession`` fails: "Node (node_Add_35) Op (Add)
  [ShapeInferenceError] Incompatible dimensions". The layout pass keeps the activations in
  NCHW between convs (the Transposes are gone), but some of those tensors keep their NHWC
  shape in ``graph.value_info`` (e.g. a (1, 4, 8, 8) tensor declared (1, 8, 8, 4));
  onnxruntime trusts the declaration and the next Add of a declared and an inferred tensor
  fails. Removing the stale entries (or all of ``value_info``) makes the model load and match
  JAX. Removing any one piece (the shortcut, the inner conv of the stem, one residual block)
  makes the graph load, so it depends on how the rewrite walks the graph. Expected: the
  rewrite updates (or drops) ``value_info`` for every tensor whose layout it changes.

isnet_jax writes its ONNX graph itself (``onnx_graph``), so it does not depend on the fix.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

CHANNELS, SIZE = 4, 8


def model(seed: int = 0):
    """``conv(res(res(stem(x))))`` with fixed random weights; NHWC in and out."""
    rng = np.random.default_rng(seed)
    c = CHANNELS

    def kernel(k, cin, cout):
        return jnp.asarray(rng.normal(0, 0.1, (k, k, cin, cout)).astype(np.float32))

    stem_w = (kernel(3, 3, 2 * c), kernel(3, 2 * c, c), kernel(1, 3, c))
    res_w = [(kernel(3, c, c), kernel(3, c, c)) for _ in range(2)]
    out_w = kernel(3, c, c)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def f(x):
        # ISNet's first layer: two convs and a 1x1 shortcut.
        x = jnp.tanh(conv(jnp.tanh(conv(x, stem_w[0])), stem_w[1]) + conv(x, stem_w[2]))
        for w1, w2 in res_w:  # two residual blocks
            x = jnp.tanh(x + conv(jnp.tanh(conv(x, w1)), w2))
        return conv(x, out_w)

    return f


def main() -> int:
    import onnx
    import onnxruntime as ort
    from jax2onnx import to_onnx

    f = model()
    x = np.random.default_rng(1).random((1, SIZE, SIZE, 3), np.float32)
    expected = np.asarray(jax.jit(f)(x))
    proto = to_onnx(jax.jit(f), [jax.ShapeDtypeStruct(x.shape, jnp.float32)])
    try:
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's Fail has no public type
        print(f"onnxruntime refuses jax2onnx's graph: {e}")
    else:
        print("onnxruntime loads jax2onnx's graph: the bug does not reproduce (fixed?)")
        return 1

    def dims(value_info):
        return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]

    declared = {v.name: dims(v) for v in proto.graph.value_info}
    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    del bare.graph.value_info[:]
    inferred = {v.name: dims(v) for v in onnx.shape_inference.infer_shapes(bare).graph.value_info}
    for name, shape in declared.items():
        if name in inferred and inferred[name] != shape:
            print(f"  value_info declares {name} as {shape}; its producer makes {inferred[name]}")
    session = ort.InferenceSession(bare.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    print(f"without value_info the graph loads; max |onnx - jax| = "
          f"{np.abs(out - expected).max():.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
