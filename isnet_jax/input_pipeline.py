"""Input pipeline: images paired with inpainting masks, streamed by grain onto the devices.

One story per split:

  train: MapDataset.range(records)[process::processes] -> shuffle(seed) -> repeat
         -> random_map(read, decode, crop, resize, flip, pair with a mask)
         -> to_iter_dataset -> drop unreadable files (counted) -> batch -> mp_prefetch
  eval:  the first N records in order, record i paired with evaluation mask i of the band,
         padded to whole batches (``valid`` marks real examples); no shuffle, no repeat.

Batches are dicts of numpy arrays, per host (B_host = global batch // process count):

  image    float32 (B_host, H, W, 3) in [0, 1]
  mask     float32 (B_host, H, W, 1), 1 = known pixel, 0 = hole
  index    int32   (B_host,) record index in the source (disjoint between processes)
  skipped  int32   (B_host,) unreadable files dropped just before this example on its worker;
           summing it over the global batch gives the files skipped since the previous batch,
           and a running sum gives the total (for the metrics)
  valid    bool    (B_host,) eval only: False for padding and for unreadable files

``to_global`` turns them into global ``jax.Array``s with the training mesh's sharding.
Sources (``config.data.source``): "tfds" (ArrayRecord through ``tfds.data_source``), "folder"
(recursive jpg/png/webp), "flist" (the release's text files, one path per line) and "skimage"
(scikit-image's bundled photographs, random crops of random size; offline, for demos: the
photos named in ``config.data.skimage_eval_photos`` are the eval split, never cropped for
training).
"""

from __future__ import annotations

import functools
import math
import signal
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags, logging
from PIL import Image

from isnet_jax import errors, extras, images
from isnet_jax import masks as masks_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# scikit-image's bundled photographs that need no download; grayscale ones are converted.
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
)


# --- Decoding (``images.load_rgb``: an unreadable image is an ``images.InputError``, skipped
# and counted, never replaced by another image) and cropping ----------------------------------


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """The release's preprocessing: centre square crop, bilinear resize to ``size``.

    Smaller images are resized up.
    """
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    if (w, h) != (size, size):
        img = img.resize((size, size), Image.BILINEAR, box=box)
    return img


def random_crop_resize(
    img: Image.Image, size: int, rng: np.random.Generator, min_fraction: float
) -> Image.Image:
    """A square crop of random side (``min_fraction`` to 1 of the shorter side) at a random
    place, resized to ``size``: many distinct training images from a handful of photos."""
    w, h = img.size
    s = max(1, round(min(w, h) * rng.uniform(min_fraction, 1.0)))
    x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
    return img.resize((size, size), Image.BILINEAR, box=(x, y, x + s, y + s))


def _needs_tf() -> str:
    """What a TFDS preparation needs beyond the default install, if it is missing: TFDS encodes
    the images of the datasets it builds with TensorFlow (reading ArrayRecord does not)."""
    if extras.installed("tensorflow"):
        return ""
    return f"; preparing needs TensorFlow: {extras.pip_install(extras.TF)}"


# --- Sources: random-access sequences of records (a path, encoded bytes or a photo) ---------


class TfdsImages:
    """A TFDS ArrayRecord split with the image left encoded (decoded by PIL in the map).

    A damaged record (a chunk whose hash does not match, a truncated shard) reads as an
    unreadable image: skipped, counted in ``skipped_images`` and named (shard and record) in
    a warning, like a broken JPEG of a folder; a source with nothing readable stops."""

    def __init__(self, name: str, split: str, data_dir: str = "") -> None:
        import tensorflow_datasets as tfds  # TensorFlow is heavy: import only when used

        self.description = f"TFDS {name}:{split}"
        where = data_dir or "TFDS's default data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
        try:
            builder = tfds.builder(name, data_dir=data_dir or None)
            prepared = builder.is_prepared()
        except Exception as e:  # noqa: BLE001 - TFDS raises several types for "not found"
            prepared, builder = False, e
        if not prepared:
            detail = f" ({builder})" if isinstance(builder, Exception) else ""
            raise errors.MissingFileError(
                f"TFDS dataset {name!r} is not prepared in {where}: prepare it once as "
                f'ArrayRecord with python -c "import tensorflow_datasets as tfds; '
                f"tfds.builder('{name}', data_dir={data_dir or None!r})"
                f".download_and_prepare(file_format='array_record')\"{detail}{_needs_tf()}"
            )
        splits = sorted(builder.info.splits)
        for part in split.split("+"):
            if part.split("[")[0].strip() not in splits:
                raise errors.ConfigError(
                    f"TFDS dataset {name!r} has no split {part.strip()!r} (it has "
                    f"{', '.join(splits)}): set config.data.train_split / eval_split to one "
                    "of them")
        try:
            self._source = builder.as_data_source(
                split=split, decoders={"image": tfds.decode.SkipDecoding()})
        except Exception as e:  # noqa: BLE001 - prepared, but not as ArrayRecord, or a bad slice
            raise errors.MissingFileError(
                f"cannot read TFDS dataset {name!r} split {split!r} from {where} ({e}); "
                "tfds.data_source reads ArrayRecord: prepare it with "
                "download_and_prepare(file_format='array_record')") from e

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        try:
            return self._source[index]["image"]
        except RuntimeError as e:  # riegeli / ArrayRecord: a damaged chunk or shard
            raise images.InputError(
                f"damaged record {index} of {self._shard(index)}: {e}") from e

    def _shard(self, index: int) -> str:
        records = getattr(self._source, "data_source", None)
        try:
            reader, _ = records._reader_idx_and_position(index)  # noqa: SLF001
            return records._paths[reader]  # noqa: SLF001 - for the message only
        except Exception:  # noqa: BLE001 - another array_record version: name the split
            return self.description


class FileImages:
    """Image files of a folder (recursive) or of a ``.flist``; a record is the path."""

    def __init__(self, path: str) -> None:
        self.files = masks_lib.list_images(path, IMAGE_EXTENSIONS, "image")
        self.description = f"{len(self.files)} images of {path}"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> str:
        return self.files[index]


@functools.cache
def _skimage_photo(name: str) -> Image.Image | None:
    """One of scikit-image's bundled photos as RGB, or None when it cannot be had offline."""
    import skimage.data

    try:
        photo = getattr(skimage.data, name)()
    except Exception as e:  # noqa: BLE001 - a photo that needs a download is left out
        logging.info("skimage photo %s unavailable offline (%s): left out", name, e)
        return None
    photo = photo[0] if isinstance(photo, tuple) else photo  # stereo pair: left view
    return images.to_rgb(Image.fromarray(np.asarray(photo)))


def _skimage_photos() -> tuple[Image.Image, ...]:
    """Every bundled photo that loads offline (for benchmarks that need photo-like pixels)."""
    photos = tuple(p for p in map(_skimage_photo, SKIMAGE_PHOTOS) if p is not None)
    if not photos:
        raise errors.MissingFileError("no scikit-image sample photo could be loaded offline")
    return photos


def skimage_split(eval_photos: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(train, eval)`` photo names for source "skimage": the photos named in
    ``config.data.skimage_eval_photos`` (comma-separated) are held out, every other bundled
    photo trains; each photo that loads offline is in exactly one of the two, one that does not
    load is in neither. A photo is split as a whole: no crop of an eval photo is ever trained on.
    """
    names = tuple(dict.fromkeys(n.strip() for n in eval_photos.split(",") if n.strip()))
    unknown = [n for n in names if n not in SKIMAGE_PHOTOS]
    if unknown or not names or len(names) == len(SKIMAGE_PHOTOS):
        why = (f"{', '.join(unknown)} not among them" if unknown else
               "none named" if not names else "every photo named: none left to train on")
        raise errors.ConfigError(
            f"config.data.skimage_eval_photos={eval_photos!r}: name the held-out photos, "
            f"comma-separated, among {', '.join(SKIMAGE_PHOTOS)} ({why})"
        )
    split = (tuple(n for n in SKIMAGE_PHOTOS if n not in names), names)
    loaded = tuple(tuple(n for n in part if _skimage_photo(n) is not None) for part in split)
    for asked, got, role in zip(split, loaded, ("training", "evaluation"), strict=True):
        if not got:
            raise errors.MissingFileError(
                f"none of the scikit-image photos for {role} ({', '.join(asked)}) could be "
                "loaded offline: check the scikit-image install"
            )
    return loaded


class SkimagePhotos:
    """``length`` records cycling through some of scikit-image's bundled photos (a record is
    the photo's name); the random crop of random size is made in the map, so every record is a
    different image."""

    def __init__(self, length: int, photos: Sequence[str], held_out: Sequence[str] = ()) -> None:
        if length <= 0:
            raise errors.ConfigError(
                f"config.data.skimage_num_images must be positive, got {length}"
            )
        self.length = length
        self.photos = tuple(photos)
        self.description = (
            f"{length} random crops of scikit-image's photos {', '.join(self.photos)}"
            + (f" ({', '.join(held_out)} held out for evaluation)" if held_out else
               " (held out: never cropped for training)")
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> str:
        return self.photos[index % len(self.photos)]


def make_source(config: ml_collections.ConfigDict, split: str) -> Sequence[Any]:
    """The image source of ``split`` ("train" or "eval") from ``config.data``.

    Stops with a message naming the path when it is missing or empty.
    """
    data = config.data
    train = split == "train"
    if data.source == "tfds":
        source = TfdsImages(
            data.name, data.train_split if train else data.eval_split, data.data_dir
        )
    elif data.source in ("folder", "flist"):
        path = data.train_path if train else data.eval_path
        if not path:
            raise errors.ConfigError(
                f"config.data.{'train' if train else 'eval'}_path is empty: "
                f"source {data.source!r} needs a folder or a .flist of images"
            )
        source = FileImages(path)  # either accepts a folder or a .flist
    elif data.source == "skimage":
        train_photos, eval_photos = skimage_split(data.skimage_eval_photos)
        if train:
            source = SkimagePhotos(data.skimage_num_images, train_photos, eval_photos)
        else:
            source = SkimagePhotos(data.skimage_num_images, eval_photos)
    else:
        raise errors.ConfigError(
            f"unknown config.data.source {data.source!r}: use tfds, folder, flist or skimage"
        )
    if len(source) == 0:
        raise errors.ConfigError(f"the image source {source.description} is empty")
    return source


# --- Per-example transforms --------------------------------------------------------------------


def _read(source: Sequence[Any], record: Any, size: int) -> Image.Image:
    if isinstance(source, SkimagePhotos):
        return _skimage_photo(record)
    return images.load_rgb(record, min_size=size)


def _seed(*parts: int) -> int:
    # grain seeds are plain ints; mix the parts so every process gets its own streams.
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


class TrainExample(grain.transforms.RandomMap):
    """Record index -> (image, mask) training example, or a ``bad`` marker for a file that
    cannot be read (dropped and counted downstream, never replaced here)."""

    def __init__(self, source, size, mode, mask_set, hole_range, random_crop_min):
        self.source, self.size, self.mode = source, size, mode
        self.mask_set, self.hole_range = mask_set, hole_range
        self.random_crop_min = random_crop_min

    def random_map(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        try:
            # A damaged TFDS record raises as it is read, a broken file as it is decoded.
            img = _read(self.source, self.source[index], self.size)
        except images.InputError as e:
            logging.warning("skipping an unreadable image: %s", e)
            return {"bad": True, "index": index}
        if isinstance(self.source, SkimagePhotos):
            image = random_crop_resize(img, self.size, rng, self.random_crop_min)
        else:
            image = center_crop_resize(img, self.size)
        mask = masks_lib.sample_mask(rng, self.size, self.mode, self.mask_set, self.hole_range)
        # The release's augmentation: flip image and mask together, rotate the mask alone.
        # (PIL flips in place of numpy: stacking negative-stride views is 50x slower.)
        if rng.random() < 0.5:
            image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask[:, ::-1]
        mask = np.rot90(mask, k=int(rng.integers(4)))
        return {
            "bad": False,
            "index": np.int32(index),
            "image": np.asarray(image),
            "mask": np.ascontiguousarray(mask, np.uint8)[..., None],
        }


class _SkipBadIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, limit: int | None) -> None:
        super().__init__(parent)
        self._limit = limit

    def __next__(self) -> dict[str, Any]:
        skipped = 0
        while True:
            example = next(self._parent)
            if not example["bad"]:
                del example["bad"]
                example["skipped"] = np.int32(skipped)
                return example
            skipped += 1
            if self._limit is not None and skipped >= self._limit:
                # On an endless stream of all-bad files this loop would never return.
                raise errors.MissingFileError(
                    f"{skipped} unreadable images in a row: every image of the source is "
                    "unreadable (see the warnings above for the files)"
                )

    # Between two outputs nothing is pending here, so the parent's state is the whole state.
    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


class SkipBad(grain.IterDataset):
    """Drops examples marked ``bad`` and counts them into the next good example's ``skipped``.

    ``limit``: this many bad examples in a row mean no good one is left. A worker sees a
    slice of each shuffled epoch, so a good file can miss it for a few epochs: 20 epochs'
    worth of records makes a false alarm a e^-20 event.
    """

    def __init__(self, parent: grain.IterDataset, limit: int | None = None) -> None:
        super().__init__(parent)
        self._limit = limit

    def __iter__(self) -> _SkipBadIterator:
        return _SkipBadIterator(self._parent.__iter__(), self._limit)


def _to_float(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Workers hand over uint8 pixels (a quarter of the shared-memory traffic of float32);
    # the conversion to [0, 1] is one vectorised pass here.
    batch = dict(batch)
    batch["image"] = np.divide(batch["image"], np.float32(255.0), dtype=np.float32)
    batch["mask"] = batch["mask"].astype(np.float32)
    return batch


# --- Train and eval datasets ----------------------------------------------------------------


def _check_readable(source: Sequence[Any], records: Sequence[int], size: int) -> None:
    # A source of nothing but unreadable files would only fill the log with warnings: probe
    # up to 32 records spread over this host's shard and stop if none of them decodes.
    if isinstance(source, SkimagePhotos):
        return
    probes = sorted({records[i] for i in np.linspace(0, len(records) - 1, 32).astype(int)})
    failures = []
    for index in probes:
        try:
            images.load_rgb(source[index], min_size=size)
            return
        except images.InputError as e:
            failures.append(str(e))
    raise errors.MissingFileError(
        f"none of {len(probes)} images probed in {source.description} can be read, e.g. "
        f"{failures[0]}: check the path and the file format"
    )


def host_batch(
    global_batch: int, process_count: int, what: str = "config.batch_size", *, devices: int = 1
) -> int:
    """Each host's share of a global batch, ``global_batch // process_count``. The one check of
    a batch size: a ``ConfigError`` unless it divides over the processes and over ``devices``
    (the mesh's data axis, which splits the batch)."""
    multiple = math.lcm(process_count, devices)
    if global_batch % multiple:
        devices_too = f" and the {devices} devices on the data axis" if devices > 1 else ""
        raise errors.ConfigError(
            f"{what}={global_batch} is not divisible by the {process_count} processes"
            f"{devices_too}: set --{what} to a multiple of {multiple}"
        )
    return global_batch // process_count


def _mask_set(config: ml_collections.ConfigDict) -> masks_lib.MaskSet | None:
    if config.masks.mode not in masks_lib.MODES:
        raise errors.ConfigError(
            f"unknown config.masks.mode {config.masks.mode!r}: use one of {masks_lib.MODES}"
        )
    if config.masks.mode in ("procedural", "block", "half"):
        return None
    if not config.masks.path:
        raise errors.ConfigError(
            f"config.masks.mode={config.masks.mode!r} needs config.masks.path, a folder or .flist "
            "of mask images (or use masks.mode='procedural')"
        )
    return masks_lib.MaskSet(
        config.masks.path, config.masks.polarity, config.masks.threshold, config.masks.cache_mb
    )


def create_train_dataset(
    config: ml_collections.ConfigDict, *, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
    """The training ``IterDataset`` of this process (see the module docstring for batches)."""
    batch_size = host_batch(config.batch_size, process_count)
    source = make_source(config, "train")
    mask_set = _mask_set(config)
    hole_range = (config.masks.hole_ratio_min, config.masks.hole_ratio_max)
    logging.info(
        "training data: %s; process %d of %d reads %d of them, %d per batch; masks: %s%s",
        source.description,
        process_index,
        process_count,
        len(range(process_index, len(source), process_count)),
        batch_size,
        config.masks.mode,
        f" from {len(mask_set)} files of {mask_set.path}" if mask_set else "",
    )
    ds = grain.MapDataset.range(len(source))[process_index::process_count]
    records = len(ds)
    if records == 0:
        raise errors.ConfigError(
            f"{source.description} has fewer records than the {process_count} processes"
        )
    _check_readable(source, ds, config.image_size)
    ds = ds.shuffle(seed=_seed(config.seed, process_index, 1)).repeat()
    example = TrainExample(
        source,
        config.image_size,
        config.masks.mode,
        mask_set,
        hole_range,
        config.data.random_crop_min,
    )
    ds = ds.random_map(example, seed=_seed(config.seed, process_index, 2))
    read = grain.ReadOptions(
        num_threads=config.data.read_threads,
        prefetch_buffer_size=max(1, config.data.read_threads) * 4,
    )
    it_ds = SkipBad(ds.to_iter_dataset(read), limit=20 * records)
    it_ds = it_ds.batch(batch_size, drop_remainder=True)
    if config.data.num_workers > 0:
        # grain's workers read absl flags; outside an absl app (tests, the benchmark) nobody
        # parsed them, and their defaults are what we want.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.data.num_workers,
                per_worker_buffer_size=config.data.prefetch_buffer_size,
            ),
            worker_init_fn=_leave_ctrl_c_to_the_trainer,
        )
    return it_ds.map(_to_float)


def _leave_ctrl_c_to_the_trainer(worker_index: int, worker_count: int) -> None:
    """A terminal's Ctrl-C reaches the data workers too. They ignore it: the training process
    finishes its step, saves (the data position included) and closes the iterator, which ends
    the workers and frees their shared memory. Killed by it, each would print a traceback and
    leave its buffers for the resource tracker to complain about."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def create_train_iterator(
    config: ml_collections.ConfigDict, *, process_index: int, process_count: int
) -> grain.DatasetIterator:
    """An endless, seeded iterator over this host's training batches.

    Same config.seed, same batches; checkpointable with ``get_state``/``set_state`` or
    Orbax's ``grain.checkpoint.CheckpointSave``/``CheckpointRestore`` (restore with the same
    ``num_workers``: each worker owns a fixed slice of the stream).
    """
    return iter(
        create_train_dataset(config, process_index=process_index, process_count=process_count)
    )


class EvalExample(grain.transforms.Map):
    """Position in the eval list -> example paired with evaluation mask of that position."""

    def __init__(self, source, size, masks, seed, random_crop_min):
        self.source, self.size, self.masks = source, size, masks
        self.seed, self.random_crop_min = seed, random_crop_min

    def map(self, position: int) -> dict[str, Any]:
        size = self.size
        padding = {
            "image": np.zeros((size, size, 3), np.uint8),
            "mask": np.ones((size, size, 1), np.uint8),
            "index": np.int32(-1),
            "skipped": np.int32(0),
            "valid": np.bool_(False),
        }
        if position < 0:
            return padding
        try:
            img = _read(self.source, self.source[position], size)
        except images.InputError as e:
            logging.warning("skipping an unreadable image: %s", e)
            return padding | {"index": np.int32(position), "skipped": np.int32(1)}
        if isinstance(self.source, SkimagePhotos):
            rng = np.random.default_rng([self.seed, position])
            image = random_crop_resize(img, size, rng, self.random_crop_min)
        else:
            image = center_crop_resize(img, size)
        image = np.asarray(image)
        mask = self.masks[position].astype(np.uint8)[..., None]
        return {
            "image": image,
            "mask": mask,
            "index": np.int32(position),
            "skipped": np.int32(0),
            "valid": np.bool_(True),
        }


def create_eval_dataset(
    config: ml_collections.ConfigDict,
    *,
    band: tuple[float, float] | None,
    num_images: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterable[dict[str, np.ndarray]]:
    """A finite, deterministic evaluation dataset (iterate it once per evaluation).

    Images are the first ``num_images`` records of the eval split (-1: all), image i paired
    with ``masks.eval_masks(...)[i]`` of ``band`` (None: the training band for procedural
    masks, every mask of ``config.eval.mask_path`` otherwise), identical on every machine and
    for every process count. Each process takes every ``process_count``-th image; the last
    batch is padded (``valid`` False) so every process yields the same number of
    equally-shaped batches of config.eval.batch_size // process_count.
    """
    batch_size = host_batch(config.eval.batch_size, process_count, "config.eval.batch_size")
    source = make_source(config, "eval")
    total = len(source) if num_images < 0 else min(num_images, len(source))
    if num_images > len(source):
        logging.warning(
            "eval: %d images asked, %s has %d: using all", num_images, source.description, total
        )
    size = config.image_size
    if config.eval.mask_path:
        masks = masks_lib.eval_masks(
            config.eval.mask_path,
            band,
            total,
            config.eval.mask_seed,
            size,
            config.masks.polarity,
            config.masks.threshold,
        )
    else:
        band = band or (config.masks.hole_ratio_min, config.masks.hole_ratio_max)
        masks = masks_lib.eval_masks(None, band, total, config.eval.mask_seed, size)
    positions = list(range(process_index, total, process_count))
    per_host = -(-total // process_count)
    padded = -(-per_host // batch_size) * batch_size
    positions += [-1] * (padded - len(positions))
    logging.info(
        "eval data: %d images of %s, masks of band %s (%s), %d batches of %d per host",
        total,
        source.description,
        masks_lib.band_name(masks.band),
        config.eval.mask_path or "procedural",
        padded // batch_size,
        batch_size,
    )
    example = EvalExample(source, size, masks, _seed(config.seed, 3), config.data.random_crop_min)
    ds = grain.MapDataset.source(positions).map(example)
    read = grain.ReadOptions(num_threads=max(1, config.data.read_threads))
    return ds.to_iter_dataset(read).batch(batch_size).map(_to_float)


# --- Hand-over to the devices --------------------------------------------------------------


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, Any]:
    """Per-host numpy batch -> global ``jax.Array``s sharded along the batch axis.

    ``sharding`` is the mesh's batch sharding (e.g. ``NamedSharding(mesh, P("data"))``); its
    first partition entry shards the leading axis of every field, whatever the field's rank.
    """
    import jax  # the grain workers import this module and must not pay for JAX

    spec = jax.sharding.PartitionSpec(sharding.spec[0] if len(sharding.spec) else None)
    leading = jax.sharding.NamedSharding(sharding.mesh, spec)
    return {k: jax.make_array_from_process_local_data(leading, v) for k, v in batch.items()}
