"""Places2 (TFDS ``places365_small``, 256x256 images) at the release's settings."""

from isnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.data.source = "tfds"
    config.data.name = "places365_small"
    config.data.train_split = "train"
    config.data.eval_split = "validation"  # places365_small has no labelled test split
    return config
