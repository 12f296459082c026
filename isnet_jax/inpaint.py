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

The library this drives is ``isnet_jax.inpainter`` (``Inpainter``, also ``from isnet_jax import
Inpainter``); the file readers are ``images.load_image`` and ``masks.load_known_mask``.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from isnet_jax import cli, compilation_cache, errors, images, interrupts, masks
from isnet_jax.images import InputError, load_image
from isnet_jax.inpainter import (
    BEYOND_TRAINING,
    CROP_MARGIN,
    RESIZE_MODES,
    Inpainter,
    hole_verdict,
    restore_layout,
    rgb_view,
)
from isnet_jax.masks import load_known_mask
from isnet_jax.sizes import MULTIPLE


def _resize_known(known: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask."""
    image = Image.fromarray(known.astype(np.uint8) * 255)
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 127


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


def plan(args: argparse.Namespace, report: Report) -> list[Job]:
    """Pairs images with masks and outputs; reports what cannot run."""
    source, mask_path, output = pathlib.Path(args.input), pathlib.Path(args.mask), args.output
    if source.is_dir():
        sources, ignored = images.image_files(source)
        if ignored:
            print(f"ignoring {ignored} file(s) in {source} without an image extension",
                  flush=True)
    elif source.is_file():
        sources = [source]
    else:
        raise errors.MissingFileError(
            f"--input {source} does not exist; give an image file or a folder of images")
    if mask_path.is_dir():
        by_stem: dict[str, list[pathlib.Path]] = {}
        for p in images.image_files(mask_path)[0]:
            by_stem.setdefault(p.stem, []).append(p)
    elif not mask_path.is_file():
        raise errors.MissingFileError(
            f"--mask {mask_path} does not exist; give a mask file or a folder of masks")

    jobs, claimed = [], {}
    for image in sources:
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
            job.shape = images.header_size(job.image, "image")
            mask_shape = images.header_size(job.mask, "mask")
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
        known = load_known_mask(job.mask, polarity)
    except InputError as e:
        report.error(job.image, str(e))
        return None
    h, w = image.shape[:2]
    if known.shape != (h, w):  # resize mode only: the others rejected these from the headers
        print(f"note: {job.image}: mask {job.mask} resized to {w}x{h} (nearest neighbour)")
        known = _resize_known(known, h, w)
    hole, problem = hole_verdict(known)
    if problem == "no hole":
        report.error(
            job.image,
            f"mask {job.mask} has no hole with --mask-polarity {polarity}: nothing to fill, "
            "no output written",
        )
        return None
    if problem == "all hole":
        report.warn(
            job.image,
            f"mask {job.mask} is all hole with --mask-polarity {polarity}: nothing to condition "
            "on, the result is invented from scratch",
        )
    elif problem == "beyond training":
        report.warn(
            job.image,
            f"{100 * hole:.0f} % of the image is hole, {BEYOND_TRAINING}; if the mask marks what "
            f"to keep, pass --mask-polarity {masks.other_polarity(polarity)}",
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


def _compile_note(before: tuple[int, int]) -> str:
    """What the time of a batch includes beyond the forward pass, since ``before``
    (``compilation_cache.counts()``)."""
    compiled, loaded = (now - then for now, then in zip(compilation_cache.counts(), before,
                                                        strict=True))
    if compiled:
        return ", including compilation"
    return ", including loading the compiled program" if loaded else ""


def run(args: argparse.Namespace) -> int:
    """The command line's work; raises ``errors.UserError`` for a mistake in the command."""
    report = Report()
    jobs = plan(args, report)
    if not jobs:
        print(f"nothing to do: {report.exists} output(s) exist, {len(report.failed)} failed")
        return 1 if report.failed else 0

    inpainter = cli.load_inpainter(args, mode=args.resize_mode)
    print(f"{cli.generator_line(inpainter.meta, args.checkpoint)}; {cli.running_on(inpainter)}"
          f", {inpainter.describe()}", flush=True)
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

    for index, ((mode, *shape), size, batch) in enumerate(batches, 1):
        interrupts.check_interrupted()
        start, before = time.perf_counter(), compilation_cache.counts()
        loaded = [(job, _load(job, inpainter, args.mask_polarity, report)) for job in batch]
        # (job, image as read, its RGB view, known): the view once per image, for both ends.
        loaded = [(job, item[0], rgb_view(item[0]), item[1])
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
            _write(job, restore_layout(filled, image, known), args.overwrite,
                   report)
        names = ", ".join(job.image.name for job, *_ in loaded)
        print(
            f"batch {index}/{len(batches)}: {len(loaded)} image(s), {mode} mode at "
            f"{shape[1]}x{shape[0]}, in {time.perf_counter() - start:.2f} s"
            f"{_compile_note(before)}: {names}",
            flush=True,
        )

    for index, job in enumerate(crops, 1):
        interrupts.check_interrupted()
        start, before = time.perf_counter(), compilation_cache.counts()
        item = _load(job, inpainter, args.mask_polarity, report)
        if item is None:
            continue
        done = inpainter.inpaint(*item, mode="crop")
        _write(job, done.image, args.overwrite, report)
        shapes = sorted({f"{w}x{h}" for h, w in done.network_shapes})
        print(
            f"crop {index}/{len(crops)}: {job.image.name} ({job.shape[1]}x{job.shape[0]}), "
            f"crop mode: {len(done.windows)} crop(s) run at {', '.join(shapes)}, in "
            f"{time.perf_counter() - start:.2f} s{_compile_note(before)}",
            flush=True,
        )

    print(
        f"done: {report.written} written to {args.output}, {report.exists} already existed, "
        f"{len(report.failed)} failed"
    )
    print(compilation_cache.report(cli.cached_export_note(inpainter)))
    return 1 if report.failed else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m isnet_jax.inpaint",
        description="Fill the holes of images with an ISNet generator checkpoint.",
    )
    cli.add_model_arguments(parser, crop_margin=CROP_MARGIN)
    cli.add_compilation_cache_argument(parser)
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
    cli.check_model_arguments(parser, args, multiple=MULTIPLE)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0, 1 if an image failed, 2 for a mistake in
    the command, 130 for Ctrl-C)."""
    args = parse_args(argv)
    return cli.run_cli(
        lambda: run(args),
        f"no result in {args.output} is left half written; the same command does the rest",
    )


if __name__ == "__main__":
    sys.exit(main())
