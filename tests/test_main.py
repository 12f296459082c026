"""The user's commands end to end: train (the demo config, shrunk), then --mode=eval."""

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
from helpers.fid_lpips_weights import write_weight_files
from helpers.paths import REPO
from helpers.processes import start_until
from helpers.tiny import TINY_FLAGS, tiny_config

from isnet_jax import checkpoint, train

_TINY = ["--config.num_train_steps=4", *TINY_FLAGS]


def _run(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "isnet_jax.main", *args], cwd=REPO, capture_output=True,
        text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


@pytest.mark.slow
def test_demo_trains_writes_summaries_samples_checkpoints_then_evaluates(tmp_path):
    workdir = tmp_path / "demo"
    out = _run(f"--workdir={workdir}", *_TINY)  # no --config: the embedded demo config
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 4/4" in out.stderr
    # The periodic evaluation: the held-out photos, the model beside every baseline.
    assert "step 4: held-out PSNR " in out.stderr
    line = out.stderr.split("step 4: held-out PSNR ")[1].splitlines()[0]
    for part in ("mean-colour fill", "OpenCV Telea", "OpenCV Navier-Stokes",
                 "on 4 images of skimage, held-out photos chelsea, coffee, rocket"):
        assert part in line, line
    assert list(workdir.glob("events.out.tfevents.*"))
    assert (workdir / "samples" / "step_00000004.png").exists()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2", "4"
    ]
    # Orbax's per-save chatter stays out of the user's log.
    assert "atomicity.py" not in out.stderr
    # So do TensorFlow's oneDNN notice and JAX's search for a TPU: the first screen is ours.
    for noise in ("oneDNN", "absl::InitializeLog", "Unable to initialize backend"):
        assert noise not in out.stderr, noise

    # A broken FID weights file: one line naming it, before anything is written.
    weights = write_weight_files(tmp_path / "weights")
    truncated = tmp_path / "pt_inception-truncated.pth"
    truncated.write_bytes(weights["inception"].read_bytes()[:5_000_000])
    out = _run(f"--workdir={workdir}", "--mode=eval", *_TINY,
               f"--config.eval.fid_weights={truncated}")
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"error: config.eval.fid_weights: {truncated} is a truncated" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (workdir / "eval").exists()

    out = _run(
        f"--workdir={workdir}", "--mode=eval", *_TINY, "--config.eval.num_images_final=4"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| PSNR |" in out.stdout and "| 10-20 % |" in out.stdout
    assert "| skimage, held-out photos chelsea, coffee, rocket, step 4 |" in out.stdout
    results = json.loads((workdir / "eval" / "step_4" / "results.json").read_text())
    assert set(results["bands"]) == {"10-20", "20-30", "30-40", "40-50", "all"}
    assert results["bands"]["all"]["images"] == 4
    assert 0.0 < results["bands"]["10-20"]["psnr"] < 100.0
    # The mean-colour fill baseline sits beside the model in every form of the report.
    assert "| PSNR, mean-colour fill |" in out.stdout
    assert "| PSNR, mean-colour fill |" in (workdir / "eval" / "step_4" / "table.md").read_text()
    assert 0.0 < results["bands"]["10-20"]["mean_fill/psnr"] < 100.0
    assert "mean-colour fill: PSNR" in out.stderr
    # So do OpenCV's Telea and Navier-Stokes (evaluators/test_classical.py checks them).
    for row in ("| PSNR, OpenCV Telea |", "| SSIM, OpenCV Navier-Stokes |"):
        assert row in out.stdout
    assert 0.0 < results["bands"]["all"]["telea/psnr"] < 100.0
    assert "OpenCV Telea: PSNR" in out.stderr
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(workdir / "eval"))
    events.Reload()
    assert {"10-20/mean_fill/psnr", "10-20/telea/psnr", "all/navier_stokes/l1_percent"} <= set(
        events.Tags()["scalars"])
    # Without weight files: the old rows, and one line saying how to add FID and LPIPS.
    step_dir = workdir / "eval" / "step_4"
    assert "| FID" not in out.stdout and "| LPIPS" not in out.stdout
    note = [line for line in out.stdout.splitlines() if "not computed" in line]
    assert len(note) == 1 and note[0].startswith("FID and LPIPS not computed: set config.eval.")
    assert results["not_computed"] == note[0] and "fid" not in results["bands"]["all"]
    assert sorted(p.name for p in step_dir.glob("sheet_*.png")) == [
        "sheet_10-20.png", "sheet_20-30.png", "sheet_30-40.png", "sheet_40-50.png", "sheet_all.png"
    ]
    assert "10-20/sheet" in events.Tags()["images"]

    # With the random-weight stand-ins for pytorch-fid's and lpips' files: every column.
    (workdir / "eval").rename(tmp_path / "eval_without")
    out = _run(
        f"--workdir={workdir}", "--mode=eval", *_TINY, "--config.eval.num_images_final=4",
        f"--config.eval.fid_weights={weights['inception']}", "--config.eval.fid_method=eigh",
        f"--config.eval.lpips_backbone_weights={weights['alexnet']}",
        f"--config.eval.lpips_lin_weights={weights['lin_alex']}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = (step_dir / "table.md").read_text()
    for row in ("| FID |", "| FID, mean-colour fill |", "| LPIPS (alex) |",
                "| LPIPS (alex), mean-colour fill |", "| PSNR |", "| PSNR, mean-colour fill |",
                "| FID, OpenCV Telea |", "| LPIPS (alex), OpenCV Navier-Stokes |"):
        assert row in out.stdout and row in table, row
    fid_row = next(line for line in table.splitlines() if line.startswith("| FID |"))
    assert fid_row.count("(n=4)") == 5  # the image count beside every FID
    assert "not computed" not in out.stdout
    results = json.loads((step_dir / "results.json").read_text())
    assert results["fid"]["method"] == "eigh" and results["lpips"]["net"] == "alex"
    for band in results["bands"].values():
        assert band["fid"] > 0 and band["mean_fill/fid"] > 0 and band["fid_images"] == 4
        assert 0 < band["lpips"] < 1 and 0 < band["mean_fill/lpips"] < 1
        assert band["telea/fid"] > 0 and 0 < band["navier_stokes/lpips"] < 1
    assert len(list(step_dir.glob("sheet_*.png"))) == 5
    events = event_accumulator.EventAccumulator(str(workdir / "eval"))
    events.Reload()
    tags = events.Tags()
    assert {"all/fid", "all/lpips", "all/mean_fill/fid"} <= set(tags["scalars"])
    assert "all/sheet" in tags["images"]


def test_eval_without_checkpoint_is_one_clear_error(tmp_path):
    out = _run(f"--workdir={tmp_path}", "--mode=eval", *_TINY)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "no Orbax checkpoint found" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_vgg_weights_stop_with_instructions(tmp_path):
    """VGG on, no vgg_weights, an empty cache and the publisher unreachable: one line naming
    the file, its URL and where to put it by hand."""
    from isnet_jax import weights
    from isnet_jax.rehearse.weights_server import serve, write_table

    stand_in = tmp_path / "vgg19-stand-in.pth"
    stand_in.write_bytes(b"never served")
    with serve({"vgg19": stand_in}) as server:
        table = write_table(tmp_path / "table.json", server, {"vgg19": stand_in})
    cache, workdir = tmp_path / "cache", tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "isnet_jax.main", f"--workdir={workdir}", *_TINY,
         "--config.loss.perceptual_weight=0.1", "--config.loss.style_weight=250"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, **{weights.CACHE_VARIABLE: str(cache),
                                weights.TABLE_VARIABLE: str(table)}))
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert errors[0].startswith(
        f"error: cannot download vgg19-dcbb9e9d.pth from {server.url('vgg19-dcbb9e9d.pth')} (")
    assert f"put it at {cache / 'vgg19-dcbb9e9d.pth'}" in errors[0]
    assert not workdir.exists() and not any(p.is_file() for p in cache.rglob("*"))


@pytest.mark.parametrize("args, says", [
    (["--config=configs/nope.py"], "cannot load the config file configs/nope.py"),
    (["--config.batchsize=4"], "--config.batchsize: the config has no such field; did you mean "
                               "--config.batch_size?"),
    (["--config.batch_size=four"], "flag --config.batch_size=four: invalid literal"),
])
def test_config_mistakes_are_one_line_and_leave_no_workdir(tmp_path, args, says):
    workdir = tmp_path / "new"
    out = _run(f"--workdir={workdir}", *args)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert not workdir.exists()


def test_a_failed_start_leaves_no_workdir(tmp_path):
    workdir = tmp_path / "new"
    out = _run(f"--workdir={workdir}", *_TINY, f"--config.init_from={tmp_path / 'nope'}")
    assert out.returncode == 2 and "error: no Orbax checkpoint found at" in out.stderr
    assert "Traceback" not in out.stderr
    assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_ctrl_c_saves_the_last_step_and_exits_130(tmp_path, num_workers):
    """A terminal's Ctrl-C reaches the whole process group, grain's data workers included."""
    workdir = tmp_path / "run"
    proc, log = start_until(
        [sys.executable, "-m", "isnet_jax.main", f"--workdir={workdir}", *_TINY,
         "--config.num_train_steps=100000", "--config.log_every_steps=1",
         "--config.checkpoint_every_steps=100000", f"--config.data.num_workers={num_workers}"],
        "step 2/100000", signal.SIGINT, whole_group=True,
    )
    assert proc.returncode == 130, log[-3000:]
    assert "Traceback" not in log
    assert log.rstrip().splitlines()[-1].startswith("interrupted (Ctrl-C)")
    # The step in flight finishes (it has donated its input state), then the run saves.
    assert "Ctrl-C: stopping after the current step" in log
    assert checkpoint.all_steps(workdir)[-1] >= 2


def test_a_damaged_checkpoint_is_named_and_skipped(tmp_path, caplog):
    """The newest step loses a data file: eval and resume fall back to the step before it with
    a warning that names the damaged one; asking for that step by number is one error line."""
    workdir = tmp_path / "run"
    config = tiny_config(num_train_steps=4, checkpoint_every_steps=2)
    train.train_and_evaluate(config, str(workdir))
    data = sorted((workdir / "checkpoints" / "4" / "generator").rglob("d/*"),
                  key=lambda p: p.stat().st_size)
    data[-1].unlink()

    out = _run(f"--workdir={workdir}", "--mode=eval", *_TINY, "--config.eval.num_images_final=2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "the checkpoint of step 4" in out.stderr and "is damaged" in out.stderr
    # The reads Orbax abandons print nothing ("Task exception was never retrieved" ...).
    assert "Traceback" not in out.stderr and "exception" not in out.stderr, out.stderr[-3000:]
    assert (workdir / "eval" / "step_2" / "results.json").exists()

    out = _run(f"--workdir={workdir}", "--mode=eval", "--step=4", *_TINY)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    line = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "step 4" in line[0] and "steps [2] are there too" in line[0]

    config.num_train_steps = 5
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(config, str(workdir))
    assert "the checkpoint of step 4" in caplog.text and "4.damaged" in caplog.text
    assert checkpoint.all_steps(workdir) == [2, 4, 5]
    assert (workdir / "checkpoints" / "4.damaged").is_dir()
