"""Generators of the paper's Table 1 ablation: BaseModel, BaseModel+FF, the UNet-like baseline.

Layer for layer as the official release builds them (``ablation/network_base.py`` ``RFFNet_base``,
``ablation/network_fusion.py`` ``RFFNet_fusion``, ``src/networks.py`` ``UnetGeneratorSame``), so
that the trainable-parameter counts are exactly the release's:

  ============== ========================================================== ============
  name           what it is                                                 parameters
  ============== ========================================================== ============
  basemodel      two-stream RFFNet, bilinear up-sampling, 1x1 output conv   16,516,995
  basemodel_ff   + final fusion (1/16 branch up-sampled, 7x7 + 3x3 convs);  14,610,083
                 stage 3's low-resolution branch is 256 wide, not 512
  unet           EdgeConnect-style encoder / 4 dilated blocks / decoder     24,403,715
  ============== ========================================================== ============

(ISNet itself = BaseModel + FF + sub-pixel up-sampling, is ``generator.Generator``.)

Differences from ISNet worth knowing, all taken from the release's ablation code:
- BaseModel and BaseModel+FF use LeakyReLU(0.2) wherever ISNet uses tanh (stem, residual
  blocks, strided convs, reduce convs, the final fusion). Only the output stays
  ``(tanh(x) + 1) / 2``.
- Branch 1 reaches branch 0 by parameter-free bilinear up-sampling (``nn.Upsample(mode=
  'bilinear')``, ``align_corners=False``) instead of sub-pixel convs, so the concatenation
  feeding ``reduce0`` is ``32 + c1`` wide. BaseModel applies one more LeakyReLU before that
  up-sampling (``fuse_layers.0.1.0``); BaseModel+FF does not.
- BaseModel's output is a plain 1x1 conv of branch 0; stage 3's branch 1 (and the convs that
  produce it) is computed, never used, but its parameters count, and in train mode its
  spectral-norm vectors are updated, as in the release.

- The UNet's instance norm and ReLU are in its encoder and decoder; its four 512-channel
  blocks are the release's tanh residual blocks (with biases, no SN, no norm).

Checkpoint mapping: ``TORCH_KEYS`` lists, per variant, the torch module for each submodule;
``torch_keys(name, model)`` gives the release's state-dict key of every nnx state leaf.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isnet_jax.models.generator import WIDTHS, check_spatial_size
from isnet_jax.models.layers import Conv, Sequential, init_kernel

VARIANTS = ("basemodel", "basemodel_ff", "unet")

_SLOPE = 0.2  # nn.LeakyReLU(0.2) throughout the release's ablation code
_IN_EPS = 1e-5  # nn.InstanceNorm2d's default eps


def _lrelu(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, _SLOPE)


# --------------------------------------------------------------------------------------------
# Parameter-free ops with torch's exact semantics
# --------------------------------------------------------------------------------------------


@functools.cache
def _bilinear_taps(n_in: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear up-sampling along one axis.

    ``align_corners=False``: output pixel ``o`` reads the source coordinate
    ``(o + 0.5) / factor - 0.5``, clamped at 0; the last pixel is repeated past the edge.
    """
    src = np.maximum((np.arange(n_in * factor) + 0.5) / factor - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
    """``nn.Upsample(scale_factor=factor, mode='bilinear')`` (align_corners=False) in NHWC.

    Implemented as two gathers and a lerp per axis: exact on every backend (no matmul
    precision), cost proportional to the output.
    """
    for axis in (1, 2):
        i0, i1, frac = _bilinear_taps(x.shape[axis], factor)
        shape = [1] * x.ndim
        shape[axis] = -1
        w = jnp.asarray(frac, x.dtype).reshape(shape)
        x = jnp.take(x, i0, axis=axis) * (1 - w) + jnp.take(x, i1, axis=axis) * w
    return x


def instance_norm(x: jax.Array, eps: float = _IN_EPS) -> jax.Array:
    """``nn.InstanceNorm2d(affine=False, track_running_stats=False)``: per-sample, per-channel
    normalisation over H, W with the biased variance, the same in train and eval mode. No
    parameters, no state. Statistics in float32; returns ``x.dtype``."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=(1, 2), keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def _reflect_pad(x: jax.Array, p: int) -> jax.Array:
    """``nn.ReflectionPad2d(p)`` (the edge pixel is not repeated: numpy's ``reflect``)."""
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


class ConvTranspose(nnx.Module):
    """``nn.ConvTranspose2d(in, out, k, stride, padding)`` with bias, no spectral norm.

    ``kernel[h, w, i, o]`` is torch's ``weight[i, o, h, w]`` (torch stores (in, out, kH, kW)).
    Computed as a stride-1 conv of the input dilated by ``stride``, padded by
    ``k - 1 - padding``, with the spatially flipped kernel. Output size
    ``(H - 1) * stride - 2 * padding + k`` (2H for k=4, s=2, p=1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int,
        padding: int,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        # The release's init_weights() (N(0, 0.001), bias 0) reaches transposed convs too.
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(init_kernel(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.stride = stride
        self.padding = padding
        self.dtype = dtype

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no spectral norm, nothing differs between modes
        kernel = self.kernel[...][::-1, ::-1].astype(self.dtype)
        q = kernel.shape[0] - 1 - self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel,
            window_strides=(1, 1),
            padding=((q, q), (q, q)),
            lhs_dilation=(self.stride, self.stride),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + self.bias[...].astype(self.dtype)


# --------------------------------------------------------------------------------------------
# BaseModel and BaseModel+FF (the release's RFFNet_base / RFFNet_fusion)
# --------------------------------------------------------------------------------------------


class LeakyResBlock(nnx.Module):
    """``lrelu(x + conv2(lrelu(conv1(x))))``; SN 3x3 convs without bias, conv1 dilated.

    Torch: ``ResnetBlock(c, dilation, use_spectral_norm=True)`` of the ablation files.
    """

    def __init__(self, channels: int, dilation: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = Conv(channels, channels, 3, padding=dilation, dilation=dilation,
                          dtype=dtype, rngs=rngs)  # conv_block.1
        self.conv2 = Conv(channels, channels, 3, padding=1, dtype=dtype, rngs=rngs)  # .4

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = self.conv2(_lrelu(self.conv1(x, train=train)), train=train)
        return _lrelu(x + y)


class LeakyStem(nnx.Module):
    """``lrelu(conv2(lrelu(conv1(x))) + shortcut(x))``: 3 -> 32 channels, full resolution.

    Torch: ``layer1 = BottleneckBlock(3, 32)``; shortcut is the plain 1x1 ``downsample``.
    """

    def __init__(self, *, dtype, rngs: nnx.Rngs):
        self.shortcut = Conv(3, 32, 1, spectral_norm=False, dtype=dtype, rngs=rngs)
        self.conv1 = Conv(3, 64, 3, padding=1, dtype=dtype, rngs=rngs)
        self.conv2 = Conv(64, 32, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = self.conv2(_lrelu(self.conv1(x, train=train)), train=train)
        return _lrelu(y + self.shortcut(x))


class LeakyConv(nnx.Module):
    """SN 3x3 conv (no bias, padding 1) + LeakyReLU: with ``stride=2`` a down step
    (``fuse_layers``), with stride 1 a reduce step (``fused_branches``)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, dtype,
                 rngs: nnx.Rngs):
        self.conv = Conv(in_channels, out_channels, 3, stride=stride, padding=1,
                         dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return _lrelu(self.conv(x, train=train))


class BaseStage(nnx.Module):
    """Stage ``k`` of BaseModel(+FF): [32 @ 1, c1 @ 1/2^k] -> [32 @ 1, c1_out @ 1/2^(k+1)].

    As ``generator.Stage`` except: LeakyReLU everywhere, and branch 1 is carried up to branch 0
    by bilinear up-sampling (no parameters), so ``reduce0`` takes ``32 + c1`` channels.
    ``act_before_up``: BaseModel's extra LeakyReLU ahead of the up-sampling.
    """

    def __init__(self, k: int, c1_out: int, *, act_before_up: bool, blocks: int = 4, dtype,
                 rngs: nnx.Rngs):
        self.k = k
        self.act_before_up = act_before_up
        c1_in = WIDTHS[k]
        kw = dict(dtype=dtype, rngs=rngs)
        self.blocks0 = Sequential([LeakyResBlock(32, 1, **kw) for _ in range(blocks)])
        self.down0 = Sequential([LeakyConv(32 << s, 64 << s, stride=2, **kw)
                                 for s in range(k + 1)])
        if k > 0:
            self.blocks1 = Sequential([LeakyResBlock(c1_in, 2, **kw) for _ in range(blocks)])
            self.down1 = LeakyConv(c1_in, 2 * c1_in, stride=2, **kw)
            self.reduce0 = LeakyConv(32 + c1_in, 32, **kw)
            self.reduce1 = LeakyConv((32 << (k + 1)) + 2 * c1_in, c1_out, **kw)
        else:
            self.reduce0 = LeakyConv(32, 32, **kw)
            self.reduce1 = LeakyConv(64, c1_out, **kw)

    def __call__(self, xs: list[jax.Array], *, train: bool = False) -> list[jax.Array]:
        x0 = self.blocks0(xs[0], train=train)
        if self.k == 0:
            y0, y1 = x0, self.down0(x0, train=train)
        else:
            x1 = self.blocks1(xs[1], train=train)
            up = _lrelu(x1) if self.act_before_up else x1
            y0 = jnp.concatenate([x0, upsample_bilinear(up, 1 << self.k)], axis=-1)
            y1 = jnp.concatenate(
                [self.down0(x0, train=train), self.down1(x1, train=train)], axis=-1
            )
        return [self.reduce0(y0, train=train), self.reduce1(y1, train=train)]


class BaseModel(nnx.Module):
    """Table 1's "BaseModel" (``final_fusion=False``) or "BaseModel+FF" (``final_fusion=True``).

    ``g(masked_image, train=False)`` -> image in [0, 1], ``(tanh(x) + 1) / 2`` of the last conv.
    Input (B, H, W, 3) with H, W multiples of 16; output (B, H, W, 3) float32.

    BaseModel: stage widths 64, 128, 256, 512 on branch 1; output = 1x1 conv (bias, no SN) of
    branch 0 (torch ``final_layer``).
    BaseModel+FF: stage 3 reduces branch 1 to 256 channels (the "fewer channels": this alone
    saves 2,359,296 parameters); branch 1 is up-sampled 16x bilinearly, concatenated with
    branch 0 (288 channels), then SN 7x7 conv with bias -> 32 (``final_layer.0``), LeakyReLU,
    plain 3x3 conv with bias -> 3 (``final_layer.2``, no SN in the release).

    A fresh model's spectral-norm vectors are random (as torch's): run a train-mode forward
    (one power iteration) before evaluating it. With these unbounded LeakyReLUs an eval forward
    from the initial vectors can overflow, in the release as here; trained or converted
    weights carry their vectors.
    """

    def __init__(self, final_fusion: bool, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.final_fusion = final_fusion
        kw = dict(dtype=dtype, rngs=rngs)
        widths = (64, 128, 256, 256 if final_fusion else 512)
        self.stem = LeakyStem(**kw)
        self.stages = nnx.List([
            BaseStage(k, widths[k], act_before_up=not final_fusion, **kw) for k in range(4)
        ])
        if final_fusion:
            self.final1 = Conv(32 + widths[3], 32, 7, padding=3, use_bias=True, **kw)
            self.final2 = Conv(32, 3, 3, padding=1, use_bias=True, spectral_norm=False, **kw)
        else:
            self.final = Conv(32, 3, 1, use_bias=True, spectral_norm=False, **kw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        check_spatial_size(x.shape, 16)
        xs = [self.stem(x, train=train)]
        for stage in self.stages:
            xs = stage(xs, train=train)
        if self.final_fusion:
            y = jnp.concatenate([xs[0], upsample_bilinear(xs[1], 16)], axis=-1)
            y = self.final2(_lrelu(self.final1(y, train=train)), train=train)
        else:
            y = self.final(xs[0])
        return ((jnp.tanh(y) + 1.0) / 2.0).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# UNet-like baseline (the release's UnetGeneratorSame)
# --------------------------------------------------------------------------------------------


class PlainResBlock(nnx.Module):
    """``tanh(x + conv2(tanh(conv1(x))))``, 3x3 convs with bias, no SN, no norm; conv1 dilated.

    The release's ``ResnetBlock(512, 2)`` (src/networks.py, the same block class as ISNet's
    but with ``use_spectral_norm=False``, hence ``bias=True``). EdgeConnect's block would put
    instance norm in it instead of tanh; the parameter count is the same either way (the norm
    has no parameters), the release's block is what is built here.
    """

    def __init__(self, channels: int, dilation: int, *, dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=True, spectral_norm=False, dtype=dtype, rngs=rngs)
        self.conv1 = Conv(channels, channels, 3, padding=dilation, dilation=dilation, **kw)
        self.conv2 = Conv(channels, channels, 3, padding=1, **kw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = self.conv2(jnp.tanh(self.conv1(x)))
        return jnp.tanh(x + y)


class UNet(nnx.Module):
    """Table 1's UNet-like baseline: EdgeConnect's generator widened to 512 channels.

    encoder: reflect-pad 3, 7x7 conv 3->64; 4x4 stride-2 convs 64->128->256->512; each conv
      followed by instance norm (affine=False, so no parameters) and ReLU;
    middle: 4 ``PlainResBlock(512, dilation 2)`` at 1/8 scale;
    decoder: 4x4 stride-2 transposed convs 512->256->128->64, each + instance norm + ReLU;
      reflect-pad 3, 7x7 conv 64->3. All convs have biases, none is spectrally normalised.
    Output ``(tanh(x) + 1) / 2`` in [0, 1]. Input (B, H, W, 3), H and W multiples of 8.
    ``train`` changes nothing (instance norm always uses the sample's statistics).

    The release declares ``InstanceNorm2d(256)`` after the 512-channel encoder conv and
    ``InstanceNorm2d(128)`` after the 256-channel decoder conv; without affine parameters torch
    only warns and normalises every channel, which is what this does.
    """

    def __init__(self, blocks: int = 4, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        kw = dict(use_bias=True, spectral_norm=False, dtype=dtype, rngs=rngs)
        self.encoder = nnx.List([
            Conv(3, 64, 7, **kw),  # after a reflection pad of 3
            Conv(64, 128, 4, stride=2, padding=1, **kw),
            Conv(128, 256, 4, stride=2, padding=1, **kw),
            Conv(256, 512, 4, stride=2, padding=1, **kw),
        ])
        self.middle = Sequential([PlainResBlock(512, 2, dtype=dtype, rngs=rngs)
                                  for _ in range(blocks)])
        self.decoder = nnx.List([
            ConvTranspose(c, c // 2, 4, stride=2, padding=1, dtype=dtype, rngs=rngs)
            for c in (512, 256, 128)
        ])
        self.final = Conv(64, 3, 7, **kw)  # after a reflection pad of 3

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        check_spatial_size(x.shape, 8)
        h = _reflect_pad(x, 3)
        for conv in self.encoder:
            h = jax.nn.relu(instance_norm(conv(h)))
        h = self.middle(h, train=train)
        for deconv in self.decoder:
            h = jax.nn.relu(instance_norm(deconv(h)))
        y = self.final(_reflect_pad(h, 3))
        return ((jnp.tanh(y) + 1.0) / 2.0).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Factory and checkpoint key map
# --------------------------------------------------------------------------------------------


def create(name: str, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs) -> nnx.Module:
    """Builds a Table 1 generator by name: ``basemodel``, ``basemodel_ff`` or ``unet``."""
    if name == "basemodel":
        return BaseModel(final_fusion=False, dtype=dtype, rngs=rngs)
    if name == "basemodel_ff":
        return BaseModel(final_fusion=True, dtype=dtype, rngs=rngs)
    if name == "unet":
        return UNet(dtype=dtype, rngs=rngs)
    raise ValueError(f"unknown ablation generator {name!r}; choose one of {', '.join(VARIANTS)}")


_BASE_KEYS = (
    (r"stem\.shortcut", "layer1.downsample"),
    (r"stem\.conv1", "layer1.conv_block.1"),
    (r"stem\.conv2", "layer1.conv_block.4"),
    (r"stages\.(\d)\.blocks(\d)\.layers\.(\d+)\.conv1", r"stage\1.branches.\2.\3.conv_block.1"),
    (r"stages\.(\d)\.blocks(\d)\.layers\.(\d+)\.conv2", r"stage\1.branches.\2.\3.conv_block.4"),
    (r"stages\.(\d)\.down0\.layers\.(\d)\.conv", r"stage\1.fuse_layers.1.0.\2.0"),
    (r"stages\.(\d)\.down1\.conv", r"stage\1.fuse_layers.1.1.0"),
    (r"stages\.(\d)\.reduce(\d)\.conv", r"stage\1.fused_branches.\2.0.0"),
)

# Per variant: (regex on the nnx module path, torch module). Parameter names map as
# kernel -> weight_orig (SN conv) or weight (plain conv), u -> weight_u, v -> weight_v,
# bias -> bias. Kernels are HWIO here and OIHW in torch (transposed convs: torch (I, O, H, W)).
TORCH_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "basemodel": _BASE_KEYS + ((r"final", "final_layer"),),
    "basemodel_ff": _BASE_KEYS + ((r"final1", "final_layer.0"), (r"final2", "final_layer.2")),
    "unet": (
        (r"encoder\.0", "encoder.1"),
        (r"encoder\.1", "encoder.4"),
        (r"encoder\.2", "encoder.7"),
        (r"encoder\.3", "encoder.10"),
        (r"middle\.layers\.(\d)\.conv1", r"middle.\1.conv_block.1"),
        (r"middle\.layers\.(\d)\.conv2", r"middle.\1.conv_block.4"),
        (r"decoder\.0", "decoder.0"),
        (r"decoder\.1", "decoder.3"),
        (r"decoder\.2", "decoder.6"),
        (r"final", "decoder.10"),
    ),
}


def torch_key(name: str, path: tuple, spectral_norm: bool) -> str:
    """The release's state-dict key for the nnx state leaf at ``path``.

    ``path`` as ``nnx.to_flat_state(nnx.state(model))`` gives it, e.g.
    ``('stages', 1, 'blocks1', 'layers', 0, 'conv1', 'kernel')`` ->
    ``'stage1.branches.1.0.conv_block.1.weight_orig'``. ``spectral_norm``: whether the conv
    owning the leaf is spectrally normalised (decides ``weight_orig`` vs ``weight``).
    Raises KeyError for a path no rule covers.
    """
    *module, leaf = (str(p) for p in path)
    module_path = ".".join(module)
    for pattern, torch_module in TORCH_KEYS[name]:
        match = re.fullmatch(pattern, module_path)
        if match:
            suffix = {
                "kernel": "weight_orig" if spectral_norm else "weight",
                "u": "weight_u",
                "v": "weight_v",
                "bias": "bias",
            }[leaf]
            return match.expand(torch_module) + "." + suffix
    raise KeyError(f"no torch key for {module_path}.{leaf} in variant {name!r}")


def torch_keys(name: str, model: nnx.Module) -> dict[tuple, str]:
    """Every state leaf of ``model`` (parameters and SN vectors) -> the release's key."""
    flat = [path for path, _ in nnx.to_flat_state(nnx.state(model))]
    sn_modules = {path[:-1] for path in flat if path[-1] == "u"}
    return {path: torch_key(name, path, path[:-1] in sn_modules) for path in flat}
