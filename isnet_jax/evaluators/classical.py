"""Classical inpainters as evaluation baselines: OpenCV's Telea and Navier-Stokes methods.

A trained model is worth its training only where it beats what needs none: every evaluation
table shows these beside the mean-colour fill, on the very same images and masks. OpenCV
(``opencv-python-headless``) is the implementation users have and papers cite; it runs on the
host, image by image, on the uint8 pixels the eval pipeline decoded.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

from isnet_jax import errors

# key prefix in results (as the mean fill's "mean_fill/") -> (name in tables, OpenCV's flag name)
METHODS = {
    "telea": ("OpenCV Telea", "INPAINT_TELEA"),
    "navier_stokes": ("OpenCV Navier-Stokes", "INPAINT_NS"),
}
# The neighbourhood of each inpainted point, in pixels: OpenCV's own examples use 3.
RADIUS = 3


def parse(names: str) -> tuple[str, ...]:
    """``config.eval.classical_baselines`` ("telea,navier_stokes"; "" for none) -> names."""
    chosen = tuple(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
    unknown = [n for n in chosen if n not in METHODS]
    if unknown:
        raise errors.ConfigError(
            f"config.eval.classical_baselines={names!r}: {', '.join(unknown)} unknown; use "
            f"a comma-separated subset of {', '.join(METHODS)}, or '' for none"
        )
    if chosen:
        try:
            import cv2  # noqa: F401
        except ImportError as e:
            raise errors.ConfigError(
                f"config.eval.classical_baselines={names!r} needs OpenCV, which does not import "
                f"({e}): pip install opencv-python-headless, or set "
                "config.eval.classical_baselines=''"
            ) from e
    return chosen


def inpaint(image: np.ndarray, mask: np.ndarray, method: str, radius: int = RADIUS) -> np.ndarray:
    """OpenCV's inpainting of a batch: (B, H, W, 3) float in [0, 1] and (B, H, W, 1) with
    1 = known pixel -> (B, H, W, 3) float32 in [0, 1]; known pixels are left as they are.

    The images are rounded to uint8 (the eval pipeline's images are uint8 / 255, so exactly),
    the masks turned into OpenCV's convention (non-zero = hole). Images run in threads: OpenCV
    releases the GIL.
    """
    import cv2

    flag = getattr(cv2, METHODS[method][1])
    pixels = np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    holes = (np.asarray(mask)[..., 0] < 0.5).astype(np.uint8)

    def one(i: int) -> np.ndarray:
        if not holes[i].any():  # padding, or nothing to fill
            return pixels[i]
        return cv2.inpaint(np.ascontiguousarray(pixels[i]), holes[i], radius, flag)

    threads = max(1, min(len(pixels), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        out = np.stack(list(pool.map(one, range(len(pixels)))))
    return out.astype(np.float32) / np.float32(255.0)
