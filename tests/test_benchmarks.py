"""The training-step benchmark runs end to end in a tiny mode, so it cannot rot.

`python -m isnet_jax.benchmarks.train_step` at 32x32, batch 1, one block, with the random-
weight VGG19 (the full loss) must end with one JSON line holding the documented keys and sane
values. The helpers it relies on (FLOPs from shapes, compiler options) and the torch comparison's
bookkeeping (with a stand-in peer) are checked in-process.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import pytest

from isnet_jax.benchmarks import compare_torch, train_step

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_tiny_benchmark_prints_the_documented_json():
    cmd = [
        sys.executable, "-m", "isnet_jax.benchmarks.train_step", "--config=configs/places2.py",
        "--resolution=32", "--batch_size=1", "--blocks=1", "--steps=1", "--repeats=2",
        "--warmup=1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    for key in train_step.REQUIRED_KEYS:
        assert key in record, f"missing {key}"
    assert record["batch_size"] == 1 and record["resolution"] == 32 and record["blocks"] == 1
    assert record["platform"] == jax.devices()[0].platform
    assert record["compute_dtype"] == ("float32" if record["platform"] == "cpu" else "bfloat16")
    assert "random weights" in record["vgg"]
    for key in ("train_step_s", "generator_forward_s", "compile_s"):
        assert 0 < record[key] < 120, (key, record[key])
    assert len(record["train_step_s_rounds"]) == 2
    assert record["images_per_s"] == pytest.approx(1 / record["train_step_s"])
    # A 32 px step with VGG19 is a few GFLOP; the step is at least G's forward + backward.
    assert 1e9 < record["flops_per_step"] < 2e10
    assert 2 * record["generator_flops"] < record["flops_per_step"]
    assert record["achieved_flop_per_s"] > 0
    assert 0 < record["utilization"] < 1.5
    assert record["peak_memory_bytes"] > 1 << 20
    # Progress in words before the JSON line.
    assert any(line.startswith("Compiled in") for line in lines[:-1])


def test_conv_flops_counts_convolutions_and_matmuls_from_shapes():
    x = jnp.zeros((2, 8, 8, 3))
    k = jnp.zeros((3, 3, 3, 5))
    w = jnp.zeros((5, 7))

    def f(x, k, w):
        y = jax.lax.conv_general_dilated(x, k, (2, 2), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.jit(lambda y: y @ w)(y)  # a nested jaxpr is counted too

    conv = 2 * (2 * 4 * 4 * 5) * (3 * 3 * 3)
    dot = 2 * (2 * 4 * 4 * 7) * 5
    assert train_step.conv_flops(f, x, k, w) == conv + dot


def test_compiler_options_parse():
    assert train_step.parse_compiler_options(
        ["xla_cpu_use_fusion_emitters=false", "a=B,C=D"]
    ) == {"xla_cpu_use_fusion_emitters": False, "a": "B,C=D"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        train_step.parse_compiler_options(["no_value"])


def test_compare_alternates_and_reports_ratios(tmp_path):
    peer = tmp_path / "peer.py"
    peer.write_text(
        "import json, sys\n"
        "assert sys.argv[1:] == ['bench', '32', '1', '1'], sys.argv\n"
        "print('warming up')\n"
        "print(json.dumps({'peer': 'torch', 'torch': 'stub', 'threads': 2, "
        "'train_step_s': 3.0, 'generator_forward_s': 1.0}))\n"
    )
    calls = []
    config = types.SimpleNamespace(image_size=32, batch_size=1,
                                   model=types.SimpleNamespace(blocks=1))

    def time_train_step(steps, repeats):
        calls.append("train")
        return [2.0] * repeats

    def time_generator(calls_per_round, repeats):
        calls.append("gen")
        return [0.5] * repeats

    bench = types.SimpleNamespace(
        config=config, info={"device": "stub", "flops_per_step": 1.0}, compiler_options={},
        time_train_step=time_train_step, time_generator=time_generator,
    )
    result = compare_torch.compare(bench, python=sys.executable, peer=str(peer), rounds=2)
    assert calls == ["train", "gen", "train", "gen"]
    assert result["train_step_speedup"] == pytest.approx(1.5)
    assert result["generator_speedup"] == pytest.approx(2.0)
    assert len(result["torch_train_step_s_rounds"]) == 2


def test_inpaint_benchmark_runs_each_mode_in_its_own_process(tiny_checkpoint):
    """`python -m isnet_jax.benchmarks.inpaint` on a 200x150 photo with the tiny checkpoint."""
    cmd = [
        sys.executable, "-m", "isnet_jax.benchmarks.inpaint", "--width=200", "--height=150",
        f"--checkpoint={tiny_checkpoint}", "--size=32", "--margin=8", "--repeats=1",
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
