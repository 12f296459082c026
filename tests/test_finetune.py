"""Fine-tuning from the official weights (``config.init_from``) and the way back to the release's
``.pth`` format (``python -m isnet_jax.convert --checkpoint``)."""

from __future__ import annotations

import logging
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from helpers.paths import REPO
from helpers.tiny import tiny_config

from isnet_jax import checkpoint, convert, train
from isnet_jax.torch_io import pth


@pytest.fixture(scope="module")
def official(golden_dir, tmp_path_factory):
    """The release's blocks=2 checkpoints, converted (generator and discriminator)."""
    out = tmp_path_factory.mktemp("official")
    convert.convert(out, generator=golden_dir / "InpaintingModel_gen.pth",
                    discriminator=golden_dir / "InpaintingModel_dis.pth")
    return out


def _pure(module) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(module)))]


def _rel(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True))
    return (num / sum(float(np.sum(y**2)) for y in b)) ** 0.5


def test_finetune_export_reimport(official, golden_dir, tmp_path, caplog):
    workdir = tmp_path / "run"
    config = tiny_config(num_train_steps=2, checkpoint_every_steps=2, init_from=str(official))
    config.model.blocks = 2
    train.train_and_evaluate(config, str(workdir))

    g0, d0, _ = checkpoint.restore_models(official)
    g2, d2, meta = checkpoint.restore_models(workdir)
    assert meta["step"] == 2
    # Trained from the official weights: moved, but nowhere near a new random draw.
    for before, after in ((g0, g2), (d0, d2)):
        assert 0.0 < _rel(_pure(after), _pure(before)) < 0.5
    # Fresh optimiser states at step 0: two Adam steps counted, not the release's epoch.
    with ocp.CheckpointManager(checkpoint.checkpoint_dir(workdir)) as mngr:
        opt = mngr.restore(2, args=ocp.args.Composite(g_opt=ocp.args.StandardRestore()))
    # apply_if_finite(adam) as a raw tree: {"inner_state": [Adam's state, ...], ...}.
    assert int(np.asarray(opt["g_opt"]["inner_state"][0]["count"])) == 2

    exported = tmp_path / "exported"
    out = subprocess.run(
        [sys.executable, "-m", "isnet_jax.convert", "--checkpoint", str(workdir), "--step", "2",
         "--output", str(exported)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 2" in out.stdout

    # The release's keys, shapes and wrapping, as in its own files.
    for name, key in (("InpaintingModel_gen.pth", "generator"),
                      ("InpaintingModel_dis.pth", "discriminator")):
        theirs, ours = pth.load_pth(golden_dir / name), pth.load_pth(exported / name)
        assert set(ours) == set(theirs)
        assert {k: v.shape for k, v in ours[key].items()} == {
            k: v.shape for k, v in theirs[key].items()}
    assert pth.load_pth(exported / "InpaintingModel_gen.pth")["epoch"] == 2
    dis = pth.load_pth(exported / "InpaintingModel_dis.pth")["discriminator"]
    np.testing.assert_array_equal(dis["features.0.weight_orig"], dis["conv1.0.weight_orig"])

    # Re-imported through the release-format reader: exactly the trained weights.
    g3 = convert.load_official_generator(exported / "InpaintingModel_gen.pth")
    d3 = convert.load_official_discriminator(exported / "InpaintingModel_dis.pth")
    for a, b in ((_pure(g2), _pure(g3)), (_pure(d2), _pure(d3))):
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)

    # A workdir that holds a checkpoint resumes, whatever init_from says, and says so.
    config.num_train_steps = 3
    config.init_from = str(tmp_path / "does-not-exist")
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(config, str(workdir))
    assert "is ignored" in caplog.text and "does-not-exist" in caplog.text
    assert checkpoint.resolve(workdir)[1] == 3


def test_init_from_problems_name_the_file_and_key(official, tmp_path):
    config = tiny_config(init_from=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no Orbax checkpoint found at .*nope"):
        train.train_and_evaluate(config, str(tmp_path / "a"))

    config.init_from = f"{official}@7"
    with pytest.raises(ValueError, match=r"7/meta holds generator 'isnet' with blocks=2.*"
                                         r"--config.model.blocks=2"):
        train.train_and_evaluate(config, str(tmp_path / "b"))

    config.init_from = f"{official}@3"
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 3; it has steps \[7\]"):
        train.train_and_evaluate(config, str(tmp_path / "c"))

    # A checkpoint whose weights do not match what its meta claims: the first bad key.
    wrong = tmp_path / "wrong"
    g = checkpoint.restore_models(official)[0]
    checkpoint.write_models(wrong, 1, checkpoint.generator_meta("isnet", 1, "test"), g)
    config.init_from = str(wrong)
    with pytest.raises(ValueError, match=r"wrong/1/generator does not fit this model: "
                                         r"unexpected key stages/0/blocks0/layers/1/"):
        train.train_and_evaluate(config, str(tmp_path / "d"))


def test_init_from_without_discriminator_warns(golden_dir, tmp_path, caplog):
    only_g = tmp_path / "only_g"
    convert.convert(only_g, generator=golden_dir / "InpaintingModel_gen.pth")
    config = tiny_config(init_from=str(only_g))
    config.model.blocks = 2
    from isnet_jax import sharding

    trainer = train.Trainer(config, sharding.create_mesh(config.mesh))
    with caplog.at_level(logging.WARNING):
        weights = trainer.read_weights(config.init_from)
    assert set(weights) == {"g_params", "g_spectral"}
    assert "holds no discriminator" in caplog.text and "--discriminator" in caplog.text
