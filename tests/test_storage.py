"""gs:// workdirs against a local Cloud Storage emulator (``isnet_jax.rehearse.gcs_emulator``).

The bucket is real as far as the clients can tell: TensorStore, gcsfs and etils.epath speak
the GCS JSON API to ``gcp-storage-emulator``, pointed at it by their standard variables only.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from helpers.paths import REPO
from helpers.tiny import TINY_FLAGS
from PIL import Image


def test_emulated_bucket_serves_orbax_and_epath_and_survives_a_restart(gcs, gs_dir):
    # What everything else in this file builds on: Orbax's arrays (TensorStore) and its
    # metadata (epath through gcsfs) in the bucket, not on the local disk, and kept by the
    # emulator across an outage (the bucket-fault rehearsal stops and restarts it).
    with ocp.CheckpointManager(f"{gs_dir}/ckpt") as mngr:
        mngr.save(3, args=ocp.args.StandardSave({"w": np.arange(6.0, dtype=np.float32)}))
        mngr.wait_until_finished()
    (epath.Path(gs_dir) / "note.txt").write_text("kept")
    on_disk = epath.Path(gcs.data_dir) / ".cloudstorage" / gcs.bucket / gs_dir.split("/")[-1]
    assert (on_disk / "note.txt").read_text() == "kept"
    assert (on_disk / "ckpt" / "3" / "_CHECKPOINT_METADATA").exists()

    gcs.stop()
    gcs.start()
    assert (epath.Path(gs_dir) / "note.txt").read_text() == "kept"
    with ocp.CheckpointManager(f"{gs_dir}/ckpt") as mngr:
        assert mngr.all_steps() == [3]
        restored = mngr.restore(3, args=ocp.args.StandardRestore(
            {"w": np.zeros(6, np.float32)}))
    np.testing.assert_array_equal(restored["w"], np.arange(6.0))


def test_a_folder_rename_moves_its_objects_as_real_gcs_does(gcs, gs_dir):
    # gcsfs renames each object with objects.move (POST .../moveTo/o/DST), as real GCS serves;
    # the emulator lacked it and answered 501, which gcsfs retried with back-off before copying
    # (setting an unfinished checkpoint step aside took 90 s). The harness serves it.
    import urllib.parse
    import urllib.request

    folder = gs_dir.split("/", 3)[3]
    (epath.Path(gs_dir) / "x").write_text("x")
    quoted = [urllib.parse.quote(f"{folder}/{n}", safe="") for n in ("x", "y")]
    request = urllib.request.Request(
        f"{gcs.url}/storage/v1/b/{gcs.bucket}/o/{quoted[0]}/moveTo/o/{quoted[1]}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        assert json.loads(answer.read())["name"] == f"{folder}/y"
    assert sorted(p.name for p in epath.Path(gs_dir).iterdir()) == ["y"]

    step = epath.Path(gs_dir) / "4"
    for name in ("a", "sub/b"):
        (step / name).write_text(name)
    step.rename(epath.Path(gs_dir) / "4.unfinished")
    assert sorted(p.name for p in epath.Path(gs_dir).iterdir()) == ["4.unfinished", "y"]
    assert (epath.Path(gs_dir) / "4.unfinished" / "sub" / "b").read_text() == "sub/b"


def test_tensorboard_events_land_in_the_bucket_and_tensorboard_reads_them(gs_dir, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    from isnet_jax import summaries

    logdir = epath.Path(gs_dir) / "tb"
    writer = summaries.create_writer(logdir)
    writer.write_hparams({"learning_rate": 2e-4, "model.generator": "isnet"})
    writer.write_scalars(1, {"10-20%/psnr": 21.5, "g_loss": np.float32(0.5)})
    writer.write_images(1, {"samples": np.full((1, 8, 16, 3), 200, np.uint8)})
    writer.flush()
    # Flushed is readable: a run killed later keeps what was flushed.
    [events] = logdir.glob("events.out.tfevents.*")
    flushed = events.read_bytes()
    writer.write_scalars(2, {"10-20%/psnr": 22.5})
    writer.close()
    assert len(events.read_bytes()) > len(flushed)

    for name, data in (("flushed", flushed), ("closed", events.read_bytes())):
        (tmp_path / name).mkdir()
        (tmp_path / name / events.name).write_bytes(data)
    early = event_accumulator.EventAccumulator(str(tmp_path / "flushed"))
    early.Reload()
    assert [e.step for e in early.Scalars("10-20%/psnr")] == [1]
    run = event_accumulator.EventAccumulator(str(tmp_path / "closed"))
    run.Reload()
    assert [(e.step, e.value) for e in run.Scalars("10-20%/psnr")] == [(1, 21.5), (2, 22.5)]
    assert run.Scalars("g_loss")[0].value == 0.5
    [image] = run.Images("samples")
    assert (image.step, image.width, image.height) == (1, 16, 8)
    start = hparams_metadata.parse_session_start_info_plugin_data(
        run.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["learning_rate"].number_value == 2e-4
    assert start.hparams["model.generator"].string_value == "isnet"


_TINY = TINY_FLAGS  # test_main's tiny run: the compilation cache serves both


def _main(*args: str) -> subprocess.CompletedProcess:
    # The emulator's variables are in os.environ (the gcs fixture): nothing else is passed.
    out = subprocess.run([sys.executable, "-m", "isnet_jax.main", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _download(source: epath.Path, target: pathlib.Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_dir():
            _download(path, target / path.name)
        else:
            (target / path.name).write_bytes(path.read_bytes())


@pytest.mark.slow
def test_gs_workdir_trains_resumes_evaluates_and_serves_inpaint_and_init_from(
        gs_dir, tmp_path, capsys):
    from isnet_jax import checkpoint, inpaint
    from isnet_jax import train as train_lib

    workdir = epath.Path(gs_dir) / "run"
    _main(f"--workdir={workdir}", *_TINY, "--config.num_train_steps=2")
    out = _main(f"--workdir={workdir}", *_TINY, "--config.num_train_steps=4")
    assert f"Resuming from the checkpoint of step 2 in {workdir}/checkpoints" in out.stderr
    assert "AdaptiveReadaheadCache" not in out.stderr  # fsspec's line per file it opens
    assert checkpoint.all_steps(workdir / "checkpoints") == [2, 4]
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 2  # one per run
    assert (workdir / "samples" / "step_00000004.png").exists()

    out = _main(f"--workdir={workdir}", "--mode=eval", *_TINY, "--config.num_train_steps=4",
                "--config.eval.num_images_final=4")
    step_dir = workdir / "eval" / "step_4"
    results = json.loads((step_dir / "results.json").read_text())
    assert results["checkpoint"] == str(workdir) and results["bands"]["all"]["images"] == 4
    assert "| PSNR |" in (step_dir / "table.md").read_text()
    assert len(list(step_dir.glob("sheet_*.png"))) == 5
    assert list((workdir / "eval").glob("events.out.tfevents.*"))

    # Everything in the bucket, read back where only local files will do: TensorBoard (whose
    # TF file system cannot reach an emulator) and the local-checkpoint reference below.
    local = tmp_path / "run"
    _download(workdir, local)
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(local))
    events.Reload()
    assert [e.step for e in events.Scalars("g_loss")] == [2, 4]  # both runs, one curve
    assert [e.step for e in events.Images("samples")] == [2, 4]
    events = event_accumulator.EventAccumulator(str(local / "eval"))
    events.Reload()
    assert "10-20/psnr" in events.Tags()["scalars"] and "all/sheet" in events.Tags()["images"]

    # inpaint --checkpoint gs://...: the same pixels as from a local copy of the checkpoint.
    import skimage.data

    photo = tmp_path / "photo.png"
    Image.fromarray(skimage.data.astronaut()[::8, ::8]).save(photo)
    known = np.full((64, 64), 255, np.uint8)
    known[20:40, 24:44] = 0
    Image.fromarray(known).save(tmp_path / "mask.png")
    for name, source in (("gs", workdir), ("local", local)):
        argv = ["--checkpoint", str(source), "--input", str(photo),
                "--mask", str(tmp_path / "mask.png"), "--output", str(tmp_path / name)]
        assert inpaint.main(argv) == 0, capsys.readouterr().err
    result = np.asarray(Image.open(tmp_path / "gs" / "photo.png"))
    np.testing.assert_array_equal(result, np.asarray(Image.open(tmp_path / "local" / "photo.png")))
    assert np.any(result[20:40, 24:44] != np.asarray(Image.open(photo))[20:40, 24:44])

    # config.init_from=gs://...@STEP: the weights a fine-tuning run starts from.
    from helpers.tiny import tiny_config

    from isnet_jax import sharding

    config = tiny_config()
    trainer = train_lib.Trainer(config, sharding.create_mesh(config.mesh))
    weights = trainer.read_weights(f"{workdir}@4")
    generator, meta = checkpoint.restore_generator(local, 4)
    assert meta["step"] == 4
    from flax import nnx

    for a, b in zip(jax.tree.leaves(weights["g_params"]),
                    jax.tree.leaves(nnx.state(generator, nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tfds_data_dir_in_the_bucket_is_read_by_the_pipeline(gs_dir, tiny_tfds):
    # ArrayRecord reads gs:// through google-cloud-cpp (CLOUD_STORAGE_EMULATOR_ENDPOINT),
    # TFDS finds the dataset's metadata through epath (gcsfs).
    from helpers import tiny_dataset

    from isnet_jax import input_pipeline

    local = pathlib.Path(tiny_tfds) / tiny_dataset.NAME
    for path in local.rglob("*"):
        if path.is_file():
            target = epath.Path(gs_dir) / "tfds" / tiny_dataset.NAME / path.relative_to(local)
            target.write_bytes(path.read_bytes())
    remote = input_pipeline.TfdsImages(tiny_dataset.NAME, "test", f"{gs_dir}/tfds")
    here = input_pipeline.TfdsImages(tiny_dataset.NAME, "test", tiny_tfds)
    assert len(remote) == len(here) == tiny_dataset.SPLITS["test"]
    assert [remote[i] for i in (0, 11)] == [here[i] for i in (0, 11)]
