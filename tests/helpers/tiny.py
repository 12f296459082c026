"""Tiny runs: the same small programs in every test that trains, so that the persistent
compilation cache serves them all."""

from __future__ import annotations

# The command-line form of a tiny run (with --config.num_train_steps): the same programs in every
# test that starts one, so the compilation cache serves them all. At 32 px compiling costs more
# than training: a constant learning rate keeps the step count out of the step's program (the
# demo's cosine schedule bakes it in), so runs of any length share it; tests/test_optim.py tests
# the schedules.
# ISNet at a quarter of the release's width (model.width): 1/16 of the parameters, so that the
# steps, saves and restores of these runs cost little beside what they check.
TINY_WIDTH = 8
TINY_FLAGS = [
    f"--config.model.width={TINY_WIDTH}",
    "--config.lr_schedule=constant",
    "--config.warmup_steps=0",
    "--config.image_size=32",
    "--config.batch_size=2",
    "--config.log_every_steps=2",
    "--config.image_every_steps=4",
    "--config.checkpoint_every_steps=2",
    "--config.eval_every_steps=4",
    "--config.eval.num_images=4",
    "--config.eval.batch_size=2",
]


def tiny_config(**overrides):
    """The demo config shrunk to test size: ISNet blocks=1 at ``TINY_WIDTH`` (the CLI runs'
    model), 32 px, batch 2, no VGG, and the release's recipe (init, Adam, G's adversarial and
    feature-matching terms) in place of the demo's, so that the step's tests see every term.
    A test that loads the release's weights passes ``model.width=models.WIDTH`` (32)."""
    from isnet_jax.configs import default, demo

    config = demo.get_config()
    release = default.get_config()
    settings = {key: release[key] for key in ("model.init", "model.init_scale", "beta1",
                                              "loss.adversarial_weight",
                                              "loss.feature_matching_weight")}
    settings.update({"model.width": TINY_WIDTH}, image_size=32, batch_size=2, num_train_steps=4,
                    log_every_steps=2, image_every_steps=0, checkpoint_every_steps=2,
                    eval_every_steps=0)
    settings.update({"data.num_workers": 0, "data.skimage_num_images": 64})
    # The demo's schedule (a 50-step warm-up, cosine) would leave 4 steps at lr ~0: the steps'
    # tests keep the constant 2e-4 they were written for.
    settings.update(learning_rate=2e-4, lr_schedule="constant", warmup_steps=0)
    config.update_from_flattened_dict({**settings, **overrides})
    return config
