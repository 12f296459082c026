"""Training-step and generator speed: seconds, images/s, compile time, FLOPs, FLOP/s, memory.

    python -m isnet_jax.benchmarks.train_step --config=configs/places2.py \\
        --batch_size=1 --resolution=256

Builds the real ``train.Trainer`` for the config (G + D + VGG19 losses, Adam, the jitted and
donating ``train_step``), compiles the step ahead of time, then times it after compilation:
``--repeats`` rounds of ``--steps`` steps each, dispatched back to back with no host
synchronisation inside a round (the metrics are fetched after it, as the training loop fetches
them every ``log_every_steps``). The generator's inference forward (eval mode, what
``isnet_jax.inpaint`` runs) is timed the same way. Times are medians over the rounds.

The perceptual and style losses need VGG19 weights, which do not change the speed: by default
(``--vgg=random``) a randomly initialised VGG19 is written with ``isnet_jax.convert.save_vgg19``
to a temporary folder and loaded through ``config.loss.vgg_weights`` like real weights.
``--vgg=config`` uses the config's weights; ``--vgg=off`` drops both losses (and VGG19).

FLOPs come from XLA's cost analysis of the compiled programs; achieved FLOP/s divides them by
the measured time; utilisation divides that by the device's peak: a table of dense peaks for
known TPUs and GPUs, on the CPU the best measured float32 matrix product (``peak_source`` says
which; ``--peak_flops`` overrides). Peak memory is the device's ``peak_bytes_in_use`` where the
backend keeps memory statistics (GPU, TPU), else the process's peak resident set size (CPU).

``--parts`` also times and counts the pieces of the step (G forward and forward + backward,
D, VGG19), each compiled on its own, with the convolution FLOPs of each network counted from
its shapes. ``--compiler_option=NAME=VALUE`` (repeatable) compiles with an XLA option, e.g.
``xla_cpu_experimental_ynn_fusion_type=...``; ``XLA_FLAGS`` in the environment works as usual.
Both are recorded in the JSON (see BENCHMARKS.md for the options measured).

Progress goes to stdout in words; the last line is one JSON object with (at least) the keys
``device``, ``batch_size``, ``resolution``, ``train_step_s``, ``images_per_s``,
``generator_forward_s``, ``compile_s``, ``flops_per_step`` and ``peak_memory_bytes``.
"""

from __future__ import annotations

import contextlib
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
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

_PLACES2 = pathlib.Path(__file__).resolve().parents[2] / "configs" / "places2.py"

# Dense peak FLOP/s per chip from the vendors' data sheets: (bfloat16, float32 as XLA runs it
# by default: TF32 tensor cores on NVIDIA, bfloat16 passes on TPU). Matched by substring of
# ``device_kind``, first match wins.
KNOWN_PEAKS = (
    ("TPU v6", (918e12, 918e12 / 3)),
    ("TPU v5p", (459e12, 459e12 / 3)),
    ("TPU v5 lite", (197e12, 197e12 / 3)),
    ("TPU v5", (459e12, 459e12 / 3)),
    ("TPU v4", (275e12, 275e12 / 3)),
    ("H200", (989e12, 494e12)),
    ("H100", (989e12, 494e12)),
    ("A100", (312e12, 156e12)),
    ("L4", (121e12, 60e12)),
)

REQUIRED_KEYS = (
    "device", "batch_size", "resolution", "train_step_s", "images_per_s",
    "generator_forward_s", "compile_s", "flops_per_step", "peak_memory_bytes",
)


def _log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Device facts
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_device() -> dict[str, Any]:
    dev = jax.devices()[0]
    info = {"device": dev.device_kind, "platform": dev.platform, "num_devices": jax.device_count()}
    if dev.platform == "cpu":
        info["device"] = f"cpu: {cpu_model()}, {os.cpu_count()} cores"
    return info


def peak_memory() -> tuple[int, str]:
    """(bytes, source): the devices' peak allocation where known, else the peak RSS."""
    peaks = []
    for dev in jax.local_devices():
        stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    if peaks:
        return max(peaks), "device peak_bytes_in_use (largest over local devices)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(rss) * (1 if sys.platform == "darwin" else 1024), "process peak RSS"


def measure_matmul_peak(sizes: Sequence[int] = (1024, 2048), reps: int = 5) -> float:
    """Best FLOP/s of square float32 matrix products under XLA: the CPU's attainable peak."""
    best = 0.0
    for n in sizes:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
        f = jax.jit(lambda x: x @ x).lower(a).compile()
        f(a).block_until_ready()
        for _ in range(reps):
            t0 = time.perf_counter()
            f(a).block_until_ready()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def device_peak(dtype: jnp.dtype, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return (override or None), "--peak_flops"
    dev = jax.devices()[0]
    for key, (bf16, f32) in KNOWN_PEAKS:
        if key in dev.device_kind:
            peak = bf16 if dtype != jnp.float32 else f32
            return peak * jax.device_count(), f"data sheet ({key}) x {jax.device_count()}"
    if dev.platform == "cpu":
        return measure_matmul_peak(), "measured: best float32 matmul (1024, 2048) under XLA"
    return None, "unknown device"


# ---------------------------------------------------------------------------------------------
# Compiling, counting, timing
# ---------------------------------------------------------------------------------------------


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


def cost_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, Sequence):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def compile_timed(jitted, *args, compiler_options: dict | None = None) -> tuple[Any, float]:
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


def conv_flops(fn: Callable, *args) -> int:
    """2 x multiply-adds of every convolution and matrix product in ``fn``'s jaxpr.

    Counted from shapes, independently of XLA (which skips the taps that fall on padding, so
    its count is a little lower at small sizes).
    """

    def walk(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "conv_general_dilated":
                rhs = eqn.invars[1].aval
                dn = eqn.params["dimension_numbers"]
                taps = int(np.prod([rhs.shape[d] for d in dn.rhs_spec[2:]]))
                in_per_group = rhs.shape[dn.rhs_spec[1]]
                total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * taps * in_per_group
            elif name == "dot_general":
                lhs = eqn.invars[0].aval
                (contracting, _), _ = eqn.params["dimension_numbers"]
                k = int(np.prod([lhs.shape[d] for d in contracting]))
                total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * k
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                total += walk(sub)
        return total

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


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
        from isnet_jax import convert, models

        path = pathlib.Path(workdir) / "vgg19_random.npz"
        convert.save_vgg19(models.VGG19(rngs=nnx.Rngs(0)), path)
        config.loss.vgg_weights = str(path)
        return config, "random weights written by isnet_jax.convert.save_vgg19 (same speed)"
    if vgg == "config":
        return config, f"config.loss.vgg_weights = {config.loss.vgg_weights}"
    raise ValueError(f"vgg must be 'random', 'config' or 'off', got {vgg!r}")


def synthetic_batch(config, batch_sharding, seed: int = 0):
    rng = np.random.default_rng(seed)
    size, batch = config.image_size, config.batch_size
    image = rng.random((batch, size, size, 3), np.float32)
    mask = (rng.random((batch, size, size, 1)) > 0.3).astype(np.float32)
    return jax.device_put(image, batch_sharding), jax.device_put(mask, batch_sharding)


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
        from isnet_jax import sharding, train

        self.config = config
        self.compiler_options = dict(compiler_options or {})
        self.info: dict[str, Any] = describe_device()
        self.info.update(
            batch_size=config.batch_size,
            resolution=config.image_size,
            blocks=config.model.blocks,
            generator=config.model.generator,
            compute_dtype=config.compute_dtype,
            remat=bool(config.remat),
            vgg=vgg_source,
            compiler_options=self.compiler_options,
            xla_flags=os.environ.get("XLA_FLAGS", ""),
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
        sharding.check_batch_size(config.batch_size, mesh)
        self.trainer = train.Trainer(config, mesh)
        self.state = jax.block_until_ready(self.trainer.init_state())
        self.image, self.mask = synthetic_batch(config, self.trainer.batch_sharding)
        self.info["setup_s"] = time.perf_counter() - t0
        _log(f"Networks built in {self.info['setup_s']:.1f} s; compiling the training step...")

        self.vgg_state = self.trainer.vgg_state
        opts = self.compiler_options
        self.step, self.info["compile_s"] = compile_timed(
            self.trainer.train_step, self.state, self.vgg_state, self.image, self.mask,
            compiler_options=opts,
        )
        self.predict, self.info["generator_compile_s"] = compile_timed(
            self.trainer.predict, self.state["g_params"], self.state["g_spec"], self.image,
            self.mask, compiler_options=opts,
        )
        self.info["flops_per_step"] = cost_flops(self.step)
        self.info["generator_flops"] = cost_flops(self.predict)
        memory = self.step.memory_analysis()
        if memory is not None:
            self.info["xla_temp_bytes"] = int(memory.temp_size_in_bytes)
            self.info["xla_argument_bytes"] = int(memory.argument_size_in_bytes)
        _log(
            f"Compiled in {self.info['compile_s']:.1f} s (generator "
            f"{self.info['generator_compile_s']:.1f} s): "
            f"{self.info['flops_per_step'] / 1e9:.1f} GFLOP per step, "
            f"{self.info['generator_flops'] / 1e9:.1f} GFLOP per generator forward "
            "(XLA cost analysis)."
        )
        self.train_times: list[float] = []
        self.generator_times: list[float] = []
        self.parts: dict[str, dict] | None = None

    def warm_up(self, steps: int = 1) -> None:
        for _ in range(steps):
            self.state, _ = self.step(self.state, self.vgg_state, self.image, self.mask)
        jax.block_until_ready(self.state)
        jax.block_until_ready(self._predict())

    def _predict(self):
        return self.predict(self.state["g_params"], self.state["g_spec"], self.image, self.mask)

    def time_train_step(self, steps: int, repeats: int) -> list[float]:
        """``repeats`` rounds of ``steps`` back-to-back steps; seconds per step of each round."""
        from isnet_jax import train

        times = []
        for r in range(repeats):
            pending = []
            t0 = time.perf_counter()
            for _ in range(steps):  # no host synchronisation in here
                self.state, metrics = self.step(self.state, self.vgg_state, self.image, self.mask)
                pending.append(metrics)
            jax.block_until_ready(self.state)
            times.append((time.perf_counter() - t0) / steps)
            last = jax.device_get(pending[-1])
            _log(
                f"  training step, round {r + 1}/{repeats}: {times[-1]:.3f} s per step (G loss "
                f"{float(last['g_loss']):.3f}, D loss {float(last['d_loss']):.3f})"
            )
        train.check_finite(self.state)
        self.train_times += times
        return times

    def time_generator(self, calls: int, repeats: int) -> list[float]:
        times = time_calls(self._predict, repeats, calls)
        _log("  generator forward: " + ", ".join(f"{t:.3f}" for t in times) + " s per call")
        self.generator_times += times
        return times

    def time_parts(self, repeats: int) -> dict[str, dict]:
        self.parts = benchmark_parts(
            self.trainer, self.state, self.vgg_state, self.image, self.mask, repeats,
            self.compiler_options,
        )
        return self.parts

    def record(self, peak_flops: float | None = None) -> dict[str, Any]:
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
        peak, source = device_peak(jnp.dtype(self.config.compute_dtype), peak_flops)
        rec["peak_flop_per_s"], rec["peak_source"] = peak, source
        if peak:
            rec["utilization"] = rec["achieved_flop_per_s"] / peak
            rec["generator_utilization"] = rec["generator_achieved_flop_per_s"] / peak
        if self.parts is not None:
            rec["parts"] = self.parts
        rec["peak_memory_bytes"], rec["peak_memory_source"] = peak_memory()
        rec["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        util = f", {100 * rec['utilization']:.0f}% of peak" if peak else ""
        _log(
            f"Training step {rec['train_step_s']:.3f} s ({rec['images_per_s']:.2f} images/s, "
            f"{rec['achieved_flop_per_s'] / 1e9:.1f} GFLOP/s{util}); generator forward "
            f"{rec['generator_forward_s']:.3f} s; peak memory "
            f"{rec['peak_memory_bytes'] / 2**20:.0f} MiB ({rec['peak_memory_source']})."
        )
        return rec


def benchmark_parts(
    trainer, state, vgg_state, image, mask, rounds: int, compiler_options=None
) -> dict[str, dict]:
    """Times and FLOPs of the step's pieces, each jitted on its own (not fused with the rest).

    D runs on 2B images (real and fake together, as in the step); its backward gives the
    parameter gradient (D's update) and the input gradient (G's path through D). VGG19 is
    frozen, so its backward is the input gradient only.
    """
    nets = trainer.nets
    g_vars = (state["g_params"], state["g_spec"])
    d_vars = (state["d_params"], state["d_spec"])
    masked = image * mask
    both = jnp.concatenate([image, image])

    def g_fwd(p, s, x, train=True):
        return nnx.merge(nets.g_def, p, s, copy=True)(x, train=train)

    def g_fwd_eval(p, s, x):
        return g_fwd(p, s, x, train=False)

    def g_fwd_bwd(p, s, x):
        return jax.grad(lambda p: jnp.mean(g_fwd(p, s, x)))(p)

    def d_fwd(p, s, x):
        return nnx.merge(nets.d_def, p, s, copy=True)(x, train=True)[0]

    def d_fwd_bwd(p, s, x):
        return jax.grad(lambda p, x: jnp.mean(d_fwd(p, s, x)), argnums=(0, 1))(p, x)

    # name: (function, arguments, also count convolution FLOPs from shapes)
    pieces: dict[str, tuple[Callable, tuple, bool]] = {
        "generator_forward_eval": (g_fwd_eval, (*g_vars, masked), True),
        "generator_forward_train": (g_fwd, (*g_vars, masked), False),
        "generator_forward_backward": (g_fwd_bwd, (*g_vars, masked), False),
        "discriminator_forward_2b": (d_fwd, (*d_vars, both), True),
        "discriminator_forward_backward_2b": (d_fwd_bwd, (*d_vars, both), False),
    }
    if nets.vgg_def is not None:

        def vgg_fwd(v, x):
            feats = nnx.merge(nets.vgg_def, v, copy=True)(x, outputs=nets.vgg_layers)
            return sum(jnp.mean(f) for f in feats.values())

        pieces["vgg19_forward"] = (vgg_fwd, (vgg_state, image), True)
        pieces["vgg19_forward_backward_input"] = (
            jax.grad(vgg_fwd, argnums=1), (vgg_state, image), False
        )
    _log("Parts of the step, each compiled and timed on its own:")
    results = {}
    for name, (fn, args, by_shapes) in pieces.items():
        compiled, compile_s = compile_timed(jax.jit(fn), *args, compiler_options=compiler_options)
        jax.block_until_ready(compiled(*args))
        times = time_calls(lambda c=compiled, a=args: c(*a), rounds, 2)
        entry = {
            "seconds": statistics.median(times),
            "xla_flops": cost_flops(compiled),
            "compile_s": compile_s,
        }
        entry["flop_per_s"] = entry["xla_flops"] / entry["seconds"]
        line = (
            f"  {name:34s} {entry['seconds']:7.3f} s {entry['xla_flops'] / 1e9:8.1f} GFLOP (XLA)"
            f" {entry['flop_per_s'] / 1e9:6.1f} GFLOP/s"
        )
        if by_shapes:
            entry["conv_flops_from_shapes"] = conv_flops(fn, *args)
            line += f"; convolutions from shapes {entry['conv_flops_from_shapes'] / 1e9:.1f} GFLOP"
        results[name] = entry
        _log(line)
    return results


def run(
    config: ml_collections.ConfigDict,
    *,
    steps: int = 3,
    repeats: int = 3,
    warmup: int = 1,
    parts: bool = False,
    peak_flops: float | None = None,
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
    return bench.record(peak_flops)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def define_flags() -> None:
    """The command-line flags (defined on demand, so importing this module defines none)."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", str(_PLACES2), "Training configuration file (configs/*.py).", lock_config=False
    )
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
    flags.DEFINE_bool("parts", False, "Also time and count G, D and VGG19 separately.")
    flags.DEFINE_float(
        "peak_flops", None, "Device peak FLOP/s for the utilisation (default: a table of known "
        "accelerators, or a measured float32 matmul on the CPU; 0: don't measure).",
    )
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
            peak_flops=f.peak_flops, vgg_source=vgg_source,
            compiler_options=parse_compiler_options(f.compiler_option),
        )
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
