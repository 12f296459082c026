"""The exported generator in every runtime against JAX (and the PyTorch peer): latency and
peak memory of one inpainting forward, same run, alternating.

    python -m isnet_jax.benchmarks.export [--sizes 256,512] [--rounds 5] [--threads 2]
        [--blocks 4 | --checkpoint PATH] [--torch-python /tmp/torchenv/bin/python]

The model is ISNet with ``--blocks`` (default 4, the released model) and random weights, or a
``--checkpoint``: the speed does not depend on the weights. It is exported once per format
(TFLite once per size: its shape is fixed) and each runtime runs in its own process, pinned to
``--threads`` CPUs with its own thread count set to match:

  jax         ``Inpainter.predict`` (XLA:CPU, what ``python -m isnet_jax.inpaint`` runs)
  stablehlo   the StableHLO export, deserialised and called by jax (XLA:CPU)
  savedmodel  the SavedModel's ``serving_default`` in TensorFlow (XlaCallModule: XLA)
  tflite      the TFLite file in LiteRT (XNNPACK)
  onnx        the ONNX file in onnxruntime (CPU execution provider)
  torch       the PyTorch yardstick's (``--peer``) Generator, spectral norm removed (folded),
              eval, no_grad, in ``--torch-python`` (an environment with torch; left out without)

Batch 1, a random image and mask, the same for all. Each process loads its model and runs it
once (``first``: compilation or planning included); then the runtimes take turns, one forward
each, ``--rounds`` times, the order rotated every round so that a drift in machine load hits
all alike. Reported: the median forward, its ratio to jax's, and each process's peak RSS
(``VmHWM``: runtime, model and buffers, what a deployment of it needs). The last line is JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from isnet_jax import cli, errors, extras

RUNTIMES = ("jax", "stablehlo", "savedmodel", "tflite", "onnx", "torch")

# Runs in each runtime's own process (torch's: another interpreter, without isnet_jax): loads
# the model, answers "run" with one timed forward and "quit" with its peak RSS.
_WORKER = r'''
import json, os, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
runtime, size, threads, path = spec["runtime"], spec["size"], spec["threads"], spec["path"]
cpus = sorted(os.sched_getaffinity(0))[:threads]
os.sched_setaffinity(0, cpus)
rng = np.random.default_rng(0)
image = rng.random((1, size, size, 3), dtype=np.float32)
mask = (rng.random((1, size, size, 1)) > 0.25).astype(np.float32)
start = time.perf_counter()
if runtime == "jax":
    from isnet_jax.inpainter import Inpainter
    inpainter = Inpainter.from_checkpoint(path)
    run = lambda: inpainter.predict(image, mask)
elif runtime == "stablehlo":
    import jax
    exported = jax.export.deserialize(bytearray(open(path, "rb").read()))
    run = lambda: np.asarray(exported.call(image, mask))
elif runtime == "savedmodel":
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    signature = tf.saved_model.load(path).signatures["serving_default"]
    x, m = tf.constant(image), tf.constant(mask)
    run = lambda: signature(image=x, mask=m)["composite"].numpy()
elif runtime == "tflite":
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner()
    run = lambda: runner(image=image, mask=mask)["composite"]
elif runtime == "onnx":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    run = lambda: session.run(["composite"], {"image": image, "mask": mask})[0]
elif runtime == "torch":
    import torch
    sys.path.insert(0, os.path.dirname(path))
    from torch_isnet import Generator
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = Generator(spec["blocks"]).eval()
    for module in g.modules():
        if hasattr(module, "weight_orig"):
            torch.nn.utils.remove_spectral_norm(module)
    x, m = (torch.from_numpy(a).permute(0, 3, 1, 2).contiguous() for a in (image, mask))
    def run():
        with torch.no_grad():
            return (g(x * m) * (1 - m) + x * m).permute(0, 2, 3, 1).numpy()
load_s = time.perf_counter() - start
start = time.perf_counter()
out = run()
assert out.shape == image.shape, out.shape
print(json.dumps({"load_s": load_s, "first_s": time.perf_counter() - start, "cpus": cpus}),
      flush=True)
for line in sys.stdin:
    if line.strip() == "run":
        start = time.perf_counter()
        run()
        print(json.dumps({"s": time.perf_counter() - start}), flush=True)
    else:
        break
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mib": peak_kib / 1024}), flush=True)
'''


class Worker:
    def __init__(self, python: str, spec: dict[str, Any]):
        self.name = spec["runtime"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            [python, "-c", _WORKER, json.dumps(spec)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.ready = self._reply()

    def _reply(self) -> dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the {self.name} worker stopped:\n"
                                   f"{self.proc.stderr.read()[-3000:]}")
            if line.startswith("{"):
                return json.loads(line)

    def run(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._reply()["s"]

    def close(self) -> float:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        peak = self._reply()["peak_rss_mib"]
        self.proc.wait(timeout=60)
        return peak

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def prepare(args, folder: pathlib.Path) -> tuple[pathlib.Path, dict[str, pathlib.Path]]:
    """The checkpoint and each format's export (TFLite: one per size)."""
    from flax import nnx

    from isnet_jax import checkpoint, export
    from isnet_jax.models import Generator

    if args.checkpoint:
        source = pathlib.Path(args.checkpoint)
        generator, _ = checkpoint.restore_generator(source)
    else:
        source = folder / "checkpoint"
        generator = Generator(args.blocks, rngs=nnx.Rngs(0))
        checkpoint.write_models(source, 0, checkpoint.generator_meta("isnet", args.blocks,
                                                                     "benchmark"), generator)
    paths = {}
    jobs = [(fmt, None) for fmt in ("stablehlo", "savedmodel", "onnx")]
    jobs += [("tflite", size) for size in args.sizes]
    for fmt, size in jobs:
        if fmt not in args.runtimes:
            continue
        start = time.perf_counter()
        shape = export.Shape(1, size, size) if size else None
        out = export.export(generator, fmt, folder / f"{fmt}{size or ''}", shape=shape)
        model = out if fmt == "savedmodel" else out / export.MODEL_FILES[fmt]
        paths[f"{fmt}{size or ''}"] = model
        print(f"exported {fmt}{f' at {size} px' if size else ''} in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return source, paths


def measure(args, size: int, source: pathlib.Path, paths: dict[str, pathlib.Path]) -> dict:
    workers = []
    try:
        for name in args.runtimes:
            python, path = sys.executable, str(source)
            if name == "torch":
                python, path = args.torch_python, str(args.peer)
            elif name != "jax":
                path = str(paths[f"{name}{size if name == 'tflite' else ''}"])
            spec = {"runtime": name, "size": size, "threads": args.threads, "path": path,
                    "blocks": args.blocks}
            workers.append(Worker(python, spec))
            print(f"{size} px {name}: loaded in {workers[-1].ready['load_s']:.1f} s, first "
                  f"forward {workers[-1].ready['first_s']:.2f} s", flush=True)
        times = {w.name: [] for w in workers}
        loads = []
        for r in range(args.rounds):
            k = r % len(workers)
            order = workers[k:] + workers[:k]
            for w in order:
                times[w.name].append(w.run())
            loads.append(os.getloadavg()[0])
            print(f"{size} px round {r + 1}: " + ", ".join(
                f"{w.name} {times[w.name][-1]:.3f} s" for w in order), flush=True)
        peaks = {w.name: w.close() for w in workers}
    finally:
        for w in workers:
            w.kill()
    medians = {n: statistics.median(t) for n, t in times.items()}
    return {
        "size": size, "median_s": medians, "times_s": times, "peak_rss_mib": peaks,
        "first_s": {w.name: w.ready["first_s"] for w in workers},
        "load_average": loads,
    }


def table(results: list[dict], runtimes: list[str]) -> str:
    lines = ["| runtime | " + " | ".join(f"{r['size']} px: median | vs jax | peak RSS"
                                         for r in results) + " |",
             "|---|" + "---|---|---|" * len(results)]
    for name in runtimes:
        cells = []
        for r in results:
            jax_s, s = r["median_s"]["jax"], r["median_s"][name]
            cells.append(f"{s:.3f} s | {jax_s / s:.2f}x | {r['peak_rss_mib'][name]:.0f} MiB")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m isnet_jax.benchmarks.export",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,512",
                        help="comma-separated image sizes (square), each a multiple of 16")
    parser.add_argument("--rounds", type=int, default=5, help="timed forwards per runtime")
    parser.add_argument("--threads", type=int, default=2, help="CPUs (and threads) per runtime")
    parser.add_argument("--blocks", type=int, default=4, help="ISNet blocks (random weights)")
    parser.add_argument("--checkpoint", default=None, type=cli.checkpoint_path, metavar="PATH",
                        help="a checkpoint (its latest step) instead of --blocks")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES[:-1]),
                        help="comma-separated, from " + ", ".join(RUNTIMES))
    parser.add_argument("--torch-python", default=None,
                        help="python of an environment with torch: adds the torch row")
    parser.add_argument("--peer", type=pathlib.Path, default=None,
                        help="PATH/torch_isnet.py, a PyTorch ISNet of your own that defines "
                        "Generator(blocks) (none ships here): needed for the torch row")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    if args.torch_python and "torch" not in args.runtimes:
        args.runtimes.append("torch")
    if "torch" in args.runtimes and not (args.peer and args.peer.is_file()):
        parser.error(f"the torch row needs --peer PATH, the PyTorch yardstick's file "
                     f"(got {args.peer or 'none'})")
    unknown = set(args.runtimes) - set(RUNTIMES)
    if unknown or "jax" not in args.runtimes:
        parser.error(f"--runtimes: jax and any of {', '.join(RUNTIMES)}; got {args.runtimes}")
    if "torch" in args.runtimes and not args.torch_python:
        parser.error("the torch row needs --torch-python (an environment with torch)")
    if {"savedmodel", "tflite"} & set(args.runtimes):
        try:
            extras.require_tensorflow("the savedmodel and tflite rows")
        except errors.MissingExtraError as e:
            parser.error(f"{e}; or leave them out: --runtimes jax,stablehlo,onnx")

    with tempfile.TemporaryDirectory(prefix="isnet_export_bench_") as tmp:
        source, paths = prepare(args, pathlib.Path(tmp))
        results = [measure(args, size, source, paths) for size in args.sizes]
    print(table(results, args.runtimes))
    print(json.dumps({"blocks": args.blocks, "threads": args.threads, "rounds": args.rounds,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
