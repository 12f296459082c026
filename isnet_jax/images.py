"""Reading image files: any PIL-readable file to 8 bits, upright; the one image decoder.

One place for what every reader of image files needs: 16-bit, 32-bit and float images reduced
to 8 bits (``to_8bit``; PIL's own ``convert`` would clip them at 255, i.e. turn them white), the
EXIF orientation an editor displays (``upright``), the files of a folder that PIL can read
(``image_files``). ``load_rgb`` is what the training and evaluation pipeline reads (RGB, from a
path or a dataset record's bytes), ``load_image`` what inpainting reads (the file's own layout).
A file that cannot be read is an ``InputError`` naming it, whatever PIL raised.
"""

from __future__ import annotations

import io
import os
import pathlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from isnet_jax import errors


class InputError(errors.UserError):
    """A problem with one image or mask file, named in the message. Where many are read (a
    training set, a folder of photos) that one is skipped or reported and the others go on."""


def decoded(source: bytes | str | os.PathLike, what: str,
            decode: Callable[[Image.Image], Any]) -> Any:
    """``decode(Image.open(source))`` of a path or an encoded file's bytes; any failure is an
    ``InputError`` naming it.

    Everything that touches the file's bytes runs in here: a broken file makes PIL raise
    OSError, ValueError, SyntaxError (a PNG or WebP whose EXIF block is not TIFF data),
    struct.error, TypeError, ... depending on the format and where its bytes go wrong, and
    every one of them is a problem of that one image, not a reason to stop the run.
    """
    encoded = isinstance(source, (bytes, bytearray, np.bytes_))
    name = f"an encoded {what} of {len(source)} bytes" if encoded else f"{what} {source}"
    try:
        with warnings.catch_warnings():
            # Between PIL's limit and twice it PIL only warns (a bare "warnings.warn(" line
            # under the message); above twice it refuses, which ``too_large`` words.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(source)) if encoded else source) as image:
                return decode(image)
    except Image.DecompressionBombError as e:
        raise InputError(f"cannot read {name}: {too_large(e)}") from None
    except Exception as e:  # noqa: BLE001 - see above: PIL's errors have no common type
        reason = str(e).strip() or type(e).__name__
        fix = "" if encoded else "; replace the file, or open and save it again in an image editor"
        raise InputError(f"cannot read {name}: {reason}{fix}") from None


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
    masks are drawn on it). Turns ``image`` itself (no copy of an image already upright)."""
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    return to_8bit(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode (L, LA, RGBA, P, 1, CMYK, YCbCr, 16-bit and float grey)."""
    if image.mode == "RGB":
        return image
    image = to_8bit(image)  # 16-bit, 32-bit and float grey: convert would clip at 255
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb(source: bytes | str | os.PathLike, min_size: int = 0) -> Image.Image:
    """An image file, or an encoded file's bytes (a dataset record), as an upright 8-bit RGB
    PIL image: what training and evaluation read. Raises ``InputError`` naming what it cannot
    read.

    ``min_size`` lets JPEGs decode at a reduced scale whose shorter side is still at least
    ``min_size`` (libjpeg's DCT scaling: several times faster than decoding the full image).
    """

    def rgb(image: Image.Image) -> Image.Image:
        if min_size and image.format == "JPEG":
            w, h = image.size
            s = min(w, h)
            # draft keeps both sides >= the request: ask for the scale of the shorter side.
            image.draft("RGB", (max(1, w * min_size // s), max(1, h * min_size // s)))
        return to_rgb(upright(image))

    return decoded(source, "image", rgb)


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
