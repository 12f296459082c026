"""Inpainting masks: 1 = known pixel, 0 = hole, everywhere (paper eq. 1).

Sources of masks:
- external mask sets (a folder or ``.flist`` of mask images, e.g. the NVIDIA irregular masks,
  whose files mark holes black), binarised and resized to the image;
- a procedural irregular-mask generator (free-form strokes and boxes, in the style of the
  DeepFill v2 / LaMa generators) that targets a hole-ratio band;
- the release's block (a random half-width, half-height rectangle) and half (left or right
  half) masks, with the **hole** being the block: the release sets the block to 1, which under
  its own convention marks it known, a bug we do not copy.

``sample_mask`` implements the release's mixing modes; ``eval_masks`` builds the deterministic
evaluation masks of one hole-ratio band; ``python -m isnet_jax.masks split --masks DIR
--output DIR`` sorts a mask set into hole-ratio bands.
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import os
import pathlib
import shutil
import sys
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

from isnet_jax import errors, images

MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Which colour a mask file paints the hole, everywhere a mask file is read (config
# ``masks.polarity``, ``inpaint --mask-polarity``, ``Inpainter``'s callers, the web page).
# hole_black (white = known, our internal 1) is NVIDIA's irregular-mask convention: the same
# files mean the same thing in training, evaluation and inpainting, with no inversion.
POLARITIES = ("hole_black", "hole_white")
DEFAULT_POLARITY = "hole_black"
# Mixing modes: the release's mask_type 1 (block), 2 (half), 3 (external), 4 (1 or 3),
# 5 (1, 2 or 3), plus the procedural generator for users without a mask set.
MODES = ("procedural", "external", "external_or_block", "external_block_half", "block", "half")
# Hole-ratio bands, (low, high) fractions, each named by ``band_name`` ("10-20") everywhere: the
# folders ``split`` writes, the evaluation's tables, results.json keys, sheets and TensorBoard tags.
# The NVIDIA test set's bands (Liu et al. 2018); anything above 60 % gets a band of its own.
SPLIT_BANDS = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (0.6, 1.0))
# What --mode=eval reports: the paper's four bands (Tables 3-4), then None ("all": procedural
# masks of 10-60 %, or every mask of a mask set).
EVAL_BANDS: tuple[tuple[float, float] | None, ...] = (
    (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), None)


# numpy or JAX arrays: ``composite`` is the same expression for both (and ONNX's graph writes it
# with its own ops, in ``export.onnx_graph``).
Array = TypeVar("Array")


def composite(image: Array, mask: Array, prediction: Array) -> Array:
    """The inpainting result (paper eq. 1): ``prediction`` in the holes, ``image`` where known,
    ``prediction * (1 - mask) + image * mask``; for a 0/1 mask the known pixels are ``image``
    exactly. The one definition, in the order of ``inpaint(image, mask)``: training's metrics,
    evaluation, the sample grids and every export call it."""
    return prediction * (1.0 - mask) + image * mask


def hole_ratio(mask: np.ndarray) -> float:
    """Fraction of hole pixels (value < 0.5) of a mask with 1 = known, 0 = hole."""
    mask = np.asarray(mask)
    return float(np.count_nonzero(mask < 0.5)) / mask.size


def band_name(band: tuple[float, float] | None) -> str:
    """The name of a hole-ratio band in percent, e.g. (0.1, 0.2) -> "10-20"; None -> "all"."""
    if band is None:
        return "all"
    lo, hi = band
    return f"{round(lo * 100):02d}-{round(hi * 100):02d}"


def in_band(ratio: float, band: tuple[float, float]) -> bool:
    """Half-open [lo, hi), except that a band ending at 1 includes a mask with no known pixel."""
    lo, hi = band
    return lo <= ratio < hi or (hi >= 1.0 and ratio >= lo)


def check_polarity(polarity: str, where: str = "mask polarity") -> str:
    """``polarity`` if it is one of ``POLARITIES``; else a ``ConfigError`` that names the
    right spelling (``hole-white``, this package's old spelling, is ``hole_white``)."""
    if polarity in POLARITIES:
        return polarity
    choices = "hole_black (black = hole, white = known) or hole_white (white = hole)"
    close = str(polarity).strip().lower().replace("-", "_").replace(" ", "_")
    if close in POLARITIES:
        raise errors.ConfigError(f"unknown {where} {polarity!r}: write {close} ({choices})")
    raise errors.ConfigError(f"unknown {where} {polarity!r}: choose {choices}")


def other_polarity(polarity: str) -> str:
    """The polarity that reads the same file the other way round."""
    return POLARITIES[1 - POLARITIES.index(check_polarity(polarity))]


def known_where(white: np.ndarray, polarity: str) -> np.ndarray:
    """Binarised mask file (True = white) -> bool, True = known pixel."""
    return white if check_polarity(polarity) == "hole_black" else ~white


# --- Procedural masks ----------------------------------------------------------------------------


def _direction(rng: np.random.Generator) -> tuple[float, float]:
    # A uniform direction from IEEE-exact operations only (no sin/cos, whose last bit differs
    # between libm builds), so evaluation masks are identical on every machine.
    while True:
        x, y = rng.uniform(-1.0, 1.0, size=2)
        norm2 = x * x + y * y
        if 1e-4 < norm2 <= 1.0:
            norm = math.sqrt(norm2)
            return x / norm, y / norm


def _draw_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, scale: float):
    # DeepFill v2's free-form brush: a polyline of random segments with round joints.
    width = max(1, round(size * rng.uniform(0.02, 0.09) * scale))
    x, y = rng.uniform(0, size, size=2)
    points = [(x, y)]
    for _ in range(int(rng.integers(3, 10))):
        dx, dy = _direction(rng)
        length = size * rng.uniform(0.05, 0.25) * scale
        x = min(max(x + dx * length, 0.0), size - 1.0)
        y = min(max(y + dy * length, 0.0), size - 1.0)
        points.append((x, y))
    points = [(round(px), round(py)) for px, py in points]
    draw.line(points, fill=255, width=width)
    r = width // 2
    for px, py in points:
        draw.ellipse((px - r, py - r, px + r, py + r), fill=255)


def _draw_box(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, scale: float):
    # LaMa's rectangle generator: an axis-aligned box away from the border.
    margin = size // 25
    w, h = (max(2, round(size * s * scale)) for s in rng.uniform(0.1, 0.4, size=2))
    x0 = int(rng.integers(margin, max(margin + 1, size - margin - w)))
    y0 = int(rng.integers(margin, max(margin + 1, size - margin - h)))
    draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=255)


def irregular_mask(
    rng: np.random.Generator,
    size: int,
    hole_range: tuple[float, float] = (0.1, 0.6),
    box_probability: float = 0.2,
    max_tries: int = 200,
) -> np.ndarray:
    """A free-form mask of strokes and boxes with a hole ratio inside ``hole_range``.

    Shapes are added until the hole ratio reaches a target drawn uniformly in the band; a shape
    that would overshoot the band is undone and tried again smaller. Returns an (size, size)
    float32 array, 1 = known, 0 = hole. Deterministic for a given generator state.
    """
    lo, hi = hole_range
    if not 0.0 <= lo < hi <= 1.0:
        raise errors.ConfigError(f"hole_range must satisfy 0 <= lo < hi <= 1, got {hole_range}")
    target = rng.uniform(lo, hi)
    holes = Image.new("L", (size, size), 0)
    total = size * size
    count = 0
    shrink = 1.0
    for _ in range(max_tries):
        if count >= target * total:
            break
        # A shape at scale 1 covers about 5 % of the image: scale shapes to the room left below
        # the band's top, so the last shapes of a thin band rarely overshoot.
        room = (hi * total - count) / total
        scale = min(1.5, math.sqrt(room / 0.1)) * shrink
        candidate = holes.copy()
        draw = ImageDraw.Draw(candidate)
        if rng.random() < box_probability:
            _draw_box(draw, rng, size, scale)
        else:
            _draw_stroke(draw, rng, size, scale)
        new_count = int(np.count_nonzero(np.asarray(candidate)))
        if new_count >= hi * total:
            shrink *= 0.7  # overshoot: undo and try a smaller shape
            continue
        holes, count, shrink = candidate, new_count, 1.0
    return (np.asarray(holes) == 0).astype(np.float32)


def block_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """The release's mask 1: a hole of half width and half height at a random position."""
    block = size // 2
    y, x = rng.integers(0, size - block + 1, size=2)
    mask = np.ones((size, size), np.float32)
    mask[y : y + block, x : x + block] = 0.0
    return mask


def half_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """The release's mask 2: the left or the right half of the image is the hole."""
    mask = np.ones((size, size), np.float32)
    if rng.random() < 0.5:
        mask[:, : size // 2] = 0.0
    else:
        mask[:, size // 2 :] = 0.0
    return mask


# --- External mask sets ----------------------------------------------------------------------


def list_images(path: str | os.PathLike, extensions: Sequence[str], what: str) -> list[str]:
    """Files of a folder (recursive, sorted) or of a ``.flist`` (one path per line, in order).

    Relative paths in a ``.flist`` are resolved against the folder of the ``.flist``. Raises
    ``FileNotFoundError``/``ValueError`` naming the path when it is missing or holds no image.
    """
    path = pathlib.Path(path).expanduser()
    if not str(path) or str(path) == ".":
        raise errors.ConfigError(f"no {what} path configured: set it to a folder or a .flist file")
    if not path.exists():
        raise errors.MissingFileError(
            f"{what} path {path} does not exist: check the path in the config"
        )
    if path.is_dir():
        files = [str(p) for p in images.image_files(path, extensions, recursive=True)[0]]
        if not files:
            raise errors.ConfigError(
                f"{what} folder {path} holds no image ({', '.join(sorted(extensions))}), "
                "searched recursively: point the config at the folder with the images"
            )
        return files
    lines = [line.strip() for line in path.read_text().splitlines()]
    files = [
        str(p if p.is_absolute() else path.parent / p)
        for p in (pathlib.Path(line) for line in lines if line and not line.startswith("#"))
    ]
    if not files:
        raise errors.ConfigError(f"{what} list {path} is empty: it needs one image path per line")
    return files


def load_mask(
    path: str | os.PathLike, size: int, polarity: str = DEFAULT_POLARITY, threshold: int = 0
) -> np.ndarray:
    """Reads a mask image as an (size, size) float32 mask, 1 = known, 0 = hole.

    As the release: grayscale, bilinear resize to the image size, then binarise: a pixel is
    "white" when its value exceeds ``threshold`` (0 in the release, so the interpolated border
    counts as white). ``polarity`` says which colour the file uses for holes. Raises
    ``images.InputError`` naming a file it cannot read.
    """
    check_polarity(polarity)

    def white(img: Image.Image) -> np.ndarray:
        img = images.to_8bit(img)  # 16-bit masks: the threshold is on the 8-bit scale
        if img.mode != "L":
            img = img.convert("L")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img) > threshold

    return known_where(images.decoded(path, "mask", white), polarity).astype(np.float32)


def mask_to_known(grey: np.ndarray, polarity: str = DEFAULT_POLARITY) -> np.ndarray:
    """8-bit grey mask -> bool (H, W), True = known pixel (``polarity``: ``POLARITIES``)."""
    return known_where(np.asarray(grey) > 127, polarity)


def load_known_mask(path: str | os.PathLike, polarity: str = DEFAULT_POLARITY) -> np.ndarray:
    """A user's mask file at its own size (inpainting, the page): bool (H, W), True = known,
    grey levels binarised at > 127, upright as its EXIF says. ``load_mask`` is training's
    reader: float, resized, the release's threshold. Raises ``images.InputError`` naming a file
    it cannot read."""
    check_polarity(polarity)
    grey = images.decoded(
        pathlib.Path(path), "mask",
        lambda image: np.asarray(images.upright(image).convert("L"), dtype=np.uint8))
    return mask_to_known(grey, polarity)


class MaskSet:
    """An external mask set: the file list plus how to read it. Picklable for grain workers.

    Masks are reused all through training, so each process keeps those it has read, resized
    and binarised, bit-packed (8 KiB per 256 px mask: 100 MB holds the 12,000 NVIDIA masks),
    up to ``cache_mb``; after that further masks are read from disk every time.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        polarity: str = DEFAULT_POLARITY,
        threshold: int = 0,
        cache_mb: float = 256,
    ) -> None:
        check_polarity(polarity, "config.masks.polarity")
        self.path = str(path)
        self.files = list_images(path, MASK_EXTENSIONS, "mask")
        self.polarity = polarity
        self.threshold = threshold
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._cached_bytes = 0

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_cache": {}, "_cached_bytes": 0}  # workers fill their own

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, size: int) -> np.ndarray:
        """Mask ``index`` at ``size``: (size, size) float32, 1 = known, 0 = hole."""
        packed = self._cache.get((index, size))
        if packed is None:
            mask = load_mask(self.files[index], size, self.polarity, self.threshold)
            packed = np.packbits(mask.astype(bool))
            if self._cached_bytes + packed.nbytes <= self.cache_bytes:
                self._cache[index, size] = packed
                self._cached_bytes += packed.nbytes
            return mask
        return np.unpackbits(packed, count=size * size).reshape(size, size).astype(np.float32)


def sample_mask(
    rng: np.random.Generator,
    size: int,
    mode: str,
    mask_set: MaskSet | None = None,
    hole_range: tuple[float, float] = (0.1, 0.6),
) -> np.ndarray:
    """One training mask for ``mode`` (see ``MODES``): the release's mixing logic.

    "external_or_block" picks block or external with equal odds (release mode 4);
    "external_block_half" picks block, half or external uniformly (release mode 5).
    """
    if mode == "external_or_block":
        mode = "block" if rng.random() < 0.5 else "external"
    elif mode == "external_block_half":
        mode = ("block", "half", "external")[int(rng.integers(3))]
    if mode == "procedural":
        return irregular_mask(rng, size, hole_range)
    if mode == "block":
        return block_mask(rng, size)
    if mode == "half":
        return half_mask(rng, size)
    if mode == "external":
        if mask_set is None:
            raise errors.ConfigError(
                "mask mode 'external' needs masks.path (a folder or .flist of masks)"
            )
        return mask_set.load(int(rng.integers(len(mask_set))), size)
    raise errors.ConfigError(f"unknown masks.mode {mode!r}: choose one of {MODES}")


# --- Evaluation masks ------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _measured(files: tuple[str, ...], size: int, polarity: str, threshold: int) -> np.ndarray:
    return np.array([hole_ratio(load_mask(f, size, polarity, threshold)) for f in files])


class EvalMasks(Sequence):
    """Deterministic evaluation masks of one hole-ratio band: ``masks[i]`` is an (size, size)
    float32 mask (1 = known) that depends only on (seed, band, i) and the mask set, never on
    the machine, the process or the order of access. Lazy, so a whole test split costs nothing
    until read; picklable for grain workers."""

    def __init__(
        self,
        num: int,
        size: int,
        band: tuple[float, float],
        seed: int,
        files: Sequence[str] = (),
        polarity: str = DEFAULT_POLARITY,
        threshold: int = 0,
    ) -> None:
        self.num, self.size, self.band, self.seed = num, size, tuple(band), seed
        self.files = list(files)
        self.polarity, self.threshold = polarity, threshold
        if self.files:
            # Each pass over the in-band files is a fresh seeded permutation, so evaluations
            # longer than the band reuse masks in a different order.
            self._order = np.concatenate(
                [
                    np.random.default_rng([seed, 1 + p]).permutation(len(self.files))
                    for p in range(-(-num // len(self.files)))
                ]
            )[:num]

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.num))]
        if not -self.num <= i < self.num:
            raise IndexError(f"evaluation mask {i} out of range ({self.num})")
        i %= self.num
        if self.files:
            return load_mask(self.files[self._order[i]], self.size, self.polarity, self.threshold)
        band_code = [round(b * 1000) for b in self.band]
        rng = np.random.default_rng([self.seed, *band_code, i])
        return irregular_mask(rng, self.size, self.band)


def eval_masks(
    path: str | os.PathLike | None,
    band: tuple[float, float] | None,
    num: int,
    seed: int,
    size: int,
    polarity: str = DEFAULT_POLARITY,
    threshold: int = 0,
) -> EvalMasks:
    """The evaluation masks of a hole-ratio band: same masks for the same seed on every machine.

    Without ``path``: procedural masks of the band (``band`` None means 10-60 %). With a mask
    set: every file's hole ratio is measured at ``size`` (after resize and binarisation: file
    order is never trusted) and ``num`` masks of the band are drawn by a seeded permutation of
    the sorted file names. A folder written by ``split`` is read through its band subfolder.
    ``band`` None means every mask of the set.
    """
    if not path:
        return EvalMasks(num, size, band or (0.1, 0.6), seed)
    root = pathlib.Path(path)
    if band is not None and (root / band_name(band)).is_dir():
        root = root / band_name(band)
    files = tuple(list_images(root, MASK_EXTENSIONS, "evaluation mask"))
    if band is not None:
        ratios = _measured(files, size, polarity, threshold)
        files = tuple(f for f, r in zip(files, ratios, strict=True) if in_band(r, band))
        if not files:
            raise errors.ConfigError(
                f"no mask of {root} has a hole ratio in {band_name(band)} % at {size} px: "
                "use another band or mask set (see `python -m isnet_jax.masks split`)"
            )
    return EvalMasks(num, size, band or (0.0, 1.0), seed, files, polarity, threshold)


# --- split CLI -----------------------------------------------------------------------------------


def _measure_one(args: tuple[str, int, str, int]) -> float:
    path, size, polarity, threshold = args
    size = size or max(images.header_size(path, "mask"))
    return hole_ratio(load_mask(path, size, polarity, threshold))


def split(
    masks: str | os.PathLike,
    output: str | os.PathLike,
    size: int = 256,
    polarity: str = DEFAULT_POLARITY,
    threshold: int = 0,
    workers: int = 1,
) -> dict[str, int]:
    """Copies each mask of ``masks`` into ``output/<band>/`` by its measured hole ratio.

    Bands are 00-10, 10-20, ..., 50-60 % and 60-100 % for the rest; ``output/bands.tsv`` lists
    every file with its ratio. ``size`` is the resolution at which ratios are measured (the
    training image size; 0 = each file's own). Returns the count per band.
    """
    check_polarity(polarity)
    files = list_images(masks, MASK_EXTENSIONS, "mask")
    jobs = [(f, size, polarity, threshold) for f in files]
    if workers > 1:
        import multiprocessing

        with multiprocessing.Pool(workers) as pool:
            ratios = pool.map(_measure_one, jobs, chunksize=64)
    else:
        ratios = [_measure_one(j) for j in jobs]
    output = pathlib.Path(output)
    root = pathlib.Path(masks)
    counts: dict[str, int] = collections.Counter()
    rows = ["file\thole_ratio\tband"]
    for f, ratio in zip(files, ratios, strict=True):
        band = next(b for b in SPLIT_BANDS if in_band(ratio, b))
        name = band_name(band)
        # Flatten subfolders into the file name so masks with equal names never collide.
        rel = pathlib.Path(f).relative_to(root) if root.is_dir() else pathlib.Path(f).name
        target = output / name / str(rel).replace(os.sep, "_")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        counts[name] += 1
        rows.append(f"{target.relative_to(output)}\t{ratio:.6f}\t{name}")
    (output / "bands.tsv").write_text("\n".join(rows) + "\n")
    return dict(sorted(counts.items()))


def polarity_flag(value: str) -> str:
    """argparse ``type`` of a ``--*polarity`` flag: the one-line error names the spelling."""
    try:
        return check_polarity(value)
    except errors.ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    # Only the command line needs cli; grain's data workers import this module too.
    from isnet_jax import cli

    parser = cli.ArgumentParser(prog="python -m isnet_jax.masks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("split", help="sort a mask set into hole-ratio bands")
    p.add_argument("--masks", required=True, help="folder or .flist of mask images")
    p.add_argument("--output", required=True, help="folder to write <band>/ subfolders into")
    p.add_argument("--size", type=int, default=256, help="measure at this size (0 = native)")
    p.add_argument("--mask-polarity", type=polarity_flag, default=DEFAULT_POLARITY,
                   metavar="{" + ",".join(POLARITIES) + "}",
                   help="which colour the files paint the hole (default: %(default)s; see "
                   "docs/data.md, 'Mask polarity')")
    p.add_argument("--threshold", type=int, default=0, help="binarisation: white is > this")
    p.add_argument("--workers", type=int, default=None,
                   help="processes (default: one per CPU)")
    p.add_deprecated_alias("--polarity", "--mask-polarity")
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = os.cpu_count() or 1

    def body() -> int:
        counts = split(
            args.masks, args.output, args.size, args.mask_polarity, args.threshold, args.workers
        )
        total = sum(counts.values())
        print(f"sorted {total} masks of {args.masks} into {args.output} (hole ratio at "
              f"{args.size} px):")
        for name, n in counts.items():
            print(f"  {name} %: {n}")
        return 0

    return cli.run_cli(body, f"{args.output} holds the masks sorted so far; run the "
                          "command again to redo it")


if __name__ == "__main__":
    sys.exit(main())
