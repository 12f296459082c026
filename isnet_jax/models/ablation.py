"""Generators of the paper's Table 1 ablation: BaseModel, BaseModel+FF, the UNet-like baseline.

Layer for layer as the official release builds them (``ablation/network_base.py`` ``RFFNet_base``,
``ablation/network_fusion.py`` ``RFFNet_fusion``, ``src/networks.py`` ``UnetGeneratorSame``), so
that the trainable-parameter counts are exactly the release's:

  ============== =============== ========================================== ============
  config name    class           what it is                                 parameters
  ============== =============== ========================================== ============
  basemodel      BaseModel       two-stream RFFNet, bilinear up-sampling,   16,516,995
                                 1x1 output conv
  basemodel_ff   BaseModelFF     + final fusion (1/16 branch up-sampled,    14,610,083
                                 7x7 + 3x3 convs); stage 3's low-resolution
                                 branch is 256 wide, not 512
  unet           UNetGenerator   EdgeConnect-style encoder / 4 dilated      24,403,715
                                 blocks / decoder
  ============== =============== ========================================== ============

(ISNet itself = BaseModel + FF + sub-pixel up-sampling, is ``generator.Generator``.) The counts
are for ``blocks=4``, the release's (its ablation files fix 4 residual blocks per branch per
stage; its UNet takes ``residual_blocks=4``); ``blocks`` 1..4 and ``remat`` work as for ISNet.
BaseModel and BaseModel+FF are ``generator.TwoStream`` with the switches below.

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

Submodules follow the release's modules one to one (tests/models/test_ablation.py maps every state
leaf to the release's state-dict key), so ablation checkpoints trained with the release could
be converted; its README publishes trained ISNet weights only (Places2, CelebA), which is all
``convert`` reads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from isnet_jax.models.generator import (
    MAX_BLOCKS,
    ResBlock,
    TwoStream,
    check_blocks,
    check_spatial_size,
    to_image,
)
from isnet_jax.models.layers import Conv, Sequential, init_kernel, leaky_relu, maybe_remat

_IN_EPS = 1e-5  # nn.InstanceNorm2d's default eps


# --------------------------------------------------------------------------------------------
# BaseModel and BaseModel+FF (the release's RFFNet_base / RFFNet_fusion)
# --------------------------------------------------------------------------------------------


class BaseModel(TwoStream):
    """Table 1's "BaseModel": ``g(masked_image, train=False)`` -> image in [0, 1].

    ``generator.TwoStream`` with LeakyReLU(0.2), bilinear up-sampling after one more LeakyReLU
    (torch ``fuse_layers.0.1.0``), no final fusion: the output is ``(tanh(x) + 1) / 2`` of a
    1x1 conv (bias, no SN; torch ``final_layer``) of branch 0. Stage widths 64, 128, 256, 512.
    Input (B, H, W, 3) with H, W multiples of 16; output (B, H, W, 3) float32.

    A fresh model's spectral-norm vectors are random (as torch's): run a train-mode forward
    (one power iteration) before evaluating it. With these unbounded LeakyReLUs an eval forward
    from the initial vectors can overflow, in the release as here; trained or converted
    weights carry their vectors.
    """

    def __init__(self, blocks: int = MAX_BLOCKS, *, dtype: jnp.dtype = jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs):
        super().__init__(blocks, act=leaky_relu, subpixel=False, final_fusion=False,
                         act_before_up=True, remat=remat, dtype=dtype, rngs=rngs)


class BaseModelFF(TwoStream):
    """Table 1's "BaseModel+FF": ``BaseModel`` with the final fusion.

    Stage 3 reduces branch 1 to 256 channels (the "fewer channels": this alone saves 2,359,296
    parameters) and there is no LeakyReLU ahead of the bilinear up-sampling. Branch 1 is
    up-sampled 16x bilinearly, concatenated with branch 0 (288 channels), then SN 7x7 conv with
    bias -> 32 (``final_layer.0``), LeakyReLU, plain 3x3 conv with bias -> 3 (``final_layer.2``,
    no SN in the release). Fresh spectral-norm vectors: as ``BaseModel``.
    """

    def __init__(self, blocks: int = MAX_BLOCKS, *, dtype: jnp.dtype = jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs):
        super().__init__(blocks, act=leaky_relu, subpixel=False, final_fusion=True,
                         last_width=256, final2_sn=False, remat=remat, dtype=dtype, rngs=rngs)


# --------------------------------------------------------------------------------------------
# UNet-like baseline (the release's UnetGeneratorSame)
# --------------------------------------------------------------------------------------------


def instance_norm(channels: int, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.InstanceNorm:
    """``nn.InstanceNorm2d(affine=False, track_running_stats=False)``: per-sample, per-channel
    normalisation over H, W with the biased variance (computed two-pass, as torch), eps 1e-5;
    the same in train and eval mode, no parameters, no state."""
    return nnx.InstanceNorm(channels, epsilon=_IN_EPS, use_scale=False, use_bias=False,
                            use_fast_variance=False, dtype=dtype, rngs=rngs)


def _reflect_pad(x: jax.Array, p: int) -> jax.Array:
    """``nn.ReflectionPad2d(p)`` (the edge pixel is not repeated: numpy's ``reflect``)."""
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


class ConvTranspose(nnx.Module):
    """``nn.ConvTranspose2d(in, out, k, stride, padding)`` with bias, no spectral norm.

    ``kernel[h, w, i, o]`` is torch's ``weight[i, o, h, w]`` (torch stores (in, out, kH, kW)).
    Computed as a stride-1 conv of the input dilated by ``stride``, padded by
    ``k - 1 - padding``, with the spatially flipped kernel. Output size
    ``(H - 1) * stride - 2 * padding + k`` (2H for k=4, s=2, p=1).

    Our own rather than ``nnx.ConvTranspose``: torch's semantics need its
    ``transpose_kernel=True``, under which flax stores the kernel as (kH, kW, out, in); this
    keeps the (in, out) order of HWIO like every other conv here, which ``init_weights`` (fan
    from the last axis) and saved UNet checkpoints rely on.
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


class UNetGenerator(nnx.Module):
    """Table 1's UNet-like baseline: EdgeConnect's generator widened to 512 channels.

    encoder: reflect-pad 3, 7x7 conv 3->64; 4x4 stride-2 convs 64->128->256->512; each conv
      followed by instance norm (affine=False, so no parameters) and ReLU;
    middle: ``blocks`` (the release's ``residual_blocks``, 4) tanh ``ResBlock(512, dilation
      2)`` at 1/8 scale, with biases, no SN, no norm: the release's ``ResnetBlock(512, 2)`` of
      src/networks.py. EdgeConnect's block would put instance norm in it instead of tanh; the
      parameter count is the same either way (the norm has no parameters);
    decoder: 4x4 stride-2 transposed convs 512->256->128->64, each + instance norm + ReLU;
      reflect-pad 3, 7x7 conv 64->3. All convs have biases, none is spectrally normalised.
    Output ``(tanh(x) + 1) / 2`` in [0, 1]. Input (B, H, W, 3), H and W multiples of 8.
    ``train`` changes nothing (instance norm always uses the sample's statistics). ``remat``
    recomputes each encoder step, block and decoder step in the backward pass.

    The release declares ``InstanceNorm2d(256)`` after the 512-channel encoder conv and
    ``InstanceNorm2d(128)`` after the 256-channel decoder conv; without affine parameters torch
    only warns and normalises every channel, which is what this does.
    """

    def __init__(self, blocks: int = MAX_BLOCKS, *, dtype: jnp.dtype = jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs):
        check_blocks(blocks)
        self.blocks = blocks
        self.remat = remat
        kw = dict(use_bias=True, spectral_norm=False, dtype=dtype, rngs=rngs)
        self.encoder = nnx.List([
            Conv(3, 64, 7, **kw),  # after a reflection pad of 3
            Conv(64, 128, 4, stride=2, padding=1, **kw),
            Conv(128, 256, 4, stride=2, padding=1, **kw),
            Conv(256, 512, 4, stride=2, padding=1, **kw),
        ])
        self.middle = Sequential([ResBlock(512, 2, **kw) for _ in range(blocks)])
        self.decoder = nnx.List([
            ConvTranspose(c, c // 2, 4, stride=2, padding=1, dtype=dtype, rngs=rngs)
            for c in (512, 256, 128)
        ])
        self.final = Conv(64, 3, 7, **kw)  # after a reflection pad of 3
        # One per encoder and decoder conv, in call order; no parameters, nothing to save.
        self.norms = nnx.List([instance_norm(c, dtype=dtype, rngs=rngs)
                               for c in (64, 128, 256, 512, 256, 128, 64)])

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        check_spatial_size(x.shape, 8)
        conv_norm_relu = maybe_remat(lambda conv, norm, h: jax.nn.relu(norm(conv(h))), self.remat)
        block = maybe_remat(lambda b, h: b(h, train=train), self.remat)
        h = _reflect_pad(x, 3)
        for conv, norm in zip(self.encoder, self.norms[:4], strict=True):
            h = conv_norm_relu(conv, norm, h)
        for b in self.middle.layers:
            h = block(b, h)
        for deconv, norm in zip(self.decoder, self.norms[4:], strict=True):
            h = conv_norm_relu(deconv, norm, h)
        return to_image(self.final(_reflect_pad(h, 3)))
