"""Inference on user files: release parity through the CLIs, sizes, modes and error handling.

The fast tests run ``inpaint.main`` in this process on a tiny Generator(blocks=1) checkpoint and
32x32 images, with one batch size, so one compiled forward serves them all. Only the parity test
(convert, then inpaint, on the golden release checkpoint) and the Ctrl-C test start the CLIs as
subprocesses.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
from helpers.processes import start_until
from helpers.tiny import TINY_WIDTH
from PIL import Image

from isnet_jax import checkpoint, cli, inpaint
from isnet_jax.inpainter import Inpainter, crop_windows

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH = ["--batch-size", "2"]  # every fast run uses it: one compile, shape (2, 32, 32, 3)


def _save_mask(path: pathlib.Path, known: np.ndarray) -> None:
    """Writes a mask with the default polarity, hole_black: black = hole, white = known."""
    Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).save(path)


def _box_mask(h: int, w: int) -> np.ndarray:
    known = np.ones((h, w), bool)
    known[4 : h // 2, 6 : w - 5] = False
    return known


@pytest.fixture()
def folders(tmp_path):
    """An input folder covering every image kind and every per-image problem."""
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir(), masks.mkdir(), out.mkdir()
    rng = np.random.default_rng(0)

    def rgb(h=32, w=32):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    Image.fromarray(rgb()).save(images / "plain.png")
    Image.fromarray(rgb()).convert("RGBA").save(images / "rgba.png")
    Image.fromarray(rgb()).convert("P").save(images / "palette.png")
    Image.fromarray(rng.integers(0, 65536, (32, 32), dtype=np.uint16)).save(images / "grey16.png")
    Image.fromarray(rgb(29, 31)).save(images / "odd.png")  # pads into the 32x32 bucket
    for name in ("wrongsize", "missing", "allknown", "allhole", "exists"):
        Image.fromarray(rgb()).save(images / f"{name}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / "notes.txt").write_text("not an image")

    for name in ("plain", "rgba", "palette", "grey16", "broken", "exists"):
        _save_mask(masks / f"{name}.png", _box_mask(32, 32))
    _save_mask(masks / "odd.png", _box_mask(29, 31))
    _save_mask(masks / "wrongsize.png", _box_mask(20, 20))
    _save_mask(masks / "allknown.png", np.ones((32, 32), bool))
    _save_mask(masks / "allhole.png", np.zeros((32, 32), bool))
    (out / "exists.png").write_bytes(b"keep me")
    return images, masks, out


def _lines(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


def test_folder_run_reports_each_problem_and_processes_the_rest(tiny_checkpoint, folders, capsys):
    images, masks, out = folders
    args = ["--checkpoint", str(tiny_checkpoint), "--input", str(images), "--mask", str(masks)]
    rc = inpaint.main([*args, "--output", str(out), *BATCH])
    captured = capsys.readouterr()
    assert rc == 1, captured

    errors = _lines(captured.err, "error:")
    for name, why in [
        ("wrongsize", "is 20x20 but the image is 32x32"),
        ("missing", "no mask named missing.*"),
        ("allknown", "has no hole"),
        ("broken", "cannot read image"),
    ]:
        mine = [line for line in errors if f"{name}.png" in line.split(":")[1]]
        assert len(mine) == 1 and why in mine[0], (name, errors)
    assert len(errors) == 4, errors
    assert len(_lines(captured.err, "allhole.png: mask")) == 1  # warned, still processed
    assert len(_lines(captured.out, "skip:")) == 1 and "exists.png" in captured.out
    assert "ignoring 1 file" in captured.out
    assert len(_lines(captured.out, "batch ")) == 4  # 7 runnable images, batches of 2

    written = {p.name for p in out.iterdir()}
    expected = {"plain", "rgba", "palette", "grey16", "odd", "allhole", "exists"}
    assert written == {f"{n}.png" for n in expected}
    assert (out / "exists.png").read_bytes() == b"keep me"

    # Known pixels are copied exactly; holes are filled; the size is the input's.
    source = np.asarray(Image.open(images / "odd.png"))
    result = np.asarray(Image.open(out / "odd.png"))
    known = _box_mask(29, 31)
    assert result.shape == (29, 31, 3) and result.dtype == np.uint8
    np.testing.assert_array_equal(result[known], source[known])
    assert np.abs(result[~known].astype(int) - source[~known]).mean() > 5
    # Results keep the input's layout: grey stays grey (16 bits reduced to 8), alpha is kept.
    grey = np.asarray(Image.open(out / "grey16.png"))
    assert grey.shape == (32, 32) and grey.dtype == np.uint8
    rgba = np.asarray(Image.open(out / "rgba.png"))
    assert rgba.shape == (32, 32, 4)
    np.testing.assert_array_equal(rgba[..., 3], np.asarray(Image.open(images / "rgba.png"))[..., 3])

    # --overwrite replaces the existing file; the rest of the folder is done again.
    rc = inpaint.main([*args, "--output", str(out), *BATCH, "--overwrite"])
    assert rc == 1  # the same four problems
    assert np.asarray(Image.open(out / "exists.png")).shape == (32, 32, 3)


def test_api_matches_cli_and_single_mask_file(tiny_checkpoint, folders, capsys, tmp_path):
    images, masks, _ = folders
    out = tmp_path / "single"
    # One mask file for a folder of images; hole_white polarity on an inverted copy.
    known = _box_mask(32, 32)
    Image.fromarray(np.where(known, 0, 255).astype(np.uint8)).save(tmp_path / "white.png")
    pair = tmp_path / "pair"
    pair.mkdir()
    for name in ("plain", "rgba"):
        (pair / f"{name}.png").write_bytes((images / f"{name}.png").read_bytes())
    rc = inpaint.main([
        "--checkpoint", str(tiny_checkpoint), "--input", str(pair),
        "--mask", str(tmp_path / "white.png"), "--mask-polarity", "hole_white",
        "--output", str(out), *BATCH,
        "--runtime", "jax",  # the Inpainter's below: a random generator differs between runtimes
    ])
    assert rc == 0, capsys.readouterr()
    cli = np.asarray(Image.open(out / "plain.png"))

    inpainter = Inpainter.from_checkpoint(tiny_checkpoint)
    source = np.asarray(Image.open(images / "plain.png"))
    api = inpainter(source, known)
    assert api.dtype == np.uint8 and api.shape == source.shape
    # Batched or alone, the same forward: at most float noise apart.
    assert np.abs(api.astype(int) - cli).max() <= 1
    np.testing.assert_array_equal(inpainter(source.astype(np.float32) / 255.0, known), api)


def test_resize_mode_pastes_into_full_resolution(tiny_checkpoint, tmp_path, capsys):
    images, masks, out = (tmp_path / d for d in ("images", "masks", "out"))
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(1)
    for name, (h, w) in {"wide": (40, 72), "tall": (50, 36)}.items():
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{name}.png")
    _save_mask(masks / "wide.png", _box_mask(40, 72))
    _save_mask(masks / "tall.png", _box_mask(25, 18))  # half size: resized, nearest
    rc = inpaint.main([
        "--checkpoint", str(tiny_checkpoint), "--input", str(images), "--mask", str(masks),
        "--output", str(out), "--resize-mode", "resize", "--size", "32", *BATCH,
    ])
    captured = capsys.readouterr()
    assert rc == 0, captured
    assert len(_lines(captured.out, "resized to 36x50")) == 1
    wide = np.asarray(Image.open(out / "wide.png"))
    source = np.asarray(Image.open(images / "wide.png"))
    known = _box_mask(40, 72)
    assert wide.shape == (40, 72, 3)
    np.testing.assert_array_equal(wide[known], source[known])


def _subprocess_env(cache: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    # convert and inpaint build the same generator: share compiled executables between them.
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


@pytest.mark.slow
def test_cli_reproduces_release_composite(golden_dir, tmp_path):
    golden = np.load(golden_dir / "golden.npz")
    images, masks, out = (tmp_path / d for d in ("images", "masks", "out"))
    images.mkdir(), masks.mkdir()
    for i, (image, mask) in enumerate(zip(golden["images"], golden["masks"], strict=True)):
        # The golden images are exact 8-bit levels, so PNG round-trips them.
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(images / f"g{i}.png")
        _save_mask(masks / f"g{i}.png", mask[..., 0] > 0.5)

    env = _subprocess_env(tmp_path / "jax_cache")
    converted = tmp_path / "converted"
    weights = golden_dir / "InpaintingModel_gen.pth"
    convert = [sys.executable, "-m", "isnet_jax.convert",
               "--generator", str(weights), "--output", str(converted)]
    done = subprocess.run(convert, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = [sys.executable, "-m", "isnet_jax.inpaint", "--checkpoint", str(converted),
           "--input", str(images), "--mask", str(masks), "--output", str(out), *BATCH]
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "done: 2 written" in done.stdout

    for i, expected in enumerate(golden["composite_eval"]):
        result = np.asarray(Image.open(out / f"g{i}.png")).astype(int)
        assert np.abs(result - np.round(expected * 255)).max() <= 1, i


# --------------------------------------------------------------------------------------------
# Crop mode: size 32 and margin 8 scale the 256 / 128 defaults down to the tiny model's size.
# --------------------------------------------------------------------------------------------

CROP = {"mode": "crop", "size": 32, "margin": 8}


@pytest.fixture(scope="module")
def crop_inpainter(tiny_checkpoint) -> Inpainter:
    return Inpainter.from_checkpoint(tiny_checkpoint, **CROP)


def _holes(h: int, w: int, *boxes: tuple[int, int, int, int]) -> np.ndarray:
    known = np.ones((h, w), bool)
    for top, left, bottom, right in boxes:
        known[top:bottom, left:right] = False
    return known


@pytest.mark.slow
def test_crop_mode_keeps_known_pixels_of_odd_rgb_grey_and_rgba(crop_inpainter):
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (75, 113, 4), dtype=np.uint8)  # odd sizes, random alpha
    # One small hole, one whose crop (40 + 2 * 8 px) is down-scaled to 32, one on the border.
    known = _holes(75, 113, (5, 7, 11, 12), (30, 60, 70, 100), (70, 0, 75, 6))
    for name, image in {"rgb": rgba[..., :3], "grey": rgba[..., 0], "rgba": rgba}.items():
        done = crop_inpainter.inpaint(image, known)
        assert done.mode == "crop" and len(done.windows) == 3, name
        assert done.image.shape == image.shape and done.image.dtype == np.uint8, name
        np.testing.assert_array_equal(done.image[known], image[known], err_msg=name)
        changed = np.abs(done.image[~known].astype(int) - image[~known])
        assert changed.mean() > 5, name
    # The grey result's holes are the luma of the RGB one; RGBA keeps its alpha everywhere.
    rgb = crop_inpainter(rgba[..., :3], known)
    grey = crop_inpainter(rgba[..., 0], known)
    as_rgb = crop_inpainter(np.repeat(rgba[..., :1], 3, -1), known)
    luma = np.asarray(Image.fromarray(as_rgb).convert("L"))
    np.testing.assert_array_equal(grey[~known], luma[~known])
    np.testing.assert_array_equal(crop_inpainter(rgba, known)[..., :3], rgb)
    np.testing.assert_array_equal(crop_inpainter(rgba, known)[..., 3], rgba[..., 3])
    # The 56x56 crop around the 40x40 hole ran at 32x32; every crop here did.
    assert set(crop_inpainter.inpaint(rgba, known).network_shapes) == {(32, 32)}


def test_crop_fills_far_holes_from_two_crops_and_close_holes_from_one(crop_inpainter):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (96, 161, 3), dtype=np.uint8)
    a, b = (10, 10, 16, 18), (70, 130, 78, 140)  # far apart: windows of side 8 + 16 and 10 + 16
    windows = crop_windows(_holes(96, 161, a, b), margin=8)
    # By hand: a's window is 24 px centred on (13, 14): rows 1..25, cols 2..26; b's 26 px
    # centred on (74, 135): rows 61..87, cols 122..148.
    assert windows == [((1, 2, 25, 26), a), ((61, 122, 87, 148), b)]

    both = crop_inpainter.inpaint(image, _holes(96, 161, a, b))
    assert both.windows == [w for w, _ in windows]
    # Each hole was filled from its own crop alone: the same as inpainting it by itself.
    for box in (a, b):
        alone = crop_inpainter(image, _holes(96, 161, box))
        hole = ~_holes(96, 161, box)
        np.testing.assert_array_equal(both.image[hole], alone[hole])

    c = (10, 24, 16, 30)  # 6 px right of a: the two windows overlap and merge into one
    close = crop_inpainter.inpaint(image, _holes(96, 161, a, c))
    # By hand: the joint bbox rows 10..16, cols 10..30 -> side 20 + 16 = 36, centred on
    # (13, 20): rows -5..31 shifted inside the image to 0..36, cols 2..38.
    assert close.windows == [(0, 2, 36, 38)]
    hole_a = ~_holes(96, 161, a)
    alone_a = crop_inpainter(image, _holes(96, 161, a))
    assert np.any(close.image[hole_a] != alone_a[hole_a])  # a saw c's crop, not its own
    np.testing.assert_array_equal(close.image[_holes(96, 161, a, c)], image[_holes(96, 161, a, c)])

    # A merge can make a window that overlaps a third group: that one joins as well.
    # d's window (rows 32..52, cols 12..32) misses a's (1..25) and c's (rows 2..24) but
    # overlaps their merged one (rows 0..36).
    d = (40, 20, 44, 24)
    assert len(crop_windows(_holes(96, 161, a, d), margin=8)) == 2
    assert len(crop_windows(_holes(96, 161, c, d), margin=8)) == 2
    merged = crop_windows(_holes(96, 161, a, c, d), margin=8)
    assert len(merged) == 1 and merged[0][1] == (10, 10, 44, 30)


def test_auto_mode_crops_large_images_and_says_so(tiny_checkpoint, tmp_path, capsys):
    images, masks, out = (tmp_path / d for d in ("images", "masks", "out"))
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(4)
    big = rng.integers(0, 256, (90, 131), dtype=np.uint8)  # grey: stays grey
    Image.fromarray(big).save(images / "big.png")
    big_known = _holes(90, 131, (10, 10, 16, 18), (70, 110, 78, 120))
    _save_mask(masks / "big.png", big_known)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / "small.png")
    _save_mask(masks / "small.png", _box_mask(32, 32))
    rc = inpaint.main([
        "--checkpoint", str(tiny_checkpoint), "--input", str(images), "--mask", str(masks),
        "--output", str(out), "--size", "32", "--crop-margin", "8", *BATCH,
    ])
    captured = capsys.readouterr()
    assert rc == 0, captured
    assert "resize mode auto: crop (margin 8 px, crops at 32 px) for images larger than 64 px" \
        in captured.out
    assert len(_lines(captured.out, "pad mode at 32x32")) == 1
    (crop_line,) = _lines(captured.out, "crop 1/1:")
    assert "big.png (131x90), crop mode: 2 crop(s) run at 32x32" in crop_line, crop_line
    result = np.asarray(Image.open(out / "big.png"))
    assert result.shape == (90, 131)
    np.testing.assert_array_equal(result[big_known], big[big_known])
    assert np.abs(result[~big_known].astype(int) - big[~big_known]).mean() > 5

    # An explicit mode wins over auto; crop rejects a mask of another size, as pad does.
    _save_mask(masks / "big.png", big_known[:45])
    rc = inpaint.main([
        "--checkpoint", str(tiny_checkpoint), "--input", str(images / "big.png"),
        "--mask", str(masks / "big.png"), "--output", str(out), "--overwrite",
        "--resize-mode", "crop", "--size", "32",
    ])
    captured = capsys.readouterr()
    assert rc == 1 and "is 131x45 but the image is 131x90" in captured.err


def test_crop_windows_are_disjoint_and_cover_every_hole():
    rng = np.random.default_rng(6)
    for trial in range(6):
        known = rng.random((300, 401)) > [0.0005, 0.002, 0.01][trial % 3]  # specks
        for _ in range(trial):  # and a few blocks
            top, left = rng.integers(0, 280), rng.integers(0, 380)
            known[top : top + rng.integers(1, 40), left : left + rng.integers(1, 60)] = False
        windows = crop_windows(known, margin=16)
        covered = np.zeros(known.shape, int)
        for (top, left, bottom, right), (bt, bl, bb, br) in windows:
            assert top <= bt < bb <= bottom and left <= bl < br <= right
            covered[top:bottom, left:right] += 1
        assert covered.max() == 1, trial  # pairwise disjoint
        assert (covered[~known] == 1).all(), trial  # every hole pixel in one window


# --------------------------------------------------------------------------------------------
# Faults: a bad image, a damaged checkpoint, Ctrl-C, mistakes in the command
# --------------------------------------------------------------------------------------------


def _status(argv: list[str]) -> int:
    """``inpaint.main``'s exit status, whether it returns it or argparse exits with it."""
    try:
        return inpaint.main(argv)
    except SystemExit as e:
        return e.code


def test_bad_images_and_masks_are_one_line_each_and_the_run_goes_on(
    tiny_checkpoint, tmp_path, capsys
):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    pixels = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "good.png")
    raw = (images / "good.png").read_bytes()
    (images / "empty.png").write_bytes(b"")
    (images / "text.png").write_text("not an image")
    (images / "truncated.png").write_bytes(raw[: len(raw) // 2])
    # Whole pixels, but an EXIF block that is not TIFF data: PIL raises SyntaxError, which
    # used to end the run in a traceback.
    for name in ("exif_png.png", "exif_webp.webp"):
        Image.fromarray(pixels).save(images / name, exif=b"Exif\x00\x00NOT A TIFF HEADER")
    mask = tmp_path / "mask.png"
    _save_mask(mask, _box_mask(32, 32))
    common = ["--checkpoint", str(tiny_checkpoint), "--output", str(out), *BATCH]

    assert _status([*common, "--input", str(images), "--mask", str(mask)]) == 1
    captured = capsys.readouterr()
    lines = _lines(captured.err, "error:")
    bad = ["empty.png", "exif_png.png", "exif_webp.webp", "text.png", "truncated.png"]
    assert sorted(line.split(": ")[1].rsplit("/", 1)[1] for line in lines) == bad, lines
    assert all(": cannot read image " in line for line in lines), lines
    assert [p.name for p in out.iterdir()] == ["good.png"]
    assert "done: 1 written" in captured.out

    # A bad mask, and a bad image given alone: one line each as well.
    bad_mask = tmp_path / "bad_mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(bad_mask, exif=b"Exif\x00\x00NO")
    single = images / "exif_webp.webp"
    for given, says in [([str(images / "good.png"), str(bad_mask)], "cannot read mask"),
                        ([str(single), str(mask)], "cannot read image")]:
        assert _status([*common, "--overwrite", "--input", given[0], "--mask", given[1]]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], lines


def test_a_photo_too_large_to_decode_says_how_large_and_the_limit(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    """PIL refuses more than twice ``MAX_IMAGE_PIXELS`` (a decompression bomb) and only warns
    between once and twice: the first is one line with both numbers, the second runs quietly.
    (The limit is lowered here: 1,000 pixels, instead of a 179-megapixel photo.)"""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    common = ["--checkpoint", str(tiny_checkpoint), *BATCH]
    for side, status in ((32, 1), (30, 0)):  # 1,024 pixels: refused; 900: read
        image, mask = tmp_path / f"photo{side}.png", tmp_path / f"mask{side}.png"
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(image)
        _save_mask(mask, _box_mask(side, side))
        with warnings.catch_warnings():  # a warning that escaped would fail the read
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            assert _status([*common, "--input", str(image), "--mask", str(mask),
                            "--output", str(tmp_path / "out")]) == status
        err = capsys.readouterr().err
        if status:
            (line,) = _lines(err, "error:")
            assert line.endswith(
                f"photo32.png: cannot read image {image}: the image is too large to decode "
                "(1,024 pixels): PIL refuses images of more than 1,000 pixels (twice "
                "PIL.Image.MAX_IMAGE_PIXELS) as possible decompression bombs; scale it down "
                "first"), line
        else:
            assert err == "" and (tmp_path / "out" / "photo30.png").exists()


@pytest.mark.slow
def test_a_damaged_newest_step_is_skipped_and_asking_for_it_is_one_line(
    tiny_checkpoint, tmp_path, capsys, caplog
):
    """Step 1 (written by Orbax, as a run's steps are) loses its largest data file: the latest
    falls back to step 0 with a warning naming step 1; ``--step 1`` is one error line that
    names the steps there are."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)  # step 0
    generator, _ = checkpoint.restore_generator(ckpt)
    checkpoint.write_models(ckpt, 1, checkpoint.generator_meta("isnet", 1, "test",
                                                                width=TINY_WIDTH), generator)
    data = sorted((ckpt / "1" / "generator").rglob("d/*"), key=lambda p: p.stat().st_size)
    data[-1].unlink()
    image, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    _save_mask(mask, _box_mask(32, 32))
    common = ["--checkpoint", str(ckpt), "--input", str(image), "--mask", str(mask), *BATCH]

    with caplog.at_level(logging.WARNING):
        assert _status([*common, "--output", str(tmp_path / "latest")]) == 0
    captured = capsys.readouterr()
    warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"the checkpoint of step 1 in {ckpt}")
    assert "step 0) from" in captured.out and (tmp_path / "latest" / "photo.png").exists()

    assert _status([*common, "--step", "1", "--output", str(tmp_path / "one")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: the checkpoint of step 1 in {ckpt} is damaged")
    assert lines[0].endswith("steps [0] are there too")
    assert not (tmp_path / "one").exists()  # a failed start leaves no output folder


@pytest.mark.parametrize("marker", ["ignoring 1 file", "batch 1/"], ids=["loading", "batches"])
def test_ctrl_c_is_one_line_and_status_130_and_the_same_command_finishes(
    tiny_checkpoint, tmp_path, marker, capsys
):
    """SIGINT while the model loads (the "ignoring" line is printed just before) or once the
    first batch is done; then the same command, run again, does the rest."""
    images, out, mask = tmp_path / "images", tmp_path / "out", tmp_path / "mask.png"
    images.mkdir()
    rng = np.random.default_rng(8)
    count = 40  # 20 batches: far more work than the moment the signal takes to arrive
    for i in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i:02d}.png")
    (images / "notes.txt").write_text("not an image")
    _save_mask(mask, _box_mask(32, 32))
    args = ["--checkpoint", str(tiny_checkpoint), "--input", str(images), "--mask", str(mask),
            "--output", str(out), *BATCH]

    proc, log = start_until([sys.executable, "-m", "isnet_jax.inpaint", *args], marker,
                            signal.SIGINT, timeout=300)
    assert proc.returncode == cli.EXIT_INTERRUPTED, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert log.rstrip().splitlines()[-1] == (
        f"interrupted (Ctrl-C); no result in {out} is left half written; the same command "
        "does the rest")
    if marker.startswith("ignoring") and "generator isnet" not in log:
        assert not out.exists()  # the signal landed while the model loaded: nothing written
        return
    # (On a loaded machine this test may read the marker only after the model has loaded: the
    # signal then lands among the batches, and the rest of the test holds as for "batches".)
    done = sorted(out.iterdir()) if out.exists() else []
    assert len(done) < count, log[-3000:]
    if marker == "batch 1/":
        assert done, log[-3000:]
    for path in done:
        assert np.asarray(Image.open(path)).shape == (32, 32, 3)  # whole files only
    assert inpaint.main(args) == 0
    assert f"done: {count - len(done)} written to {out}, {len(done)} already existed" in (
        capsys.readouterr().out)


def test_mistakes_in_the_command_are_one_line_and_status_2(tiny_checkpoint, tmp_path, capsys):
    image, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    _save_mask(mask, _box_mask(32, 32))
    given = {"--checkpoint": str(tiny_checkpoint), "--input": str(image), "--mask": str(mask),
             "--output": str(tmp_path / "out")}
    for change, says in [
        # The old spelling of the polarity (and its old default) is refused, naming the new.
        ({"--mask-polarity": "hole-white"}, "argument --mask-polarity: unknown mask polarity "
         "'hole-white': write hole_white (hole_black (black = hole, white = known) or "
         "hole_white (white = hole)); see python -m isnet_jax.inpaint --help"),
        ({"--input": str(tmp_path / "nope.png")}, f"--input {tmp_path / 'nope.png'} does not "
         "exist; give an image file or a folder of images"),
        ({"--checkpoint": str(tmp_path / "nope")}, f"no Orbax checkpoint found at "
         f"{tmp_path / 'nope'}"),
        ({"--batch-size": "0"}, "--batch-size must be at least 1, got 0"),
    ]:
        argv = [x for k, v in {**given, **change}.items() for x in (k, v)]
        assert _status(argv) == cli.EXIT_USER_ERROR, change
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert not (tmp_path / "out").exists()
