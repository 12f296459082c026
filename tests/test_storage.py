"""gs:// workdirs against a local Cloud Storage emulator (``isnet_jax.gcs_emulator``).

The bucket is real as far as the clients can tell: TensorStore, gcsfs and etils.epath speak
the GCS JSON API to ``gcp-storage-emulator``, pointed at it by their standard variables only.
"""

from __future__ import annotations

import numpy as np
import orbax.checkpoint as ocp
from etils import epath


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
