"""A tiny real TFDS dataset, built by TFDS itself: the ``tfds`` data path without a download.

``isnet_tiny_photos`` is shaped like ``places365_small``: an ``image`` feature of JPEGs and
the splits train / validation / test. Its images are crops of random place and size of
scikit-image's bundled photographs (no download), of varied sizes (40-96 px a side), so the
pipeline decodes, crops and resizes them as it would Places2's. Building it needs no
TensorFlow (a real dataset's ``tfds build`` does: the ``tf`` extra).

    from helpers import tiny_dataset
    data_dir = tiny_dataset.prepare("/tmp/tfds")      # ArrayRecord, in a few seconds
    # config.data.source = "tfds"; config.data.name = tiny_dataset.NAME
    # config.data.data_dir = data_dir

Reading needs no import of this module: ``tfds.data_source`` finds a prepared dataset from
its files in ``data_dir`` as it would Places2's, which is what the pipeline does.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NAME = "isnet_tiny_photos"
SPLITS = {"train": 48, "validation": 12, "test": 12}
_COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


def _photos() -> list[np.ndarray]:
    import skimage.data

    return [np.asarray(getattr(skimage.data, name)()) for name in _COLOUR_PHOTOS]


class IsnetTinyPhotos(tfds.core.GeneratorBasedBuilder):
    """Crops of scikit-image's photographs, as JPEGs, in places365_small's splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Crops of scikit-image's bundled colour photographs."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")}
            ),
            description=__doc__.splitlines()[0],
        )

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(name, count) for name, count in SPLITS.items()}

    def _generate_examples(self, split: str, count: int):
        photos = _photos()
        # One seed per split: the same examples on every machine and every prepare.
        rng = np.random.default_rng([list(SPLITS).index(split), 1234])
        for i in range(count):
            photo = photos[i % len(photos)]
            h, w = (int(v) for v in rng.integers(40, 97, size=2))  # the JPEG's size
            # The largest crop of that shape the photo holds, times 0.2-0.8, at a random place.
            crop_h = int(min(photo.shape[0], photo.shape[1] * h / w) * rng.uniform(0.2, 0.8))
            crop_w = max(1, crop_h * w // h)
            y = int(rng.integers(0, photo.shape[0] - crop_h + 1))
            x = int(rng.integers(0, photo.shape[1] - crop_w + 1))
            crop = Image.fromarray(photo[y:y + crop_h, x:x + crop_w]).resize((w, h))
            # Encoded here (by PIL, at TensorFlow's encode_jpeg quality): TFDS would encode an
            # array with TensorFlow, which is no part of the default install.
            jpeg = io.BytesIO()
            crop.save(jpeg, format="JPEG", quality=95)
            yield f"{split}_{i}", {"image": jpeg.getvalue()}


def prepare(data_dir: str | os.PathLike) -> str:
    """Builds ``isnet_tiny_photos`` as ArrayRecord in ``data_dir`` (nothing if already there);
    returns ``data_dir`` as a string, for ``config.data.data_dir``."""
    data_dir = os.fspath(data_dir)
    IsnetTinyPhotos(data_dir=data_dir).download_and_prepare(file_format="array_record")
    return data_dir
