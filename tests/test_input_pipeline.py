"""The grain pipeline: sources, bad files, determinism, checkpointing, sharding, hand-over."""

from __future__ import annotations

import io
import itertools
import logging
import pathlib

import grain
import numpy as np
import pytest
from PIL import Image

from isnet_jax import errors, images, input_pipeline, masks
from isnet_jax.configs import default

SIZE = 32
SKIMAGE = input_pipeline.SKIMAGE_PHOTOS
GOOD = 8  # readable images in the folder fixture (see `image_folder`)
BAD = ("zero.jpg", "truncated.jpg", "corrupt.png")


def _photo(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth colour gradient: compresses like a photo, unlike noise."""
    y, x = np.mgrid[0:h, 0:w]
    phase = np.random.default_rng(seed).uniform(0, 6, 3)
    channels = [np.sin(x / (7 + i) + y / (11 + i) + p) for i, p in enumerate(phase)]
    return ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> pathlib.Path:
    """8 readable images in every format the pipeline must take, and 3 unreadable files."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    Image.fromarray(_photo(80, 60, 0)).save(root / "landscape.jpg")
    Image.fromarray(_photo(48, 64, 1)).save(root / "sub" / "portrait.JPG")
    Image.fromarray(_photo(20, 12, 2)).save(root / "small.png")  # smaller than the crop
    Image.fromarray(_photo(40, 40, 3)).convert("L").save(root / "gray.png")
    Image.fromarray(_photo(40, 40, 4)).convert("RGBA").save(root / "rgba.png")
    Image.fromarray(_photo(40, 40, 5)).convert("P").save(root / "palette.png")
    Image.fromarray(_photo(40, 40, 6)[..., 0].astype(np.uint16) * 257).save(root / "deep.png")
    Image.fromarray(_photo(40, 40, 7)).save(root / "sub" / "photo.webp")
    (root / "zero.jpg").write_bytes(b"")
    encoded = io.BytesIO()
    Image.fromarray(_photo(64, 64, 8)).save(encoded, "JPEG")
    (root / "truncated.jpg").write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 3])
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def mask_folder(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("masks")
    rng = np.random.default_rng(0)
    for i in range(4):
        known = masks.irregular_mask(rng, 64, (0.2, 0.4))
        Image.fromarray((known * 255).astype(np.uint8)).save(root / f"mask_{i}.png")
    return root


def _config(images=None, masks_path=None, **data):
    config = default.get_config()
    config.image_size = SIZE
    config.batch_size = 4
    config.seed = 0
    config.data.num_workers = 0
    config.data.read_threads = 1
    if images is not None:
        config.data.source = "folder"
        config.data.train_path = config.data.eval_path = str(images)
    if masks_path is not None:
        config.masks.mode = "external"
        config.masks.path = str(masks_path)
    config.eval.batch_size = 2
    for key, value in data.items():
        config.data[key] = value
    return config


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --- Decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["gray.png", "rgba.png", "palette.png", "deep.png", "sub/photo.webp", "small.png"]
)
def test_decode_converts_every_mode_to_rgb(image_folder, name):
    img = images.load_rgb(image_folder / name)
    assert img.mode == "RGB"
    pixels = np.asarray(input_pipeline.center_crop_resize(img, SIZE))
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    assert 0 < pixels.mean() < 255 and pixels.std() > 5  # not clipped to white or black


def test_sixteen_bit_is_scaled_not_clipped(image_folder):
    deep = np.asarray(Image.open(image_folder / "deep.png"), np.float64) / 257
    rgb = np.asarray(images.load_rgb(image_folder / "deep.png"), np.float64)
    np.testing.assert_allclose(rgb[..., 0], deep, atol=1)


@pytest.mark.parametrize("name", BAD)
def test_bad_files_raise_bad_image(image_folder, name):
    with pytest.raises(images.InputError, match=f"cannot read image {image_folder / name}: "):
        images.load_rgb(image_folder / name)
    with pytest.raises(images.InputError, match="cannot read an encoded image of"):
        images.load_rgb((image_folder / name).read_bytes())


def test_training_reads_a_photo_upright_as_inpainting_does(tmp_path):
    """One decoder: a photo stored sideways (EXIF orientation 6, "turn 90 degrees clockwise to
    display") trains as an editor shows it, as inpainting reads it."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # a white band along the stored left edge: the top once displayed
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    rgb = np.asarray(images.load_rgb(tmp_path / "sideways.jpg"))
    assert rgb.shape == (40, 20, 3)
    assert rgb[:8].mean() > 200 and rgb[12:].mean() < 50
    np.testing.assert_array_equal(rgb, images.load_image(tmp_path / "sideways.jpg"))


def test_center_crop_and_jpeg_draft(image_folder):
    # The draft (reduced-scale JPEG decoding) never goes below the crop size.
    img = images.load_rgb(image_folder / "landscape.jpg", min_size=SIZE)
    assert min(img.size) >= SIZE
    full = np.asarray(images.load_rgb(image_folder / "landscape.jpg"))
    crop = np.asarray(input_pipeline.center_crop_resize(Image.fromarray(full), 60))
    np.testing.assert_array_equal(crop, full[:, 10:70])  # centre square, no resize needed


# --- Training iterator -------------------------------------------------------------------------


def test_train_batches_format(image_folder, mask_folder):
    config = _config(image_folder, mask_folder)
    batch = next(input_pipeline.create_train_iterator(config, process_index=0, process_count=1))
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
    assert batch["mask"].shape == (4, SIZE, SIZE, 1) and batch["mask"].dtype == np.float32
    assert batch["index"].shape == (4,) and batch["index"].dtype == np.int32
    assert batch["skipped"].shape == (4,) and batch["skipped"].dtype == np.int32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert set(np.unique(batch["mask"])) == {0.0, 1.0}


def test_bad_files_are_skipped_counted_and_logged(image_folder, mask_folder, caplog):
    config = _config(image_folder, mask_folder)
    files = input_pipeline.FileImages(str(image_folder)).files
    bad = {i for i, f in enumerate(files) if pathlib.Path(f).name in BAD}
    assert len(files) == GOOD + len(BAD)
    with caplog.at_level(logging.WARNING):
        iterator = input_pipeline.create_train_iterator(config, process_index=0, process_count=1)
        batches = _take(iterator, 2 * GOOD // 4)  # exactly two epochs of good images
    indices = np.concatenate([b["index"] for b in batches])
    assert not bad & set(indices.tolist()), "a bad file was replaced, not skipped"
    assert sorted(indices) == sorted(2 * [i for i in range(len(files)) if i not in bad])
    skipped = sum(int(b["skipped"].sum()) for b in batches)
    # All of epoch 1's bad files come before epoch 2's last good one, at most all of epoch 2's.
    assert len(BAD) <= skipped <= 2 * len(BAD)
    assert any("truncated.jpg" in r.getMessage() for r in caplog.records)


def test_skip_bad_counts_exactly():
    flags = [True, True, False, True, False, False, True, True, True, False]
    ds = grain.MapDataset.source([{"bad": f, "i": i} for i, f in enumerate(flags)])
    out = list(input_pipeline.SkipBad(ds.to_iter_dataset()))
    assert [(e["i"], int(e["skipped"])) for e in out] == [(2, 2), (4, 1), (5, 0), (9, 3)]


def test_skip_bad_stops_on_an_all_bad_stream():
    ds = grain.MapDataset.source([{"bad": True}] * 3).repeat().to_iter_dataset()
    with pytest.raises(errors.MissingFileError, match="60 unreadable images in a row"):
        next(iter(input_pipeline.SkipBad(ds, limit=60)))


def test_source_of_only_bad_files_stops_at_once(image_folder, tmp_path):
    for name in BAD:
        (tmp_path / name).write_bytes((image_folder / name).read_bytes())
    with pytest.raises(errors.MissingFileError, match=f"none of 3 images.*{tmp_path}"):
        input_pipeline.create_train_iterator(_config(tmp_path), process_index=0, process_count=1)


def test_same_seed_same_batches_and_restore(image_folder, mask_folder):
    config = _config(image_folder, mask_folder)
    config.masks.mode = "external_block_half"
    make = input_pipeline.create_train_iterator
    first = _take(make(config, process_index=0, process_count=1), 4)
    _assert_same(first, _take(make(config, process_index=0, process_count=1), 4))
    config.seed = 1
    other = _take(make(config, process_index=0, process_count=1), 1)
    assert not np.array_equal(other[0]["image"], first[0]["image"])
    config.seed = 0
    iterator = make(config, process_index=0, process_count=1)
    _take(iterator, 2)
    state = iterator.get_state()
    restored = make(config, process_index=0, process_count=1)
    restored.set_state(state)
    _assert_same(first[2:], _take(restored, 2))


def test_restore_through_orbax(image_folder, tmp_path):
    import orbax.checkpoint as ocp

    config = _config(image_folder)
    make = input_pipeline.create_train_iterator
    iterator = make(config, process_index=0, process_count=1)
    _take(iterator, 3)
    expected = _take(make(config, process_index=0, process_count=1), 5)[3:]
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    fresh = make(config, process_index=0, process_count=1)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        restored = manager.restore(
            3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
        )
    _assert_same(expected, _take(restored["data"], 2))


def test_processes_read_disjoint_shards(image_folder):
    config = _config(image_folder)
    seen = []
    for process_index in range(2):
        iterator = input_pipeline.create_train_iterator(
            config, process_index=process_index, process_count=2
        )
        batches = _take(iterator, 4)
        assert batches[0]["image"].shape[0] == 2  # batch_size 4 over 2 processes
        seen.append({int(i) for b in batches for i in b["index"]})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] <= set(range(GOOD + len(BAD)))
    with pytest.raises(ValueError, match="not divisible"):
        input_pipeline.create_train_iterator(config, process_index=0, process_count=3)


def test_flist_source(image_folder, tmp_path):
    flist = tmp_path / "train.flist"
    # The release's lists hold absolute paths; relative ones resolve against the list.
    flist.write_text(f"{image_folder / 'landscape.jpg'}\n{image_folder / 'gray.png'}\n")
    config = _config()
    config.data.source = "flist"
    config.data.train_path = str(flist)
    batch = next(input_pipeline.create_train_iterator(config, process_index=0, process_count=1))
    assert set(batch["index"].tolist()) <= {0, 1}


def test_skimage_source_gives_varied_crops():
    config = _config(source="skimage", skimage_num_images=50)
    config.masks.mode = "block"
    batch = next(input_pipeline.create_train_iterator(config, process_index=0, process_count=1))
    assert batch["image"].shape == (4, SIZE, SIZE, 3)
    images = batch["image"].reshape(4, -1)
    assert len({row.tobytes() for row in images}) == 4
    assert np.all(batch["mask"].mean(axis=(1, 2, 3)) == 0.75)  # block mask: hole = block


def test_skimage_split_holds_out_whole_photos(monkeypatch):
    """Every bundled photo is replaced by a flat image of its own colour, so each crop's pixels
    say which photo it was cut from: no training crop may come from a held-out photo, and every
    photo that loads is in exactly one set (one that does not load, in neither)."""
    import skimage.data

    colours = {name: (10 * i, 250 - 10 * i, 128) for i, name in enumerate(SKIMAGE)}
    for name, colour in colours.items():
        flat = np.full((48, 40, 3), colour, np.uint8)
        monkeypatch.setattr(skimage.data, name, lambda flat=flat: flat)

    def unavailable():
        raise OSError("needs a download")

    monkeypatch.setattr(skimage.data, "retina", unavailable)
    input_pipeline._skimage_photo.cache_clear()
    try:
        config = _config(source="skimage", skimage_num_images=60,
                         skimage_eval_photos="chelsea, coffee,rocket")
        config.masks.mode = "block"
        train_photos, eval_photos = input_pipeline.skimage_split(config.data.skimage_eval_photos)
        assert eval_photos == ("chelsea", "coffee", "rocket")
        assert set(train_photos) == set(SKIMAGE) - {"chelsea", "coffee", "rocket", "retina"}

        def photos_of(batches):
            found = []
            images = [b["image"][b.get("valid", np.ones(len(b["image"]), bool))] for b in batches]
            for image in np.concatenate(images):
                pixels = np.unique(np.rint(image.reshape(-1, 3) * 255), axis=0)
                assert len(pixels) == 1  # a crop of one flat photo
                found.append(next(n for n, c in colours.items() if np.all(pixels[0] == c)))
            return set(found)

        train = input_pipeline.create_train_iterator(config, process_index=0, process_count=1)
        assert photos_of(_take(train, 30)) == set(train_photos)  # 120 crops: all, and only them
        evaluation = input_pipeline.create_eval_dataset(config, band=None, num_images=12)
        assert photos_of([b for b in evaluation]) == set(eval_photos)
        for bad in ("", "chelsea,nosuchphoto", ",".join(SKIMAGE)):
            with pytest.raises(ValueError, match="skimage_eval_photos"):
                input_pipeline.skimage_split(bad)
    finally:
        input_pipeline._skimage_photo.cache_clear()


@pytest.mark.slow
def test_two_workers_are_deterministic_and_restore(image_folder, mask_folder):
    config = _config(image_folder, mask_folder, num_workers=2)
    make = input_pipeline.create_train_iterator
    iterator = make(config, process_index=0, process_count=1)
    first = _take(iterator, 3)
    state = iterator.get_state()
    following = _take(iterator, 2)
    iterator.close()
    again = make(config, process_index=0, process_count=1)
    again.set_state(state)
    _assert_same(following, _take(again, 2))
    again.close()
    assert {int(i) for b in first for i in b["index"]} <= set(range(GOOD + len(BAD)))


# --- Errors ----------------------------------------------------------------------------------


def test_missing_empty_and_maskless_sources_stop_with_the_path(tmp_path, image_folder):
    make = input_pipeline.create_train_iterator
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        make(_config(tmp_path / "nowhere"), process_index=0, process_count=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'}.*no image"):
        make(_config(tmp_path / "empty"), process_index=0, process_count=1)
    with pytest.raises(ValueError, match=f"mask folder {tmp_path / 'empty'}"):
        make(_config(image_folder, tmp_path / "empty"), process_index=0, process_count=1)
    config = _config(image_folder)
    config.masks.mode = "external"
    with pytest.raises(ValueError, match="needs config.masks.path"):
        make(config, process_index=0, process_count=1)
    config = _config()
    config.data.source = "folder"
    with pytest.raises(ValueError, match="train_path is empty"):
        make(config, process_index=0, process_count=1)


def test_tfds_not_prepared_says_how(tmp_path):
    config = _config(source="tfds", name="celeb_a", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download_and_prepare.*array_record"):
        input_pipeline.create_train_iterator(config, process_index=0, process_count=1)


def test_tfds_source_reads_a_real_arrayrecord_dataset(tiny_tfds):
    """isnet_tiny_photos, prepared by TFDS itself as ArrayRecord, read by tfds.data_source."""
    from helpers import tiny_dataset

    config = _config(source="tfds", name=tiny_dataset.NAME, data_dir=tiny_tfds)
    train = tiny_dataset.SPLITS["train"]
    iterator = input_pipeline.create_train_iterator(config, process_index=0, process_count=1)
    batches = _take(iterator, train // 4)  # one epoch of 4-image batches
    evaluation = list(input_pipeline.create_eval_dataset(
        config, band=(0.1, 0.2), num_images=5, process_index=0, process_count=1))
    assert batches[0]["image"].shape == (4, SIZE, SIZE, 3)
    assert sorted(np.concatenate([b["index"] for b in batches])) == list(range(train))
    assert int(sum(b["skipped"].sum() for b in batches)) == 0
    assert [b["valid"].tolist() for b in evaluation] == [[True, True], [True, True], [True, False]]
    # Photographs, not flat test patterns: every image has texture.
    assert all(float(img.std()) > 0.02 for b in batches for img in b["image"])


def test_tfds_not_prepared_and_unknown_split_are_one_clear_error(tiny_tfds, tmp_path):
    from helpers import tiny_dataset

    with pytest.raises(errors.MissingFileError, match=r"not prepared in .*download_and_prepare"):
        input_pipeline.TfdsImages(tiny_dataset.NAME, "train", str(tmp_path / "empty"))
    with pytest.raises(errors.ConfigError,
                       match=r"has no split 'valid' \(it has test, train, validation\)"):
        input_pipeline.TfdsImages(tiny_dataset.NAME, "valid", tiny_tfds)
    assert len(input_pipeline.TfdsImages(tiny_dataset.NAME, "train[:10]+test", tiny_tfds)) == 22


def test_a_damaged_arrayrecord_record_is_skipped_counted_and_named(tiny_tfds, tmp_path, caplog):
    import shutil

    from helpers import tiny_dataset

    data_dir = tmp_path / "tfds"
    shutil.copytree(tiny_tfds, data_dir)
    [shard] = (data_dir / tiny_dataset.NAME).glob("*/*-test.array_record-*")
    data = bytearray(shard.read_bytes())
    data[3000:3010] = b"\xff" * 10  # inside the first record's chunk (group_size 1)
    shard.write_bytes(data)
    config = _config(source="tfds", name=tiny_dataset.NAME, data_dir=str(data_dir))
    with caplog.at_level(logging.WARNING):
        batches = list(input_pipeline.create_eval_dataset(
            config, band=(0.1, 0.2), num_images=4, process_index=0, process_count=1))
    assert [b["valid"].tolist() for b in batches] == [[False, True], [True, True]]
    assert int(sum(b["skipped"].sum() for b in batches)) == 1
    assert f"damaged record 0 of {shard}" in caplog.text and "hash mismatch" in caplog.text


# --- Evaluation ------------------------------------------------------------------------------


def test_eval_dataset_is_finite_padded_and_deterministic(image_folder):
    config = _config(image_folder)
    kwargs = dict(band=(0.2, 0.3), num_images=7)
    batches = list(
        input_pipeline.create_eval_dataset(config, **kwargs, process_index=0, process_count=1)
    )
    assert len(batches) == 4 and all(b["image"].shape == (2, SIZE, SIZE, 3) for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    skipped = np.concatenate([b["skipped"] for b in batches])
    files = input_pipeline.FileImages(str(image_folder)).files
    bad = [i for i in range(7) if pathlib.Path(files[i]).name in BAD]
    assert bad, "the first 7 files should include a bad one"
    # Unreadable files stay in place as invalid entries: image i keeps mask i.
    assert index.tolist() == list(range(7)) + [-1]
    assert valid.tolist() == [i not in bad for i in range(7)] + [False]
    assert skipped.sum() == len(bad)
    mask = np.concatenate([b["mask"] for b in batches])[..., 0]
    for i in np.flatnonzero(valid):
        assert 0.2 <= masks.hole_ratio(mask[i]) < 0.3
    again = list(
        input_pipeline.create_eval_dataset(config, **kwargs, process_index=0, process_count=1)
    )
    _assert_same(batches, again)
    # Two processes: same pairs of images and masks, split between them, equal batch counts.
    per_process = [
        list(input_pipeline.create_eval_dataset(config, **kwargs, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert len(per_process[0]) == len(per_process[1]) == 4
    for b in itertools.chain(*per_process):
        for j, i in enumerate(b["index"]):
            if i >= 0:
                np.testing.assert_array_equal(b["mask"][j], batches[i // 2]["mask"][i % 2])
                np.testing.assert_array_equal(b["image"][j], batches[i // 2]["image"][i % 2])
    indices = sorted(int(i) for b in itertools.chain(*per_process) for i in b["index"] if i >= 0)
    assert indices == list(range(7))


def test_eval_with_a_mask_set(image_folder, mask_folder):
    config = _config(image_folder)
    config.eval.mask_path = str(mask_folder)
    batches = list(
        input_pipeline.create_eval_dataset(
            config, band=None, num_images=4, process_index=0, process_count=1
        )
    )
    valid = np.concatenate([b["valid"] for b in batches])
    assert len(valid) == 4 and valid.sum() >= 2
    everything = [masks.load_mask(f, SIZE) for f in sorted(mask_folder.iterdir())]
    for m in np.concatenate([b["mask"] for b in batches])[valid, ..., 0]:
        assert any(np.array_equal(m, e) for e in everything)


# --- Hand-over to the devices --------------------------------------------------------------


def test_to_global_shards_the_batch_axis(image_folder):
    import jax

    config = _config(image_folder)
    config.batch_size = 2 * jax.device_count()
    batch = next(input_pipeline.create_train_iterator(config, process_index=0, process_count=1))
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    arrays = input_pipeline.to_global(batch, sharding)
    for key, value in batch.items():
        assert isinstance(arrays[key], jax.Array)
        assert arrays[key].shape == value.shape and arrays[key].sharding.spec[0] == "data"
        np.testing.assert_array_equal(np.asarray(arrays[key]), value)
