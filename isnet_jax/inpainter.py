"""Inpainting images of any size with a trained generator: ``Inpainter``.

    from isnet_jax import Inpainter
    inpainter = Inpainter.from_checkpoint("CKPT")
    result = inpainter(image_uint8, known_mask_hw)  # grey, RGB or RGBA -> the same layout
    done = inpainter.inpaint(image_uint8, known_mask_hw)  # .image, .mode, .windows

The generator runs as one jitted pure function over its ``nnx.split`` state (one compilation per
input shape), or in onnxruntime (``onnx_runtime``): then, once its export is cached,
``from_checkpoint`` reads no Orbax checkpoint and JAX is never imported. How a photo meets the
network's size (``RESIZE_MODES``) is the Inpainter's docstring; which crops crop mode runs is
``crop_windows``; how much hole is too much for the model is ``hole_verdict`` (the command line
and the web page judge a mask by it). The command line is ``python -m isnet_jax.inpaint``, the
page ``python -m isnet_jax.app``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from isnet_jax import errors, onnx_runtime
from isnet_jax.sizes import MULTIPLE

if TYPE_CHECKING:
    from flax import nnx

RESIZE_MODES = ("auto", "crop", "resize", "pad")
# Crop mode: context kept around each group of holes, in image pixels (half the 256-px
# training size: the network sees about as much context per hole as in training).
CROP_MARGIN = 128
# The model was trained on masks of up to 60 % hole (the NVIDIA test bands end there).
TRAINED_MAX_HOLE = 0.6


def _check_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise errors.ConfigError(
            f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")


# --------------------------------------------------------------------------------------------
# The model, functional style: split once, one jitted pure function
# --------------------------------------------------------------------------------------------


@functools.cache
def _jitted_predict():
    """The jitted forward, made on first use: a run in onnxruntime never imports JAX."""
    import jax
    from flax import nnx

    @functools.partial(jax.jit, static_argnums=0)
    def predict(graphdef, state, images, known):
        # jit caches one executable per (graphdef, input shape): one compile per shape bucket.
        generator = nnx.merge(graphdef, state)
        return generator(images * known, train=False)

    return predict


def _padded(n: int) -> int:
    return MULTIPLE * math.ceil(n / MULTIPLE)


def to_uint8(x: np.ndarray) -> np.ndarray:
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

    ``runtime`` (``onnx_runtime.RUNTIMES``): ``"jax"`` (XLA) by default; ``"auto"`` (the
    command lines' default) runs onnxruntime on a CPU where it can, ``"onnx"`` always. What
    runs is ``self.runtime`` ("jax" or "onnx"), and why, ``self.runtime_note``.
    """

    def __init__(
        self,
        generator: nnx.Module,
        *,
        mode: str = "auto",
        size: int = 256,
        margin: int = CROP_MARGIN,
        crop_above: int | None = None,
        runtime: str = "jax",
        onnx_key: str | None = None,
        meta: dict[str, Any] | None = None,
    ):
        """``onnx_key`` and ``meta``: the checkpoint's (``from_checkpoint``), which name and
        go into its ONNX export; without them the export is named by the weights."""
        from flax import nnx

        self._configure(mode, size, margin, crop_above, runtime)
        self.graphdef, self.state = nnx.split(generator)
        self.meta = dict(meta or {})
        self._onnx, self.runtime_note = None, "XLA"
        stored = {k: v for k, v in self.meta.items() if k != "step"}  # a key is not a step
        export = functools.partial(onnx_runtime.OnnxGenerator.export, generator,
                                   key=onnx_key, meta=stored if onnx_key else None)
        if runtime == "auto":
            self.runtime_note = onnx_runtime.usable()
            if self.runtime_note is None:
                try:
                    self._onnx = export()
                except errors.ConfigError as e:  # not ISNet: the ONNX export has no graph
                    self.runtime_note = str(e).split(";")[0]
                except OSError as e:  # the cache folder cannot be written (a read-only home)
                    self.runtime_note = f"the ONNX model could not be written: {e}"
        elif runtime == "onnx":
            self._onnx = export()
        if self._onnx is not None:
            self.runtime, self.runtime_note = "onnx", f"onnxruntime, {self._onnx.path}"
        else:
            self.runtime = "jax"

    def _configure(
        self, mode: str, size: int, margin: int, crop_above: int | None, runtime: str
    ) -> None:
        _check_mode(mode)
        onnx_runtime.check_runtime(runtime)
        if size <= 0 or size % MULTIPLE:
            raise errors.ConfigError(
                f"--size must be a positive multiple of {MULTIPLE}, got {size}")
        if margin < 0:
            raise errors.ConfigError(f"--crop-margin must be at least 0, got {margin}")
        self.mode = mode
        self.size = size
        self.margin = margin
        self.crop_above = 2 * size if crop_above is None else crop_above

    @classmethod
    def from_checkpoint(
        cls,
        path: str | pathlib.Path,
        step: int | None = None,
        **options: Any,
    ) -> Inpainter:
        """Loads the generator of a training workdir, its ``checkpoints/`` folder or a folder
        written by ``python -m isnet_jax.convert`` (latest step unless ``step``). ``options``
        are the constructor's (``mode``, ``size``, ``margin``, ``crop_above``, ``runtime``).

        In onnxruntime the checkpoint's export is made once (named by the checkpoint's files:
        ``onnx_runtime.checkpoint_key``); later calls find it (``from_cached_export``)."""
        from isnet_jax import checkpoint

        found, folder, key = cls._cached_export(path, step, **options)
        if found is not None:
            return found
        generator, meta = checkpoint.restore_generator(path, step)
        if folder is not None and int(folder.name) != meta["step"]:
            # Orbax took another step (the newest was damaged): key the one it read.
            folder = onnx_runtime.step_folder(path, meta["step"])
            key = onnx_runtime.checkpoint_key(folder) if folder is not None else None
        return cls(generator, onnx_key=key, meta=meta, **options)

    @classmethod
    def from_cached_export(
        cls,
        path: str | pathlib.Path,
        step: int | None = None,
        **options: Any,
    ) -> Inpainter | None:
        """``from_checkpoint``'s result if ``runtime`` (in ``options``) runs onnxruntime here
        and the checkpoint's export is cached; else None. It reads the step's item files (to
        key them) and that export: no Orbax checkpoint, and no JAX unless JAX must be asked
        for its backend (``onnx_runtime.jax_backend``)."""
        return cls._cached_export(path, step, **options)[0]

    @classmethod
    def _cached_export(
        cls,
        path: str | pathlib.Path,
        step: int | None = None,
        *,
        mode: str = "auto",
        size: int = 256,
        margin: int = CROP_MARGIN,
        crop_above: int | None = None,
        runtime: str = "jax",
    ) -> tuple[Inpainter | None, pathlib.Path | None, str | None]:
        """``(inpainter or None, step folder, its key)``: what the cache holds, and what an
        export made now is to be named by."""
        inpainter = cls.__new__(cls)
        inpainter._configure(mode, size, margin, crop_above, runtime)
        if runtime == "jax" or (runtime == "auto" and onnx_runtime.usable() is not None):
            return None, None, None
        folder = onnx_runtime.step_folder(path, step)
        key = onnx_runtime.checkpoint_key(folder) if folder is not None else None
        found = onnx_runtime.OnnxGenerator.cached(key) if key else None
        if found is None:
            return None, folder, key
        inpainter.graphdef = inpainter.state = None  # onnxruntime holds the weights
        inpainter.meta = {**found.meta, "step": int(folder.name)}
        inpainter._onnx, inpainter.runtime = found, "onnx"
        inpainter.runtime_note = f"onnxruntime, {found.path}"
        return inpainter, folder, key

    @property
    def onnx_path(self) -> pathlib.Path | None:
        """The ONNX file onnxruntime runs; None when JAX runs the generator."""
        return self._onnx.path if self._onnx is not None else None

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
        if self._onnx is not None:
            return self._onnx(images, known)
        out = _jitted_predict()(
            self.graphdef,
            self.state,
            np.asarray(images, np.float32),
            np.asarray(known, np.float32),
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
            pred = to_uint8(prediction[:h, :w])
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
            pred = _enlarge(prediction, h, w) if scale < 1.0 else to_uint8(prediction)
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
        rgb = rgb_view(original)
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
        return Inpainted(restore_layout(filled, original, known), mode, windows, shapes)

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
    image = Image.fromarray(to_uint8(prediction))
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
        return to_uint8(image.astype(np.float32))
    raise ValueError(f"expected uint8 or float [0, 1] pixels, got {image.dtype}")


def rgb_view(image: np.ndarray) -> np.ndarray:
    """What the network sees: grey repeated in three channels, RGBA without its alpha."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def restore_layout(filled: np.ndarray, original: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The RGB composite back in the input's channel layout, known pixels copied exactly."""
    if original.ndim == 3 and original.shape[-1] == 3:
        return filled
    if original.ndim == 3 and original.shape[-1] == 4:
        return np.concatenate([filled, original[..., 3:]], axis=-1)
    grey = np.asarray(Image.fromarray(filled).convert("L"))  # ITU-R 601-2 luma, as PIL
    grey = np.where(known, original.reshape(known.shape), grey)
    return grey.reshape(original.shape)


# --------------------------------------------------------------------------------------------
# How much hole is too much
# --------------------------------------------------------------------------------------------

BEYOND_TRAINING = (f"more hole than the model was trained on (up to "
                   f"{100 * TRAINED_MAX_HOLE:.0f} %)")


def hole_verdict(known: np.ndarray) -> tuple[float, str | None]:
    """``(fraction, problem)`` of a bool (H, W) known mask: the share of hole pixels, and
    ``"no hole"`` (nothing to fill), ``"all hole"`` (nothing to condition on: the result is
    invented), ``"beyond training"`` (more than ``TRAINED_MAX_HOLE``; a mask of the other
    polarity, say) or None."""
    fraction = 1.0 - float(np.mean(known))
    if fraction == 0.0:
        return fraction, "no hole"
    if fraction == 1.0:
        return fraction, "all hole"
    return fraction, "beyond training" if fraction > TRAINED_MAX_HOLE else None
