"""Inpainting a photo-sized image: each resize mode in the library, or the whole command line.

    python -m isnet_jax.benchmarks.inpaint [--width 4000 --height 3000 --hole 0.03]
        [--strokes 3] [--resize-modes crop,resize,pad] [--blocks 4 | --checkpoint PATH]
        [--repeats 2]
    python -m isnet_jax.benchmarks.inpaint --command-line --width 1024 --height 1024
        --strokes 1 [--rounds 3] [--before DIR]

The photo is scikit-image's astronaut scaled to ``--width`` x ``--height``; the hole is
``--strokes`` (1 to 3) far-apart brush strokes whose width is chosen to cover ``--hole`` of it
(the line says what it got). The model is the release's ISNet with ``--blocks`` (default 4, as
the released weights) and random weights, or a ``--checkpoint``: the speed does not depend on
the weights.

The resize modes (default): each mode runs in a fresh process, so that its peak memory is the
process's own peak RSS (model, photo and all): ``first`` is the first call (compilation
included), ``run`` the median of ``--repeats`` calls after it. It prints one line per mode as it
finishes, a Markdown table, the pad / crop ratio of the run times, and on its last line one
JSON object with everything.

``--command-line``: whole processes, timed as ``time`` does (wall clock from start to exit, and
the CPU seconds they used): ``python -m isnet_jax.inpaint`` on the photo, cold (a fresh
``$ISNET_JAX_CACHE``: nothing exported or compiled yet) and then warm (the same command again,
the second inpaint of the photo), against a plain onnxruntime script (numpy, PIL, onnxruntime:
read the photo and mask, run the crop the command runs through the same ONNX file, paste the
hole, write the PNG; ``PLAIN_SCRIPT``) whose result must equal the command's byte for byte.
``--before DIR`` times the command of another source tree too (a checkout or ``git archive``
of an older commit: its ``isnet_jax`` goes first on ``PYTHONPATH``). Every round runs each in
turn, the order rotated by one each round; the table has medians, the ratios warm / cold and
warm / plain, and each command's ``compilation:`` line.
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


STROKES = (
    [(0.10, 0.15), (0.22, 0.30), (0.30, 0.22)],
    [(0.70, 0.10), (0.80, 0.28), (0.90, 0.20)],
    [(0.35, 0.75), (0.50, 0.88), (0.65, 0.80)],
)


def make_known(width: int, height: int, hole: float, count: int = 3) -> np.ndarray:
    """``count`` (1 to 3) far-apart brush strokes covering about ``hole`` of the image; True =
    known."""
    strokes = STROKES[:count]

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
    known = make_known(args.width, args.height, args.hole, args.strokes)
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


# ---------------------------------------------------------------------------------------------
# --command-line: whole processes, the command against a plain onnxruntime script

# What someone would write by hand to run the exported generator on the crop the command runs:
# argv: photo, mask (hole_black), ONNX file, output PNG, then top left bottom right size.
PLAIN_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
from PIL import Image

photo, mask, model, output = sys.argv[1:5]
top, left, bottom, right, size = map(int, sys.argv[5:10])
image = np.asarray(Image.open(photo).convert("RGB"))
known = np.asarray(Image.open(mask).convert("L")) > 127
patch, hole = image[top:bottom, left:right], ~known[top:bottom, left:right]
h, w = hole.shape
scale = min(1.0, size / max(h, w))
nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
x = np.asarray(Image.fromarray(patch).resize((nw, nh), Image.Resampling.BICUBIC), np.float32)
x = x / 255.0
holes = Image.fromarray(hole.astype(np.uint8) * 255).resize((nw, nh), Image.Resampling.BOX)
k = (np.asarray(holes) == 0).astype(np.float32)[..., None]
pad = ((0, -nh % 16), (0, -nw % 16), (0, 0))
x, k = np.pad(x, pad, "reflect"), np.pad(k, pad, "reflect")
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
(prediction,) = session.run(["prediction"], {"image": x[None], "mask": k[None]})
filled = np.round(np.clip(prediction[0, :nh, :nw], 0.0, 1.0) * 255.0).astype(np.uint8)
filled = np.asarray(Image.fromarray(filled).resize((w, h), Image.Resampling.BICUBIC))
result = image.copy()
result[top:bottom, left:right][hole] = filled[hole]
Image.fromarray(result).save(output)
"""

# Settings of the parent's environment that would point a child's caches elsewhere.
_CACHE_VARIABLES = ("ISNET_JAX_CACHE", "ISNET_JAX_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR",
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_COMPILATION_CACHE_MAX_SIZE")


def _timed(cmd: list[str], env: dict[str, str], cwd: str) -> dict:
    """Runs one process to its end: wall seconds, CPU seconds (user + system) and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(cmd[:3])} ... failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "load_before": round(load, 2),
            "stdout": proc.stdout}


def _compilation_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("compilation:")]
    return lines[-1] if lines else ""


def _onnx_file(stdout: str) -> str:
    """The ONNX file a run of the command names (``with onnx (onnxruntime, PATH)``)."""
    marker = "with onnx (onnxruntime, "
    line = next(line for line in stdout.splitlines() if marker in line)
    return line.split(marker, 1)[1].split(")", 1)[0]


def command_line(args: argparse.Namespace, scratch: str) -> dict:
    """``--command-line``: the rounds, the table and the summary (see the module's doc)."""
    import isnet_jax
    from isnet_jax.inpainter import crop_windows

    ours = os.path.dirname(os.path.dirname(os.path.abspath(isnet_jax.__file__)))
    trees = {"after": ours}
    if args.before:
        trees = {"before": os.path.abspath(args.before), **trees}
    photo, mask = os.path.join(scratch, "photo.png"), os.path.join(scratch, "mask.png")
    known = make_known(args.width, args.height, args.hole, args.strokes)
    Image.fromarray(make_photo(args.width, args.height)).save(photo)
    Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).save(mask)
    windows = [w for w, _ in crop_windows(known, args.crop_margin)]
    if len(windows) != 1:
        raise SystemExit(f"error: the mask needs {len(windows)} crops; the plain script runs "
                         "one: pass --strokes 1")
    checkpoint = args.checkpoint or _random_checkpoint(args.blocks, scratch)
    base_env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARIABLES}
    print(f"{args.width}x{args.height} photo, {100 * (1 - known.mean()):.2f} % hole, one crop "
          f"{windows[0]}, {os.cpu_count()} CPUs; trees: {trees}", flush=True)

    runs: dict[str, list[dict]] = {}
    plain_model = ""  # the ONNX file the command made (the first round runs it first)
    for index in range(args.rounds):
        # Each entry runs in turn; the order turns by one every round.
        entries = [*trees, "plain"]
        shift = index % len(entries)
        for name in entries[shift:] + entries[:shift]:
            output = os.path.join(scratch, f"out-{name}-{index}")
            if name == "plain":
                cmd = [sys.executable, "-c", PLAIN_SCRIPT, photo, mask, plain_model,
                       output + ".png", *map(str, windows[0]), str(args.size)]
                result = _timed(cmd, base_env, scratch)
                runs.setdefault("plain", []).append(result)
                print(f"round {index + 1}: plain onnxruntime script {result['wall_s']:.2f} s "
                      f"(CPU {result['cpu_s']:.2f} s, load {result['load_before']})", flush=True)
                continue
            env = dict(base_env, PYTHONPATH=trees[name],
                       ISNET_JAX_CACHE=os.path.join(scratch, f"cache-{name}-{index}"))
            for state in ("cold", "warm"):
                cmd = [sys.executable, "-m", "isnet_jax.inpaint", "--checkpoint", checkpoint,
                       "--input", photo, "--mask", mask, "--output", output, "--overwrite",
                       "--size", str(args.size), "--crop-margin", str(args.crop_margin)]
                result = _timed(cmd, env, scratch)
                result["compilation"] = _compilation_line(result["stdout"])
                runs.setdefault(f"{name} {state}", []).append(result)
                print(f"round {index + 1}: {name} {state} {result['wall_s']:.2f} s (CPU "
                      f"{result['cpu_s']:.2f} s, load {result['load_before']}); "
                      f"{result['compilation']}", flush=True)
            if name == "after":
                plain_model = _onnx_file(result["stdout"])
    ours_png = np.asarray(Image.open(os.path.join(scratch, "out-after-0", "photo.png")))
    plain_png = np.asarray(Image.open(os.path.join(scratch, "out-plain-0.png")))
    if not np.array_equal(ours_png, plain_png):
        raise SystemExit("error: the plain script's result differs from the command's: "
                         f"{int(np.abs(ours_png.astype(int) - plain_png).max())} levels at most")

    medians = {name: {"wall_s": round(statistics.median(r["wall_s"] for r in rs), 2),
                      "cpu_s": round(statistics.median(r["cpu_s"] for r in rs), 2),
                      "wall_s_rounds": [r["wall_s"] for r in rs],
                      "load_before": [r["load_before"] for r in rs],
                      "compilation": rs[-1].get("compilation", "")}
               for name, rs in runs.items()}
    ratios = {}
    for tree in trees:
        warm, cold = medians[f"{tree} warm"]["wall_s"], medians[f"{tree} cold"]["wall_s"]
        ratios[f"{tree} warm / cold"] = round(warm / cold, 2)
        ratios[f"{tree} warm / plain"] = round(warm / medians["plain"]["wall_s"], 2)
        # CPU seconds: what a loaded machine's wall clock blurs (other work's time slices).
        ratios[f"{tree} warm / cold, CPU"] = round(
            medians[f"{tree} warm"]["cpu_s"] / medians[f"{tree} cold"]["cpu_s"], 2)
        ratios[f"{tree} warm / plain, CPU"] = round(
            medians[f"{tree} warm"]["cpu_s"] / medians["plain"]["cpu_s"], 2)
    return {"photo": f"{args.width}x{args.height}", "hole": round(float(1 - known.mean()), 4),
            "window": windows[0], "rounds": args.rounds, "trees": trees, "medians": medians,
            "ratios": ratios}


def command_line_table(summary: dict) -> str:
    lines = ["| what runs (whole process) | wall, median | CPU, median | rounds (wall) | "
             "compilation line |", "|---|---|---|---|---|"]
    for name, m in summary["medians"].items():
        what = ("plain onnxruntime script" if name == "plain"
                else f"{name.split()[0]}: inpaint, {name.split()[1]}")
        rounds = ", ".join(f"{w:.2f}" for w in m["wall_s_rounds"])
        lines.append(f"| {what} | {m['wall_s']:.2f} s | {m['cpu_s']:.2f} s | {rounds} | "
                     f"{m['compilation'] or '-'} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m isnet_jax.benchmarks.inpaint", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--width", type=int, default=4000, help="photo width in pixels")
    parser.add_argument("--height", type=int, default=3000, help="photo height in pixels")
    parser.add_argument("--hole", type=float, default=0.03, help="hole fraction to aim for")
    parser.add_argument("--strokes", type=int, default=3, choices=(1, 2, 3),
                        help="far-apart brush strokes the hole is made of")
    parser.add_argument("--resize-modes", default=",".join(MODES),
                        help="comma-separated resize modes to time")
    parser.add_argument("--blocks", type=int, default=4, help="ISNet blocks (random weights)")
    parser.add_argument("--checkpoint", default="", type=cli.checkpoint_path, metavar="PATH",
                        help="a checkpoint (its latest step) instead of --blocks")
    parser.add_argument("--size", type=int, default=256, help="training size: crop/resize run at")
    parser.add_argument("--crop-margin", type=int, default=128, help="crop mode's margin")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the first")
    parser.add_argument("--command-line", action="store_true",
                        help="time whole processes: python -m isnet_jax.inpaint cold and warm "
                        "against a plain onnxruntime script (see above)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="--command-line: rounds, each running every command once")
    parser.add_argument("--before", default="", metavar="DIR",
                        help="--command-line: also time the command of this source tree")
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
    if args.command_line:
        with tempfile.TemporaryDirectory() as scratch:
            summary = command_line(args, scratch)
        print(command_line_table(summary))
        for name, ratio in summary["ratios"].items():
            print(f"{name}: {ratio}x")
        print(json.dumps(summary))
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
