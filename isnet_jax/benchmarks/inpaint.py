"""Inpainting a photo-sized image in each resize mode: seconds and peak memory.

    python -m isnet_jax.benchmarks.inpaint [--width 4000 --height 3000 --hole 0.03]
        [--resize-modes crop,resize,pad] [--blocks 4 | --checkpoint PATH] [--repeats 2]

The photo is scikit-image's astronaut scaled to ``--width`` x ``--height``; the hole is three
separate brush strokes whose width is chosen to cover ``--hole`` of it (the line says what it
got). The model is the release's ISNet with ``--blocks`` (default 4, as the released weights)
and random weights, or a ``--checkpoint``: the speed does not depend on the weights.

Each mode runs in a fresh process, so that its peak memory is the process's own peak RSS
(model, photo and all): ``first`` is the first call (compilation included), ``run`` the median
of ``--repeats`` calls after it. It prints one line per mode as it finishes, a Markdown table,
the pad / crop ratio of the run times, and on its last line one JSON object with everything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

from isnet_jax import cli

MODES = ("crop", "resize", "pad")


def make_photo(width: int, height: int) -> np.ndarray:
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(photo)


def make_known(width: int, height: int, hole: float) -> np.ndarray:
    """Three far-apart brush strokes covering about ``hole`` of the image; True = known."""
    strokes = [
        [(0.10, 0.15), (0.22, 0.30), (0.30, 0.22)],
        [(0.70, 0.10), (0.80, 0.28), (0.90, 0.20)],
        [(0.35, 0.75), (0.50, 0.88), (0.65, 0.80)],
    ]

    def draw(line_width: int) -> np.ndarray:
        canvas = Image.new("L", (width, height), 0)
        pen = ImageDraw.Draw(canvas)
        for stroke in strokes:
            points = [(x * width, y * height) for x, y in stroke]
            pen.line(points, fill=255, width=line_width, joint="curve")
        return np.asarray(canvas) == 0

    low, high = 1, max(2, min(width, height) // 4)
    while low < high:  # the narrowest stroke that reaches the requested hole
        mid = (low + high) // 2
        low, high = (mid + 1, high) if 1 - draw(mid).mean() < hole else (low, mid)
    return draw(low)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def run_mode(args: argparse.Namespace) -> dict:
    """One mode in this process: the timings and the process's peak memory."""
    import jax

    from isnet_jax.inpainter import Inpainter

    inpainter = Inpainter.from_checkpoint(
        args.checkpoint, size=args.size, margin=args.crop_margin
    )
    meta = inpainter.meta
    model = args.model_label or (
        f"{meta.get('generator')} blocks={meta.get('blocks')} from {args.checkpoint}"
    )
    photo = make_photo(args.width, args.height)
    known = make_known(args.width, args.height, args.hole)
    baseline = _rss_bytes()

    start = time.perf_counter()
    done = inpainter.inpaint(photo, known, mode=args.child)
    first = time.perf_counter() - start
    rounds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        inpainter.inpaint(photo, known, mode=args.child)
        rounds.append(time.perf_counter() - start)
    assert np.array_equal(done.image[known], photo[known])  # the benchmark's own sanity check
    return {
        "mode": args.child,
        "model": model,
        "platform": jax.devices()[0].platform,
        "width": args.width,
        "height": args.height,
        "hole": round(float(1 - known.mean()), 4),
        "crops": len(done.windows) if done.mode == "crop" else 0,
        "network_shapes": sorted({f"{w}x{h}" for h, w in done.network_shapes}),
        "first_s": round(first, 3),
        "run_s": round(statistics.median(rounds), 3) if rounds else None,
        "run_s_rounds": [round(r, 3) for r in rounds],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline_rss_bytes": baseline,
    }


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def table(results: list[dict]) -> str:
    lines = [
        "| mode | network runs at | first call (incl. compile) | run (median) | peak RSS | "
        "RSS before inpainting |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        runs = ", ".join(r["network_shapes"])
        if r["crops"]:
            runs = f"{r['crops']} crops at {runs}"
        run = f"{r['run_s']:.2f} s" if r["run_s"] is not None else "-"
        lines.append(
            f"| {r['mode']} | {runs} | {r['first_s']:.2f} s | {run} | "
            f"{_gib(r['peak_rss_bytes'])} | {_gib(r['baseline_rss_bytes'])} |"
        )
    return "\n".join(lines)


def _random_checkpoint(blocks: int, folder: str) -> str:
    from flax import nnx

    from isnet_jax import checkpoint
    from isnet_jax.models import Generator

    path = os.path.join(folder, "random")
    meta = checkpoint.generator_meta("isnet", blocks, "random weights (benchmark)")
    checkpoint.write_models(path, 0, meta, Generator(blocks, rngs=nnx.Rngs(0)))
    return path


def _run_child(argv: list[str], mode: str) -> dict:
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "isnet_jax.benchmarks.inpaint", *argv, "--child", mode]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: the {mode} run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_before"] = round(load, 2)
    print(
        f"{mode}: first call {result['first_s']:.2f} s, run {result['run_s']} s, peak RSS "
        f"{_gib(result['peak_rss_bytes'])} (load average before: {load:.2f})",
        flush=True,
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m isnet_jax.benchmarks.inpaint", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--width", type=int, default=4000, help="photo width in pixels")
    parser.add_argument("--height", type=int, default=3000, help="photo height in pixels")
    parser.add_argument("--hole", type=float, default=0.03, help="hole fraction to aim for")
    parser.add_argument("--resize-modes", default=",".join(MODES),
                        help="comma-separated resize modes to time")
    parser.add_argument("--blocks", type=int, default=4, help="ISNet blocks (random weights)")
    parser.add_argument("--checkpoint", default="", type=cli.checkpoint_path, metavar="PATH",
                        help="a checkpoint (its latest step) instead of --blocks")
    parser.add_argument("--size", type=int, default=256, help="training size: crop/resize run at")
    parser.add_argument("--crop-margin", type=int, default=128, help="crop mode's margin")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the first")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--model-label", default="", help=argparse.SUPPRESS)
    parser.add_deprecated_alias("--modes", "--resize-modes")
    parser.add_deprecated_alias("--margin", "--crop-margin")
    args = parser.parse_args(argv)
    unknown = set(args.resize_modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"unknown resize mode(s) {', '.join(sorted(unknown))}; choose from "
                     f"{','.join(MODES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_mode(args)), flush=True)
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    print(
        f"{args.width}x{args.height} photo, ~{100 * args.hole:g} % hole, resize modes "
        f"{args.resize_modes}, "
        f"{os.cpu_count()} CPUs; each mode in its own process",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        if not args.checkpoint:
            # Initialised once here and restored by each mode's process: building ISNet's
            # weights eagerly takes longer than restoring them.
            print(f"writing a random-weight ISNet (blocks={args.blocks}) checkpoint", flush=True)
            argv += [
                "--checkpoint",
                _random_checkpoint(args.blocks, scratch),
                "--model-label",
                f"ISNet blocks={args.blocks}, random weights",
            ]
        results = [_run_child(argv, mode) for mode in args.resize_modes.split(",")]
    print(
        f"model: {results[0]['model']}, on {results[0]['platform']}; hole "
        f"{100 * results[0]['hole']:.2f} %"
    )
    print(table(results))
    by_mode = {r["mode"]: r for r in results}
    summary: dict = {"results": results}
    if "crop" in by_mode and "pad" in by_mode:
        key = "run_s" if by_mode["pad"]["run_s"] is not None else "first_s"
        summary["pad_over_crop"] = round(by_mode["pad"][key] / by_mode["crop"][key], 1)
        print(f"pad / crop ({key}): {summary['pad_over_crop']}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
