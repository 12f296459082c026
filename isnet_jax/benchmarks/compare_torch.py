"""Our training step and generator forward against the PyTorch yardstick, in one run.

    python -m isnet_jax.benchmarks.compare_torch --torch_python=/tmp/torchenv/bin/python \\
        --peer=PATH/torch_isnet.py \\
        --resolution=256 --batch_size=1 --blocks=4 --rounds=3

The yardstick (``--peer PATH/torch_isnet.py``, a file of your own: none ships here) is a PyTorch
ISNet that does the release's work per step (G + D + four VGG19 passes, Adam). It runs in its
own interpreter (``--torch_python``, a virtual environment with torch; this project's
environment has none) as ``torch_isnet.py bench RES BATCH BLOCKS``, which prints seconds per
training step and per generator forward. Ours is compiled once in this process (float32, random
VGG19 weights, the same resolution, batch and blocks), then the two alternate, ``--rounds``
times, the order swapped every round so that a drift in machine load hits both alike. Reported:
each round, the medians, and the ratios torch / ours (above 1: ours is faster). The last line is
JSON.

Only one of the two runs at a time, but other processes on the machine do skew both: the load
average is recorded with every measurement.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import tempfile
from typing import Any

from isnet_jax.benchmarks import train_step


def run_peer(python: str, peer: str, resolution: int, batch: int, blocks: int) -> dict[str, Any]:
    """One ``torch_isnet.py bench`` run in its own interpreter; its JSON line as a dict."""
    cmd = [python, peer, "bench", str(resolution), str(batch), str(blocks)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"the PyTorch peer failed ({' '.join(cmd)}, exit {proc.returncode}):\n"
            f"{proc.stderr[-2000:]}\nCreate its environment with `python3 -m venv /tmp/torchenv "
            "&& /tmp/torchenv/bin/pip install torch==2.13.0 numpy` and pass --torch_python."
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the PyTorch peer printed no JSON line:\n{proc.stdout[-2000:]}")
    result = json.loads(lines[-1])
    result["load_average"] = os.getloadavg()[0]
    return result


def compare(
    bench: train_step.StepBenchmark, *, python: str, peer: str, rounds: int, steps: int = 3
) -> dict[str, Any]:
    config = bench.config
    torch_runs, ours_train, ours_gen, loads = [], [], [], []
    for r in range(rounds):
        order = ("torch", "jax") if r % 2 == 0 else ("jax", "torch")
        for who in order:
            if who == "torch":
                res = run_peer(python, peer, config.image_size, config.batch_size,
                               config.model.blocks)
                torch_runs.append(res)
                print(f"round {r + 1}/{rounds} torch: {res['train_step_s']:.3f} s per step, "
                      f"generator {res['generator_forward_s']:.3f} s "
                      f"(load {res['load_average']:.2f})", flush=True)
            else:
                ours_train.append(statistics.median(bench.time_train_step(steps, 1)))
                ours_gen.append(statistics.median(bench.time_generator(steps + 2, 1)))
                loads.append(os.getloadavg()[0])
                print(f"round {r + 1}/{rounds} jax:   {ours_train[-1]:.3f} s per step, "
                      f"generator {ours_gen[-1]:.3f} s (load {loads[-1]:.2f})", flush=True)
    torch_train = statistics.median(t["train_step_s"] for t in torch_runs)
    torch_gen = statistics.median(t["generator_forward_s"] for t in torch_runs)
    jax_train, jax_gen = statistics.median(ours_train), statistics.median(ours_gen)
    result = {
        "device": bench.info["device"],
        "resolution": config.image_size,
        "batch_size": config.batch_size,
        "blocks": config.model.blocks,
        "rounds": rounds,
        "torch": torch_runs[0].get("torch"),
        "torch_threads": torch_runs[0].get("threads"),
        "torch_train_step_s": torch_train,
        "jax_train_step_s": jax_train,
        "train_step_speedup": torch_train / jax_train,
        "torch_generator_forward_s": torch_gen,
        "jax_generator_forward_s": jax_gen,
        "generator_speedup": torch_gen / jax_gen,
        "torch_train_step_s_rounds": [t["train_step_s"] for t in torch_runs],
        "jax_train_step_s_rounds": ours_train,
        "torch_generator_forward_s_rounds": [t["generator_forward_s"] for t in torch_runs],
        "jax_generator_forward_s_rounds": ours_gen,
        "torch_load_average": [t["load_average"] for t in torch_runs],
        "jax_load_average": loads,
        "jax_flops_per_step": bench.info["flops_per_step"],
        "compiler_options": bench.compiler_options,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    print(
        f"Training step: torch {torch_train:.3f} s, jax {jax_train:.3f} s -> jax is "
        f"{result['train_step_speedup']:.2f}x faster. Generator forward: torch "
        f"{torch_gen:.3f} s, jax {jax_gen:.3f} s -> {result['generator_speedup']:.2f}x.",
        flush=True,
    )
    return result


def define_flags() -> None:
    from absl import flags

    train_step.define_flags()
    flags.DEFINE_string("torch_python", "/tmp/torchenv/bin/python",
                        "Python interpreter with torch installed (the peer's environment).")
    flags.DEFINE_string("peer", None, "PATH/torch_isnet.py, a PyTorch ISNet of your own that "
                        "answers `bench RES BATCH BLOCKS` (none ships here).")
    flags.DEFINE_integer("rounds", 3, "Alternating rounds of torch and jax.")


def main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if not f.peer or not pathlib.Path(f.peer).is_file():
        raise app.UsageError(f"--peer PATH, the PyTorch yardstick's file, is needed (got "
                             f"{f.peer or 'none'})")
    if f.compute_dtype not in ("auto", "float32"):
        raise app.UsageError("the yardstick runs float32; leave --compute_dtype at auto/float32")
    with tempfile.TemporaryDirectory(prefix="isnet_bench_") as workdir:
        config, vgg_source = train_step.prepare_config(
            f.config, workdir=workdir, batch_size=f.batch_size if f.batch_size else 1,
            resolution=f.resolution or 256, blocks=f.blocks or 4, compute_dtype="float32",
            remat=f.remat, vgg=f.vgg,
        )
        bench = train_step.StepBenchmark(
            config, vgg_source=vgg_source,
            compiler_options=train_step.parse_compiler_options(f.compiler_option),
        )
        bench.warm_up(f.warmup)
        result = compare(bench, python=f.torch_python, peer=f.peer, rounds=f.rounds,
                         steps=f.steps)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main, flags_parser=train_step.parse_flags)
