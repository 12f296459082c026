"""CelebA (TFDS ``celeb_a``, official partition) at the release's settings.

256 px, batch 8, 4 blocks.

One-time data preparation: docs/data.md; the VGG19 weights: docs/training.md.
"""

from isnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.data.source = "tfds"
    config.data.name = "celeb_a"
    config.data.train_split = "train"
    config.data.eval_split = "test"
    return config
