"""Training-step and generator speed: seconds, images/s, compile time, FLOPs, memory.

    python -m isnet_jax.benchmarks.train_step --config=configs/places2.py \\
        --batch_size=1 --resolution=256 [--parts]

Builds the real ``train.Trainer`` for the config (G + D + VGG19 losses, Adam, the jitted and
donating ``train_step``), compiles the step and the generator's inference forward (what
``isnet_jax.inpaint`` runs) ahead of time, then times ``--repeats`` rounds of ``--steps`` calls
each, dispatched back to back with no host synchronisation inside a round, as the training loop
runs. Times are medians over the rounds.

VGG19's weights do not change the speed: by default (``--vgg=random``) a randomly initialised
VGG19 is written with ``isnet_jax.models.vgg.save_vgg19`` and loaded through
``config.loss.vgg_weights`` like real weights; ``--vgg=config`` uses the config's weights,
``--vgg=off`` drops the perceptual and style losses.

Everything reported is measured in this run; nothing comes from a table. FLOPs are XLA's cost
analysis of the compiled programs. Utilisation is the step's FLOP/s over the best square matrix
product this device ran in this run, in the same compute dtype. Peak memory is the device's
``peak_bytes_in_use`` where the backend keeps it (GPU, TPU), else the process's peak RSS (CPU).
``--parts`` also compiles, counts and times G, D and VGG19 alone. ``--compiler_option=NAME=VALUE``
(repeatable) compiles with an XLA option; ``XLA_FLAGS`` works as usual.

Progress goes to stdout in words; the last line is one JSON object with (at least) the keys
``device``, ``batch_size``, ``resolution``, ``train_step_s``, ``images_per_s``,
``generator_forward_s``, ``compile_s``, ``flops_per_step`` and ``peak_memory_bytes``.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

_PLACES2 = pathlib.Path(__file__).resolve().parents[2] / "configs" / "places2.py"

REQUIRED_KEYS = (
    "device", "batch_size", "resolution", "train_step_s", "images_per_s",
    "generator_forward_s", "compile_s", "flops_per_step", "peak_memory_bytes",
)


def _log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def describe_device() -> dict[str, Any]:
    dev = jax.devices()[0]
    name = dev.device_kind
    if dev.platform == "cpu":
        cpuinfo = pathlib.Path("/proc/cpuinfo")
        lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
        model = next((line.split(":", 1)[1].strip() for line in lines
                      if line.startswith("model name")), platform.processor() or platform.machine())
        name = f"cpu: {model}, {os.cpu_count()} cores"
    return {"device": name, "platform": dev.platform, "num_devices": jax.device_count()}


def peak_memory() -> tuple[int, str]:
    """(bytes, source): the devices' peak allocation where known, else the peak RSS."""
    peaks = [int(stats["peak_bytes_in_use"]) for dev in jax.local_devices()
             if (stats := dev.memory_stats()) and "peak_bytes_in_use" in stats]
    if peaks:
        return max(peaks), "device peak_bytes_in_use (largest over local devices)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(rss) * (1 if sys.platform == "darwin" else 1024), "process peak RSS"


def xla_flops(compiled: jax.stages.Compiled) -> float:
    """FLOPs of one call of a compiled program, by XLA's own cost analysis."""
    cost = compiled.cost_analysis() or {}
    if "flops" not in cost:
        _log(f"XLA gives no FLOP count on {jax.devices()[0].platform}: FLOPs are reported as NaN.")
        return float("nan")
    return float(cost["flops"])


def compile_timed(jitted, *args, compiler_options: dict | None = None):
    """``(compiled, seconds)``: ``jitted`` lowered and compiled for ``args``."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile(compiler_options=compiler_options or None)
    return compiled, time.perf_counter() - t0


def time_calls(fn: Callable[[], Any], rounds: int, per_round: int) -> list[float]:
    """Seconds per call for each round of ``per_round`` back-to-back calls."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = None
        for _ in range(per_round):
            out = fn()
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / per_round)
    return times


def measure_matmul_peak(dtype: jnp.dtype, max_size: int = 16384) -> tuple[float, int]:
    """``(FLOP/s, n)``: the best n x n matrix product of this device in this run.

    The size doubles from 1024 until one product takes 20 ms (so that dispatch does not count),
    which finds the size that saturates a CPU as well as an accelerator without a table.
    """
    best, n = 0.0, 1024
    while True:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
        f = jax.jit(lambda x: x @ x).lower(a).compile()
        seconds = min(time_calls(lambda f=f, a=a: f(a), rounds=3, per_round=2))
        best = max(best, 2 * n**3 / seconds)
        if seconds >= 0.02 or n >= max_size:
            return best, n
        n *= 2


def parse_compiler_options(items: Sequence[str]) -> dict[str, Any]:
    """``["name=value", ...]`` -> XLA compiler options (``true``/``false`` become bools)."""
    options: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--compiler_option must be NAME=VALUE, got {item!r}")
        lowered = value.lower()
        options[name] = lowered == "true" if lowered in ("true", "false") else value
    return options


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def prepare_config(
    config: ml_collections.ConfigDict,
    *,
    workdir: str,
    batch_size: int | None = None,
    resolution: int | None = None,
    blocks: int | None = None,
    compute_dtype: str = "auto",
    remat: bool | None = None,
    vgg: str = "random",
) -> tuple[ml_collections.ConfigDict, str]:
    """Applies the benchmark's settings to a copy of ``config``; returns it and how VGG19 is
    provided. ``compute_dtype="auto"``: bfloat16 on TPU and GPU, float32 on the CPU."""
    config = ml_collections.ConfigDict(config.to_dict())
    if batch_size is not None:
        config.batch_size = batch_size
    if resolution is not None:
        config.image_size = resolution
    if blocks is not None:
        config.model.blocks = blocks
    if compute_dtype == "auto":
        compute_dtype = "float32" if jax.devices()[0].platform == "cpu" else "bfloat16"
    config.compute_dtype = compute_dtype
    if remat is not None:
        config.remat = remat
    if vgg == "off":
        config.loss.perceptual_weight = config.loss.style_weight = 0.0
        return config, "off (perceptual and style losses dropped)"
    if vgg == "random":
        from isnet_jax.models import vgg as vgg19

        path = pathlib.Path(workdir) / "vgg19_random.npz"
        vgg19.save_vgg19(vgg19.VGG19(rngs=nnx.Rngs(0)), path)
        config.loss.vgg_weights = str(path)
        return config, "random weights written by isnet_jax.models.vgg.save_vgg19 (same speed)"
    if vgg == "config":
        return config, f"config.loss.vgg_weights = {config.loss.vgg_weights}"
    raise ValueError(f"vgg must be 'random', 'config' or 'off', got {vgg!r}")


class StepBenchmark:
    """The compiled training step and generator forward of one config, ready to be timed.

    ``time_train_step`` and ``time_generator`` can be called repeatedly (``compare_torch``
    alternates them with the PyTorch peer); ``record`` gathers everything into one dict.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        *,
        vgg_source: str = "",
        compiler_options: dict[str, Any] | None = None,
    ):
        from isnet_jax import input_pipeline, sharding, train

        self.config = config
        self.compiler_options = dict(compiler_options or {})
        self.info: dict[str, Any] = describe_device()
        self.info.update(
            batch_size=config.batch_size, resolution=config.image_size,
            blocks=config.model.blocks, generator=config.model.generator,
            compute_dtype=config.compute_dtype, remat=bool(config.remat), vgg=vgg_source,
            compiler_options=self.compiler_options, xla_flags=os.environ.get("XLA_FLAGS", ""),
            jax=jax.__version__,
        )
        _log(
            f"Benchmarking the {config.model.generator} training step (blocks="
            f"{config.model.blocks}) at {config.image_size}x{config.image_size}, batch "
            f"{config.batch_size}, {config.compute_dtype} compute, remat={bool(config.remat)}, "
            f"on {self.info['num_devices']} x {self.info['device']}. VGG19: {vgg_source}."
        )
        t0 = time.perf_counter()
        mesh = sharding.create_mesh(config.get("mesh"))
        input_pipeline.host_batch(config.batch_size, jax.process_count(),
                                  devices=mesh.shape[sharding.DATA])
        self.trainer = train.Trainer(config, mesh)
        self.state = jax.block_until_ready(self.trainer.init_state())
        rng = np.random.default_rng(0)
        shape = (config.batch_size, config.image_size, config.image_size)
        self.image = jax.device_put(rng.random((*shape, 3), np.float32),
                                    self.trainer.batch_sharding)
        self.mask = jax.device_put((rng.random((*shape, 1)) > 0.3).astype(np.float32),
                                   self.trainer.batch_sharding)
        self.vgg_state = self.trainer.vgg_state
        self.info["setup_s"] = time.perf_counter() - t0
        _log(f"Networks built in {self.info['setup_s']:.1f} s; compiling the training step...")

        self.step, self.info["compile_s"] = compile_timed(
            self.trainer.train_step, self.state, self.vgg_state, self.image, self.mask,
            compiler_options=self.compiler_options,
        )
        self.predict, self.info["generator_compile_s"] = compile_timed(
            self.trainer.predict, self.state["g_params"], self.state["g_spectral"], self.image,
            self.mask, compiler_options=self.compiler_options,
        )
        self.info["flops_per_step"] = xla_flops(self.step)
        self.info["generator_flops"] = xla_flops(self.predict)
        memory = self.step.memory_analysis()
        if memory is not None:
            self.info["xla_temp_bytes"] = int(memory.temp_size_in_bytes)
            self.info["xla_argument_bytes"] = int(memory.argument_size_in_bytes)
        _log(
            f"Compiled in {self.info['compile_s']:.1f} s (generator "
            f"{self.info['generator_compile_s']:.1f} s): "
            f"{self.info['flops_per_step'] / 1e9:.2f} GFLOP per step, "
            f"{self.info['generator_flops'] / 1e9:.2f} GFLOP per generator forward "
            "(XLA cost analysis)."
        )
        self.train_times: list[float] = []
        self.generator_times: list[float] = []
        self.parts: dict[str, dict] | None = None

    def warm_up(self, steps: int = 1) -> None:
        for _ in range(steps):
            self.state, _, _ = self.step(self.state, self.vgg_state, self.image, self.mask)
        jax.block_until_ready((self.state, self._predict()))

    def _predict(self):
        return self.predict(self.state["g_params"], self.state["g_spectral"], self.image, self.mask)

    def time_train_step(self, steps: int, repeats: int) -> list[float]:
        """``repeats`` rounds of ``steps`` back-to-back steps; seconds per step of each round."""
        times = []
        for r in range(repeats):
            skips = []
            t0 = time.perf_counter()
            for _ in range(steps):  # no host synchronisation in here
                self.state, metrics, guard = self.step(
                    self.state, self.vgg_state, self.image, self.mask)
                skips.append(guard["consecutive_skips"])
            jax.block_until_ready(self.state)
            times.append((time.perf_counter() - t0) / steps)
            last = {k: float(v) for k, v in metrics.compute().items()}
            _log(
                f"  training step, round {r + 1}/{repeats}: {times[-1]:.3f} s per step (G loss "
                f"{last['g_loss']:.3f}, D loss {last['d_loss']:.3f})"
            )
            # Skipped (non-finite) updates would time a different program: a bug, not a result.
            if any(int(s) for s in skips):
                raise RuntimeError("a timed training step had non-finite gradients")
        self.train_times += times
        return times

    def time_generator(self, calls: int, repeats: int) -> list[float]:
        times = time_calls(self._predict, repeats, calls)
        _log("  generator forward: " + ", ".join(f"{t:.3f}" for t in times) + " s per call")
        self.generator_times += times
        return times

    def time_parts(self, repeats: int) -> dict[str, dict]:
        """Seconds and XLA FLOPs of each piece of the step, compiled on its own."""
        _log("Parts of the step, each compiled and timed on its own:")
        self.parts = {}
        for name, (fn, args) in step_parts(self.trainer, self.state, self.image).items():
            compiled, compile_s = compile_timed(jax.jit(fn), *args,
                                                compiler_options=self.compiler_options)
            jax.block_until_ready(compiled(*args))
            seconds = statistics.median(time_calls(lambda c=compiled, a=args: c(*a), repeats, 2))
            part = {"seconds": seconds, "flops": xla_flops(compiled), "compile_s": compile_s}
            self.parts[name] = part
            _log(f"  {name:34s} {seconds:7.3f} s {part['flops'] / 1e9:9.2f} GFLOP "
                 f"{part['flops'] / seconds / 1e9:7.1f} GFLOP/s")
        return self.parts

    def record(self) -> dict[str, Any]:
        rec = dict(self.info)
        batch = self.config.batch_size
        rec["train_step_s"] = statistics.median(self.train_times)
        rec["train_step_s_rounds"] = self.train_times
        rec["images_per_s"] = batch / rec["train_step_s"]
        rec["generator_forward_s"] = statistics.median(self.generator_times)
        rec["generator_forward_s_rounds"] = self.generator_times
        rec["generator_images_per_s"] = batch / rec["generator_forward_s"]
        rec["achieved_flop_per_s"] = rec["flops_per_step"] / rec["train_step_s"]
        rec["generator_achieved_flop_per_s"] = rec["generator_flops"] / rec["generator_forward_s"]
        # Read before the matrix-product probe, whose operands are not the step's memory.
        rec["peak_memory_bytes"], rec["peak_memory_source"] = peak_memory()
        peak, size = measure_matmul_peak(jnp.dtype(self.config.compute_dtype))
        rec["matmul_flop_per_s"], rec["matmul_size"] = peak, size
        rec["utilization"] = rec["achieved_flop_per_s"] / peak
        rec["generator_utilization"] = rec["generator_achieved_flop_per_s"] / peak
        if self.parts is not None:
            rec["parts"] = self.parts
        rec["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        _log(
            f"Training step {rec['train_step_s']:.3f} s ({rec['images_per_s']:.2f} images/s, "
            f"{rec['achieved_flop_per_s'] / 1e9:.1f} GFLOP/s, {100 * rec['utilization']:.0f}% of "
            f"the {peak / 1e9:.0f} GFLOP/s of a {size}x{size} matrix product); generator forward "
            f"{rec['generator_forward_s']:.3f} s; peak memory "
            f"{rec['peak_memory_bytes'] / 2**20:.0f} MiB ({rec['peak_memory_source']})."
        )
        return rec


def step_parts(trainer, state, image) -> dict[str, tuple[Callable, tuple]]:
    """The step's pieces as ``name: (function, arguments)``, each to be jitted on its own.

    D runs on 2B images (real and fake together, as in the step); its backward gives the
    parameter gradient (D's update) and the input gradient (G's path through D). VGG19 is
    frozen, so its backward is the input gradient only.
    """
    nets = trainer.nets

    def g_fwd(p, s, x):
        return nnx.merge(nets.g_def, p, s, copy=True)(x, train=True)

    def d_fwd(p, s, x):
        return nnx.merge(nets.d_def, p, s, copy=True)(x, train=True)[0]

    def mean_of(fn, argnums):
        return jax.grad(lambda *a: jnp.mean(fn(*a)), argnums=argnums)

    g_args = (state["g_params"], state["g_spectral"], image)
    d_args = (state["d_params"], state["d_spectral"], jnp.concatenate([image, image]))
    parts = {
        "generator_forward_train": (g_fwd, g_args),
        "generator_forward_backward": (mean_of(g_fwd, 0), g_args),
        "discriminator_forward_2b": (d_fwd, d_args),
        "discriminator_forward_backward_2b": (mean_of(d_fwd, (0, 2)), d_args),
    }
    if nets.vgg_def is not None:

        def vgg_fwd(v, x):
            feats = nnx.merge(nets.vgg_def, v, copy=True)(x, outputs=nets.vgg_layers)
            return sum(jnp.mean(f) for f in feats.values())

        parts["vgg19_forward"] = (vgg_fwd, (trainer.vgg_state, image))
        parts["vgg19_forward_backward_input"] = (mean_of(vgg_fwd, 1), (trainer.vgg_state, image))
    return parts


def run(
    config: ml_collections.ConfigDict,
    *,
    steps: int = 3,
    repeats: int = 3,
    warmup: int = 1,
    parts: bool = False,
    vgg_source: str = "",
    compiler_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Builds, compiles and times ``config``'s step and generator; returns the JSON record."""
    bench = StepBenchmark(config, vgg_source=vgg_source, compiler_options=compiler_options)
    bench.warm_up(warmup)
    bench.time_train_step(steps, repeats)
    bench.time_generator(max(steps, 2), repeats)
    if parts:
        bench.time_parts(repeats)
    return bench.record()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def define_flags() -> None:
    """The command-line flags (defined on demand, so importing this module defines none)."""
    from absl import flags

    from isnet_jax import cli

    cli.define_config_flag(str(_PLACES2), lock_config=False)
    flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's).")
    flags.DEFINE_integer("resolution", None, "Image size, a multiple of 16 (default: config's).")
    flags.DEFINE_integer("blocks", None, "Residual blocks per branch (default: the config's).")
    flags.DEFINE_enum(
        "compute_dtype", "auto", ["auto", "float32", "bfloat16", "float16"],
        "Compute dtype; auto: bfloat16 on TPU and GPU, float32 on the CPU.",
    )
    flags.DEFINE_bool("remat", None, "Rematerialise G's stages (default: the config's).")
    flags.DEFINE_enum(
        "vgg", "random", ["random", "config", "off"],
        "VGG19 for the perceptual/style losses: random weights (same speed), the config's "
        "weights, or off (both losses dropped).",
    )
    flags.DEFINE_integer("steps", 3, "Training steps per timed round.")
    flags.DEFINE_integer("repeats", 3, "Timed rounds; medians are reported.")
    flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.")
    flags.DEFINE_bool("parts", False, "Also compile, count and time G, D and VGG19 alone.")
    flags.DEFINE_multi_string(
        "compiler_option", [], "XLA compiler option NAME=VALUE for the compiled programs."
    )


def main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    with tempfile.TemporaryDirectory(prefix="isnet_bench_") as workdir:
        config, vgg_source = prepare_config(
            f.config, workdir=workdir, batch_size=f.batch_size, resolution=f.resolution,
            blocks=f.blocks, compute_dtype=f.compute_dtype, remat=f.remat, vgg=f.vgg,
        )
        record = run(
            config, steps=f.steps, repeats=f.repeats, warmup=f.warmup, parts=f.parts,
            vgg_source=vgg_source, compiler_options=parse_compiler_options(f.compiler_option),
        )
    print(json.dumps(record), flush=True)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (``app.run(flags_parser=...)``) with a mistake as one ``error:``
    line and status 2, as every command line here."""
    from absl import flags

    from isnet_jax import cli

    return cli.parse_flags(lambda: flags.FLAGS["config"])(argv)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main, flags_parser=parse_flags)
