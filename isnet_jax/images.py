"""Reading image files: any PIL-readable file to 8 bits, upright, in the layout it was saved in.

One place for what every reader of user files needs: 16-bit, 32-bit and float images reduced to
8 bits (``to_8bit``; PIL's own ``convert`` would clip them at 255, i.e. turn them white), the
EXIF orientation an editor displays (``upright``), the files of a folder that PIL can read
(``image_files``). A file that cannot be read is an ``InputError`` naming it, whatever PIL
raised.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PIL import Image, ImageOps


class InputError(Exception):
    """A problem with one image or mask; reported on one line, the run goes on."""


def decoded(path: pathlib.Path, what: str, decode: Callable[[Image.Image], Any]) -> Any:
    """``decode(Image.open(path))``; any failure is an ``InputError`` naming the file.

    Everything that touches the file's bytes runs in here: a broken file makes PIL raise
    OSError, ValueError, SyntaxError (a PNG or WebP whose EXIF block is not TIFF data),
    struct.error, TypeError, ... depending on the format and where its bytes go wrong, and
    every one of them is a problem of that one image, not a reason to stop the run.
    """
    try:
        with warnings.catch_warnings():
            # Between PIL's limit and twice it PIL only warns (a bare "warnings.warn(" line
            # under the message); above twice it refuses, which ``too_large`` words.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return decode(image)
    except Image.DecompressionBombError as e:
        raise InputError(f"cannot read {what} {path}: {too_large(e)}") from None
    except Exception as e:  # noqa: BLE001 - see above: PIL's errors have no common type
        reason = str(e).strip() or type(e).__name__
        raise InputError(f"cannot read {what} {path}: {reason}; replace the file, or open and "
                         "save it again in an image editor") from None


def too_large(error: Image.DecompressionBombError) -> str:
    """PIL's refusal of a huge image, in words: how large, and what limit applies."""
    pixels = [int(n) for n in str(error).replace("(", " ").split() if n.isdigit()]
    size = f" ({pixels[0]:,} pixels)" if pixels else ""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (f"the image is too large to decode{size}: PIL refuses images of more than "
            f"{limit:,} pixels (twice PIL.Image.MAX_IMAGE_PIXELS) as possible decompression "
            "bombs; scale it down first")


def header_size(path: pathlib.Path, what: str) -> tuple[int, int]:
    """(height, width) as displayed, from the header only (no pixel decoding)."""

    def size(image: Image.Image) -> tuple[int, int]:
        w, h = image.size
        orientation = image.getexif().get(0x0112, 1)
        return (w, h) if orientation in (5, 6, 7, 8) else (h, w)

    return decoded(path, what, size)


def to_8bit(image: Image.Image) -> Image.Image:
    """Integer and float single-channel modes (16-bit PNGs, TIFFs) -> 8-bit "L", rounded; other
    modes unchanged."""
    if image.mode.startswith("I;16") or image.mode == "I":
        a = np.asarray(image, dtype=np.float64)
        # "I" also holds 8-bit data from some decoders: only rescale what exceeds 8 bits.
        scale = 257.0 if image.mode != "I" or a.max() > 255 else 1.0
        return Image.fromarray(np.clip(np.round(a / scale), 0, 255).astype(np.uint8))
    if image.mode == "F":
        a = np.asarray(image, dtype=np.float64)
        a = a * 255.0 if a.max() <= 1.0 else a
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    return image


def upright(image: Image.Image) -> Image.Image:
    """Decoded, 8-bit, and turned as its EXIF orientation says (as editors display it, and as
    masks are drawn on it)."""
    image.load()
    return to_8bit(ImageOps.exif_transpose(image))


def load_image(path: pathlib.Path) -> np.ndarray:
    """Any PIL-readable image as uint8 in the layout its result is written in: (H, W) for grey
    images (16-bit and float reduced to 8 bits), (H, W, 4) for images with transparency,
    (H, W, 3) for the rest (palette, CMYK, ... converted). Raises ``InputError`` naming a
    file it cannot read."""

    def pixels(image: Image.Image) -> np.ndarray:
        image = upright(image)
        if image.mode in ("L", "1"):
            return np.asarray(image.convert("L"), dtype=np.uint8)
        if "A" in image.getbands() or "transparency" in image.info:
            return np.asarray(image.convert("RGBA"), dtype=np.uint8)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    return decoded(path, "image", pixels)


def image_files(
    folder: str | os.PathLike, extensions: Iterable[str] | None = None, *,
    recursive: bool = False,
) -> tuple[list[pathlib.Path], int]:
    """``(images, others)``: the files in ``folder`` (and below it if ``recursive``) whose
    extension is one of ``extensions`` (default: every format PIL reads), sorted, hidden files
    left out; and how many other files there are."""
    folder = pathlib.Path(folder)
    suffixes = {e.lower() for e in (extensions or Image.registered_extensions())}
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir())
                   if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in suffixes]
    return images, len(files) - len(images)
