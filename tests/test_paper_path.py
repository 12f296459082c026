"""README "The path to the paper's tables": every command, on small generated data.

Places2 is a folder of photo-like JPEGs (and TFDS ``places365_small`` is stood in for by
``isnet_tiny_photos``, a real TFDS dataset of its features and splits prepared as
ArrayRecord), the NVIDIA mask set a folder of black-hole PNGs, the official
weights are the release-format generator of the golden vectors, and the FID / LPIPS files the
random-weight stand-ins of ``fid_lpips_weights``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from helpers.fid_lpips_weights import write_weight_files
from helpers.paths import REPO
from PIL import Image
from skimage import data

SIZE = 64  # the README runs at 256 px; the commands are the same


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
        timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def _places_folder(root: pathlib.Path, n: int = 6) -> pathlib.Path:
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, 100, 2)
        crop = photo[y : y + 200, x : x + 200]
        Image.fromarray(crop).save(root / f"Places365_val_{i:08d}.jpg", quality=90)
    return root


def _nvidia_masks(root: pathlib.Path) -> pathlib.Path:
    """Masks as NVIDIA ships them (PNGs, holes black, irregular), drawn at the eval size."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i, target in enumerate([0.12, 0.16, 0.22, 0.26, 0.32, 0.36, 0.42, 0.46, 0.55, 0.05]):
        hole = np.zeros((SIZE, SIZE), bool)
        while hole.mean() < target:
            cy, cx, r = rng.integers(0, SIZE), rng.integers(0, SIZE), rng.integers(2, 5)
            hole |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        Image.fromarray(np.where(hole, 0, 255).astype(np.uint8)).save(root / f"{i:05d}.png")
    return root


@pytest.mark.slow
def test_readme_path_to_the_papers_tables(tmp_path, golden_dir):
    places = _places_folder(tmp_path / "data" / "places2" / "val")
    raw_masks = _nvidia_masks(tmp_path / "data" / "testing_mask_dataset")
    stand_ins = write_weight_files(tmp_path / "downloads")

    # Sort the masks into hole-ratio bands.
    bands = tmp_path / "data" / "masks_by_band"
    out = _run("isnet_jax.masks", "split", "--masks", str(raw_masks), "--output", str(bands),
               "--size", str(SIZE))
    assert out.returncode == 0, out.stderr[-3000:]
    assert (bands / "10-20").is_dir() and (bands / "40-50").is_dir()

    # Convert the release's generator and pytorch-fid's Inception.
    weights = tmp_path / "weights" / "places2"
    out = _run("isnet_jax.convert", "--generator", str(golden_dir / "InpaintingModel_gen.pth"),
               "--inception", str(stand_ins["inception"]), "--output", str(weights))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "inception (FID)" in out.stdout and (weights / "inception_fid.npz").exists()

    # Tables 3-4 with FID and LPIPS, on the folder of images.
    workdir = tmp_path / "runs" / "places2-eval"
    out = _run(
        "isnet_jax.main", "--config=configs/places2.py", f"--workdir={workdir}", "--mode=eval",
        f"--checkpoint={weights}",
        "--config.data.source=folder", f"--config.data.eval_path={places}",
        f"--config.eval.mask_path={bands}",
        f"--config.eval.fid_weights={weights}",
        f"--config.eval.lpips_backbone_weights={stand_ins['vgg16']}",
        f"--config.eval.lpips_lin_weights={stand_ins['lin_vgg']}",
        # small-data settings (the README's run uses the defaults)
        f"--config.image_size={SIZE}", "--config.eval.batch_size=2",
        "--config.eval.num_images_final=4", "--config.eval.fid_method=eigh",
        "--config.data.num_workers=0", "--config.eval.sheet_images=3",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    step_dir = next((workdir / "eval").glob("step_*"))
    table = (step_dir / "table.md").read_text()
    assert table.startswith("| folder (validation), step ")
    for row in ("| PSNR |", "| SSIM |", "| L1 (%) |", "| FID |", "| LPIPS (vgg) |"):
        assert row in table, row
    results = json.loads((step_dir / "results.json").read_text())
    assert results["meta"]["source"].startswith("official release")
    assert all(b["fid_images"] == 4 and b["lpips"] > 0 for b in results["bands"].values())
    sheet = np.asarray(Image.open(step_dir / "sheet_10-20.png"))
    assert sheet.shape == (3 * SIZE + 2 * 2, 3 * SIZE + 2 * 2, 3)  # 3 images, 2-px gutters


def test_places365_small_is_read_as_the_readme_says(tiny_tfds):
    """The TFDS route of the same section: configs/places2.py reads places365_small's
    validation split through tfds.data_source (here isnet_tiny_photos, prepared by TFDS as
    ArrayRecord with places365_small's image feature and splits)."""
    from helpers import tiny_dataset

    from isnet_jax import input_pipeline
    from isnet_jax.configs import places2

    config = places2.get_config()
    config.image_size = SIZE
    config.eval.batch_size = 2
    config.data.num_workers = 0
    config.data.name, config.data.data_dir = tiny_dataset.NAME, tiny_tfds
    batches = list(input_pipeline.create_eval_dataset(
        config, band=(0.1, 0.2), num_images=3, process_index=0, process_count=1
    ))
    assert [int(b["valid"].sum()) for b in batches] == [2, 1]
    assert batches[0]["image"].shape == (2, SIZE, SIZE, 3)
