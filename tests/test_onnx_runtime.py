"""``Inpainter``'s runtimes: the release's golden generator, converted, inpaints the same photos
through the command line in onnxruntime as in JAX, in every resize mode; ``auto`` picks
onnxruntime on the CPU; the ONNX file is made once per checkpoint content and cached, and a run
that finds it compiles nothing, reads no Orbax checkpoint and imports no JAX."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers.paths import REPO
from helpers.tiny import TINY_WIDTH
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


# The command line, then the heavy packages it imported, as the last line of stderr.
_REPORT_IMPORTS = (
    "import runpy, sys\n"
    "try:\n"
    "    runpy.run_module('isnet_jax.inpaint', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    heavy = {'jax', 'jaxlib', 'flax', 'orbax', 'tensorstore', 'onnx'}\n"
    "    print('imported:', *sorted({m.split('.')[0] for m in sys.modules} & heavy),\n"
    "          file=sys.stderr)\n")


def _inpaint(release, out, *args: str, env=None, imports: list | None = None) -> str:
    """The command's stdout; ``imports`` (a list) gets the heavy packages it imported."""
    done = subprocess.run(
        [sys.executable, "-c", _REPORT_IMPORTS, "--checkpoint", str(release / "converted"),
         "--input", str(release / "in"), "--mask", str(release / "masks"),
         "--output", str(out), *args], cwd=REPO, capture_output=True, text=True, timeout=600,
        env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    if imports is not None:
        imports += done.stderr.splitlines()[-1].split()[1:]
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
    """The second run finds the export: it compiles nothing and says so, and imports neither
    JAX nor flax nor orbax (nor onnx: onnxruntime alone runs the file)."""
    env = dict(os.environ, ISNET_JAX_CACHE=str(tmp_path / "cache"))
    env.pop("JAX_PLATFORMS", None)  # auto decides as on a user's machine
    first_imports, second_imports = [], []
    first = _inpaint(release, tmp_path / "first", env=env, imports=first_imports)
    [model] = (tmp_path / "cache" / "onnx").glob("*.onnx")
    assert f"running on cpu with onnx (onnxruntime, {model})" in first
    assert {"jax", "orbax", "onnx"} <= set(first_imports)  # restored and exported
    made = model.stat().st_mtime_ns, model.stat().st_ino
    second = _inpaint(release, tmp_path / "second", env=env, imports=second_imports)
    assert f"running on cpu with onnx (onnxruntime, {model})" in second
    assert second.splitlines()[-1] == (
        f"compilation: nothing compiled (onnxruntime, cached export {model})")
    assert second_imports == []
    assert (model.stat().st_mtime_ns >= made[0]) and model.stat().st_ino == made[1]
    assert [p.name for p in (tmp_path / "cache" / "onnx").iterdir()] == [model.name]
    for name in ("small", "wide"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "first" / f"{name}.png")),
                              np.asarray(Image.open(tmp_path / "second" / f"{name}.png")))


def test_the_key_is_the_weights_content(tiny_checkpoint, tmp_path):
    from flax import nnx

    from isnet_jax import checkpoint
    from isnet_jax.models import Generator

    # tiny_checkpoint's generator (its width and seed), and the same weights in a second folder.
    generator = Generator(1, width=TINY_WIDTH, rngs=nnx.Rngs(0))
    checkpoint.write_models(tmp_path / "b", 0,
                            checkpoint.generator_meta("isnet", 1, "test", width=TINY_WIDTH),
                            generator)
    restored = [checkpoint.restore_generator(path)[0] for path in (tiny_checkpoint, tmp_path / "b")]
    keys = {onnx_runtime.content_key(g) for g in [generator, *restored]}
    assert len(keys) == 1  # the same weights from two folders
    assert onnx_runtime.content_key(Generator(1, width=TINY_WIDTH, rngs=nnx.Rngs(1))) not in keys


def _write(folder: pathlib.Path, seed: int, step: int = 0) -> pathlib.Path:
    from flax import nnx

    from isnet_jax import checkpoint
    from isnet_jax.models import Generator

    return pathlib.Path(checkpoint.write_models(
        folder, step, checkpoint.generator_meta("isnet", 1, "test"),
        Generator(1, rngs=nnx.Rngs(seed))))


def test_the_step_folder_is_the_one_orbax_restores(tiny_checkpoint, tmp_path):
    """``step_folder`` (no Orbax) finds what ``checkpoint.resolve`` does: from a workdir, its
    checkpoints/ folder or a step folder; the newest step or the one asked for."""
    from isnet_jax import checkpoint

    workdir = tmp_path / "workdir"
    shutil.copytree(tiny_checkpoint, workdir / "checkpoints")
    (workdir / "checkpoints" / "0").rename(workdir / "checkpoints" / "7")
    shutil.copytree(workdir / "checkpoints" / "7", workdir / "checkpoints" / "12")
    for path, step in [(workdir, None), (workdir / "checkpoints", None), (workdir, 7),
                       (workdir / "checkpoints" / "7", None), (tiny_checkpoint, None)]:
        directory, chosen = checkpoint.resolve(path, step)
        assert onnx_runtime.step_folder(path, step) == pathlib.Path(directory) / str(chosen)
    assert onnx_runtime.step_folder(workdir, 8) is None  # resolve: one error line
    assert onnx_runtime.step_folder(tmp_path / "nothing") is None
    assert onnx_runtime.step_folder("gs://bucket/run") is None  # Orbax's to read


def test_the_checkpoint_key_is_its_files(tiny_checkpoint, tmp_path):
    """A copy of a checkpoint keeps its key; a changed byte, a file more or less in its
    generator or meta each give another key (a new export, never a stale one); files beside
    those items do not count."""
    key = onnx_runtime.checkpoint_key(tiny_checkpoint / "0")
    shutil.copytree(tiny_checkpoint, tmp_path / "copy")
    step = tmp_path / "copy" / "0"
    assert onnx_runtime.checkpoint_key(step) == key

    (step / "notes.txt").write_text("not an item")
    assert onnx_runtime.checkpoint_key(step) == key
    data = max((step / "generator").rglob("d/*"), key=lambda p: p.stat().st_size)
    original = data.read_bytes()
    data.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    assert onnx_runtime.checkpoint_key(step) != key
    data.write_bytes(original)
    assert onnx_runtime.checkpoint_key(step) == key
    (step / "generator" / "extra").write_bytes(b"")
    assert onnx_runtime.checkpoint_key(step) != key
    (step / "generator" / "extra").unlink()
    meta = step / "meta" / "metadata"
    meta.write_text(meta.read_text().replace('"test"', '"tests"'))
    assert onnx_runtime.checkpoint_key(step) != key
    shutil.rmtree(step / "generator")
    assert onnx_runtime.checkpoint_key(step) is None


def test_the_opset_in_the_key_is_the_exporters():
    from isnet_jax.export import onnx_graph

    assert onnx_runtime.OPSET == onnx_graph.OPSET


@pytest.mark.slow
def test_a_cached_export_is_found_without_orbax_and_a_changed_checkpoint_is_exported_again(
        tmp_path, monkeypatch):
    """``from_checkpoint`` in onnxruntime exports once, then ``from_cached_export`` finds that
    file with the checkpoint's meta and predicts the same; new weights in the same folder get
    a file of their own whose predictions follow the new weights."""
    from isnet_jax import checkpoint
    from isnet_jax.inpainter import Inpainter

    monkeypatch.setenv("ISNET_JAX_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "ckpt"
    _write(folder, seed=0, step=3)
    options = dict(runtime="onnx", size=32)
    assert Inpainter.from_cached_export(folder, **options) is None
    made = Inpainter.from_checkpoint(folder, **options)
    found = Inpainter.from_cached_export(folder, **options)
    assert found is not None and found.onnx_path == made.onnx_path
    assert found.meta == made.meta == {"format": 2, "generator": "isnet", "blocks": 1,
                                       "width": 32, "source": "test", "step": 3}
    assert Inpainter.from_cached_export(folder, runtime="jax") is None
    rng = np.random.default_rng(0)
    images = rng.random((1, 32, 32, 3), np.float32)
    known = (rng.random((1, 32, 32, 1)) > 0.3).astype(np.float32)
    np.testing.assert_array_equal(found.predict(images, known), made.predict(images, known))

    shutil.rmtree(folder / "3")
    _write(folder, seed=1, step=3)  # retrained: the same folder and step, other weights
    assert Inpainter.from_cached_export(folder, **options) is None
    remade = Inpainter.from_checkpoint(folder, **options)
    assert remade.onnx_path != made.onnx_path
    # Random weights saturate the output (0 or 1 by float noise): JAX is no yardstick here
    # (the parity tests above use trained weights). The new weights' own export is.
    generator, _ = checkpoint.restore_generator(folder)
    fresh = Inpainter(generator, **options)
    assert fresh.onnx_path not in (made.onnx_path, remade.onnx_path)  # keyed by the weights
    np.testing.assert_array_equal(remade.predict(images, known), fresh.predict(images, known))
    assert not np.array_equal(remade.predict(images, known), made.predict(images, known))


@pytest.mark.slow
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
