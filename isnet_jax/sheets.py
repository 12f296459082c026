"""Image sheets: rows of ``masked input | result | ground truth`` with each hole outlined."""

from __future__ import annotations

import io

import numpy as np

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
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
