"""The user's commands end to end: train (the demo config, shrunk), then --mode=eval."""

import json
import os
import subprocess
import sys

from conftest import REPO

_TINY = [
    "--config.image_size=32",
    "--config.batch_size=2",
    "--config.num_train_steps=4",
    "--config.log_every_steps=2",
    "--config.image_every_steps=4",
    "--config.checkpoint_every_steps=2",
    "--config.eval_every_steps=4",
    "--config.eval.num_images=4",
    "--config.eval.batch_size=2",
]


def _run(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "isnet_jax.main", *args], cwd=REPO, capture_output=True,
        text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def test_demo_trains_writes_summaries_samples_checkpoints_then_evaluates(tmp_path):
    workdir = tmp_path / "demo"
    out = _run(f"--workdir={workdir}", *_TINY)  # no --config: the embedded demo config
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 4/4" in out.stderr
    assert list(workdir.glob("events.out.tfevents.*"))
    assert (workdir / "samples" / "step_00000004.png").exists()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2", "4"
    ]
    # Orbax's per-save chatter stays out of the user's log.
    assert "atomicity.py" not in out.stderr

    out = _run(
        f"--workdir={workdir}", "--mode=eval", *_TINY, "--config.eval.num_images_final=4"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| PSNR |" in out.stdout and "10-20%" in out.stdout
    results = json.loads((workdir / "eval" / "step_4" / "results.json").read_text())
    assert set(results["bands"]) == {"10-20%", "20-30%", "30-40%", "40-50%", "all"}
    assert results["bands"]["all"]["images"] == 4
    assert 0.0 < results["bands"]["10-20%"]["psnr"] < 100.0
    # The mean-colour fill baseline sits beside the model in every form of the report.
    assert "| PSNR, mean-colour fill |" in out.stdout
    assert "| PSNR, mean-colour fill |" in (workdir / "eval" / "step_4" / "table.md").read_text()
    assert 0.0 < results["bands"]["10-20%"]["mean_fill/psnr"] < 100.0
    assert "mean-colour fill: PSNR" in out.stderr
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(workdir / "eval"))
    events.Reload()
    assert "10-20%/mean_fill/psnr" in events.Tags()["tensors"]


def test_eval_without_checkpoint_is_one_clear_error(tmp_path):
    out = _run(f"--workdir={tmp_path}", "--mode=eval", *_TINY)
    assert out.returncode != 0
    assert "no Orbax checkpoint found" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_vgg_weights_stop_with_instructions(tmp_path):
    out = _run(
        f"--workdir={tmp_path}", *_TINY, "--config.loss.perceptual_weight=0.1",
        "--config.loss.style_weight=250",
    )
    assert out.returncode != 0
    assert "python -m isnet_jax.convert --vgg19" in out.stderr
    assert "Traceback" not in out.stderr
