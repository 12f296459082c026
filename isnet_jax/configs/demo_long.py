"""The demo's recipe trained about an hour on 2 CPU cores: how far does an hour get?

``configs/demo.py`` (ISNet with 1 block per branch, 64x64 crops of scikit-image's photos, L1
only, orthogonal init) with 6000 steps in place of 700, at the demo's earlier learning rate
(2e-4, constant: the recipe the measured run used); evaluated on the same held-out photos. Its
table, beside the mean-colour fill and OpenCV's inpainting, is in BENCHMARKS.md ("An hour on
the CPU").
"""

from isnet_jax.configs import demo


def get_config():
    config = demo.get_config()
    config.num_train_steps = 6000
    config.learning_rate = 2e-4
    config.lr_schedule = "constant"
    config.warmup_steps = 0
    config.log_every_steps = 100
    config.image_every_steps = 500
    # Every 500 steps, all kept: a run stopped early is evaluated at the step it reached.
    config.checkpoint_every_steps = 500
    config.max_checkpoints_to_keep = 12
    config.eval_every_steps = 1000
    return config
