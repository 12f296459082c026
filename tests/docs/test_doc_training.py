"""The run blocks of docs/training.md, run as the document says (tests/helpers/doc_blocks.py), and
what its fine-tuning block wrote: from the release's weights (config.init_from) and back to the
release's .pth format (python -m isnet_jax.convert --checkpoint). tests/test_finetune.py holds
init_from's mistakes."""

import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from helpers.doc_blocks import check_ran

from isnet_jax import checkpoint, convert
from isnet_jax.torch_io import pth

# Whole programs in subprocesses, each compiling: seconds to minutes.
pytestmark = pytest.mark.slow

DOC = "docs/training.md"


def test_run_blocks(doc_run):
    check_ran(DOC, doc_run.ran)


def _pure(module) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(module)))]


def _rel(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True))
    return (num / sum(float(np.sum(y**2)) for y in b)) ** 0.5


def _finetune(doc_run):
    check_ran(DOC, doc_run.ran)
    return next(r for r in doc_run.ran if "--config.init_from=weights/places2" in r.block.text)


def test_finetune_exports_the_release_format_and_reimports(doc_run, golden_dir):
    ran, cwd = _finetune(doc_run), doc_run.cwd
    official, workdir, exported = cwd / "weights" / "places2", cwd / "runs" / "mine", \
        cwd / "release_format"
    g0, d0, _ = checkpoint.restore_models(official)
    g4, d4, meta = checkpoint.restore_models(workdir)
    assert meta["step"] == 4
    # Trained from the official weights: moved, but nowhere near a new random draw.
    for before, after in ((g0, g4), (d0, d4)):
        assert 0.0 < _rel(_pure(after), _pure(before)) < 0.5
    # Fresh optimiser states at step 0: four Adam steps counted, not the release's epoch.
    with ocp.CheckpointManager(checkpoint.checkpoint_dir(workdir)) as mngr:
        opt = mngr.restore(4, args=ocp.args.Composite(g_opt=ocp.args.StandardRestore()))
    # apply_if_finite(adam) as a raw tree: {"inner_state": [Adam's state, ...], ...}.
    assert int(np.asarray(opt["g_opt"]["inner_state"][0]["count"])) == 4
    assert "step 4" in ran.stdout  # convert --checkpoint names the step it exported

    # The release's keys, shapes and wrapping, as in its own files.
    for name, key in (("InpaintingModel_gen.pth", "generator"),
                      ("InpaintingModel_dis.pth", "discriminator")):
        theirs, ours = pth.load_pth(golden_dir / name), pth.load_pth(exported / name)
        assert set(ours) == set(theirs)
        assert {k: v.shape for k, v in ours[key].items()} == {
            k: v.shape for k, v in theirs[key].items()}
    assert pth.load_pth(exported / "InpaintingModel_gen.pth")["epoch"] == 4
    dis = pth.load_pth(exported / "InpaintingModel_dis.pth")["discriminator"]
    np.testing.assert_array_equal(dis["features.0.weight_orig"], dis["conv1.0.weight_orig"])

    # Re-imported through the release-format reader: exactly the trained weights.
    g5 = convert.load_official_generator(exported / "InpaintingModel_gen.pth")
    d5 = convert.load_official_discriminator(exported / "InpaintingModel_dis.pth")
    for a, b in ((_pure(g4), _pure(g5)), (_pure(d4), _pure(d5))):
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


# Last in the file: it trains runs/mine a step further (the test above reads step 4).
def test_a_workdir_with_a_checkpoint_resumes_whatever_init_from_says(doc_run):
    ran, cwd = _finetune(doc_run), doc_run.cwd
    main = next(c for c in ran.script if "isnet_jax.main" in c)
    # The same command (the places2 config's constant rate: its step program is cached), one
    # step further, init_from pointing nowhere.
    again = main + " --config.num_train_steps=5 --config.init_from=does-not-exist"
    out = subprocess.run(["bash", "-c", again], cwd=cwd, env=doc_run.env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "is ignored" in out.stderr and "does-not-exist" in out.stderr
    assert checkpoint.resolve(cwd / "runs" / "mine")[1] == 5
