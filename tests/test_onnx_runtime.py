"""``Inpainter``'s runtimes: the release's golden generator, converted, inpaints the same photos
through the command line in onnxruntime as in JAX, in every resize mode; ``auto`` picks
onnxruntime on the CPU; the ONNX file is made once per checkpoint content and cached."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers.paths import REPO
from PIL import Image

from isnet_jax import convert, onnx_runtime


@pytest.fixture(scope="module")
def release(golden_dir, tmp_path_factory):
    """The golden blocks-2 generator as ``convert`` writes it, and two photos with masks:
    64 x 64 (pad mode) and 160 x 96 (crop mode at --size 32 and resize mode)."""
    folder = tmp_path_factory.mktemp("onnx_runtime")
    convert.convert(folder / "converted", generator=golden_dir / "InpaintingModel_gen.pth")
    with np.load(golden_dir / "golden.npz") as z:
        image = np.round(z["images"][0] * 255).astype(np.uint8)
        known = z["masks"][0, ..., 0] > 0.5
    for name, img, k in [("small", image, known),
                         ("wide", np.tile(image, (2, 3, 1))[:96, :160],
                          np.tile(known, (2, 3))[:96, :160])]:
        (folder / "in").mkdir(exist_ok=True)
        (folder / "masks").mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / "in" / f"{name}.png")
        Image.fromarray(np.where(k, 255, 0).astype(np.uint8)).save(folder / "masks" / f"{name}.png")
    return folder


def _inpaint(release, out, *args: str, env=None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "isnet_jax.inpaint", "--checkpoint", str(release / "converted"),
         "--input", str(release / "in"), "--mask", str(release / "masks"),
         "--output", str(out), *args], cwd=REPO, capture_output=True, text=True, timeout=600,
        env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "resize"])
def test_onnxruntime_inpaints_as_jax_through_the_command_line(release, tmp_path, mode):
    """Within one uint8 level (the export's measured float difference is about 4e-7); the
    known pixels byte for byte. auto: pad for the small photo, crop (at 32 px) for the wide."""
    size = ["--size", "32", "--crop-margin", "8", "--crop-above", "64", "--resize-mode", mode]
    env = dict(os.environ, ISNET_JAX_CACHE=str(tmp_path / "cache"))
    ours = _inpaint(release, tmp_path / "onnx", *size, "--runtime", "onnx", env=env)
    assert f"with onnx (onnxruntime, {tmp_path / 'cache' / 'onnx'}" in ours
    _inpaint(release, tmp_path / "jax", *size, "--runtime", "jax", env=env)
    for name in ("small", "wide"):
        a = np.asarray(Image.open(tmp_path / "onnx" / f"{name}.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / "jax" / f"{name}.png")).astype(int)
        known = np.asarray(Image.open(release / "masks" / f"{name}.png")) > 127
        photo = np.asarray(Image.open(release / "in" / f"{name}.png")).astype(int)
        assert np.abs(a - b).max() <= 1, name
        assert np.array_equal(a[known], photo[known]), name
        assert (a[~known] != photo[~known]).any(), name  # the holes were filled


@pytest.mark.slow
def test_auto_runs_onnxruntime_on_the_cpu_and_the_model_is_made_once(release, tmp_path):
    env = dict(os.environ, ISNET_JAX_CACHE=str(tmp_path / "cache"))
    first = _inpaint(release, tmp_path / "first", env=env)
    [model] = (tmp_path / "cache" / "onnx").glob("*.onnx")
    assert f"with onnx (onnxruntime, {model})" in first
    made = model.stat().st_mtime_ns, model.stat().st_ino
    second = _inpaint(release, tmp_path / "second", env=env)
    assert f"with onnx (onnxruntime, {model})" in second
    assert (model.stat().st_mtime_ns >= made[0]) and model.stat().st_ino == made[1]
    assert [p.name for p in (tmp_path / "cache" / "onnx").iterdir()] == [model.name]
    for name in ("small", "wide"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "first" / f"{name}.png")),
                              np.asarray(Image.open(tmp_path / "second" / f"{name}.png")))


def test_the_key_is_the_weights_content(tmp_path):
    from flax import nnx

    from isnet_jax import checkpoint
    from isnet_jax.models import Generator

    generator = Generator(1, rngs=nnx.Rngs(0))
    for name in ("a", "b"):
        checkpoint.write_models(tmp_path / name, 0,
                                checkpoint.generator_meta("isnet", 1, "test"), generator)
    restored = [checkpoint.restore_generator(tmp_path / name)[0] for name in ("a", "b")]
    keys = {onnx_runtime.content_key(g) for g in [generator, *restored]}
    assert len(keys) == 1  # the same weights from two folders
    assert onnx_runtime.content_key(Generator(1, rngs=nnx.Rngs(1))) not in keys


def test_a_missing_onnxruntime_names_the_extra(tiny_checkpoint, tmp_path):
    hide = ("import runpy, sys\n"
            "class Hidden:\n"
            "    def __init__(self, finder): self.finder = finder\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'onnxruntime': return None\n"
            "        return self.finder.find_spec(name, path, target)\n"
            "    def __getattr__(self, attr): return getattr(self.finder, attr)\n"
            "sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]\n"
            "runpy.run_module('isnet_jax.inpaint', run_name='__main__', alter_sys=True)\n")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "p.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "m.png")
    args = ["--checkpoint", str(tiny_checkpoint), "--input", str(tmp_path / "p.png"),
            "--mask", str(tmp_path / "m.png"), "--output", str(tmp_path / "out"),
            "--mask-polarity", "hole_white"]
    out = subprocess.run([sys.executable, "-c", hide, *args, "--runtime", "onnx"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.splitlines() == [
        "error: --runtime onnx needs onnxruntime, which is not installed: "
        "pip install 'isnet-jax[export]'"]
    # auto: JAX, and the line says why.
    out = subprocess.run([sys.executable, "-c", hide, *args], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("with jax (onnxruntime not installed (pip install 'isnet-jax[export]'))"
            in out.stdout)
