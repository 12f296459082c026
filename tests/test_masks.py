"""Masks: 1 = known, 0 = hole; the procedural generator's bands; external sets; split CLI."""

from __future__ import annotations

import inspect
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from isnet_jax import cli, errors, masks

BANDS = [(0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6)]


def _save(path: pathlib.Path, known: np.ndarray) -> pathlib.Path:
    """Saves a mask the NVIDIA way: holes black, known white."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).save(path)
    return path


def _box_mask(size: int, hole_fraction: float) -> np.ndarray:
    """Known everywhere but the top rows: a hole of exactly ``hole_fraction`` of the rows."""
    known = np.ones((size, size), bool)
    known[: round(size * hole_fraction)] = False
    return known


@pytest.mark.parametrize("band", BANDS, ids=masks.band_name)
def test_irregular_mask_hits_band_and_shows_histogram(band):
    rng = np.random.default_rng(0)
    ratios = np.array([masks.hole_ratio(masks.irregular_mask(rng, 128, band)) for _ in range(200)])
    counts, edges = np.histogram(ratios, bins=12, range=(0.0, 0.6))
    print(f"\nhole ratio histogram for band {masks.band_name(band)} % (200 masks, 128 px):")
    for n, lo in zip(counts, edges, strict=False):
        print(f"  {lo * 100:4.0f}-{(lo + 0.05) * 100:2.0f} % {'#' * (n // 4)} {n}")
    hit = np.mean([masks.in_band(r, band) for r in ratios])
    assert hit >= 0.95, f"only {hit:.0%} of the masks in {band}"


def test_irregular_mask_format_and_determinism():
    m = masks.irregular_mask(np.random.default_rng(7), 64, (0.2, 0.3))
    assert m.shape == (64, 64) and m.dtype == np.float32
    assert set(np.unique(m)) <= {0.0, 1.0}
    again = masks.irregular_mask(np.random.default_rng(7), 64, (0.2, 0.3))
    np.testing.assert_array_equal(m, again)
    other = masks.irregular_mask(np.random.default_rng(8), 64, (0.2, 0.3))
    assert not np.array_equal(m, other)
    with pytest.raises(ValueError, match="hole_range"):
        masks.irregular_mask(np.random.default_rng(0), 64, (0.5, 0.2))


def test_block_and_half_masks_make_the_block_the_hole():
    rng = np.random.default_rng(0)
    for _ in range(20):
        block = masks.block_mask(rng, 64)
        assert masks.hole_ratio(block) == 0.25  # the release's half-width, half-height block
        rows, cols = np.nonzero(block == 0)
        assert rows.max() - rows.min() == 31 and cols.max() - cols.min() == 31
        half = masks.half_mask(rng, 64)
        assert masks.hole_ratio(half) == 0.5
        assert half[:, :32].max() == 0 or half[:, 32:].max() == 0
    sides = {masks.half_mask(rng, 8)[0, 0] for _ in range(40)}
    assert sides == {0.0, 1.0}  # both the left and the right half occur


def test_load_mask_polarity_binarisation_and_resize(tmp_path):
    known = _box_mask(64, 0.25)
    path = _save(tmp_path / "m.png", known)
    m = masks.load_mask(path, 32, "hole_black")
    assert m.shape == (32, 32) and m.dtype == np.float32
    assert set(np.unique(m)) == {0.0, 1.0}
    assert m[0].max() == 0 and m[-1].min() == 1  # black rows at the top are the hole
    inverted = masks.load_mask(path, 32, "hole_white")
    np.testing.assert_array_equal(inverted, 1 - m)
    # The release binarises with > 0 after the bilinear resize: a grey pixel counts as white.
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((8, 8), 3, np.uint8)).save(grey)
    assert masks.load_mask(grey, 8).min() == 1
    assert masks.load_mask(grey, 8, threshold=127).max() == 0
    # 16-bit and RGB mask files read the same as 8-bit ones.
    Image.fromarray(np.where(known, 65535, 0).astype(np.uint16)).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(masks.load_mask(tmp_path / "m16.png", 32), m)
    Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).convert("RGB").save(
        tmp_path / "rgb.png"
    )
    np.testing.assert_array_equal(masks.load_mask(tmp_path / "rgb.png", 32), m)
    with pytest.raises(ValueError, match="polarity"):
        masks.load_mask(path, 32, "black")


def test_mask_set_cache_matches_disk(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        _save(tmp_path / f"{i}.png", masks.irregular_mask(rng, 64, (0.2, 0.4)) > 0)
    mask_set = masks.MaskSet(tmp_path)
    first = [mask_set.load(i, 32) for i in range(3)]
    for i in range(3):  # now from the cache
        np.testing.assert_array_equal(mask_set.load(i, 32), first[i])
        np.testing.assert_array_equal(first[i], masks.load_mask(mask_set.files[i], 32))
    uncached = masks.MaskSet(tmp_path, cache_mb=0)
    uncached.load(0, 32)
    assert not uncached._cache


def test_mixing_modes(tmp_path):
    path = _save(tmp_path / "m" / "ext.png", _box_mask(32, 0.125))
    mask_set = masks.MaskSet(path.parent)
    external = masks.load_mask(path, 32)
    rng = np.random.default_rng(0)

    def kinds(mode):
        found = set()
        for _ in range(60):
            m = masks.sample_mask(rng, 32, mode, mask_set)
            ratio = masks.hole_ratio(m)
            if np.array_equal(m, external):
                found.add("external")
            elif ratio == 0.25:
                found.add("block")
            elif ratio == 0.5:
                found.add("half")
        return found

    assert kinds("external") == {"external"}
    assert kinds("external_or_block") == {"external", "block"}
    assert kinds("external_block_half") == {"external", "block", "half"}
    assert kinds("block") == {"block"} and kinds("half") == {"half"}
    m = masks.sample_mask(rng, 32, "procedural", hole_range=(0.3, 0.4))
    assert 0.3 <= masks.hole_ratio(m) < 0.4
    with pytest.raises(ValueError, match="masks.path"):
        masks.sample_mask(rng, 32, "external", None)
    with pytest.raises(ValueError, match="unknown"):
        masks.sample_mask(rng, 32, "nvidia", mask_set)


def test_missing_and_empty_mask_sources_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        masks.MaskSet(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no masks here")
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'}.*no image"):
        masks.MaskSet(tmp_path / "empty")
    (tmp_path / "empty.flist").write_text("\n")
    with pytest.raises(ValueError, match="empty.flist is empty"):
        masks.MaskSet(tmp_path / "empty.flist")


def test_flist_paths_resolve_against_the_list(tmp_path):
    _save(tmp_path / "sub" / "a.png", _box_mask(16, 0.5))
    _save(tmp_path / "b.png", _box_mask(16, 0.25))
    flist = tmp_path / "masks.flist"
    flist.write_text(f"sub/a.png\n{tmp_path / 'b.png'}\n\n")
    mask_set = masks.MaskSet(flist)
    assert [pathlib.Path(f).name for f in mask_set.files] == ["a.png", "b.png"]
    assert masks.hole_ratio(mask_set.load(0, 16)) == 0.5


def test_eval_masks_are_deterministic_and_in_band():
    a = masks.eval_masks(None, (0.2, 0.3), 6, seed=3, size=64)
    b = masks.eval_masks(None, (0.2, 0.3), 6, seed=3, size=64)
    assert len(a) == 6
    # Same masks whatever the order of access (each process reads its own slice).
    for i in reversed(range(6)):
        np.testing.assert_array_equal(a[i], b[i])
        assert 0.2 <= masks.hole_ratio(a[i]) < 0.3
    c = masks.eval_masks(None, (0.2, 0.3), 6, seed=4, size=64)
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(IndexError):
        a[6]


def test_eval_masks_from_a_mask_set_measure_each_mask(tmp_path):
    # File names lie about the bands: eval_masks must measure.
    for i, fraction in enumerate([0.05, 0.15, 0.25, 0.25, 0.25, 0.45]):
        _save(tmp_path / "set" / f"band_{i}.png", _box_mask(40, fraction))
    chosen = masks.eval_masks(tmp_path / "set", (0.2, 0.3), 7, seed=0, size=40)
    assert len(chosen) == 7
    assert all(masks.hole_ratio(m) == pytest.approx(0.25) for m in chosen)
    again = masks.eval_masks(tmp_path / "set", (0.2, 0.3), 7, seed=0, size=40)
    assert all(np.array_equal(x, y) for x, y in zip(chosen, again, strict=True))
    everything = masks.eval_masks(tmp_path / "set", None, 6, seed=0, size=40)
    assert sorted(round(masks.hole_ratio(m), 2) for m in everything) == [
        0.05,
        0.15,
        0.25,
        0.25,
        0.25,
        0.45,
    ]
    with pytest.raises(ValueError, match="no mask of .* 50-60"):
        masks.eval_masks(tmp_path / "set", (0.5, 0.6), 3, seed=0, size=40)


def test_split_sorts_into_bands(tmp_path):
    fractions = {"a": 0.05, "b": 0.15, "c": 0.35, "d": 0.55, "e": 0.75}
    for name, fraction in fractions.items():
        _save(tmp_path / "in" / "sub" / f"{name}.png", _box_mask(40, fraction))
    counts = masks.split(tmp_path / "in", tmp_path / "out", size=40)
    assert counts == {"00-10": 1, "10-20": 1, "30-40": 1, "50-60": 1, "60-100": 1}
    assert (tmp_path / "out" / "30-40" / "sub_c.png").exists()
    rows = (tmp_path / "out" / "bands.tsv").read_text().splitlines()
    assert rows[0] == "file\thole_ratio\tband" and len(rows) == 6
    # The evaluation reads a split folder through the band's subfolder.
    chosen = masks.eval_masks(tmp_path / "out", (0.1, 0.2), 2, seed=0, size=40)
    assert all(masks.hole_ratio(m) == pytest.approx(0.15) for m in chosen)


def test_split_cli(tmp_path):
    for i, fraction in enumerate([0.12, 0.22]):
        _save(tmp_path / "in" / f"{i}.png", _box_mask(20, fraction))
    args = ["split", "--masks", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "isnet_jax.masks", *args, "--size", "0", "--workers", "1"],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert "10-20 %: 1" in done.stdout and "20-30 %: 1" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "isnet_jax.masks", "split", "--masks", str(tmp_path / "x")]
        + ["--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    assert missing.returncode == cli.EXIT_USER_ERROR
    assert missing.stderr.strip().splitlines() == [
        f"error: mask path {tmp_path / 'x'} does not exist: check the path in the config"]


def test_split_cli_names_an_unreadable_mask_and_a_bad_polarity(tmp_path, capsys):
    _save(tmp_path / "in" / "good.png", _box_mask(20, 0.15))
    broken = tmp_path / "in" / "broken.png"
    raw = (tmp_path / "in" / "good.png").read_bytes()
    broken.write_bytes(raw[: len(raw) // 2])
    args = ["split", "--masks", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            "--workers", "1"]
    assert masks.main(args) == cli.EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read mask {broken}: "), lines
    assert lines[0].endswith("; replace the file, or open and save it again in an image editor")
    with pytest.raises(SystemExit) as caught:
        masks.main([*args, "--mask-polarity", "hole-white"])
    assert caught.value.code == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: argument --mask-polarity: unknown mask polarity 'hole-white': write hole_white "
        "(hole_black (black = hole, white = known) or hole_white (white = hole)); see "
        "python -m isnet_jax.masks split --help"]


def test_one_polarity_vocabulary_and_default_for_training_inference_and_the_page(tmp_path):
    """A mask file means the same in training, evaluation, inpainting and the page: one
    spelling, one default (hole_black), and the old spelling is refused naming the new one."""
    from isnet_jax import app, inpaint
    from isnet_jax.configs import default

    assert masks.POLARITIES == ("hole_black", "hole_white")
    assert masks.DEFAULT_POLARITY == "hole_black" == default.get_config().masks.polarity
    assert inpaint.parse_args(["--checkpoint", "C", "--input", "I", "--mask", "M",
                               "--output", "O"]).mask_polarity == masks.DEFAULT_POLARITY
    page = inspect.signature(app.App.inpaint).parameters["polarity"].default
    assert page == masks.DEFAULT_POLARITY
    known = _box_mask(32, 0.25)
    path = _save(tmp_path / "m.png", known)  # black = hole
    # Read at its own size with the same > 127 cut, training's reader and inpainting's agree.
    for polarity in (None, *masks.POLARITIES):
        given = () if polarity is None else (polarity,)
        training = masks.load_mask(path, 32, *given, threshold=127).astype(bool)
        inference = masks.load_known_mask(path, *given)
        np.testing.assert_array_equal(training, inference)
        np.testing.assert_array_equal(training, known if polarity != "hole_white" else ~known)
    for call in (lambda p: masks.MaskSet(tmp_path, p), lambda p: masks.load_mask(path, 32, p),
                 lambda p: masks.load_known_mask(path, p), lambda p: masks.other_polarity(p)):
        with pytest.raises(errors.ConfigError, match="'hole-white': write hole_white"):
            call("hole-white")
    with pytest.raises(errors.ConfigError, match="^unknown config.masks.polarity 'black': "
                       "choose hole_black"):
        masks.MaskSet(tmp_path, "black")
