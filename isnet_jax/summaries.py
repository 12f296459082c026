"""What a run shows a person: sample grids of training, written to TensorBoard and as PNG files.

A grid has one row per image: ``masked input | prediction | composite | ground truth`` (holes of
the masked input painted white).
"""

from __future__ import annotations

import io

import jax
import jax.experimental.multihost_utils
import numpy as np
from clu import metric_writers
from etils import epath
from PIL import Image


def sample_grid(image, mask, pred, max_rows: int = 4) -> np.ndarray:
    """(B, H, W, 3) image and prediction, (B, H, W, 1) mask (1 = known) -> uint8
    (rows * H, 4 * W, 3)."""
    image, mask, pred = (np.asarray(a, np.float32)[:max_rows] for a in (image, mask, pred))
    masked = image * mask + (1.0 - mask)
    comp = pred * (1.0 - mask) + image * mask
    rows = [np.concatenate(cols, axis=1) for cols in zip(masked, pred, comp, image, strict=True)]
    grid = np.concatenate(rows, axis=0)
    return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_png(path: epath.Path, array: np.ndarray) -> None:
    """Through a buffer: epath paths may be ``gs://``, where PIL cannot open files."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def write_samples(
    writer: metric_writers.MetricWriter, workdir: epath.Path, step: int, image, mask, pred
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
    write_png(samples / f"step_{step:08d}.png", grid)
