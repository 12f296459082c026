"""``config.init_from``'s mistakes. Fine-tuning from the official weights and the way back to the
release's ``.pth`` format are docs/training.md's commands, checked by
tests/docs/test_doc_training.py."""

from __future__ import annotations

import logging

import pytest
from helpers.tiny import tiny_config

from isnet_jax import checkpoint, convert, models, train


@pytest.fixture(scope="module")
def official(golden_dir, tmp_path_factory):
    """The release's blocks=2 checkpoints, converted (generator and discriminator)."""
    out = tmp_path_factory.mktemp("official")
    convert.convert(out, generator=golden_dir / "InpaintingModel_gen.pth",
                    discriminator=golden_dir / "InpaintingModel_dis.pth")
    return out


@pytest.mark.slow
def test_init_from_problems_name_the_file_and_key(official, tmp_path):
    config = tiny_config(init_from=str(tmp_path / "nope"), **{"model.width": models.WIDTH})
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


@pytest.mark.slow
def test_init_from_without_discriminator_warns(golden_dir, tmp_path, caplog):
    only_g = tmp_path / "only_g"
    convert.convert(only_g, generator=golden_dir / "InpaintingModel_gen.pth")
    config = tiny_config(init_from=str(only_g), **{"model.width": models.WIDTH})
    config.model.blocks = 2
    from isnet_jax import sharding

    trainer = train.Trainer(config, sharding.create_mesh(config.mesh))
    with caplog.at_level(logging.WARNING):
        weights = trainer.read_weights(config.init_from)
    assert set(weights) == {"g_params", "g_spectral"}
    assert "holds no discriminator" in caplog.text and "--discriminator" in caplog.text
