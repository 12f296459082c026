"""The user's mistakes at the command line, Ctrl-C and damaged checkpoints. The demo's training
and --mode=eval end to end are README's quick start, run by tests/docs/test_doc_readme.py."""

import logging
import os
import signal
import subprocess
import sys

import pytest
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


def test_eval_without_checkpoint_is_one_clear_error(tmp_path):
    out = _run(f"--workdir={tmp_path}", "--mode=eval", *_TINY)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "no Orbax checkpoint found" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_failed_start_leaves_no_workdir(tmp_path):
    workdir = tmp_path / "new"
    out = _run(f"--workdir={workdir}", *_TINY, f"--config.init_from={tmp_path / 'nope'}")
    assert out.returncode == 2 and "error: no Orbax checkpoint found at" in out.stderr
    assert "Traceback" not in out.stderr
    assert not workdir.exists()


@pytest.mark.slow
def test_ctrl_c_saves_the_last_step_and_exits_130(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, grain's data workers included
    (the harder case: a run without workers has the same handler, and test_train's SIGTERM
    test runs one)."""
    num_workers = 2
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


@pytest.mark.slow
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
