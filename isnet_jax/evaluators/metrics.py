"""Image-quality metrics, as the ISNet paper and the EdgeConnect script compute them.

All functions take NHWC float batches in [0, 1] (``a`` and ``b`` the same shape), are pure JAX
(jit-able, shapes static) and return one value per image, shape ``(B,)``, so that callers can
shard the batch and aggregate as they like (the paper averages per-image values over a band).

Which number is which (the reference document, "Metrics as the paper reports them"):

- ``psnr``: the release's PSNR. Both images go to 0-255 integers the way the release's
  ``postprocess`` does it (``int(x * 255)``, i.e. truncation, not rounding), then
  ``20 log10(255 / sqrt(MSE))``. Identical images give ``inf`` (the release returns 0 there,
  which would silently drag a band's mean down).
- ``ssim(variant="release")``: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03 on [0, 1],
  borders zero-padded and the whole map averaged (the release's PyTorch ``SSIM``).
  ``ssim(variant="skimage")``: the same window but only where it fits inside the image, i.e.
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)``.
- ``l1_percent``: ``100 * mean|a - b|``.
- ``edgeconnect_*``: EdgeConnect's ``scripts/metrics.py``, which produced the comparison
  columns of the paper's Table 3: 8-bit files, converted to grey with skimage's ``rgb2gray``,
  PSNR on [0, 1], SSIM with a 51-pixel uniform window and sample covariance, and
  "MAE" = ``sum|a - b| / sum(a + b)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# skimage.color.rgb2gray's weights (ITU-R BT.709 luma), which EdgeConnect's script uses.
RGB2GRAY = (0.2125, 0.7154, 0.0721)
K1, K2 = 0.01, 0.03
GAUSSIAN_WINDOW, GAUSSIAN_SIGMA = 11, 1.5
EDGECONNECT_WINDOW = 51
SSIM_VARIANTS = ("release", "skimage")
METRIC_NAMES = ("psnr", "ssim", "ssim_skimage", "l1_percent", "ec_psnr", "ec_ssim", "ec_mae")

# Exact float32 convolutions: on GPUs the default precision may use TF32, whose 10-bit mantissa
# moves SSIM in the third decimal.
_HIGHEST = jax.lax.Precision.HIGHEST


def quantize_release(x: jax.Array) -> jax.Array:
    """[0, 1] -> 0..255 levels as the release's ``postprocess`` does: ``(x * 255).int()``.

    float32 product then truncation toward zero (so 0.9999 -> 254, not 255); returned as
    float32 integers.
    """
    return jnp.trunc(x.astype(jnp.float32) * jnp.float32(255.0))


def _check_pair(a: jax.Array, b: jax.Array) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            "expected two NHWC batches of the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _psnr_from_mse(mse: jax.Array, peak: float) -> jax.Array:
    # mse == 0 gives +inf (log10(0) = -inf), which is the honest value for identical images.
    return 20.0 * jnp.log10(peak) - 10.0 * jnp.log10(mse)


@jax.jit
def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """The release's PSNR in dB per image: ``20 log10(255 / sqrt(MSE))`` on 0-255 integers."""
    _check_pair(a, b)
    diff = quantize_release(a) - quantize_release(b)
    return _psnr_from_mse(jnp.mean(diff * diff, axis=(1, 2, 3)), 255.0)


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def _separable_filter(x: jax.Array, taps: np.ndarray, padding: int) -> jax.Array:
    """Filters each channel of NHWC ``x`` with ``taps`` along H then W (zero padding)."""
    c = x.shape[-1]
    k = len(taps)
    out = x
    for shape in ((k, 1, 1, 1), (1, k, 1, 1)):
        kernel = jnp.broadcast_to(jnp.asarray(taps).reshape(shape), shape[:3] + (c,))
        pad = ((padding, padding), (0, 0)) if shape[0] == k else ((0, 0), (padding, padding))
        out = jax.lax.conv_general_dilated(
            out,
            kernel,
            window_strides=(1, 1),
            padding=pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
            precision=_HIGHEST,
        )
    return out


def _ssim_map(
    a: jax.Array, b: jax.Array, taps: np.ndarray, padding: int, cov_norm: float = 1.0
) -> jax.Array:
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    # One filter call over the five stacked statistics keeps it to two convolutions.
    stats = jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1)
    mu_a, mu_b, e_aa, e_bb, e_ab = jnp.split(_separable_filter(stats, taps, padding), 5, axis=-1)
    var_a = cov_norm * (e_aa - mu_a * mu_a)
    var_b = cov_norm * (e_bb - mu_b * mu_b)
    cov = cov_norm * (e_ab - mu_a * mu_b)
    c1, c2 = K1**2, K2**2  # data range 1
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return num / den


def _check_window(shape: tuple[int, ...], window: int, what: str) -> None:
    if min(shape[1], shape[2]) < window:
        raise ValueError(
            f"{what} needs images of at least {window}x{window} pixels, got {shape[1]}x{shape[2]}"
        )


@functools.partial(jax.jit, static_argnames="variant")
def ssim(a: jax.Array, b: jax.Array, variant: str = "release") -> jax.Array:
    """Gaussian SSIM (window 11, sigma 1.5) per image, averaged over pixels and channels.

    ``variant="release"`` zero-pads the borders (the paper's numbers); ``"skimage"`` keeps only
    the positions where the whole window fits, as ``skimage.metrics.structural_similarity``.
    """
    _check_pair(a, b)
    taps = _gaussian_1d(GAUSSIAN_WINDOW, GAUSSIAN_SIGMA)
    if variant == "release":
        smap = _ssim_map(a, b, taps, padding=GAUSSIAN_WINDOW // 2)
    elif variant == "skimage":
        _check_window(a.shape, GAUSSIAN_WINDOW, "ssim(variant='skimage')")
        smap = _ssim_map(a, b, taps, padding=0)
    else:
        raise ValueError(f"unknown SSIM variant {variant!r}; choose one of {SSIM_VARIANTS}")
    return jnp.mean(smap, axis=(1, 2, 3))


@jax.jit
def l1_percent(a: jax.Array, b: jax.Array) -> jax.Array:
    """``100 * mean|a - b|`` per image (the paper's "L1 (%)")."""
    _check_pair(a, b)
    return 100.0 * jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(1, 2, 3))


def _edgeconnect_gray(x: jax.Array, quantize: bool) -> jax.Array:
    # The script reads the saved 8-bit files, divides by 255, then applies rgb2gray.
    if quantize:
        x = quantize_release(x) / jnp.float32(255.0)
    weights = jnp.asarray(RGB2GRAY, jnp.float32)
    return jnp.einsum("bhwc,c->bhw", x.astype(jnp.float32), weights, precision=_HIGHEST)[..., None]


@functools.partial(jax.jit, static_argnames="quantize")
def edgeconnect_psnr(a: jax.Array, b: jax.Array, quantize: bool = True) -> jax.Array:
    """EdgeConnect's PSNR: grey images in [0, 1], ``10 log10(1 / MSE)``.

    ``quantize`` first takes both to 8 bits as the release writes its result files (the
    script reads files); pass False for already-quantised inputs or to skip it.
    """
    _check_pair(a, b)
    diff = _edgeconnect_gray(a, quantize) - _edgeconnect_gray(b, quantize)
    return _psnr_from_mse(jnp.mean(diff * diff, axis=(1, 2, 3)), 1.0)


@functools.partial(jax.jit, static_argnames="quantize")
def edgeconnect_ssim(a: jax.Array, b: jax.Array, quantize: bool = True) -> jax.Array:
    """EdgeConnect's SSIM: grey, 51x51 uniform window, sample covariance, borders cropped.

    Equals ``skimage.metrics.structural_similarity(gray_a, gray_b, win_size=51,
    data_range=1)``; images must be at least 51 pixels on each side.
    """
    _check_pair(a, b)
    _check_window(a.shape, EDGECONNECT_WINDOW, "edgeconnect_ssim")
    n = EDGECONNECT_WINDOW
    taps = np.full((n,), 1.0 / n, np.float32)
    smap = _ssim_map(
        _edgeconnect_gray(a, quantize),
        _edgeconnect_gray(b, quantize),
        taps,
        padding=0,
        cov_norm=n * n / (n * n - 1.0),
    )
    return jnp.mean(smap, axis=(1, 2, 3))


@functools.partial(jax.jit, static_argnames="quantize")
def edgeconnect_mae(a: jax.Array, b: jax.Array, quantize: bool = True) -> jax.Array:
    """EdgeConnect's "MAE": ``sum|a - b| / sum(a + b)`` on the grey images (not a mean error)."""
    _check_pair(a, b)
    ga, gb = _edgeconnect_gray(a, quantize), _edgeconnect_gray(b, quantize)
    return jnp.sum(jnp.abs(ga - gb), axis=(1, 2, 3)) / jnp.sum(ga + gb, axis=(1, 2, 3))


def mean_colour_fill(image: jax.Array, mask: jax.Array) -> jax.Array:
    """The trivial baseline: every hole pixel painted the mean colour of the image's known pixels.

    (B, H, W, 3), (B, H, W, 1) -> (B, H, W, 3), per image and channel. An image with no known
    pixel gets black (there is no colour to copy). A model that does not beat this on the
    composite has learned nothing an average could not do.
    """
    known = jnp.sum(mask, axis=(1, 2), keepdims=True)
    mean = jnp.sum(image * mask, axis=(1, 2), keepdims=True) / jnp.maximum(known, 1.0)
    return jnp.broadcast_to(mean, image.shape)


@jax.jit
def compute_all(result: jax.Array, image: jax.Array) -> dict[str, jax.Array]:
    """Every metric of ``result`` (normally the composite) against the ground truth ``image``.

    Returns ``{name: (B,) array}`` for the names in ``METRIC_NAMES``. ``ssim_skimage`` and
    ``ec_ssim`` are NaN for images smaller than their window (11 and 51 pixels), where skimage
    and the script would raise.
    """
    _check_pair(result, image)
    side = min(result.shape[1], result.shape[2])
    nan = jnp.full((result.shape[0],), jnp.nan)
    return {
        "psnr": psnr(image, result),
        "ssim": ssim(image, result, variant="release"),
        "ssim_skimage": (nan if side < GAUSSIAN_WINDOW else ssim(image, result, variant="skimage")),
        "l1_percent": l1_percent(image, result),
        "ec_psnr": edgeconnect_psnr(image, result),
        "ec_ssim": nan if side < EDGECONNECT_WINDOW else edgeconnect_ssim(image, result),
        "ec_mae": edgeconnect_mae(image, result),
    }
