"""The benchmarks run end to end in a tiny mode, so they cannot rot, and what they report holds.

`python -m isnet_jax.benchmarks.train_step` at 32x32, batch 1, one block, with the random-
weight VGG19 (the full loss) must end with one JSON line holding the documented keys, and its
FLOPs (XLA's cost analysis) must agree with an independent count: every convolution and matrix
product of the same step's jaxpr, counted here from the shapes, padding included. The
PyTorch comparison runs the same tiny step against a stand-in for the PyTorch program (which
lives in its own virtual environment with torch) and must alternate and divide correctly.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from isnet_jax import sharding, train
from isnet_jax.benchmarks import train_step

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config=configs/places2.py", "--resolution=32", "--batch_size=1", "--blocks=1"]


def _valid_taps(size: int, taps: int, stride: int, pad_lo: int, lhs_dil: int, rhs_dil: int,
                out: int) -> int:
    """(output position, kernel tap) pairs along one axis whose input is a real pixel (not
    padding, not a hole of the input dilation): the taps a convolution multiplies."""
    pos = np.arange(out)[:, None] * stride - pad_lo + np.arange(taps)[None, :] * rhs_dil
    return int(((pos >= 0) & (pos <= (size - 1) * lhs_dil) & (pos % lhs_dil == 0)).sum())


def conv_dot_flops(jaxpr) -> int:
    """2 x the multiply-adds of every convolution and matrix product in ``jaxpr``, nested ones
    included: an independent count of what XLA's cost analysis calls FLOPs, minus the
    element-wise work."""
    total = 0
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0].aval
        if eqn.primitive.name == "conv_general_dilated":
            lhs, rhs, p = eqn.invars[0].aval, eqn.invars[1].aval, eqn.params
            dn = p["dimension_numbers"]
            assert p["batch_group_count"] == 1, "count grouped-batch convolutions too"
            pairs = 1
            for i, (ld, rd, od) in enumerate(zip(dn.lhs_spec[2:], dn.rhs_spec[2:],
                                                 dn.out_spec[2:], strict=True)):
                pairs *= _valid_taps(lhs.shape[ld], rhs.shape[rd], p["window_strides"][i],
                                     p["padding"][i][0], p["lhs_dilation"][i],
                                     p["rhs_dilation"][i], out.shape[od])
            batch, features = out.shape[dn.out_spec[0]], out.shape[dn.out_spec[1]]
            total += 2 * batch * features * rhs.shape[dn.rhs_spec[1]] * pairs
        elif eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            k = np.prod([eqn.invars[0].aval.shape[d] for d in contracting])
            total += 2 * int(np.prod(out.shape)) * int(k)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += conv_dot_flops(sub)
    return total


def test_conv_dot_flops_counts_padding_strides_and_dilations():
    """The independent count itself, on cases small enough to count by hand."""
    x, k = jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))

    def conv(**kw):
        return lambda x, k: jax.lax.conv_general_dilated(
            x, k, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)

    def count(f, *args):
        return conv_dot_flops(jax.make_jaxpr(f)(*args).jaxpr)

    # 3x3 "same" on 5x5: per axis 5 outputs x 3 taps, less the 2 that fall on padding.
    assert count(conv(window_strides=(1, 1), padding=((1, 1),) * 2), x, k) == 2 * 2 * 4 * 3 * 13**2
    # Stride 2, no padding: 2x2 outputs, every tap real.
    assert count(conv(window_strides=(2, 2), padding=((0, 0),) * 2), x, k) == 2 * 2 * 4 * 3 * 6**2
    # Dilation 2, padding 2: per axis the centre tap for all 5 outputs, each outer one for 3.
    assert count(conv(window_strides=(1, 1), padding=((2, 2),) * 2, rhs_dilation=(2, 2)), x, k) \
        == 2 * 2 * 4 * 3 * 11**2
    w = jnp.ones((4, 7))
    assert count(lambda a: jax.jit(lambda a: a @ w)(a), jnp.ones((6, 4))) == 2 * 6 * 7 * 4


IMAGE = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
MASK = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The benchmark's tiny config as a Trainer, abstract only (nothing initialised or
    compiled), and the independent count of its training step."""
    from isnet_jax.configs import places2

    config, _ = train_step.prepare_config(
        places2.get_config(), workdir=str(tmp_path_factory.mktemp("vgg")), batch_size=1,
        resolution=32, blocks=1, compute_dtype="float32")
    trainer = train.Trainer(config, sharding.create_mesh(config.get("mesh")))
    step = jax.make_jaxpr(trainer.train_step)(trainer.abstract_state, trainer.vgg_state, IMAGE,
                                              MASK)
    return trainer, conv_dot_flops(step.jaxpr)


@pytest.mark.slow
def test_tiny_benchmark_prints_the_documented_json(tiny):
    cmd = [sys.executable, "-m", "isnet_jax.benchmarks.train_step", *TINY, "--steps=2",
           "--repeats=2", "--warmup=1"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    for key in train_step.REQUIRED_KEYS:
        assert key in record, f"missing {key}"
    assert record["batch_size"] == 1 and record["resolution"] == 32 and record["blocks"] == 1
    assert record["compute_dtype"] == ("float32" if record["platform"] == "cpu" else "bfloat16")
    assert "random weights" in record["vgg"]
    assert any(line.startswith("Compiled in") for line in lines[:-1])  # progress in words

    # FLOPs: XLA's count of the compiled step against the convolutions and matrix products of
    # the same step's jaxpr. XLA also counts the element-wise work (activations, losses, Adam),
    # measured at 7.4 % of this tiny step and 1.8 % of the generator's forward, hence the bounds.
    trainer, step = tiny
    state = trainer.abstract_state
    generator = conv_dot_flops(jax.make_jaxpr(trainer.predict)(
        state["g_params"], state["g_spectral"], IMAGE, MASK).jaxpr)
    assert step <= record["flops_per_step"] <= 1.10 * step, (record["flops_per_step"], step)
    assert generator <= record["generator_flops"] <= 1.04 * generator

    # Times: medians of their rounds; every timed round (and compile) happened inside the
    # wall time of the run; a step cannot beat the best matrix product the same run measured
    # (an unsynchronised timer would report the dispatch time: far above it).
    assert record["train_step_s"] == statistics.median(record["train_step_s_rounds"])
    assert record["generator_forward_s"] == statistics.median(record["generator_forward_s_rounds"])
    assert len(record["train_step_s_rounds"]) == len(record["generator_forward_s_rounds"]) == 2
    timed = (2 * sum(record["train_step_s_rounds"]) + 2 * sum(record["generator_forward_s_rounds"])
             + record["setup_s"] + record["compile_s"] + record["generator_compile_s"])
    assert timed < wall, (timed, wall)
    assert record["images_per_s"] == pytest.approx(1 / record["train_step_s"])
    assert record["achieved_flop_per_s"] == pytest.approx(
        record["flops_per_step"] / record["train_step_s"])
    assert 0 < record["utilization"] < 1, record["utilization"]
    assert record["utilization"] == pytest.approx(
        record["achieved_flop_per_s"] / record["matmul_flop_per_s"])

    # Memory: the process (or device) held at least the step's arguments and XLA's temporary
    # buffer at once, and no more than the machine has.
    held = record["xla_argument_bytes"] + record["xla_temp_bytes"]
    assert held <= record["peak_memory_bytes"] < os.sysconf("SC_PAGE_SIZE") * os.sysconf(
        "SC_PHYS_PAGES"), (held, record["peak_memory_bytes"])


@pytest.mark.slow
def test_step_parts_are_the_pieces_of_the_step(tiny):
    """``--parts`` compiles these functions alone; counted here, they must be the networks'
    forward and backward passes the step is made of."""
    trainer, step = tiny
    parts = train_step.step_parts(trainer, trainer.abstract_state, jnp.zeros(IMAGE.shape))
    flops = {name: conv_dot_flops(jax.make_jaxpr(fn)(*args).jaxpr)
             for name, (fn, args) in parts.items()}
    # Frozen VGG19: forward + input gradient, exactly twice the forward.
    assert flops["vgg19_forward_backward_input"] == 2 * flops["vgg19_forward"]
    # G and D: weight gradients and input gradients (all but G's first layer's): under 3x.
    for forward, backward in (("generator_forward_train", "generator_forward_backward"),
                              ("discriminator_forward_2b", "discriminator_forward_backward_2b")):
        ratio = flops[backward] / flops[forward]
        assert 2.6 < ratio <= 3, (backward, ratio)
    # Together they are the step's convolutions, but for the Gram matrices and D's second look
    # at the prediction (measured: 4.4 % of the step at this size).
    pieces = sum(flops[name] for name in parts if "backward" in name) + flops["vgg19_forward"]
    assert 0.93 * step < pieces < step, pieces / step


def test_compiler_options_parse():
    assert train_step.parse_compiler_options(
        ["xla_cpu_use_fusion_emitters=false", "a=B,C=D"]
    ) == {"xla_cpu_use_fusion_emitters": False, "a": "B,C=D"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        train_step.parse_compiler_options(["no_value"])


PEER = """\
import json, pathlib, sys
log = pathlib.Path(__file__).with_suffix(".log")
calls = log.read_text().splitlines() if log.exists() else []
log.write_text("\\n".join([*calls, " ".join(sys.argv[1:])]) + "\\n")
print("warming up")
print(json.dumps({"peer": "torch", "torch": "stand-in", "threads": 2,
                  "train_step_s": [3.0, 5.0][len(calls)],
                  "generator_forward_s": [1.0, 0.5][len(calls)]}))
"""


@pytest.mark.slow
def test_compare_torch_alternates_with_the_peer_and_divides(tmp_path):
    """`compare_torch` with the tiny step (compiled programs come from the test cache) and a
    stand-in for the PyTorch program that reports 3 and 5 s per step, 1 and 0.5 s per
    generator forward."""
    peer = tmp_path / "peer.py"
    peer.write_text(PEER)
    cmd = [sys.executable, "-m", "isnet_jax.benchmarks.compare_torch", *TINY, "--rounds=2",
           "--steps=1", f"--torch_python={sys.executable}", f"--peer={peer}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert peer.with_suffix(".log").read_text().splitlines() == ["bench 32 1 1"] * 2
    order = [line.split()[1:3] for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert order == [["1/2", "torch:"], ["1/2", "jax:"], ["2/2", "jax:"], ["2/2", "torch:"]]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch_train_step_s_rounds"] == [3.0, 5.0]
    assert result["torch_train_step_s"] == 4.0 and result["torch_generator_forward_s"] == 0.75
    jax_train = statistics.median(result["jax_train_step_s_rounds"])
    jax_gen = statistics.median(result["jax_generator_forward_s_rounds"])
    assert result["jax_train_step_s"] == jax_train and result["jax_generator_forward_s"] == jax_gen
    assert result["train_step_speedup"] == pytest.approx(4.0 / jax_train)
    assert result["generator_speedup"] == pytest.approx(0.75 / jax_gen)
    assert result["torch"] == "stand-in" and result["resolution"] == 32


@pytest.mark.slow
def test_inpaint_benchmark_runs_each_mode_in_its_own_process(tiny_checkpoint):
    """`python -m isnet_jax.benchmarks.inpaint` on a 200x150 photo with the tiny checkpoint."""
    cmd = [
        sys.executable, "-m", "isnet_jax.benchmarks.inpaint", "--width=200", "--height=150",
        f"--checkpoint={tiny_checkpoint}", "--size=32", "--crop-margin=8", "--repeats=1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    results = {r["mode"]: r for r in summary["results"]}
    assert list(results) == ["crop", "resize", "pad"]
    # Three far-apart strokes: three crops, each down-scaled to the 32 px "training size".
    assert results["crop"]["crops"] == 3 and results["crop"]["network_shapes"] == ["32x32"]
    assert results["resize"]["network_shapes"] == ["32x32"]
    assert results["pad"]["network_shapes"] == ["208x160"]
    for mode, r in results.items():
        assert 0.025 < r["hole"] < 0.035, (mode, r["hole"])
        assert r["first_s"] > 0 and r["run_s"] > 0 and len(r["run_s_rounds"]) == 1, mode
        assert r["peak_rss_bytes"] >= r["baseline_rss_bytes"] > 1 << 20, mode
    ratio = results["pad"]["run_s"] / results["crop"]["run_s"]
    assert summary["pad_over_crop"] == pytest.approx(ratio, abs=0.051)
    assert "| crop | 3 crops at 32x32 |" in proc.stdout


@pytest.mark.slow
def test_inpaint_benchmark_times_the_command_cold_and_warm_against_a_plain_script(
        tiny_checkpoint):
    """`--command-line`, one round, the tiny checkpoint at 32 px: the command cold then warm
    (which compiles nothing and says so), and the plain script, whose result the benchmark
    holds equal to the command's."""
    cmd = [sys.executable, "-m", "isnet_jax.benchmarks.inpaint", "--command-line",
           "--width=200", "--height=150", "--strokes=1", f"--checkpoint={tiny_checkpoint}",
           "--size=32", "--crop-margin=8", "--rounds=1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    medians = summary["medians"]
    assert list(medians) == ["after cold", "after warm", "plain"]
    assert medians["after cold"]["compilation"].startswith("compilation: ")
    assert medians["after warm"]["compilation"].startswith(
        "compilation: nothing compiled (onnxruntime, cached export ")
    assert all(m["wall_s"] > 0 and m["cpu_s"] > 0 for m in medians.values())
    assert summary["ratios"]["after warm / cold"] == pytest.approx(
        medians["after warm"]["wall_s"] / medians["after cold"]["wall_s"], abs=0.01)
    assert "| plain onnxruntime script |" in proc.stdout


@pytest.mark.slow
def test_export_benchmark_alternates_runtimes_each_in_its_own_process(tiny_checkpoint):
    """`python -m isnet_jax.benchmarks.export` with the tiny checkpoint at 32 px: JAX and
    onnxruntime (the quickest export), two rounds."""
    cmd = [sys.executable, "-m", "isnet_jax.benchmarks.export", f"--checkpoint={tiny_checkpoint}",
           "--blocks=1", "--sizes=32", "--rounds=2", "--runtimes=jax,onnx"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [line for line in proc.stdout.splitlines() if line.startswith("32 px round")]
    assert [line.split(": ")[1].split()[0] for line in rounds] == ["jax", "onnx"]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    (result,) = summary["results"]
    assert set(result["median_s"]) == {"jax", "onnx"}
    for name in ("jax", "onnx"):
        assert len(result["times_s"][name]) == 2
        assert result["median_s"][name] == statistics.median(result["times_s"][name])
    # Each process's own peak: onnxruntime's process holds no JAX.
    assert 0 < result["peak_rss_mib"]["onnx"] < result["peak_rss_mib"]["jax"]
    assert "| onnx | " in proc.stdout
