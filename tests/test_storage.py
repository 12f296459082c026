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
