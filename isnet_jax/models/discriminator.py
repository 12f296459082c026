"""The spectrally normalised PatchGAN discriminator of EdgeConnect, as ISNet's release uses it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from isnet_jax.models.layers import Conv, leaky_relu

_WIDTHS = (3, 64, 128, 256, 512, 1)
_STRIDES = (2, 2, 2, 1, 1)


class Discriminator(nnx.Module):
    """``d(x)`` -> ``(logits, [a1, ..., a5])``; ``a5`` is the logit map itself.

    Five SN 4x4 convs (padding 1, no bias), LeakyReLU(0.2) after the first four. For a
    (B, 256, 256, 3) input the logits are (B, 30, 30, 1). No sigmoid: the hinge loss takes logits.
    """

    def __init__(self, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.convs = nnx.List(
            [
                Conv(_WIDTHS[i], _WIDTHS[i + 1], 4, stride=_STRIDES[i], padding=1,
                     dtype=dtype, rngs=rngs)
                for i in range(5)
            ]
        )

    def __call__(
        self, x: jax.Array, *, train: bool = False
    ) -> tuple[jax.Array, list[jax.Array]]:
        feats = []
        for i, conv in enumerate(self.convs):
            x = conv(x, train=train)
            if i < 4:
                x = leaky_relu(x)
            feats.append(x.astype(jnp.float32))
        return feats[-1], feats
