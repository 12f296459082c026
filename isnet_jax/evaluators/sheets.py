"""Images for a person to look at instead of numbers to read.

- Evaluation sheets (``image_sheet``): rows of ``masked input | result | ground truth`` with
  each hole outlined, one per hole-ratio band.
- Training sample grids (``sample_grid``, ``write_samples``): rows of ``masked input |
  prediction | composite | ground truth`` of a fixed batch, to TensorBoard and PNG files.
"""

from __future__ import annotations

import io

import jax
import jax.experimental.multihost_utils
import numpy as np
from etils import epath

from isnet_jax import masks, summaries

OUTLINE = (1.0, 0.0, 0.9)  # magenta: rare in photographs
GUTTER = 2  # pixels of white between panels and rows


def hole_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool: hole pixels within ``width`` pixels (4-neighbourhood) of a known pixel."""
    hole = np.asarray(mask).reshape(mask.shape[0], mask.shape[1]) < 0.5
    near_known = ~hole
    for _ in range(width):
        grown = near_known.copy()
        grown[1:] |= near_known[:-1]
        grown[:-1] |= near_known[1:]
        grown[:, 1:] |= near_known[:, :-1]
        grown[:, :-1] |= near_known[:, 1:]
        near_known = grown
    return hole & near_known


def image_sheet(image: np.ndarray, mask: np.ndarray, result: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) images in [0, 1], (N, H, W, 1) masks (1 = known), (N, H, W, 3) results ->
    one uint8 image: a row per image of masked input (holes white) | result | ground truth."""
    n, h, w, _ = image.shape
    width = max(1, min(h, w) // 128)
    rows = []
    for i in range(n):
        known = np.asarray(mask[i], np.float32)
        panels = [image[i] * known + (1.0 - known), result[i], image[i]]
        edge = hole_outline(known, width)
        outlined = []
        for panel in panels:
            panel = np.array(panel, np.float32)
            panel[edge] = OUTLINE
            outlined.append(panel)
        gap = np.ones((h, GUTTER, 3), np.float32)
        rows.append(np.concatenate([outlined[0], gap, outlined[1], gap, outlined[2]], axis=1))
    gap = np.ones((GUTTER, rows[0].shape[1], 3), np.float32)
    sheet = np.concatenate([x for row in rows for x in (row, gap)][:-1], axis=0)
    return (np.clip(sheet, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    """Encoded in memory: epath paths may be ``gs://``, where PIL cannot open files."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_grid(image, mask, pred, max_rows: int = 4) -> np.ndarray:
    """(B, H, W, 3) image and prediction, (B, H, W, 1) mask (1 = known) -> uint8
    (rows * H, 4 * W, 3)."""
    image, mask, pred = (np.asarray(a, np.float32)[:max_rows] for a in (image, mask, pred))
    masked = image * mask + (1.0 - mask)
    comp = masks.composite(image, mask, pred)
    rows = [np.concatenate(cols, axis=1) for cols in zip(masked, pred, comp, image, strict=True)]
    grid = np.concatenate(rows, axis=0)
    return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_samples(
    writer: summaries.MetricWriter, workdir: epath.Path, step: int, image, mask, pred
) -> None:
    """Gathers the global batch from every process; process 0 writes the grid as
    ``samples/step_XXXXXXXX.png`` and to TensorBoard (``samples``)."""
    image, mask, pred = (
        np.asarray(jax.experimental.multihost_utils.process_allgather(a, tiled=True))
        for a in (image, mask, pred)
    )
    if jax.process_index() != 0:
        return
    grid = sample_grid(image, mask, pred)
    writer.write_images(step, {"samples": grid[None]})
    samples = workdir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    (samples / f"step_{step:08d}.png").write_bytes(png_bytes(grid))
