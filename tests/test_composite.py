"""One composite: ``masks.composite(image, mask, prediction)``, and every path that makes one
(training's metrics, evaluation, the training sample grid, each export format) gives the
release's own composite of the golden inputs, computed by its PyTorch code (``golden.npz``).

The release's generator is the golden blocks-2 one, converted: a freshly initialised generator
would saturate (random spectral-norm vectors) and make any two runtimes differ by whole pixels.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from helpers.tiny import tiny_config

from isnet_jax import checkpoint, convert, evaluate, export, masks, models, sharding, train
from isnet_jax.evaluators import metrics, sheets
from isnet_jax.inpainter import to_uint8

TOL = 1e-4  # export's bound (test_export); measured about 1e-6 against the release


def test_composite_keeps_known_pixels_and_fills_holes():
    rng = np.random.default_rng(1)
    pred, image = rng.random((2, 1, 8, 8, 3), np.float32)
    mask = (rng.random((1, 8, 8, 1)) > 0.5).astype(np.float32)
    out = np.asarray(masks.composite(image, mask, pred))
    np.testing.assert_array_equal(np.where(mask > 0, out, 0), np.where(mask > 0, image, 0))
    np.testing.assert_array_equal(np.where(mask > 0, 0, out), np.where(mask > 0, 0, pred))


def _run_export(fmt: str, folder, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The composite of an exported model, run in the format's own runtime."""
    if fmt == "stablehlo":
        exported = jax.export.deserialize(bytearray((folder / "inpaint.stablehlo").read_bytes()))
        return np.asarray(exported.call(image, mask))
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(folder / "inpaint.onnx"),
                                       providers=["CPUExecutionProvider"])
        return session.run(["composite"], {"image": image, "mask": mask})[0]
    if fmt == "savedmodel":
        import tensorflow as tf

        signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
        return signature(image=tf.constant(image), mask=tf.constant(mask))["composite"].numpy()
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(folder / "inpaint.tflite")).get_signature_runner(
        "serving_default")
    return runner(image=image, mask=mask)["composite"]


@pytest.mark.slow
def test_every_composite_path_gives_the_releases_composite(golden_dir, tmp_path):
    with np.load(golden_dir / "golden.npz") as z:
        image, mask = z["images"], z["masks"]
        release_eval, train_prediction = z["composite_eval"], z["out_train_first_step"]
    # The release's composite of its first train-mode forward (from the stored u, v), for the
    # training step, whose composite only its metrics show.
    release_train = np.where(mask > 0.5, image, train_prediction)
    converted = tmp_path / "converted"
    convert.convert(converted, generator=golden_dir / "InpaintingModel_gen.pth")
    got: dict[str, np.ndarray] = {}

    # Training: the step's train PSNR and L1 are of its composite.
    config = tiny_config(**{"model.blocks": 2, "model.width": models.WIDTH,
                            "init_from": str(converted), "image_size": image.shape[1],
                            "batch_size": len(image)})
    trainer = train.Trainer(config, sharding.create_mesh(config.get("mesh")))
    state = {**trainer.init_state(), **trainer.read_weights(config.init_from)}
    _, step_metrics, _ = trainer.train_step(state, trainer.vgg_state, image, mask)
    step = step_metrics.compute()
    expected_l1 = float(np.mean(metrics.l1_percent(image, release_train)))
    assert abs(float(step["train_l1_percent"]) - expected_l1) < 100 * TOL, (step, expected_l1)
    mse = np.mean(np.square(release_train - image), axis=(1, 2, 3))
    assert float(step["train_psnr"]) == pytest.approx(
        float(np.mean(10 * np.log10(1 / mse))), abs=1e-3)

    # Evaluation: the composites it scores (and puts on its sheets).
    generator, _ = checkpoint.restore_generator(converted)
    g_def, g_state = nnx.split(generator)
    rows = evaluate.SheetRows(len(image))
    evaluate.MetricSums(g_def, sharding.create_mesh(None))(
        g_state, [{"image": image, "mask": mask, "valid": np.ones(len(image), bool)}],
        sheet=rows)
    got["eval"] = np.stack([composite for _, _, composite in rows.rows])

    # The training sample grid: masked input | prediction | composite | ground truth.
    prediction = np.asarray(generator(image * mask, train=False))
    grid = sheets.sample_grid(image, mask, prediction)
    h, w = image.shape[1:3]
    grid_composite = np.stack([grid[i * h:(i + 1) * h, 2 * w:3 * w] for i in range(len(image))])
    as_uint8 = (np.clip(release_eval, 0, 1) * 255 + 0.5).astype(np.uint8)  # sample_grid's
    assert np.abs(grid_composite.astype(int) - as_uint8.astype(int)).max() <= 1

    # Every export format, run in its own runtime.
    for fmt in export.FORMATS:
        shape = export.Shape(*mask.shape[:3]) if fmt in export.FIXED_SHAPE_FORMATS else None
        folder = export.export(generator, fmt, tmp_path / fmt, shape=shape)
        got[fmt] = _run_export(fmt, folder, image, mask)

    assert set(got) == {"eval", *export.FORMATS}
    for path, composite in got.items():
        err = float(np.abs(composite - release_eval).max())
        print(f"{path}: max |composite - release's| = {err:.1e}")
        assert composite.shape == image.shape and err < TOL, (path, err)
        known = mask[..., 0] > 0.5
        assert np.array_equal(to_uint8(composite)[known], to_uint8(image)[known]), path
