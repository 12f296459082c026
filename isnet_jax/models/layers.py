"""Building blocks shared by the generators and the discriminator.

Everything is NHWC with HWIO kernels. Parameters are float32; ``dtype`` is the compute dtype
that activations and the convolution run in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isnet_jax import errors

_EPS = 1e-12  # torch.nn.functional.normalize's default, used by torch's spectral_norm
# The release's BaseNetwork.init_weights() defaults: init_type="normal", gain=0.001.
RELEASE_INIT_STD = 1e-3
INIT_SCHEMES = ("release", "orthogonal")


Activation = Callable[[jax.Array], jax.Array]


def leaky_relu(x: jax.Array) -> jax.Array:
    """``nn.LeakyReLU(0.2)``, the slope of every LeakyReLU in the release."""
    return jax.nn.leaky_relu(x, 0.2)


class SpectralState(nnx.Variable):
    """Power-iteration vectors of a spectrally normalised kernel: state, never trained."""


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x), _EPS)


def kernel_matrix(kernel: jax.Array) -> jax.Array:
    """HWIO kernel -> (O, I*H*W) matrix in the OIHW order that torch's spectral_norm uses."""
    return jnp.transpose(kernel, (3, 2, 0, 1)).reshape(kernel.shape[3], -1)


def _matrix_to_kernel(w: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of ``kernel_matrix``: (O, I*H*W) -> HWIO ``shape``."""
    h, wd, i, o = shape
    return jnp.transpose(w.reshape(o, i, h, wd), (2, 3, 1, 0))


def random_unit(key: jax.Array, n: int) -> jax.Array:
    """A random direction, as torch's spectral_norm starts ``u`` and ``v``: normalised N(0, 1)."""
    return _l2_normalize(jax.random.normal(key, (n,), jnp.float32))


def init_kernel(
    key: jax.Array, shape: tuple[int, ...], scheme: str = "release", scale: float = RELEASE_INIT_STD
) -> jax.Array:
    """A raw HWIO kernel, its entries of root-mean-square ``scale``.

    ``release``: i.i.d. N(0, scale^2), as ``BaseNetwork.init_weights`` (scale 0.001).
    ``orthogonal``: the (O, I*H*W) matrix that spectral normalisation sees has orthonormal rows
    (or columns, whichever are fewer), rescaled: every singular value is equal, so ``W / sigma``
    is an isometry on its row space and one power iteration finds sigma exactly (BigGAN pairs
    spectral norm with this init).
    """
    if scheme == "release":
        return scale * jax.random.normal(key, shape, jnp.float32)
    if scheme == "orthogonal":
        o, n = shape[3], shape[0] * shape[1] * shape[2]
        w = jax.nn.initializers.orthogonal()(key, (o, n), jnp.float32)
        rms = (min(o, n) / (o * n)) ** 0.5
        return _matrix_to_kernel(w * (scale / rms), shape)
    raise errors.ConfigError(
        f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}"
    )


class Conv(nnx.Module):
    """A 2-D convolution with an optional spectral normalisation of its kernel.

    Unlike ``nnx.SpectralNorm`` (which writes ``W / sigma`` back into the kernel), the raw kernel
    stays the trainable parameter and the normalised kernel is computed on the fly, exactly as
    ``torch.nn.utils.spectral_norm`` does: with ``train=True`` one power iteration updates the
    stored ``u``, ``v``; with ``train=False`` sigma comes from the stored vectors unchanged.

    Padding is symmetric zero padding of ``padding`` pixels (as ``nn.ZeroPad2d`` or Conv2d's
    ``padding`` in the release).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        use_bias: bool = False,
        spectral_norm: bool = True,
        init_scale: float = RELEASE_INIT_STD,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        shape = (kernel_size, kernel_size, in_features, out_features)
        # One draw from ``rngs`` per conv (each draw writes its counter; see init_weights).
        k_kernel, k_u, k_v = jax.random.split(rngs.params(), 3)
        # The release's initialisation (its init_weights()) at ``init_scale``; init_weights
        # below re-draws it for another scheme or scale.
        self.kernel = nnx.Param(init_kernel(k_kernel, shape, scale=init_scale))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.spectral_norm = spectral_norm
        if spectral_norm:
            # As torch's spectral_norm creates them: independent random directions, no power
            # iteration until the first train-mode call.
            self.u = SpectralState(random_unit(k_u, out_features))
            self.v = SpectralState(random_unit(k_v, in_features * kernel_size**2))
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.dtype = dtype

    def normalized_kernel(self, train: bool) -> jax.Array:
        """Returns ``kernel / sigma`` (float32); with ``train`` runs one power iteration first."""
        kernel = self.kernel[...]
        if not self.spectral_norm:
            return kernel
        w = kernel_matrix(kernel)
        u, v = self.u[...], self.v[...]
        if train:
            w_sg = jax.lax.stop_gradient(w)
            v = _l2_normalize(w_sg.T @ u)
            u = _l2_normalize(w_sg @ v)
            self.u[...] = u
            self.v[...] = v
        sigma = jnp.dot(u, w @ v)
        return kernel / sigma

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kernel = self.normalized_kernel(train).astype(self.dtype)
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel,
            window_strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            rhs_dilation=(self.dilation, self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def pixel_shuffle(x: jax.Array, factor: int = 2) -> jax.Array:
    """PyTorch's ``PixelShuffle`` in NHWC: input channel ``c*r*r + i*r + j`` -> output channel ``c``
    at offset (i, j). (B, H, W, C*r*r) -> (B, H*r, W*r, C). TensorFlow's ``depth_to_space``
    orders channels differently and would scramble the official weights."""
    b, h, w, c = x.shape
    r = factor
    x = x.reshape(b, h, w, c // (r * r), r, r)
    x = jnp.transpose(x, (0, 1, 4, 2, 5, 3))
    return x.reshape(b, h * r, w * r, c // (r * r))


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

    ``jax.image.resize(..., "bilinear")`` computes the same interpolation (2e-7 apart on CPU)
    but as a contraction with a weight matrix, at the backend's default matmul precision (bf16
    passes on TPU) and with cost input x output per axis; two gathers and a lerp per axis are
    exact on every backend and cost proportional to the output.
    """
    for axis in (1, 2):
        i0, i1, frac = _bilinear_taps(x.shape[axis], factor)
        shape = [1] * x.ndim
        shape[axis] = -1
        w = jnp.asarray(frac, x.dtype).reshape(shape)
        x = jnp.take(x, i0, axis=axis) * (1 - w) + jnp.take(x, i1, axis=axis) * w
    return x


def maybe_remat(fn: Callable, remat: bool) -> Callable:
    """``fn``, or with ``remat`` ``nnx.remat(fn)``: its activations are recomputed in the
    backward pass instead of stored (less memory, about one more forward of compute)."""
    return nnx.remat(fn) if remat else fn


class Sequential(nnx.Module):
    """Layers applied in order, each called with ``train`` when it takes it."""

    def __init__(self, layers: Sequence[nnx.Module]):
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for layer in self.layers:
            x = layer(x, train=train)
        return x

    def __len__(self) -> int:
        return len(self.layers)


def init_weights(
    module: nnx.Module,
    scheme: str = "release",
    scale: float = RELEASE_INIT_STD,
    *,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """``module`` with every conv drawn afresh, as the release's ``init_weights()`` does.

    Kernels (raw kernels of spectrally normalised convs, plain and transposed convs alike)
    from ``init_kernel(scheme, scale)``; biases 0; spectral-norm ``u``, ``v`` new random unit
    vectors with no power iteration. Under spectral normalisation the forward pass ignores the
    kernel's scale but Adam does not: ``scale`` sets the effective learning rate (an Adam step
    of ``lr`` turns a kernel by about ``lr / scale``). ``module`` may be abstract
    (``nnx.eval_shape``): every one of its variables is a conv's, and all are drawn here.

    Returns a new module built from the new state; ``module`` is not changed. Why: writing into
    the Variables of a module being traced costs time quadratic in the trace's length (each
    write probes the tracer's sharding: 20 s for the 4-block generator). And all kernels come
    from one normal draw and all ``u``, ``v`` from another: a threefry draw per conv made the
    initialiser take 30 s and more to compile on the CPU.
    """
    if scheme not in INIT_SCHEMES:
        raise errors.ConfigError(
            f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}"
        )
    convs = [(path, m) for path, m in nnx.iter_modules(module)
             if isinstance(getattr(m, "kernel", None), nnx.Param)]
    k_kernels, k_vectors, k_orthogonal = jax.random.split(rngs.params(), 3)
    new: dict[tuple, jax.Array] = {}
    shapes = [m.kernel.shape for _, m in convs]
    if scheme == "release":
        kernels = _split_draw(scale * jax.random.normal(
            k_kernels, (sum(math.prod(x) for x in shapes),), jnp.float32), shapes)
    else:  # a QR per kernel: only the demo's scheme, and still one compiled program
        kernels = [init_kernel(k, shape, scheme, scale)
                   for k, shape in zip(jax.random.split(k_orthogonal, len(shapes)), shapes,
                                       strict=True)]
    for (path, m), kernel in zip(convs, kernels, strict=True):
        new[(*path, "kernel")] = kernel
        if getattr(m, "bias", None) is not None:
            new[(*path, "bias")] = jnp.zeros(m.bias.shape, jnp.float32)
    vectors = [(path, name, getattr(m, name).shape) for path, m in convs
               if getattr(m, "spectral_norm", False) for name in ("u", "v")]
    draw = jax.random.normal(k_vectors, (sum(x[2][0] for x in vectors),), jnp.float32)
    for (path, name, _), x in zip(vectors, _split_draw(draw, [x[2] for x in vectors]),
                                  strict=True):
        new[(*path, name)] = _l2_normalize(x)
    graphdef, state = nnx.split(module)
    flat = list(nnx.to_flat_state(state))
    missing = [p for p, _ in flat if p not in new]
    if missing:
        raise AssertionError(f"init_weights draws convs only; {missing[0]} is something else")
    return nnx.merge(graphdef, nnx.from_flat_state([(p, v.replace(new[p])) for p, v in flat]))


def _split_draw(flat: jax.Array, shapes: list[tuple[int, ...]]) -> list[jax.Array]:
    """Consecutive pieces of one 1-D draw, reshaped to ``shapes``."""
    bounds = np.cumsum([math.prod(shape) for shape in shapes])[:-1]
    return [x.reshape(shape) for x, shape in zip(jnp.split(flat, bounds), shapes, strict=True)]
