"""Fill the holes of your own images with a trained or converted ISNet generator.

    python -m isnet_jax.inpaint --checkpoint CKPT --input photos/ --mask masks/ --output out/

``--input`` and ``--mask`` are each a file or a folder. Folders are matched by file name stem
(``photos/cat.jpg`` takes ``masks/cat.png``); a single mask file serves every image. Each result
is the composite (known pixels copied from the input, holes from the network) written as
``OUTPUT/<stem>.png``, in the input's layout: grey stays grey, an alpha channel is kept as it
was (the network sees RGB: grey repeated, alpha dropped).

Masks: converted to grey and binarised at > 127. ``--mask-polarity`` is ``hole_black`` (the
default everywhere in this package, as in training and evaluation: black = hole, white = known,
the NVIDIA irregular-mask files) or ``hole_white`` (white = area to fill: EdgeConnect, LaMa and
OpenCV); see ``masks.POLARITIES``. Internally, as everywhere, 1 = known and 0 = hole.

Image sizes (``--resize-mode``): ``pad`` reflect-pads each image to a multiple of 16, runs at
full resolution and crops back; ``resize`` runs at ``--size`` x ``--size`` (the resolution the
model was trained at) and pastes the up-sampled result into the holes of the full-resolution
image; ``crop`` runs, for each group of touching hole pixels, a square crop around it with
``--crop-margin`` pixels of context (down-scaled to ``--size`` when larger; overlapping crops
merge into one) and pastes the up-sampled prediction into that crop's holes; ``auto`` (default)
is crop for images whose longer side exceeds ``--crop-above`` (default twice ``--size``) and pad
for the others. Each progress line says which mode its images ran in.

Per-image problems never stop the run; each gets one line and the other images go on: unreadable
image or mask (any file PIL cannot decode), missing or ambiguous mask, wrong-size mask (pad and
crop modes; resize mode resizes the mask with nearest neighbour), a mask with no hole (nothing
to fill: no output is written) and an existing output without ``--overwrite`` (left alone). A
mask that is all hole is processed with a warning: the model then invents an image from nothing.
The exit status is 1 if any image ended without an output file, else 0. A mistake in the command
(a path that does not exist, a bad flag, a missing or damaged checkpoint) is one ``error:`` line
and status 2; Ctrl-C is one line and status 130, and a result cut off by it is removed, so the
same command finishes the rest. Without ``--step``, a damaged latest checkpoint step is skipped
with a warning that names it (``checkpoint.restore_models``).

Python:

    from isnet_jax.inpaint import Inpainter
    inpainter = Inpainter.from_checkpoint("CKPT")
    result = inpainter(image_uint8, known_mask_hw)  # grey, RGB or RGBA -> the same layout
    done = inpainter.inpaint(image_uint8, known_mask_hw)  # .image, .mode, .windows
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image, ImageOps

from isnet_jax import errors, masks

MULTIPLE = 16  # four 2x down-samplings in the generator's low-resolution branch
RESIZE_MODES = ("auto", "crop", "resize", "pad")
# Crop mode: context kept around each group of holes, in image pixels (half the 256-px
# training size: the network sees about as much context per hole as in training).
CROP_MARGIN = 128
# The model was trained on masks of up to 60 % hole (the NVIDIA test bands end there).
TRAINED_MAX_HOLE = 0.6


# --------------------------------------------------------------------------------------------
# Reading images and masks
# --------------------------------------------------------------------------------------------


class InputError(Exception):
    """A problem with one image or mask; reported on one line, the run goes on."""


def _decoded(path: pathlib.Path, what: str, decode: Callable[[Image.Image], Any]) -> Any:
    """``decode(Image.open(path))``; any failure is an ``InputError`` naming the file.

    Everything that touches the file's bytes runs in here: a broken file makes PIL raise
    OSError, ValueError, SyntaxError (a PNG or WebP whose EXIF block is not TIFF data),
    struct.error, TypeError, ... depending on the format and where its bytes go wrong, and
    every one of them is a problem of that one image, not a reason to stop the run.
    """
    try:
        with Image.open(path) as image:
            return decode(image)
    except Exception as e:  # noqa: BLE001 - see above: PIL's errors have no common type
        reason = str(e).strip() or type(e).__name__
        raise InputError(f"cannot read {what} {path}: {reason}; replace the file, or open and "
                         "save it again in an image editor") from None


def _header_size(path: pathlib.Path, what: str) -> tuple[int, int]:
    """(height, width) as displayed, from the header only (no pixel decoding)."""

    def size(image: Image.Image) -> tuple[int, int]:
        w, h = image.size
        orientation = image.getexif().get(0x0112, 1)
        return (w, h) if orientation in (5, 6, 7, 8) else (h, w)

    return _decoded(path, what, size)


def _upright(image: Image.Image) -> Image.Image:
    # Editors display (and masks are drawn on) the EXIF-rotated image.
    image.load()
    return _to_8bit(ImageOps.exif_transpose(image))


def _to_8bit(image: Image.Image) -> Image.Image:
    """Integer and float single-channel modes (16-bit PNGs, TIFFs) -> 8-bit "L"."""
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


def load_image(path: pathlib.Path) -> np.ndarray:
    """Any PIL-readable image as uint8 in the layout its result is written in: (H, W) for grey
    images (16-bit and float reduced to 8 bits), (H, W, 4) for images with transparency,
    (H, W, 3) for the rest (palette, CMYK, ... converted). Raises ``InputError`` naming a
    file it cannot read."""

    def pixels(image: Image.Image) -> np.ndarray:
        image = _upright(image)
        if image.mode in ("L", "1"):
            return np.asarray(image.convert("L"), dtype=np.uint8)
        if "A" in image.getbands() or "transparency" in image.info:
            return np.asarray(image.convert("RGBA"), dtype=np.uint8)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    return _decoded(path, "image", pixels)


def mask_to_known(grey: np.ndarray, polarity: str = masks.DEFAULT_POLARITY) -> np.ndarray:
    """8-bit grey mask -> bool (H, W), True = known pixel (``polarity``: ``masks.POLARITIES``)."""
    return masks.known_where(np.asarray(grey) > 127, polarity)


def load_mask(path: pathlib.Path, polarity: str = masks.DEFAULT_POLARITY) -> np.ndarray:
    """A mask file as bool (H, W), True = known, after binarising its grey levels at > 127.
    Raises ``InputError`` naming a file it cannot read."""
    masks.check_polarity(polarity)
    grey = _decoded(
        path, "mask", lambda image: np.asarray(_upright(image).convert("L"), dtype=np.uint8)
    )
    return mask_to_known(grey, polarity)


def _check_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise errors.ConfigError(
            f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")


def _resize_known(known: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask."""
    image = Image.fromarray(known.astype(np.uint8) * 255)
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 127


# --------------------------------------------------------------------------------------------
# The model, functional style: split once, one jitted pure function
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _predict(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, known: jax.Array):
    # jit caches one executable per (graphdef, input shape): one compile per shape bucket.
    generator = nnx.merge(graphdef, state)
    return generator(images * known, train=False)


def _padded(n: int) -> int:
    return MULTIPLE * math.ceil(n / MULTIPLE)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom and right exclusive


def _window(bbox: Box, margin: int, height: int, width: int) -> Box:
    """The square of side (longer bbox side + 2 * margin) centred on ``bbox``, shifted inside
    the image; an axis the image is too short for is taken whole."""
    top, left, bottom, right = bbox
    side = max(bottom - top, right - left) + 2 * margin
    spans = []
    for lo, hi, dim in ((top, bottom, height), (left, right, width)):
        length = min(side, dim)
        start = (lo + hi) // 2 - length // 2
        spans.append(min(max(start, 0), dim - length))
        spans.append(spans[-1] + length)
    return spans[0], spans[2], spans[1], spans[3]


def _union(boxes: Sequence[Box]) -> Box:
    a = np.asarray(boxes)
    return int(a[:, 0].min()), int(a[:, 1].min()), int(a[:, 2].max()), int(a[:, 3].max())


def crop_windows(known: np.ndarray, margin: int = CROP_MARGIN) -> list[tuple[Box, Box]]:
    """The crops that ``mode="crop"`` runs the network on, as ``(window, holes_bbox)`` pairs.

    Each 8-connected group of hole pixels gets a square window around its bounding box with
    ``margin`` pixels of context on every side (clipped to the image). Groups whose windows
    overlap are merged and get one window around their joint bounding box, repeatedly, so the
    windows returned are pairwise disjoint and every hole pixel lies in exactly one of them.
    """
    from scipy import ndimage  # scikit-image's own dependency
    from skimage import measure

    height, width = known.shape
    hole = ~known
    near = hole
    if margin > 1:
        # Holes less than 2 * margin apart on both axes get overlapping windows, so they would
        # merge below anyway. Joining them first keeps the pairwise check to a few hundred
        # groups even for a mask sprinkled with specks (separable max filter: linear time).
        near = ndimage.maximum_filter(hole.view(np.uint8), size=2 * margin - 1) > 0
    labels = measure.label(near, connectivity=2) * hole  # group ids on the hole pixels only
    groups = [region.bbox for region in measure.regionprops(labels)]
    while True:
        windows = np.asarray([_window(b, margin, height, width) for b in groups]).reshape(-1, 4)
        # All pairs at once: a photo sprinkled with specks has thousands of groups.
        overlap = (
            (windows[:, None, 0] < windows[None, :, 2])
            & (windows[None, :, 0] < windows[:, None, 2])
            & (windows[:, None, 1] < windows[None, :, 3])
            & (windows[None, :, 1] < windows[:, None, 3])
        )
        count, labels = _components(overlap)
        if count == len(groups):
            return [(tuple(map(int, w)), b) for w, b in zip(windows, groups, strict=True)]
        groups = [
            _union([g for g, label in zip(groups, labels, strict=True) if label == i])
            for i in range(count)
        ]


def _components(adjacency: np.ndarray) -> tuple[int, np.ndarray]:
    from scipy.sparse.csgraph import connected_components  # scikit-image's own dependency

    if not len(adjacency):
        return 0, np.zeros(0, int)
    return connected_components(adjacency, directed=False)


@dataclasses.dataclass
class Inpainted:
    """What :meth:`Inpainter.inpaint` did to one image."""

    image: np.ndarray  # uint8, the input's shape: the input where known, filled in the holes
    mode: str  # "pad", "resize" or "crop": what ran ("auto" resolved)
    windows: list[Box]  # crop mode: the crops the network ran on; else the whole image
    network_shapes: list[tuple[int, int]]  # (H, W) of each forward pass


class Inpainter:
    """Runs a generator on images of any size and returns the composite.

    Modes (``RESIZE_MODES``): ``"pad"`` runs at full resolution (reflect-padded to a multiple of
    16); ``"resize"`` runs the whole image at ``size`` x ``size`` and pastes the up-sampled
    prediction into its holes; ``"crop"`` runs one crop per group of holes (see
    :func:`crop_windows`), each at ``size`` px at most, and pastes its holes back; ``"auto"``
    (default) is crop when the image's longer side exceeds ``crop_above`` (default: twice
    ``size``) and pad otherwise. Known pixels are always copied from the input exactly.
    """

    def __init__(
        self,
        generator: nnx.Module,
        *,
        mode: str = "auto",
        size: int = 256,
        margin: int = CROP_MARGIN,
        crop_above: int | None = None,
    ):
        _check_mode(mode)
        if size <= 0 or size % MULTIPLE:
            raise errors.ConfigError(
                f"--size must be a positive multiple of {MULTIPLE}, got {size}")
        if margin < 0:
            raise errors.ConfigError(f"--crop-margin must be at least 0, got {margin}")
        self.graphdef, self.state = nnx.split(generator)
        self.mode = mode
        self.size = size
        self.margin = margin
        self.crop_above = 2 * size if crop_above is None else crop_above
        self.meta: dict[str, Any] = {}

    @classmethod
    def from_checkpoint(
        cls,
        path: str | pathlib.Path,
        step: int | None = None,
        **options: Any,
    ) -> Inpainter:
        """Loads the generator of a training workdir, its ``checkpoints/`` folder or a folder
        written by ``python -m isnet_jax.convert`` (latest step unless ``step``). ``options``
        are the constructor's (``mode``, ``size``, ``margin``, ``crop_above``)."""
        from isnet_jax import checkpoint

        generator, meta = checkpoint.restore_generator(path, step)
        inpainter = cls(generator, **options)
        inpainter.meta = meta
        return inpainter

    def resolve(self, height: int, width: int, mode: str | None = None) -> str:
        """The mode that runs for an image of this size: ``mode`` (default ``self.mode``),
        with auto decided."""
        mode = mode or self.mode
        if mode != "auto":
            return mode
        return "crop" if max(height, width) > self.crop_above else "pad"

    def describe(self) -> str:
        """One line on what the modes do with these settings."""
        if self.mode == "auto":
            return (
                f"resize mode auto: crop (margin {self.margin} px, crops at {self.size} px) "
                f"for images larger than {self.crop_above} px on a side, pad for the others"
            )
        return f"resize mode {self.mode}"

    def network_shape(self, height: int, width: int, mode: str | None = None) -> tuple[int, int]:
        """The (height, width) the network runs at for a whole image in pad or resize mode."""
        mode = mode or self.resolve(height, width)
        if mode == "resize":
            return self.size, self.size
        if mode == "pad":
            return _padded(height), _padded(width)
        raise ValueError("crop mode runs one shape per crop: use crop_windows()")

    def predict(self, images: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Raw generator output for a batch: float (B, H, W, 3) in [0, 1] and (B, H, W, 1)
        masks (1 = known), H and W multiples of 16. Returns float32 (B, H, W, 3)."""
        out = _predict(
            self.graphdef,
            self.state,
            jnp.asarray(images, jnp.float32),
            jnp.asarray(known, jnp.float32),
        )
        return np.asarray(out)

    def prepare(
        self, image: np.ndarray, known: np.ndarray, mode: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (H, W, 3) image and bool (H, W) mask -> the network's float input and mask,
        for a whole image in pad or resize mode."""
        h, w = known.shape
        if (mode or self.resolve(h, w)) == "resize":
            return _shrink(image, known, self.size, self.size)
        ph, pw = _padded(h) - h, _padded(w) - w
        # Reflect the mask with the image: padding a hole's mirror image as "known" would
        # show the network the content it is meant to replace.
        x = np.pad(image.astype(np.float32) / 255.0, ((0, ph), (0, pw), (0, 0)), "reflect")
        k = np.pad(known.astype(np.float32), ((0, ph), (0, pw)), "reflect")
        return x, k[..., None]

    def finish(
        self,
        prediction: np.ndarray,
        image: np.ndarray,
        known: np.ndarray,
        mode: str | None = None,
    ) -> np.ndarray:
        """Network output for one prepared image -> uint8 (H, W, 3) composite at its size."""
        h, w = known.shape
        if (mode or self.resolve(h, w)) == "resize":
            pred = _enlarge(prediction, h, w)
        else:
            pred = _to_uint8(prediction[:h, :w])
        return np.where(known[..., None], image, pred)

    def crop(self, image: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, list, list]:
        """Crop mode on a uint8 (H, W, 3) image: returns the composite, the windows and the
        shape each ran at. Crops run one at a time: one compiled shape (``size`` x ``size``
        for any crop away from the image's borders) serves every crop of every image."""
        result = image.copy()
        windows, shapes = [], []
        for window, _ in crop_windows(known, self.margin):
            top, left, bottom, right = window
            h, w = bottom - top, right - left
            patch, patch_known = image[top:bottom, left:right], known[top:bottom, left:right]
            scale = min(1.0, self.size / max(h, w))
            if scale < 1.0:
                nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
                x, k = _shrink(patch, patch_known, nh, nw)
            else:
                nh, nw = h, w
                x = patch.astype(np.float32) / 255.0
                k = patch_known.astype(np.float32)[..., None]
            ph, pw = _padded(nh) - nh, _padded(nw) - nw
            x = np.pad(x, ((0, ph), (0, pw), (0, 0)), "reflect")
            k = np.pad(k, ((0, ph), (0, pw), (0, 0)), "reflect")
            prediction = self.predict(x[None], k[None])[0, :nh, :nw]
            pred = _enlarge(prediction, h, w) if scale < 1.0 else _to_uint8(prediction)
            hole = ~patch_known
            result[top:bottom, left:right][hole] = pred[hole]
            windows.append(window)
            shapes.append(x.shape[:2])
        return result, windows, shapes

    def inpaint(self, image: np.ndarray, mask: np.ndarray, mode: str | None = None) -> Inpainted:
        """Inpaints one image and says how.

        Args:
          image: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, or float in [0, 1].
          mask: (H, W) or (H, W, 1), 1 / True = known, 0 / False = hole (floats: > 0.5 known).
          mode: overrides the inpainter's mode for this image.
        Returns:
          An :class:`Inpainted` whose ``image`` has the input's shape: the input, byte for
          byte, where known (alpha everywhere), the network's prediction in the holes (its
          luma for a grey image).
        """
        if mode is not None:
            _check_mode(mode)
        original = _as_uint8(image)
        rgb = _rgb_view(original)
        known = np.asarray(mask)
        if known.ndim == 3 and known.shape[-1] == 1:
            known = known[..., 0]
        if known.shape != rgb.shape[:2]:
            raise ValueError(
                f"mask shape {np.shape(mask)} does not match the image's {rgb.shape[:2]}"
            )
        known = known > 0.5 if known.dtype != bool else known
        h, w = known.shape
        mode = self.resolve(h, w, mode)
        if mode == "crop":
            filled, windows, shapes = self.crop(rgb, known)
        else:
            x, k = self.prepare(rgb, known, mode)
            filled = self.finish(self.predict(x[None], k[None])[0], rgb, known, mode)
            windows, shapes = [(0, 0, h, w)], [x.shape[:2]]
        return Inpainted(_restore_layout(filled, original, known), mode, windows, shapes)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Inpaints one image (see :meth:`inpaint`); returns the composite, uint8, shaped as
        the input."""
        return self.inpaint(image, mask).image


def _shrink(image: np.ndarray, known: np.ndarray, height: int, width: int):
    """uint8 image and bool mask -> float image and (H, W, 1) mask at (height, width)."""
    small = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
    x = np.asarray(small, np.float32) / 255.0
    # Area-average the hole map: a low-resolution pixel is a hole if any pixel under it is,
    # so thin holes survive down-sampling and no hole content leaks in as "known".
    hole = Image.fromarray((~known).astype(np.uint8) * 255)
    hole = hole.resize((width, height), Image.Resampling.BOX)
    return x, (np.asarray(hole) == 0).astype(np.float32)[..., None]


def _enlarge(prediction: np.ndarray, height: int, width: int) -> np.ndarray:
    """Float (h, w, 3) prediction -> uint8 (height, width, 3), bicubic."""
    image = Image.fromarray(_to_uint8(prediction))
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))


def _as_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4))):
        raise ValueError(
            f"expected an (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA image, got {image.shape}"
        )
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        return _to_uint8(image.astype(np.float32))
    raise ValueError(f"expected uint8 or float [0, 1] pixels, got {image.dtype}")


def _rgb_view(image: np.ndarray) -> np.ndarray:
    """What the network sees: grey repeated in three channels, RGBA without its alpha."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _restore_layout(filled: np.ndarray, original: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The RGB composite back in the input's channel layout, known pixels copied exactly."""
    if original.ndim == 3 and original.shape[-1] == 3:
        return filled
    if original.ndim == 3 and original.shape[-1] == 4:
        return np.concatenate([filled, original[..., 3:]], axis=-1)
    grey = np.asarray(Image.fromarray(filled).convert("L"))  # ITU-R 601-2 luma, as PIL
    grey = np.where(known, original.reshape(known.shape), grey)
    return grey.reshape(original.shape)


# --------------------------------------------------------------------------------------------
# Command line: plan jobs, bucket by network shape, run in batches
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Job:
    image: pathlib.Path
    mask: pathlib.Path
    output: pathlib.Path
    shape: tuple[int, int] = (0, 0)  # (H, W) of the image
    mode: str = ""  # the resize mode it runs in (auto decided)


class Report:
    """Counts outcomes and prints one line per event."""

    def __init__(self) -> None:
        self.written = 0
        self.exists = 0
        self.failed: list[pathlib.Path] = []

    def error(self, path: pathlib.Path, message: str) -> None:
        print(f"error: {path}: {message}", file=sys.stderr, flush=True)
        self.failed.append(path)

    @staticmethod
    def warn(path: pathlib.Path, message: str) -> None:
        print(f"warning: {path}: {message}", file=sys.stderr, flush=True)


def _image_files(folder: pathlib.Path) -> tuple[list[pathlib.Path], int]:
    extensions = {e.lower() for e in Image.registered_extensions()}
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in extensions]
    return images, len(files) - len(images)


def plan(args: argparse.Namespace, report: Report) -> list[Job]:
    """Pairs images with masks and outputs; reports what cannot run."""
    source, mask_path, output = pathlib.Path(args.input), pathlib.Path(args.mask), args.output
    if source.is_dir():
        images, ignored = _image_files(source)
        if ignored:
            print(f"ignoring {ignored} file(s) in {source} without an image extension",
                  flush=True)
    elif source.is_file():
        images = [source]
    else:
        raise errors.MissingFileError(
            f"--input {source} does not exist; give an image file or a folder of images")
    if mask_path.is_dir():
        by_stem: dict[str, list[pathlib.Path]] = {}
        for p in _image_files(mask_path)[0]:
            by_stem.setdefault(p.stem, []).append(p)
    elif not mask_path.is_file():
        raise errors.MissingFileError(
            f"--mask {mask_path} does not exist; give a mask file or a folder of masks")

    jobs, claimed = [], {}
    for image in images:
        if mask_path.is_dir():
            found = by_stem.get(image.stem, [])
            if not found:
                report.error(image, f"no mask named {image.stem}.* in {mask_path}")
                continue
            if len(found) > 1:
                names = ", ".join(p.name for p in found)
                report.error(image, f"several masks match ({names}); keep one")
                continue
            mask = found[0]
        else:
            mask = mask_path
        out = output / f"{image.stem}.png"
        if out in claimed:
            report.error(image, f"{claimed[out].name} also writes {out}; rename one of them")
            continue
        claimed[out] = image
        if out.exists() and not args.overwrite:
            print(f"skip: {image}: {out} exists (pass --overwrite to replace it)")
            report.exists += 1
            continue
        jobs.append(Job(image, mask, out))
    return jobs


def _bucket(
    jobs: list[Job], inpainter: Inpainter, report: Report
) -> tuple[dict[tuple, list[Job]], list[Job]]:
    """Reads headers only, decides each job's mode and groups the pad and resize jobs by the
    shape the network will run at; crop jobs (one forward per crop) come back as a list."""
    buckets: dict[tuple[str, int, int], list[Job]] = {}
    crops = []
    for job in jobs:
        try:
            job.shape = _header_size(job.image, "image")
            mask_shape = _header_size(job.mask, "mask")
        except InputError as e:
            report.error(job.image, str(e))
            continue
        job.mode = inpainter.resolve(*job.shape)
        if mask_shape != job.shape and job.mode != "resize":
            report.error(
                job.image,
                f"mask {job.mask} is {mask_shape[1]}x{mask_shape[0]} but the image is "
                f"{job.shape[1]}x{job.shape[0]} (width x height); give a mask of the image's "
                "size, or pass --resize-mode resize to resize masks",
            )
            continue
        if job.mode == "crop":
            crops.append(job)
        else:
            key = (job.mode, *inpainter.network_shape(*job.shape, job.mode))
            buckets.setdefault(key, []).append(job)
    return buckets, crops


def _load(job: Job, inpainter: Inpainter, polarity: str, report: Report):
    """Decodes one job's image and mask; None (reported) when it cannot or need not run."""
    try:
        image = load_image(job.image)
        known = load_mask(job.mask, polarity)
    except InputError as e:
        report.error(job.image, str(e))
        return None
    h, w = image.shape[:2]
    if known.shape != (h, w):  # resize mode only: the others rejected these from the headers
        print(f"note: {job.image}: mask {job.mask} resized to {w}x{h} (nearest neighbour)")
        known = _resize_known(known, h, w)
    hole = 1.0 - known.mean()
    if hole == 0.0:
        report.error(
            job.image,
            f"mask {job.mask} has no hole with --mask-polarity {polarity}: nothing to fill, "
            "no output written",
        )
        return None
    if hole == 1.0:
        report.warn(
            job.image,
            f"mask {job.mask} is all hole with --mask-polarity {polarity}: nothing to condition "
            "on, the result is invented from scratch",
        )
    elif hole > TRAINED_MAX_HOLE:
        other = masks.other_polarity(polarity)
        report.warn(
            job.image,
            f"{100 * hole:.0f}% of the image is hole (the model was trained up to "
            f"{100 * TRAINED_MAX_HOLE:.0f}%); if the mask marks what to keep, pass "
            f"--mask-polarity {other}",
        )
    return image, known


def _write(job: Job, result: np.ndarray, overwrite: bool, report: Report) -> None:
    try:
        # "x" refuses to replace a file that appeared since planning.
        f = open(job.output, "wb" if overwrite else "xb")
    except FileExistsError:
        print(f"skip: {job.image}: {job.output} exists (pass --overwrite to replace it)")
        report.exists += 1
        return
    except OSError as e:
        report.error(job.image, f"cannot write {job.output}: {e}")
        return
    try:
        with f:
            Image.fromarray(result).save(f, format="PNG")
    except BaseException as e:
        # A half-written PNG (disk full, Ctrl-C) must not stay: the next run would skip it
        # as done.
        job.output.unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        report.error(job.image, f"cannot write {job.output}: {e}")
        return
    report.written += 1


def run(args: argparse.Namespace) -> int:
    """The command line's work; raises ``errors.UserError`` for a mistake in the command."""
    report = Report()
    jobs = plan(args, report)
    if not jobs:
        print(f"nothing to do: {report.exists} output(s) exist, {len(report.failed)} failed")
        return 1 if report.failed else 0

    inpainter = Inpainter.from_checkpoint(
        args.checkpoint,
        args.step,
        mode=args.resize_mode,
        size=args.size,
        margin=args.crop_margin,
        crop_above=args.crop_above,
    )
    meta = inpainter.meta
    print(
        f"generator {meta.get('generator')} (blocks={meta.get('blocks')}, step {meta.get('step')}) "
        f"from {args.checkpoint}; running on {jax.devices()[0].platform} "
        f"({jax.device_count()} device(s)), {inpainter.describe()}",
        flush=True,
    )
    try:  # only now: a failed start leaves no empty folder behind
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise errors.UserError(
            f"cannot create the --output folder {args.output} ({e}); give a folder you can "
            "write to") from None
    buckets, crops = _bucket(jobs, inpainter, report)
    batches = []
    for key, bucket in buckets.items():
        size = min(args.batch_size, len(bucket))
        batches += [(key, size, bucket[i : i + size]) for i in range(0, len(bucket), size)]
    crop_note = f" and {len(crops)} in crop mode, one at a time" if crops else ""
    print(f"{sum(map(len, buckets.values()))} image(s) in {len(batches)} batch(es){crop_note}",
          flush=True)

    compiled = set()
    for index, ((mode, *shape), size, batch) in enumerate(batches, 1):
        errors.check_interrupted()
        start = time.perf_counter()
        loaded = [(job, _load(job, inpainter, args.mask_polarity, report)) for job in batch]
        # (job, image as read, its RGB view, known): the view once per image, for both ends.
        loaded = [(job, item[0], _rgb_view(item[0]), item[1])
                  for job, item in loaded if item is not None]
        if not loaded:
            continue
        inputs = [inpainter.prepare(rgb, known, mode) for _, _, rgb, known in loaded]
        # Fill a short batch with copies: every batch of a bucket has one shape, one compile.
        inputs += [inputs[0]] * (size - len(inputs))
        predictions = inpainter.predict(
            np.stack([x for x, _ in inputs]), np.stack([k for _, k in inputs])
        )
        for (job, image, rgb, known), prediction in zip(loaded, predictions, strict=False):
            filled = inpainter.finish(prediction, rgb, known, mode)
            _write(job, _restore_layout(filled, image, known), args.overwrite, report)
        note = "" if (*shape, size) in compiled else ", including compilation"
        compiled.add((*shape, size))
        names = ", ".join(job.image.name for job, *_ in loaded)
        print(
            f"batch {index}/{len(batches)}: {len(loaded)} image(s), {mode} mode at "
            f"{shape[1]}x{shape[0]}, in {time.perf_counter() - start:.2f} s{note}: {names}",
            flush=True,
        )

    for index, job in enumerate(crops, 1):
        errors.check_interrupted()
        start = time.perf_counter()
        item = _load(job, inpainter, args.mask_polarity, report)
        if item is None:
            continue
        done = inpainter.inpaint(*item, mode="crop")
        _write(job, done.image, args.overwrite, report)
        new = {(*s, 1) for s in done.network_shapes} - compiled
        compiled |= new
        shapes = sorted({f"{w}x{h}" for h, w in done.network_shapes})
        print(
            f"crop {index}/{len(crops)}: {job.image.name} ({job.shape[1]}x{job.shape[0]}), "
            f"crop mode: {len(done.windows)} crop(s) run at {', '.join(shapes)}, in "
            f"{time.perf_counter() - start:.2f} s{', including compilation' if new else ''}",
            flush=True,
        )

    print(
        f"done: {report.written} written to {args.output}, {report.exists} already existed, "
        f"{len(report.failed)} failed"
    )
    return 1 if report.failed else 0


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose the checkpoint and how a photo meets the network's size; this
    command's and the web page's (``app.py``)."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="training workdir, its checkpoints/ folder, or a converted folder",
    )
    parser.add_argument(
        "--step", type=int, default=None, help="checkpoint step to load (default: the latest)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=256,
        help="network resolution for resize and crop modes: the model's training size "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--crop-margin",
        type=int,
        default=CROP_MARGIN,
        help="crop mode: context in image pixels around each group of holes (default: %(default)s)",
    )
    parser.add_argument(
        "--crop-above",
        type=int,
        default=None,
        help="auto mode: crop images whose longer side exceeds this many pixels "
        "(default: twice --size)",
    )


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.size <= 0 or args.size % MULTIPLE:
        parser.error(f"--size must be a positive multiple of {MULTIPLE}, got {args.size}")
    if args.crop_margin < 0:
        parser.error(f"--crop-margin must be at least 0, got {args.crop_margin}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = errors.ArgumentParser(
        prog="python -m isnet_jax.inpaint",
        description="Fill the holes of images with an ISNet generator checkpoint.",
    )
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument(
        "--mask",
        required=True,
        help="a mask file (used for every image) or a folder matched by stem",
    )
    parser.add_argument(
        "--output", required=True, type=pathlib.Path, help="folder for the results (<stem>.png)"
    )
    parser.add_argument(
        "--mask-polarity",
        type=masks.polarity_flag,
        default=masks.DEFAULT_POLARITY,
        metavar="{" + ",".join(masks.POLARITIES) + "}",
        help="which colour of the mask files marks the hole: hole_black (black = hole, white = "
        "known: the NVIDIA masks, and training's default) or hole_white (default: %(default)s)",
    )
    parser.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        default="auto",
        help="pad: full resolution, reflect-padded to a multiple of 16; resize: run the "
        "whole image at --size and paste into the holes; crop: run a crop around each group of "
        "holes at --size at most and paste its holes back; auto: crop for images larger than "
        "--crop-above, pad for the others (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="images per forward pass (default: %(default)s)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (default: leave them and skip)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    check_model_arguments(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0, 1 if an image failed, 2 for a mistake in
    the command, 130 for Ctrl-C)."""
    args = parse_args(argv)
    return errors.run_cli(
        lambda: run(args),
        f"no result in {args.output} is left half written; the same command does the rest",
    )


if __name__ == "__main__":
    sys.exit(main())
