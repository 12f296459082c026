"""ISNet's generator (``RFFNet`` in the official release).

Two streams: branch 0 stays at full resolution with 32 channels (texture); branch 1 starts at
1/2 scale and halves its resolution / doubles its width every stage (semantics, dilation 2).
Each stage is Inpainting (residual blocks per branch) -> Interaction (strided convs carry
branch 0 down, sub-pixel convs carry branch 1 up) -> Aggregation (a conv reduces each
concatenation). A final fusion up-samples the 1/16-scale 512-channel branch back to full
resolution and merges it with branch 0.

Shapes for an input (B, H, W, 3) with H, W multiples of 16 (``width`` = 32, the release's):
  stem -> [32 @ H]; stage k -> [32 @ H, 32*2^(k+1) @ H/2^(k+1)]; output (B, H, W, 3) in [0, 1].
A smaller ``width`` scales every channel count with it (tests and rehearsals: 1/16 of the
parameters at width 8); only width 32 has the release's shapes.

``TwoStream`` is that network with the switches Table 1's ablation turns (activation,
up-sampling, final fusion): ``Generator`` is ISNet, ``ablation.BaseModel`` / ``BaseModelFF``
are the two ablation rows built from the same stem and stages.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from isnet_jax import errors
from isnet_jax.models.layers import (
    Activation,
    Conv,
    Sequential,
    maybe_remat,
    pixel_shuffle,
    upsample_bilinear,
)

WIDTH = 32  # branch 0's channels in the release; branch 1's are 2, 4, 8, 16 times it
MAX_BLOCKS = 4  # the paper's model; docs/reference/isnet.md gives the release's counts for 1..4


class ResBlock(nnx.Module):
    """``act(x + conv2(act(conv1(x))))``; 3x3 convs, conv1 dilated by ``dilation``.

    ``conv`` options go to both convs: ISNet's are spectrally normalised without bias, the
    UNet baseline's plain with bias.
    """

    def __init__(self, channels: int, dilation: int, *, act: Activation = jnp.tanh, dtype,
                 rngs: nnx.Rngs, **conv):
        self.act = act
        self.conv1 = Conv(channels, channels, 3, padding=dilation, dilation=dilation,
                          dtype=dtype, rngs=rngs, **conv)
        self.conv2 = Conv(channels, channels, 3, padding=1, dtype=dtype, rngs=rngs, **conv)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = self.conv2(self.act(self.conv1(x, train=train)), train=train)
        return self.act(x + y)


class ConvAct(nnx.Module):
    """SN 3x3 conv (padding 1, no bias) + ``act``: with ``stride=2`` a down step of the
    Interaction, with stride 1 the reduce step of the Aggregation."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1,
                 act: Activation = jnp.tanh, dtype, rngs: nnx.Rngs):
        self.act = act
        self.conv = Conv(in_channels, out_channels, 3, stride=stride, padding=1, dtype=dtype,
                         rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.act(self.conv(x, train=train))


class Up(nnx.Module):
    """Sub-pixel up-sampling: SN conv (c -> 2c), pixel shuffle (-> c/2 at twice the size), act."""

    def __init__(self, channels: int, *, act: Activation = jnp.tanh, dtype, rngs: nnx.Rngs):
        self.act = act
        self.conv = Conv(channels, 2 * channels, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.act(pixel_shuffle(self.conv(x, train=train)))


@dataclasses.dataclass(frozen=True)
class BilinearUp:
    """Parameter-free up-sampling by ``factor`` (the ablation's ``nn.Upsample(mode='bilinear')``),
    optionally after an activation (BaseModel's LeakyReLU ahead of it).

    Static configuration, not an ``nnx.Module``: it has nothing to train or save.
    """

    factor: int
    act: Activation | None = None

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no parameters, nothing differs between modes
        return upsample_bilinear(x if self.act is None else self.act(x), self.factor)


class Stem(nnx.Module):
    """``act(conv2(act(conv1(x))) + shortcut(x))``: 3 -> ``width`` (32) channels at full
    resolution."""

    def __init__(self, width: int = WIDTH, *, act: Activation = jnp.tanh, dtype,
                 rngs: nnx.Rngs):
        self.act = act
        self.shortcut = Conv(3, width, 1, spectral_norm=False, dtype=dtype, rngs=rngs)
        self.conv1 = Conv(3, 2 * width, 3, padding=1, dtype=dtype, rngs=rngs)
        self.conv2 = Conv(2 * width, width, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = self.conv2(self.act(self.conv1(x, train=train)), train=train)
        return self.act(y + self.shortcut(x))


class Stage(nnx.Module):
    """Stage ``k`` (0..3): [w @ 1, c1_in @ 1/2^k] -> [w @ 1, c1_out @ 1/2^(k+1)], w = ``width``
    (32).

    Stage 0 takes branch 0 only and creates branch 1. Branch 1 reaches full size by ``k``
    sub-pixel steps (``subpixel``, w channels on arrival) or by bilinear up-sampling (c1_in
    channels, so ``reduce0`` is wider); ``act_before_up`` puts an activation ahead of the
    bilinear up-sampling (BaseModel).
    """

    def __init__(self, k: int, c1_in: int, c1_out: int, blocks: int, *, act: Activation,
                 subpixel: bool, act_before_up: bool = False, width: int = WIDTH, dtype,
                 rngs: nnx.Rngs):
        self.k = k
        w = width
        kw = dict(act=act, dtype=dtype, rngs=rngs)
        self.blocks0 = Sequential([ResBlock(w, 1, **kw) for _ in range(blocks)])
        self.down0 = Sequential([ConvAct(w << s, 2 * w << s, stride=2, **kw)
                                 for s in range(k + 1)])
        if k > 0:
            self.blocks1 = Sequential([ResBlock(c1_in, 2, **kw) for _ in range(blocks)])
            if subpixel:
                self.up1 = Sequential([Up(c1_in >> s, **kw) for s in range(k)])
            else:
                self.up1 = BilinearUp(1 << k, act if act_before_up else None)
            self.down1 = ConvAct(c1_in, 2 * c1_in, stride=2, **kw)
            self.reduce0 = ConvAct(w + (w if subpixel else c1_in), w, **kw)
            self.reduce1 = ConvAct((w << (k + 1)) + 2 * c1_in, c1_out, **kw)
        else:
            self.reduce0 = ConvAct(w, w, **kw)
            self.reduce1 = ConvAct(2 * w, c1_out, **kw)

    def __call__(self, xs: list[jax.Array], *, train: bool = False) -> list[jax.Array]:
        x0 = self.blocks0(xs[0], train=train)
        if self.k == 0:
            y0, y1 = x0, self.down0(x0, train=train)
        else:
            x1 = self.blocks1(xs[1], train=train)
            y0 = jnp.concatenate([x0, self.up1(x1, train=train)], axis=-1)
            y1 = jnp.concatenate(
                [self.down0(x0, train=train), self.down1(x1, train=train)], axis=-1
            )
        return [self.reduce0(y0, train=train), self.reduce1(y1, train=train)]


class TwoStream(nnx.Module):
    """Stem, four stages and the output head of ISNet and of its Table 1 ablations.

    Args:
      blocks: residual blocks per branch per stage (1..4).
      act: the activation after every conv but the output (tanh in ISNet).
      subpixel: branch 1 is carried up by sub-pixel convs (ISNet) or bilinearly (ablations).
      final_fusion: the output merges the up-sampled 1/16 branch with branch 0 (7x7 conv, act,
        3x3 conv); without it the output is a 1x1 conv of branch 0.
      act_before_up, last_width, final2_sn: the ablation code's particulars (see ``ablation``);
        ``last_width`` None: ``16 * width``.
      width: branch 0's channels (the release's 32); branch 1's are 2, 4, 8, 16 times it.
      remat: recompute each stage's activations in the backward pass instead of storing them.
    """

    def __init__(
        self,
        blocks: int,
        *,
        act: Activation,
        subpixel: bool,
        final_fusion: bool,
        act_before_up: bool = False,
        last_width: int | None = None,
        final2_sn: bool = True,
        width: int = WIDTH,
        remat: bool = False,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_blocks(blocks)
        check_width(width)
        self.blocks = blocks
        self.remat = remat
        self.act = act
        self.final_fusion = final_fusion
        kw = dict(dtype=dtype, rngs=rngs)
        last_width = last_width or width << 4
        # Branch 1's width into each stage, and out of the last.
        widths = tuple(width << i for i in range(4)) + (last_width,)
        self.stem = Stem(width, act=act, **kw)
        self.stages = nnx.List([
            Stage(k, widths[k], widths[k + 1], blocks, act=act, subpixel=subpixel,
                  act_before_up=act_before_up, width=width, **kw)
            for k in range(4)
        ])
        if not final_fusion:
            self.final = Conv(width, 3, 1, use_bias=True, spectral_norm=False, **kw)
            return
        if subpixel:
            self.up = Sequential([Up(last_width >> s, act=act, **kw) for s in range(4)])
        else:
            self.up = BilinearUp(16)
        merged = width + (width if subpixel else last_width)
        self.final1 = Conv(merged, width, 7, padding=3, use_bias=True, **kw)
        self.final2 = Conv(width, 3, 3, padding=1, use_bias=True, spectral_norm=final2_sn, **kw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        check_spatial_size(x.shape)
        xs = [self.stem(x, train=train)]
        run = maybe_remat(lambda stage, v: stage(v, train=train), self.remat)
        for stage in self.stages:
            xs = run(stage, xs)
        if not self.final_fusion:
            return to_image(self.final(xs[0]))
        y = jnp.concatenate([xs[0], self.up(xs[1], train=train)], axis=-1)
        return to_image(self.final2(self.act(self.final1(y, train=train)), train=train))


class Generator(TwoStream):
    """ISNet generator. ``g(masked_image, train=False)`` -> image in [0, 1].

    Args:
      blocks: residual blocks per branch per stage (1..4; the paper's model uses 4).
      width: branch 0's channels, 32 in the release (the only width its weights fit); a
        smaller one (8: 1/16 of the parameters) for tests and rehearsals of the pipeline.
      dtype: compute dtype (parameters stay float32).
      remat: recompute each stage's activations in the backward pass instead of storing them
        (less memory for large batches, about one more forward of compute).
    Input (B, H, W, 3), H and W multiples of 16; output (B, H, W, 3).
    """

    def __init__(
        self,
        blocks: int = MAX_BLOCKS,
        *,
        width: int = WIDTH,
        dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        super().__init__(blocks, act=jnp.tanh, subpixel=True, final_fusion=True, width=width,
                         remat=remat, dtype=dtype, rngs=rngs)


def to_image(y: jax.Array) -> jax.Array:
    """The release's output ``(tanh(y) + 1) / 2``: an image in [0, 1], float32."""
    return ((jnp.tanh(y) + 1.0) / 2.0).astype(jnp.float32)


def check_blocks(blocks: int) -> None:
    if not 1 <= blocks <= MAX_BLOCKS:
        raise errors.ConfigError(
            f"model.blocks must be 1..{MAX_BLOCKS} (residual blocks per branch per stage), got "
            f"{blocks}; set --config.model.blocks=4 for the paper's model"
        )


def check_width(width: int) -> None:
    if not (isinstance(width, int) and width >= 1):
        raise errors.ConfigError(
            f"model.width must be a whole number of channels, at least 1, got {width!r}; "
            f"{WIDTH} is the release's (the only width its weights fit)")


def check_spatial_size(shape: tuple[int, ...], multiple: int = 16) -> None:
    """Raises a clear error for inputs the four 2x down-samplings cannot take."""
    if len(shape) != 4 or shape[-1] != 3:
        raise errors.ConfigError(
            f"expected an NHWC RGB batch (B, H, W, 3), got shape {tuple(shape)}"
        )
    h, w = shape[1], shape[2]
    if h % multiple or w % multiple:
        raise errors.ConfigError(
            f"image size {h}x{w} is not a multiple of {multiple}; pad or resize the input "
            f"(isnet_jax.inpaint pads by reflection and crops back)"
        )
