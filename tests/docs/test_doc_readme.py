"""The run blocks of README.md, run as the document says (tests/helpers/doc_blocks.py), and what
its demo run wrote: the quick start's training and --mode=eval are the suite's end-to-end run of
the demo config (tests/test_main.py holds the user's mistakes)."""

import json
import os
import subprocess
import sys

import pytest
from helpers.doc_blocks import check_ran
from helpers.fid_lpips_weights import write_weight_files
from helpers.paths import REPO
from helpers.tiny import TINY_FLAGS

# Whole programs in subprocesses, each compiling: seconds to minutes.
pytestmark = pytest.mark.slow

DOC = "README.md"
# The flags doc_blocks.TINY gives the demo's commands, for the evaluations run here besides.
_TINY = ["--config.num_train_steps=4", *TINY_FLAGS]


def test_run_blocks(doc_run):
    check_ran(DOC, doc_run.ran)


def _demo(doc_run):
    """The quick start's block (train, then --mode=eval) and its workdir."""
    check_ran(DOC, doc_run.ran)
    ran = next(r for r in doc_run.ran if "--workdir=/tmp/isnet-demo --mode=eval" in r.block.text)
    return ran, doc_run.shared / "isnet-demo"


def test_demo_trains_writes_summaries_samples_checkpoints(doc_run):
    ran, workdir = _demo(doc_run)
    assert "step 4/4" in ran.stderr
    # The periodic evaluation: the held-out photos, the model beside every baseline.
    assert "step 4: held-out PSNR " in ran.stderr
    line = ran.stderr.split("step 4: held-out PSNR ")[1].splitlines()[0]
    for part in ("mean-colour fill", "OpenCV Telea", "OpenCV Navier-Stokes",
                 "on 4 images of skimage, held-out photos chelsea, coffee, rocket"):
        assert part in line, line
    assert list(workdir.glob("events.out.tfevents.*"))
    assert (workdir / "samples" / "step_00000004.png").exists()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2", "4"
    ]
    # Orbax's per-save chatter stays out of the user's log (training's and evaluation's).
    assert "atomicity.py" not in ran.stderr
    # So do TensorFlow's oneDNN notice and JAX's search for a TPU: the first screen is ours.
    for noise in ("oneDNN", "absl::InitializeLog", "Unable to initialize backend"):
        assert noise not in ran.stderr, noise


def test_demo_eval_reports_bands_baselines_and_sheets(doc_run):
    from tensorboard.backend.event_processing import event_accumulator

    ran, workdir = _demo(doc_run)
    step_dir = workdir / "eval" / "step_4"
    assert "| PSNR |" in ran.stdout and "| 10-20 % |" in ran.stdout
    assert "| skimage, held-out photos chelsea, coffee, rocket, step 4 |" in ran.stdout
    results = json.loads((step_dir / "results.json").read_text())
    assert set(results["bands"]) == {"10-20", "20-30", "30-40", "40-50", "all"}
    assert results["bands"]["all"]["images"] == 4
    assert 0.0 < results["bands"]["10-20"]["psnr"] < 100.0
    # The mean-colour fill baseline sits beside the model in every form of the report.
    assert "| PSNR, mean-colour fill |" in ran.stdout
    assert "| PSNR, mean-colour fill |" in (step_dir / "table.md").read_text()
    assert 0.0 < results["bands"]["10-20"]["mean_fill/psnr"] < 100.0
    assert "mean-colour fill: PSNR" in ran.stderr
    # So do OpenCV's Telea and Navier-Stokes (evaluators/test_classical.py checks them).
    for row in ("| PSNR, OpenCV Telea |", "| SSIM, OpenCV Navier-Stokes |"):
        assert row in ran.stdout
    assert 0.0 < results["bands"]["all"]["telea/psnr"] < 100.0
    assert "OpenCV Telea: PSNR" in ran.stderr
    events = event_accumulator.EventAccumulator(str(workdir / "eval"))
    events.Reload()
    assert {"10-20/mean_fill/psnr", "10-20/telea/psnr", "all/navier_stokes/l1_percent"} <= set(
        events.Tags()["scalars"])
    # Without weight files: the old rows, and one line saying how to add FID and LPIPS.
    assert "| FID" not in ran.stdout and "| LPIPS" not in ran.stdout
    note = [line for line in ran.stdout.splitlines() if "not computed" in line]
    assert len(note) == 1 and note[0].startswith("FID and LPIPS not computed: set config.eval.")
    assert results["not_computed"] == note[0] and "fid" not in results["bands"]["all"]
    assert sorted(p.name for p in step_dir.glob("sheet_*.png")) == [
        "sheet_10-20.png", "sheet_20-30.png", "sheet_30-40.png", "sheet_40-50.png", "sheet_all.png"
    ]
    assert "10-20/sheet" in events.Tags()["images"]


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "isnet_jax.main", *args], cwd=REPO, capture_output=True,
        text=True, timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


# Last in the file: it moves the quick start's eval/ aside (the tests above read it).
def test_demo_eval_with_fid_and_lpips_weights(doc_run, tmp_path):
    _, workdir = _demo(doc_run)
    (workdir / "eval").rename(tmp_path / "eval_of_the_readme")
    step_dir = workdir / "eval" / "step_4"

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

    # With the random-weight stand-ins for pytorch-fid's and lpips' files: every column.
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
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(workdir / "eval"))
    events.Reload()
    tags = events.Tags()
    assert {"all/fid", "all/lpips", "all/mean_fill/fid"} <= set(tags["scalars"])
    assert "all/sheet" in tags["images"]
