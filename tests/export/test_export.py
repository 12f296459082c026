"""Every export format holds the model: the release's golden blocks-2 generator, converted,
exported, reloaded in the format's own runtime (JAX without isnet_jax, TensorFlow, LiteRT,
onnxruntime) and run at two sizes with batch 2, matches ``Inpainter``'s float32 output within
1e-4; known pixels come back byte for byte after the uint8 round trip.

One test per format does its export and all its checks: with pytest-xdist a module fixture
would be built again on the other worker, and an export is the slow part (TensorFlow's import
and the TFLite conversion most of all).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from isnet_jax import checkpoint, convert, export, models
from isnet_jax.export import __main__ as export_cli
from isnet_jax.inpainter import Inpainter, to_uint8

TOL = 1e-4  # the bound; measured 0 (StableHLO: the same XLA) to 4e-7 (the others)
# The golden images (64 x 64) and a 32 x 48 crop of them: two sizes, batch 2, both dynamic.
CROP = (slice(None), slice(8, 40), slice(0, 48))


@pytest.fixture(scope="module")
def release_checkpoint(golden_dir, tmp_path_factory) -> pathlib.Path:
    """The golden generator as ``python -m isnet_jax.convert`` writes it."""
    out = tmp_path_factory.mktemp("release") / "converted"
    convert.convert(out, generator=golden_dir / "InpaintingModel_gen.pth")
    return out


@pytest.fixture(scope="module")
def cases(golden_dir, release_checkpoint) -> list[dict[str, np.ndarray]]:
    """Inputs at two sizes and what ``Inpainter`` makes of them (float32 composite)."""
    with np.load(golden_dir / "golden.npz") as z:
        # What a photo becomes on its way in: uint8 / 255 (the golden images are 8-bit).
        images = to_uint8(z["images"]).astype(np.float32) / 255.0
        masks = z["masks"]
    inpainter = Inpainter.from_checkpoint(release_checkpoint)
    out = []
    for index in (np.s_[:], CROP):
        x, m = np.ascontiguousarray(images[index]), np.ascontiguousarray(masks[index])
        prediction = inpainter.predict(x, m)
        out.append({"image": x, "mask": m, "expected": prediction * (1 - m) + x * m,
                    "inpainter": inpainter, "prediction": prediction})
    return out


def check(case: dict, composite: np.ndarray, label: str) -> float:
    """``composite`` against Inpainter's; known pixels byte-identical as uint8, and the uint8
    result the same as ``Inpainter.finish`` makes of its own prediction (holes within 1)."""
    x, m = case["image"], case["mask"]
    assert composite.shape == x.shape and composite.dtype == np.float32, label
    err = float(np.abs(composite - case["expected"]).max())
    print(f"{label}: max |export - Inpainter| = {err:.2e}")
    assert err < TOL, f"{label}: max |export - Inpainter| = {err:.2e}"
    ours = to_uint8(composite)
    image_u8 = to_uint8(x)
    known = m[..., 0] > 0.5
    assert np.array_equal(ours[known], image_u8[known]), f"{label}: a known pixel changed"
    for b in range(len(x)):
        finished = case["inpainter"].finish(case["prediction"][b], image_u8[b], known[b], "pad")
        assert np.abs(finished.astype(int) - ours[b].astype(int)).max() <= 1, label
    return err


def exported(release_checkpoint, tmp_path, fmt, **shape) -> pathlib.Path:
    folder = export.export_checkpoint(release_checkpoint, fmt, tmp_path / fmt,
                                      shape=export.Shape(**shape) if shape else None)
    meta = export.read_meta(folder)
    assert meta["format"] == fmt and meta["source"]["blocks"] == 2
    assert (folder / meta["model"]).is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    return folder


_STABLEHLO_RUNNER = """
import sys, numpy as np, jax
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
for i, path in enumerate(sys.argv[2:]):
    with np.load(path) as z:
        np.save(path + ".out.npy", np.asarray(exported.call(z["image"], z["mask"])))
assert not [m for m in sys.modules if m.startswith(("isnet_jax", "flax"))], "imported isnet_jax"
print("platforms", exported.platforms)
"""


@pytest.mark.slow
def test_stablehlo_runs_in_jax_without_isnet_jax(release_checkpoint, cases, tmp_path):
    folder = exported(release_checkpoint, tmp_path, "stablehlo")
    inputs = []
    for i, case in enumerate(cases):
        inputs.append(tmp_path / f"case{i}.npz")
        np.savez(inputs[-1], image=case["image"], mask=case["mask"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", _STABLEHLO_RUNNER, str(folder / "inpaint.stablehlo"),
         *map(str, inputs)],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cpu" in proc.stdout and "cuda" in proc.stdout
    for i, case in enumerate(cases):
        check(case, np.load(f"{inputs[i]}.out.npy"), f"stablehlo case {i}")


@pytest.mark.slow
def test_onnx_runs_in_onnxruntime(release_checkpoint, cases, tmp_path):
    import onnxruntime as ort

    folder = exported(release_checkpoint, tmp_path, "onnx")
    session = ort.InferenceSession(str(folder / "inpaint.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "mask"]
    assert session.get_inputs()[0].shape == ["batch", "height", "width", 3]
    for i, case in enumerate(cases):
        (out,) = session.run(["composite"], {"image": case["image"], "mask": case["mask"]})
        check(case, out, f"onnx case {i}")


@pytest.mark.slow
def test_savedmodel_serves_serving_default(release_checkpoint, cases, tmp_path):
    import tensorflow as tf

    folder = exported(release_checkpoint, tmp_path, "savedmodel")
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    assert set(signature.structured_input_signature[1]) == {"image", "mask"}
    assert list(signature.structured_outputs) == ["composite"]
    for i, case in enumerate(cases):
        out = signature(image=tf.constant(case["image"]), mask=tf.constant(case["mask"]))
        check(case, out["composite"].numpy(), f"savedmodel case {i}")


@pytest.mark.slow
def test_tflite_runs_in_litert_at_two_fixed_sizes(release_checkpoint, cases, tmp_path, capsys):
    from ai_edge_litert.interpreter import Interpreter

    # One size through the library, the other through the command line.
    folders = [exported(release_checkpoint, tmp_path, "tflite", batch=2, height=64, width=64)]
    out = tmp_path / "cli"
    assert export_cli.main(["--checkpoint", str(release_checkpoint), "--format", "tflite",
                     "--output", str(out), "--batch-size", "2", "--height", "32",
                     "--width", "48"]) == 0
    assert f"wrote {out / 'inpaint.tflite'}" in capsys.readouterr().out
    folders.append(out)
    for i, (case, folder) in enumerate(zip(cases, folders, strict=True)):
        interpreter = Interpreter(model_path=str(folder / "inpaint.tflite"))
        ops = {op["op_name"] for op in interpreter._get_ops_details()}
        assert "CONV_2D" in ops and not any("FLEX" in op or "CUSTOM" in op for op in ops), ops
        runner = interpreter.get_signature_runner("serving_default")
        check(case, runner(image=case["image"], mask=case["mask"])["composite"],
              f"tflite case {i}")
    assert export.read_meta(out)["inputs"]["image"]["shape"] == [2, 32, 48, 3]


@pytest.mark.slow
def test_exports_from_a_training_workdir(release_checkpoint, cases, tmp_path, capsys):
    """A training run's checkpoint (optimiser states, step and all) exports. The run is a
    fine-tuning run from the release (``config.init_from``), saved at step 0 as training saves
    it: a freshly initialised generator would be no test, as its spectral-norm vectors are
    random directions and sigma a random, often tiny, number, so the network saturates and
    rounding differences between any two runtimes flip pixels from 0 to 1."""
    import onnxruntime as ort
    from helpers.tiny import tiny_config

    from isnet_jax import sharding, train

    config = tiny_config(**{"model.blocks": 2, "model.width": models.WIDTH,
                            "init_from": str(release_checkpoint)})
    trainer = train.Trainer(config, sharding.create_mesh(config.get("mesh")))
    state = {**trainer.init_state(), **trainer.read_weights(config.init_from)}
    workdir = tmp_path / "run"
    with checkpoint.training_manager(workdir, 2) as mngr:
        checkpoint.save_train_state(mngr, state, None, config)
        mngr.wait_until_finished()
    assert (workdir / "checkpoints" / "0" / "g_opt").is_dir()
    out = tmp_path / "onnx"
    assert export_cli.main(["--checkpoint", str(workdir), "--format", "onnx",
                     "--output", str(out)]) == 0
    assert "generator isnet (blocks=2, step 0)" in capsys.readouterr().out
    assert export.read_meta(out)["source"]["checkpoint"] == str(workdir)
    inpainter = Inpainter.from_checkpoint(workdir)
    case = dict(cases[1], inpainter=inpainter,
                prediction=inpainter.predict(cases[1]["image"], cases[1]["mask"]))
    (composite,) = ort.InferenceSession(str(out / "inpaint.onnx")).run(
        None, {"image": case["image"], "mask": case["mask"]})
    check(case, composite, "training workdir, onnx")


@pytest.mark.parametrize("args, says", [
    (["--format", "onnx"], "no Orbax checkpoint found at"),
    (["--format", "pdf"], "invalid choice: 'pdf'"),
    (["--format", "tflite", "--height", "100"], "--height must be a positive multiple of 16"),
    (["--format", "stablehlo", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--format", "stablehlo", "EXISTS"], "exists; pass --overwrite"),
])
def test_mistakes_are_one_line_status_2_and_write_nothing(tiny_checkpoint, tmp_path, capsys,
                                                         args, says):
    out = tmp_path / "out"
    checkpoint_path = tmp_path / "missing" if "onnx" in args else tiny_checkpoint
    if "EXISTS" in args:
        args = args[:-1]
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    code = _status(["--checkpoint", str(checkpoint_path), *args, "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], captured.err
    assert captured.out == ""
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    expected = [pathlib.Path("out"), pathlib.Path("out/keep.txt")] if out.exists() else []
    assert written == expected


def _status(argv: list[str]) -> int:
    """The command line's exit status, whether it returns it or argparse exits with it."""
    try:
        return export_cli.main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.slow
def test_overwrite_replaces_the_folder_only_once_the_new_export_is_complete(tiny_checkpoint,
                                                                            tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    export.export_checkpoint(tiny_checkpoint, "onnx", out, overwrite=True,
                             shape=export.Shape(1, 32, 32))
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "inpaint.onnx"]
    meta = json.loads((out / "export.json").read_text())
    assert meta["inputs"]["mask"]["shape"] == [1, 32, 32, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
