"""The OpenCV baselines of every evaluation table against cv2.inpaint called directly."""

import cv2
import numpy as np
import pytest
from flax import nnx
from helpers.tiny import tiny_config
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from isnet_jax import checkpoint, evaluate, input_pipeline, masks, sharding
from isnet_jax.evaluators import classical

BAND = (0.3, 0.4)


@pytest.mark.slow
def test_opencv_rows_are_cv2_inpaint_on_the_same_images_and_masks(tiny_checkpoint):
    config = tiny_config(**{"eval.batch_size": 4})
    g_def, g_state = nnx.split(checkpoint.restore_generator(tiny_checkpoint)[0])
    mesh = sharding.create_mesh(config.get("mesh"))
    results = evaluate.evaluate_bands(config, g_def, g_state, mesh, 6, bands=(BAND,))
    row = results[masks.band_name(BAND)]

    # The same eval images and masks, filled by OpenCV here, scored by scikit-image.
    expected = {"telea": [], "navier_stokes": []}
    for batch in input_pipeline.create_eval_dataset(config, band=BAND, num_images=6):
        for image, mask in zip(batch["image"][batch["valid"]], batch["mask"][batch["valid"]],
                               strict=True):
            truth = np.rint(image * 255).astype(np.uint8)
            holes = np.where(mask[..., 0] == 0, 255, 0).astype(np.uint8)  # OpenCV: hole != 0
            for name, flag in (("telea", cv2.INPAINT_TELEA), ("navier_stokes", cv2.INPAINT_NS)):
                filled = cv2.inpaint(truth, holes, 3, flag)
                expected[name].append((
                    peak_signal_noise_ratio(truth, filled, data_range=255),
                    structural_similarity(truth, filled, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=255,
                                          channel_axis=-1),
                    100 * np.mean(np.abs(truth / 255 - filled / 255)),
                ))
    assert row["images"] == 6
    for name, values in expected.items():
        psnr, ssim, l1 = np.mean(values, axis=0)
        assert row[f"{name}/psnr"] == pytest.approx(psnr, abs=0.02), name
        assert row[f"{name}/ssim_skimage"] == pytest.approx(ssim, abs=1e-4), name
        assert row[f"{name}/l1_percent"] == pytest.approx(l1, abs=1e-4), name
    assert row["telea/psnr"] != pytest.approx(row["navier_stokes/psnr"], abs=1e-3)

    table = evaluate.markdown_table(results, "test")
    for name in ("OpenCV Telea", "OpenCV Navier-Stokes"):
        prefix = "telea/" if "Telea" in name else "navier_stokes/"
        assert f"| PSNR, {name} | {row[prefix + 'psnr']:.2f} |" in table
        assert f"| EdgeConnect-script PSNR (grey), {name} |" in table

    # Switched off: no OpenCV rows (what the table then says is in test_main's run).
    assert classical.parse("") == ()
    without = {b: {k: v for k, v in r.items() if not k.startswith(("telea/", "navier_stokes/"))}
               for b, r in results.items()}
    assert "OpenCV" not in evaluate.markdown_table(without, "test")
    with pytest.raises(ValueError, match="classical_baselines"):
        classical.parse("telea,inpaint_ns")
