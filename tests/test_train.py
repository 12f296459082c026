"""The training loop end to end on tiny configs: resume, the non-finite guard, sharding."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, tiny_config

from isnet_jax import checkpoint, train


def _restore_items(workdir, step, items=("generator", "discriminator", "g_opt")):
    with ocp.CheckpointManager(checkpoint.checkpoint_dir(workdir)) as mngr:
        restored = mngr.restore(
            step, args=ocp.args.Composite(**{k: ocp.args.StandardRestore() for k in items})
        )
    return {k: restored[k] for k in items}


def test_resume_is_exact(tmp_path):
    """4 steps in one run == 2 + 2 steps across two runs (same data order included)."""
    config = tiny_config(num_train_steps=4, checkpoint_every_steps=2)
    train.train_and_evaluate(config, str(tmp_path / "one"))

    config.num_train_steps = 2
    train.train_and_evaluate(config, str(tmp_path / "two"))
    config.num_train_steps = 4
    train.train_and_evaluate(config, str(tmp_path / "two"))

    one = _restore_items(tmp_path / "one", 4)
    two = _restore_items(tmp_path / "two", 4)
    flat_one, flat_two = jax.tree.leaves(one), jax.tree.leaves(two)
    assert len(flat_one) == len(flat_two) > 0
    for a, b in zip(flat_one, flat_two, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # ... and training did move the weights.
    step2 = _restore_items(tmp_path / "one", 2, items=("generator",))
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(
            jax.tree.leaves(step2["generator"]), jax.tree.leaves(one["generator"]), strict=True
        )
    )


def test_resume_refuses_other_data_loader_settings_or_model(tmp_path):
    """A resume the saved state cannot continue stops with the setting to change."""
    config = tiny_config(num_train_steps=2)
    train.train_and_evaluate(config, str(tmp_path))

    config.num_train_steps = 4
    config.model.blocks = 2
    with pytest.raises(ValueError, match=r"blocks=1.*--config.model.blocks"):
        train.train_and_evaluate(config, str(tmp_path))
    config.model.blocks = 1
    config.data.num_workers = 1
    with pytest.raises(ValueError, match=r"--config.data.num_workers=0 .*resume_position=False"):
        train.train_and_evaluate(config, str(tmp_path))
    assert ocp.utils.checkpoint_steps(checkpoint.checkpoint_dir(tmp_path)) == [2]

    # Keeping the weights but not the data position works with any worker count.
    config.data.resume_position = False
    train.train_and_evaluate(config, str(tmp_path))
    assert ocp.utils.checkpoint_steps(checkpoint.checkpoint_dir(tmp_path)) == [2, 4]


def test_non_finite_loss_stops_before_any_checkpoint(tmp_path):
    config = tiny_config(num_train_steps=3, checkpoint_every_steps=1, log_every_steps=1)
    config.loss.l1_weight = float("inf")  # the total G loss is inf from the first step
    with pytest.raises(train.NonFiniteLossError, match="step 1"):
        train.train_and_evaluate(config, str(tmp_path))
    assert ocp.utils.checkpoint_steps(checkpoint.checkpoint_dir(tmp_path)) == []


def test_non_finite_guard_names_the_loss_term():
    """A NaN in one term is reported by name (the guard's bitmask decodes to TERMS)."""
    state = {"bad_step": np.int32(6), "bad_terms": np.int32(1 << train.TERMS.index("style"))}
    with pytest.raises(train.NonFiniteLossError, match=r"step 7 in style"):
        train.check_finite(state)


_SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from conftest import tiny_config
    from isnet_jax import sharding, train

    assert jax.device_count() == 8, jax.devices()
    config = tiny_config(batch_size=8)
    rng = np.random.default_rng(0)
    image = rng.random((2, 8, 32, 32, 3), np.float32)
    mask = (rng.random((2, 8, 32, 32, 1)) > 0.4).astype(np.float32)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.create_mesh(config.mesh, devices=devices)
        trainer = train.Trainer(config, mesh)
        state = trainer.initial_state
        for i in range(2):
            batch = [jax.device_put(a[i], trainer.batch_sharding) for a in (image, mask)]
            state, metrics = trainer.train_step(state, trainer.vgg_state, *batch)
        params = jax.tree.leaves((state["g_params"], state["d_params"], state["g_spec"]))
        results.append(([np.asarray(p) for p in params], jax.device_get(metrics)))
    (p1, m1), (p8, m8) = results
    # Relative error of each array as a whole, ||a - b|| / ||a||; the worst array counts.
    worst = max(float(np.linalg.norm(a - b) / np.linalg.norm(a)) for a, b in zip(p1, p8))
    loss_rel = max(abs(float(m1[k]) - float(m8[k])) / max(1e-6, abs(float(m1[k])))
                   for k in m1)
    print(json.dumps({"param_rel": worst, "loss_rel": loss_rel}))
    """
)


def test_sharded_step_on_8_devices_matches_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED)
    out = subprocess.run(
        [sys.executable, str(script), str(REPO / "tests")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["param_rel"] < 1e-5 and result["loss_rel"] < 1e-5, result


def _one_step(config, seed: int) -> tuple[dict, dict]:
    """One training step of ``config`` from its initial state on a seeded 2-image batch;
    ``(state, metrics)`` on the host."""
    from isnet_jax import sharding

    rng = np.random.default_rng(seed)
    image = rng.random((2, 32, 32, 3), np.float32)
    mask = (rng.random((2, 32, 32, 1)) > 0.4).astype(np.float32)
    trainer = train.Trainer(config, sharding.create_mesh(config.mesh))
    batch = [jax.device_put(a, trainer.batch_sharding) for a in (image, mask)]
    state, metrics = trainer.train_step(trainer.initial_state, trainer.vgg_state, *batch)
    return jax.device_get(state), jax.device_get(metrics)


def test_bfloat16_compute_step_tracks_float32(tmp_path):
    """The TPU/GPU setting (bfloat16 activations, float32 parameters, optimiser and losses),
    with every loss term on, against the float32 step on the same weights and batch."""
    from flax import nnx

    from isnet_jax import convert, models

    vgg_path = tmp_path / "vgg19.npz"
    convert.save_vgg19(models.VGG19(rngs=nnx.Rngs(0)), vgg_path)
    metrics, states = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(compute_dtype=dtype)
        config.loss.vgg_weights = str(vgg_path)
        config.loss.perceptual_weight, config.loss.style_weight = 0.1, 250.0
        states[dtype], metrics[dtype] = _one_step(config, seed=0)
    for name in ("g_params", "d_params", "g_opt", "d_opt"):
        dtypes = {np.asarray(x).dtype for x in jax.tree.leaves(states["bfloat16"][name])}
        assert dtypes <= {np.dtype(np.float32), np.dtype(np.int32)}, (name, dtypes)
    rel = {}
    for term in train.TERMS:
        ref, got = float(metrics["float32"][term]), float(metrics["bfloat16"][term])
        assert np.isfinite(got) and abs(got - ref) <= 0.05 * abs(ref) + 1e-9, (term, ref, got)
        rel[term] = abs(got - ref) / abs(ref)
    print("bfloat16 vs float32, relative difference per term:", rel)
    assert max(rel.values()) > 1e-5  # the bfloat16 run really computed in bfloat16
    for a, b in zip(jax.tree.leaves(states["float32"]["g_params"]),
                    jax.tree.leaves(states["bfloat16"]["g_params"]), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=5e-4)


def test_remat_step_matches_plain_step():
    """``config.remat`` recomputes G's stages in the backward pass: same step, same result
    (spectral-norm vectors included: the power iteration runs inside the rematerialised stage)."""
    states, metrics = zip(*(_one_step(tiny_config(remat=r), seed=1) for r in (False, True)),
                          strict=True)
    # Array by array, ||a - b|| / ||a||: Adam's first step divides each gradient by its own
    # magnitude, so a gradient near zero may round to a visibly different update elementwise.
    for key in ("g_params", "g_spec", "d_params", "g_opt"):
        for a, b in zip(jax.tree.leaves(states[0][key]), jax.tree.leaves(states[1][key]),
                        strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a), key
    for term in train.TERMS:
        np.testing.assert_allclose(metrics[1][term], metrics[0][term], rtol=1e-5)


_SIGTERM_RUN = textwrap.dedent(
    """
    import sys
    from absl import logging
    sys.path.insert(0, sys.argv[1])
    from conftest import tiny_config
    from isnet_jax import train

    if __name__ == "__main__":  # grain's workers are spawned and import this file
        logging.set_verbosity(logging.INFO)
        config = tiny_config(num_train_steps=100_000, checkpoint_every_steps=100_000,
                             log_every_steps=1)
        config.data.num_workers = int(sys.argv[3])
        train.train_and_evaluate(config, sys.argv[2])
        print("RETURNED", flush=True)
    """
)


@pytest.mark.parametrize("num_workers,whole_group", [(0, False), (2, True)])
def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, num_workers, whole_group):
    """SLURM / Kubernetes / spot VMs send SIGTERM before the kill: the step in flight ends,
    a checkpoint of it is written, and the run returns instead of dying. SLURM signals the
    whole process group, grain's data workers included."""
    import signal
    import time

    script = tmp_path / "run.py"
    script.write_text(_SIGTERM_RUN)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(REPO / "tests"), str(tmp_path / "work"),
         str(num_workers)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    log = []
    deadline = time.monotonic() + 600
    try:
        for line in proc.stdout:  # wait until training is under way
            log.append(line)
            if "step 3/100000" in line or time.monotonic() > deadline:
                break
        if whole_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=300)
    finally:
        try:  # nothing of the run may outlive the test, data workers included
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log = "".join(log) + rest
    assert proc.returncode == 0 and "RETURNED" in log, log[-3000:]
    assert "SIGTERM" in log, log[-3000:]
    steps = ocp.utils.checkpoint_steps(checkpoint.checkpoint_dir(tmp_path / "work"))
    assert len(steps) == 1 and steps[0] >= 3, steps
