"""VGG19 feature extractor (torchvision's ``vgg19().features``) for perceptual and style losses,
and its weight files: torchvision's ``.pth`` in, our ``vgg19.npz`` out and in."""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
from flax import nnx

from isnet_jax import errors
from isnet_jax.models.layers import Conv
from isnet_jax.torch_io import torch_weights

# torchvision's configuration "E"; "M" is a 2x2 max pool.
CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
       512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
NAMES = ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3", "relu3_4",
         "relu4_1", "relu4_2", "relu4_3", "relu4_4", "relu5_1", "relu5_2", "relu5_3", "relu5_4")
# Index of each conv in torchvision's ``features`` Sequential (conv, relu, [pool] ...).
TORCH_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)

VGG_FILE = "vgg19.npz"
_VGG_FORMAT = "isnet_jax.vgg19 v1: HWIO kernels"
_WHAT = "torchvision's VGG19"
_CONVERT_HINT = "python -m isnet_jax.convert --vgg19 vgg19-dcbb9e9d.pth --output DIR"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _pool(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, no padding: (B, H, W, C) -> (B, H // 2, W // 2, C).

    Same values and gradient as ``reduce_window``'s (the first maximum of each window in row-major
    order takes the gradient, as in torch's ``max_pool2d``), but the backward is a compare and a
    select on the window rather than XLA's select-and-scatter, which on the CPU materialises an
    index array the size of the input. On the 2-vCPU benchmark machine VGG19's forward + input
    gradient at 256x256 takes 0.568 s instead of 0.610, the whole training step 4.04 s instead
    of 4.11.
    """
    return _pool(x)


def _max_pool_fwd(x):
    y = _pool(x)
    return y, (x, y)


def _max_pool_bwd(res, dy):
    x, y = res
    b, full_h, full_w, c = x.shape
    h, w = 2 * y.shape[1], 2 * y.shape[2]  # an odd last row / column is in no window
    x = x[:, :h, :w]
    # Windows as a trailing axis of 4 in row-major order: (B, H/2, W/2, 4, C).
    win = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    win = win.reshape(b, h // 2, w // 2, 4, c)
    is_max = [win[:, :, :, i] == y for i in range(4)]
    taken = is_max[0]
    first = [is_max[0]]
    for m in is_max[1:]:
        first.append(m & ~taken)
        taken = taken | m
    dx = jnp.where(jnp.stack(first, axis=3), dy[:, :, :, None, :], jnp.zeros((), dy.dtype))
    dx = dx.reshape(b, h // 2, w // 2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    dx = dx.reshape(b, h, w, c)
    return (jnp.pad(dx, ((0, 0), (0, full_h - h), (0, full_w - w), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class VGG19(nnx.Module):
    """``vgg(x)`` -> ``{name: activation}`` for the ReLU outputs relu1_1 ... relu5_4.

    Args:
      normalization: ``"none"`` feeds [0, 1] RGB as is (what the release does, and what its
        loss weights were tuned for); ``"imagenet"`` applies torchvision's mean/std first.
      outputs: names to compute; the network stops after the deepest one requested.
    """

    def __init__(
        self,
        *,
        normalization: str = "none",
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if normalization not in ("none", "imagenet"):
            raise errors.ConfigError(
                f"VGG19 normalization must be 'none' or 'imagenet', got {normalization!r}"
            )
        self.normalization = normalization
        # Real use loads ImageNet weights. Untrained, a He-scaled kernel keeps the activations
        # of the 16 ReLU layers at a realistic size (the release's N(0, 0.001) would make them
        # vanish), so random-weight stand-ins in tests and benchmarks exercise real magnitudes.
        convs, c = [], 3
        for v in CFG:
            if v != "M":
                convs.append(Conv(c, v, 3, padding=1, use_bias=True, spectral_norm=False,
                                  init_scale=(2.0 / (9 * c)) ** 0.5, dtype=dtype, rngs=rngs))
                c = v
        self.convs = nnx.List(convs)

    def __call__(self, x: jax.Array, outputs: tuple[str, ...] = NAMES) -> dict[str, jax.Array]:
        if self.normalization == "imagenet":
            x = (x - jnp.asarray(_IMAGENET_MEAN)) / jnp.asarray(_IMAGENET_STD)
        last = max(NAMES.index(n) for n in outputs)
        feats, i = {}, 0
        for v in CFG:
            if v == "M":
                x = max_pool_2x2(x)
                continue
            x = jax.nn.relu(self.convs[i](x))
            if NAMES[i] in outputs:
                feats[NAMES[i]] = x.astype(jnp.float32)
            if i == last:
                break
            i += 1
        return feats


# ---------------------------------------------------------------------------------------------
# Weight files


def _abstract(normalization: str, dtype: jnp.dtype) -> VGG19:
    # Built abstractly: a random initialisation would only be overwritten.
    return nnx.eval_shape(lambda: VGG19(normalization=normalization, dtype=dtype,
                                        rngs=nnx.Rngs(0)))


def load_torchvision_vgg19(
    path: str | os.PathLike, *, normalization: str = "none", dtype: jnp.dtype = jnp.float32
) -> VGG19:
    """Loads torchvision's VGG19 weights: a full ``vgg19()`` state dict (``features.N.*``; the
    classifier is ignored) or its ``features`` alone (``N.weight``, ``N.bias``)."""
    path = pathlib.Path(path)
    sd = torch_weights.read_state_dict(path, _WHAT)
    full = any(k.startswith("features.") for k in sd)
    vgg = _abstract(normalization, dtype)
    prefix = "features." if full else ""
    pairs = [(f"{prefix}{index}", conv) for index, conv in zip(TORCH_INDICES, vgg.convs,
                                                                strict=True)]
    torch_weights.fill(vgg, torch_weights.conv_targets(vgg, pairs), sd, path, _WHAT,
                       ignored=lambda k: full and k.startswith("classifier."))
    return vgg


def _npz_variables(vgg: VGG19) -> dict[str, nnx.Variable]:
    """The ``.npz`` keys of our VGG19 file (``conv1_1.kernel`` ...) and their variables."""
    return {f"{NAMES[i].replace('relu', 'conv')}.{name}": getattr(conv, name)
            for i, conv in enumerate(vgg.convs) for name in ("kernel", "bias")}


def save_vgg19(vgg: VGG19, path: str | os.PathLike) -> pathlib.Path:
    """Writes ``vgg``'s weights as our ``.npz`` (HWIO kernels, keys ``conv1_1.kernel`` ...)."""
    return torch_weights.save_npz(vgg, path, _VGG_FORMAT, _npz_variables(vgg))


def convert_torchvision(
    source: str | os.PathLike, target: str | os.PathLike
) -> pathlib.Path:
    """torchvision's VGG19 ``.pth`` as our ``.npz`` at ``target`` (``convert --vgg19``'s)."""
    return save_vgg19(load_torchvision_vgg19(source), target)


def load_vgg19(
    path: str | os.PathLike, normalization: str = "none", dtype: jnp.dtype = jnp.float32
) -> VGG19:
    """The VGG19 loss network from our ``vgg19.npz``, a folder holding one, or torchvision's
    ``.pth`` (what ``config.loss.vgg_weights`` may name). The file's content decides, not its
    name. Raises ``errors.MissingFileError`` (saying how to make the file) when it does not
    exist."""
    path = torch_weights.weights_file(
        path, VGG_FILE, f"VGG19 weights not found at {{path}}. Leave config.loss.vgg_weights "
        f"empty (or set it to vgg19) to fetch torchvision's vgg19-dcbb9e9d.pth into the weights "
        f"cache ($ISNET_JAX_CACHE, default ~/.cache/isnet_jax), or run `{_CONVERT_HINT}` and "
        f"point config.loss.vgg_weights at DIR/{VGG_FILE}")
    if not torch_weights.is_npz(path):
        return load_torchvision_vgg19(path, normalization=normalization, dtype=dtype)
    vgg = _abstract(normalization, dtype)
    torch_weights.load_npz(vgg, path, _VGG_FORMAT, f"recreate it with `{_CONVERT_HINT}`",
                           _npz_variables(vgg))
    return vgg
