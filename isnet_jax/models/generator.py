"""ISNet's generator (``RFFNet`` in the official release).

Two streams: branch 0 stays at full resolution with 32 channels (texture); branch 1 starts at
1/2 scale and halves its resolution / doubles its width every stage (semantics, dilation 2).
Each stage is Inpainting (residual blocks per branch) -> Interaction (strided convs carry
branch 0 down, sub-pixel convs carry branch 1 up) -> Aggregation (a conv reduces each
concatenation). A final fusion up-samples the 1/16-scale 512-channel branch back to full
resolution and merges it with branch 0.

Shapes for an input (B, H, W, 3) with H, W multiples of 16:
  stem -> [32 @ H]; stage k -> [32 @ H, 32*2^(k+1) @ H/2^(k+1)]; output (B, H, W, 3) in [0, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from isnet_jax import errors
from isnet_jax.models.layers import Conv, Sequential, pixel_shuffle

WIDTHS = (32, 64, 128, 256, 512)


class ResBlock(nnx.Module):
    """``tanh(x + conv2(tanh(conv1(x))))``; conv1 is dilated by ``dilation``."""

    def __init__(self, channels: int, dilation: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = Conv(channels, channels, 3, padding=dilation, dilation=dilation,
                          dtype=dtype, rngs=rngs)
        self.conv2 = Conv(channels, channels, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = self.conv2(jnp.tanh(self.conv1(x, train=train)), train=train)
        return jnp.tanh(x + y)


class Down(nnx.Module):
    """Strided SN conv (c -> 2c, half size) + tanh."""

    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        self.conv = Conv(channels, 2 * channels, 3, stride=2, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return jnp.tanh(self.conv(x, train=train))


class Up(nnx.Module):
    """Sub-pixel up-sampling: SN conv (c -> 2c), pixel shuffle (-> c/2 at twice the size), tanh."""

    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        self.conv = Conv(channels, 2 * channels, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return jnp.tanh(pixel_shuffle(self.conv(x, train=train)))


class Reduce(nnx.Module):
    """SN conv 3x3 to the target width + tanh (the Aggregation step)."""

    def __init__(self, in_channels: int, out_channels: int, *, dtype, rngs: nnx.Rngs):
        self.conv = Conv(in_channels, out_channels, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return jnp.tanh(self.conv(x, train=train))


class Stem(nnx.Module):
    """``tanh(conv2(tanh(conv1(x))) + shortcut(x))``: 3 -> 32 channels at full resolution."""

    def __init__(self, *, dtype, rngs: nnx.Rngs):
        self.shortcut = Conv(3, 32, 1, spectral_norm=False, dtype=dtype, rngs=rngs)
        self.conv1 = Conv(3, 64, 3, padding=1, dtype=dtype, rngs=rngs)
        self.conv2 = Conv(64, 32, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = self.conv2(jnp.tanh(self.conv1(x, train=train)), train=train)
        return jnp.tanh(y + self.shortcut(x))


class Stage(nnx.Module):
    """Stage ``k`` (0..3): [32 @ 1, c1 @ 1/2^k] -> [32 @ 1, 2*c1 @ 1/2^(k+1)].

    Stage 0 takes branch 0 only and creates branch 1.
    """

    def __init__(self, k: int, blocks: int, *, dtype, rngs: nnx.Rngs):
        self.k = k
        c1_in, c1_out = WIDTHS[k], WIDTHS[k + 1]
        kw = dict(dtype=dtype, rngs=rngs)
        self.blocks0 = Sequential([ResBlock(32, 1, **kw) for _ in range(blocks)])
        self.down0 = Sequential([Down(32 << s, **kw) for s in range(k + 1)])
        if k > 0:
            self.blocks1 = Sequential([ResBlock(c1_in, 2, **kw) for _ in range(blocks)])
            self.up1 = Sequential([Up(c1_in >> s, **kw) for s in range(k)])
            self.down1 = Down(c1_in, **kw)
            self.reduce0 = Reduce(64, 32, **kw)
            self.reduce1 = Reduce((32 << (k + 1)) + 2 * c1_in, c1_out, **kw)
        else:
            self.reduce0 = Reduce(32, 32, **kw)
            self.reduce1 = Reduce(64, c1_out, **kw)

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


class Generator(nnx.Module):
    """ISNet generator. ``g(masked_image, train=False)`` -> image in [0, 1].

    Args:
      blocks: residual blocks per branch per stage (1..4; the paper's model uses 4).
      dtype: compute dtype (parameters stay float32).
      remat: recompute each stage's activations in the backward pass instead of storing them
        (less memory for large batches, about one more forward of compute).
    Input (B, H, W, 3), H and W multiples of 16; output (B, H, W, 3).
    """

    def __init__(
        self,
        blocks: int = 4,
        *,
        dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if not 1 <= blocks <= 4:
            raise errors.ConfigError(f"blocks must be 1..4, got {blocks}")
        self.blocks = blocks
        self.remat = remat
        kw = dict(dtype=dtype, rngs=rngs)
        self.stem = Stem(**kw)
        self.stages = nnx.List([Stage(k, blocks, **kw) for k in range(4)])
        self.up = Sequential([Up(512 >> s, **kw) for s in range(4)])
        self.final1 = Conv(64, 32, 7, padding=3, use_bias=True, **kw)
        self.final2 = Conv(32, 3, 3, padding=1, use_bias=True, **kw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        check_spatial_size(x.shape)
        xs = [self.stem(x, train=train)]
        for stage in self.stages:
            if self.remat:
                xs = nnx.remat(lambda s, v: s(v, train=train))(stage, xs)
            else:
                xs = stage(xs, train=train)
        y = jnp.concatenate([xs[0], self.up(xs[1], train=train)], axis=-1)
        y = self.final2(jnp.tanh(self.final1(y, train=train)), train=train)
        return ((jnp.tanh(y) + 1.0) / 2.0).astype(jnp.float32)


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
