"""LPIPS (the ``lpips`` package, version 0.1) with the AlexNet and VGG16 backbones, without PyTorch.

``LPIPS.from_weights(net, backbone_path, lin_path)``: ``net`` is ``"alex"`` or ``"vgg"``;
``backbone_path`` torchvision's ImageNet file (``alexnet-owt-7be5be79.pth`` /
``vgg16-397923af.pth``: the whole model, whose classifier is ignored, or its ``features``
alone); ``lin_path`` the package's ``lpips/weights/v0.1/alex.pth`` / ``vgg.pth``. All are read by
``torch_io.pth``, both of torch.save's formats. Calling the module maps two NHWC batches in
[0, 1] to (N,) distances, as ``lpips.LPIPS(net=...)(a, b, normalize=True)`` does:

- ``2x - 1``, then the scaling layer ``(x - shift) / scale``;
- the backbone's ReLU outputs at torchvision ``features`` indices 1, 4, 7, 9, 11 (AlexNet) or
  3, 8, 15, 22, 29 (VGG16), each normalised over channels as ``f / (||f|| + 1e-10)``;
- per layer ``(n0 - n1)^2``, a 1x1 conv to one channel without bias (the linear weights), a
  spatial mean; the distance is the sum over the five layers.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isnet_jax import errors
from isnet_jax.torch_io import torch_weights
from isnet_jax.torch_io.pth import PthError

# (name, torchvision file, lpips file, layers). A layer is ("conv", torch index, in, out,
# kernel, stride, padding), ("pool", window) (stride 2, rounding down) or ("tap",): the output
# so far (after a ReLU) is one of the five compared layers.
_C, _P, _T = "conv", "pool", "tap"
_NETS = {
    "alex": (
        "torchvision's AlexNet (alexnet-owt-7be5be79.pth)",
        "lpips' linear layers for 'alex' (weights/v0.1/alex.pth)",
        (
            (_C, 0, 3, 64, 11, 4, 2), (_T,), (_P, 3),
            (_C, 3, 64, 192, 5, 1, 2), (_T,), (_P, 3),
            (_C, 6, 192, 384, 3, 1, 1), (_T,),
            (_C, 8, 384, 256, 3, 1, 1), (_T,),
            (_C, 10, 256, 256, 3, 1, 1), (_T,),
        ),
    ),
    "vgg": (
        "torchvision's VGG16 (vgg16-397923af.pth)",
        "lpips' linear layers for 'vgg' (weights/v0.1/vgg.pth)",
        (
            (_C, 0, 3, 64, 3, 1, 1), (_C, 2, 64, 64, 3, 1, 1), (_T,), (_P, 2),
            (_C, 5, 64, 128, 3, 1, 1), (_C, 7, 128, 128, 3, 1, 1), (_T,), (_P, 2),
            (_C, 10, 128, 256, 3, 1, 1), (_C, 12, 256, 256, 3, 1, 1),
            (_C, 14, 256, 256, 3, 1, 1), (_T,), (_P, 2),
            (_C, 17, 256, 512, 3, 1, 1), (_C, 19, 512, 512, 3, 1, 1),
            (_C, 21, 512, 512, 3, 1, 1), (_T,), (_P, 2),
            (_C, 24, 512, 512, 3, 1, 1), (_C, 26, 512, 512, 3, 1, 1),
            (_C, 28, 512, 512, 3, 1, 1), (_T,),
        ),
    ),
}
NETS = tuple(_NETS)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10
# Exact float32 convolutions on every backend (TPU / GPU defaults use bfloat16 / TF32 passes).
_HIGHEST = jax.lax.Precision.HIGHEST


def _net(net: str) -> str:
    name = {"vgg16": "vgg"}.get(net, net)
    if name not in _NETS:
        raise errors.ConfigError(f"LPIPS net must be one of {', '.join(NETS)}, got {net!r}")
    return name


class LPIPS(nnx.Module):
    """``lpips(a, b)`` -> (N,) LPIPS v0.1 distances of NHWC [0, 1] batches of the same shape.

    Use ``LPIPS.from_weights(net, backbone_path, lin_path)``; a bare constructor gives random
    weights. ``nnx.Conv`` with the stride, padding and precision each layer needs (the
    generator's ``layers.Conv`` is built around spectral normalisation).
    """

    def __init__(self, net: str = "alex", *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.net = _net(net)
        layers = _NETS[self.net][2]
        self.convs = nnx.List([
            nnx.Conv(cin, cout, (k, k), strides=stride, padding=((p, p), (p, p)),
                     dtype=dtype, precision=_HIGHEST, rngs=rngs)
            for _, _, cin, cout, k, stride, p in (x for x in layers if x[0] == _C)
        ])
        channels = [layers[i - 1][3] for i, layer in enumerate(layers) if layer[0] == _T]
        self.lins = nnx.List([nnx.Param(jnp.zeros((c,), jnp.float32)) for c in channels])
        self.dtype = dtype

    @property
    def torch_indices(self) -> tuple[int, ...]:
        return tuple(x[1] for x in _NETS[self.net][2] if x[0] == _C)

    def features(self, images: jax.Array) -> list[jax.Array]:
        """The five channel-normalised backbone layers of NHWC [0, 1] ``images`` (float32)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected NHWC RGB images, got shape {tuple(images.shape)}")
        x = 2.0 * images.astype(jnp.float32) - 1.0
        x = ((x - jnp.asarray(_SHIFT)) / jnp.asarray(_SCALE)).astype(self.dtype)
        taps, conv = [], 0
        for layer in _NETS[self.net][2]:
            if layer[0] == _C:
                x = jax.nn.relu(self.convs[conv](x))
                conv += 1
            elif layer[0] == _P:
                w = layer[1]
                x = nnx.max_pool(x, (w, w), strides=(2, 2), padding="VALID")
            else:
                f = x.astype(jnp.float32)
                norm = jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True))
                taps.append(f / (norm + _NORM_EPS))
        return taps

    def distance(
        self, features_a: Sequence[jax.Array], features_b: Sequence[jax.Array],
        per_layer: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """(N,) distances from two ``features`` lists; with ``per_layer`` also (N, 5)."""
        layers = []
        for lin, fa, fb in zip(self.lins, features_a, features_b, strict=True):
            weighted = jnp.einsum("nhwc,c->nhw", (fa - fb) ** 2, lin[...], precision=_HIGHEST)
            layers.append(jnp.mean(weighted, axis=(1, 2)))
        total = layers[0]
        for layer in layers[1:]:
            total = total + layer
        return (total, jnp.stack(layers, axis=-1)) if per_layer else total

    def __call__(
        self, a: jax.Array, b: jax.Array, *, per_layer: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        if a.shape != b.shape:
            raise ValueError(f"LPIPS compares batches of one shape, got {a.shape} and {b.shape}")
        return self.distance(self.features(a), self.features(b), per_layer)

    @classmethod
    def from_weights(
        cls, net: str, backbone_path: str | os.PathLike, lin_path: str | os.PathLike, *,
        dtype: jnp.dtype = jnp.float32,
    ) -> LPIPS:
        """LPIPS v0.1 from torchvision's backbone ``.pth`` and lpips' linear-layer ``.pth``.

        Raises ``errors.MissingFileError``, or ``PthError`` naming the file that is wrong
        (another network's file says which one it is).
        """
        name = _net(net)
        backbone_what, lin_what, _ = _NETS[name]
        model = nnx.eval_shape(lambda: cls(name, dtype=dtype, rngs=nnx.Rngs(0)))
        backbone_path, lin_path = pathlib.Path(backbone_path), pathlib.Path(lin_path)

        sd = torch_weights.read_state_dict(backbone_path, backbone_what)
        _refuse_other_file(sd, backbone_path, backbone_what, name)
        full = any(k.startswith("features.") for k in sd)
        prefix = "features." if full else ""
        indices = model.torch_indices
        targets = torch_weights.conv_norm_targets(
            model.convs, lambda path: f"{prefix}{indices[path[0]]}"
        )
        torch_weights.fill(model.convs, targets, sd, backbone_path, backbone_what,
                           ignored=lambda k: full and k.startswith("classifier."))

        sd = torch_weights.read_state_dict(lin_path, lin_what)
        _refuse_other_file(sd, lin_path, lin_what, name)
        targets = {
            f"lin{k}.model.1.weight": (lin, (1, lin.get_value().shape[0], 1, 1),
                                       lambda w: np.asarray(w).reshape(-1))
            for k, lin in enumerate(model.lins)
        }
        torch_weights.fill(model.lins, targets, sd, lin_path, lin_what)
        return model


def _refuse_other_file(sd: dict, path: pathlib.Path, what: str, net: str) -> None:
    found = torch_weights.describe(sd)
    if found is None or found == what:
        return
    other = next((n for n, (b, lin, _) in _NETS.items() if found in (b, lin)), None)
    fix = f"; it belongs to net={other!r}" if other and other != net else ""
    raise PthError(f"{path} is not {what} (net={net!r}): it looks like {found}{fix}")


def distance_fn(model: LPIPS) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A jitted ``(a, b) -> (N,)`` of ``model``, its weights passed as an argument."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, a, b):
        return nnx.merge(graphdef, state)(a, b)

    return functools.partial(run, state)
