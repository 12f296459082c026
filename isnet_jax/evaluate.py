"""Evaluation: the paper's Tables 3-4 (PSNR / SSIM / L1 % per hole-ratio band) from a checkpoint.

``python -m isnet_jax.main --config=... --workdir=DIR --mode=eval [--checkpoint=DIR_OR_STEP]``
restores the generator alone (no optimiser state), runs the eval split against the
deterministic evaluation masks of each band and writes ``DIR/eval/step_N/{results.json,
table.md}`` and TensorBoard scalars. Metrics are computed on the composite, on the devices,
batched and sharded like training; sums are reduced on the devices so any number of hosts works.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath
from flax import nnx

from isnet_jax import checkpoint, input_pipeline, metrics, sharding

BANDS: tuple[tuple[float, float] | None, ...] = (
    (0.1, 0.2),
    (0.2, 0.3),
    (0.3, 0.4),
    (0.4, 0.5),
    None,
)
PAPER_ROWS = (
    ("PSNR", "psnr", "{:.2f}"),
    ("SSIM", "ssim", "{:.3f}"),
    ("L1 (%)", "l1_percent", "{:.2f}"),
)
BASELINE = "mean_fill/"  # key prefix of the mean-colour fill's metrics
BASELINE_NAME = "mean-colour fill"
OTHER_ROWS = (
    ("SSIM, skimage (cropped borders)", "ssim_skimage", "{:.3f}"),
    ("EdgeConnect-script PSNR (grey)", "ec_psnr", "{:.2f}"),
    ("EdgeConnect-script SSIM (grey, 51-px window)", "ec_ssim", "{:.3f}"),
    ("EdgeConnect-script MAE, sum|a-b|/sum(a+b)", "ec_mae", "{:.4f}"),
)


def band_label(band: tuple[float, float] | None) -> str:
    return "all" if band is None else f"{round(band[0] * 100)}-{round(band[1] * 100)}%"


class MetricSums:
    """A jitted (generator state, batch) -> per-metric sums over the valid images.

    Reduced on the devices to replicated scalars, so every host can read them.
    """

    def __init__(self, g_def: Any, mesh: jax.sharding.Mesh):
        self.g_def = g_def
        self.mesh = mesh
        self.batch_sharding = sharding.batch_sharding(mesh)
        self._fn = jax.jit(self._sums, out_shardings=sharding.replicated(mesh))

    def _sums(self, g_state, image, mask, valid):
        g = nnx.merge(self.g_def, g_state, copy=True)
        pred = g(image * mask, train=False)
        values = metrics.compute_all(metrics.composite(pred, image, mask), image)
        # The trivial baseline on the very same images and masks, so that every report shows
        # at once whether the model has learned more than an average colour.
        fill = metrics.composite(metrics.mean_colour_fill(image, mask), image, mask)
        for k, v in metrics.compute_all(fill, image).items():
            values[BASELINE + k] = v
        weight = valid.astype(jnp.float32)
        sums = {k: jnp.sum(jnp.where(valid, v, 0.0)) for k, v in values.items()}
        sums["count"] = jnp.sum(weight)
        return sums

    def __call__(self, g_state, dataset) -> dict[str, float]:
        """Means of every metric over one pass of ``dataset`` (eval batches with ``valid``)."""
        totals: dict[str, float] = {}
        for batch in dataset:
            arrays = input_pipeline.to_global(
                {k: batch[k] for k in ("image", "mask", "valid")}, self.batch_sharding
            )
            sums = self._fn(g_state, arrays["image"], arrays["mask"], arrays["valid"])
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(np.asarray(v.addressable_data(0)))
        count = totals.pop("count", 0.0)
        if not count:
            raise ValueError("the evaluation set is empty: check config.data and config.eval")
        means = {k: v / count for k, v in totals.items()}
        means["images"] = count
        return means


def evaluate_bands(
    config: ml_collections.ConfigDict, g_def: Any, g_state, mesh, num_images: int, bands=BANDS
) -> dict[str, dict[str, float]]:
    """``{band label: {metric: mean}}`` over the eval split for each hole-ratio band."""
    evaluator = MetricSums(g_def, mesh)
    results = {}
    for band in bands:
        start = time.perf_counter()
        dataset = input_pipeline.create_eval_dataset(
            config,
            band=band,
            num_images=num_images,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        r = results[band_label(band)] = evaluator(g_state, dataset)
        logging.info(
            "eval band %s: %d images, PSNR %.2f, SSIM %.4f, L1 %.2f%% | %s: PSNR %.2f, "
            "SSIM %.4f, L1 %.2f%% (%.1f s)",
            band_label(band), r["images"], r["psnr"], r["ssim"], r["l1_percent"], BASELINE_NAME,
            r[BASELINE + "psnr"], r[BASELINE + "ssim"], r[BASELINE + "l1_percent"],
            time.perf_counter() - start,
        )
    return results


def markdown_table(results: dict[str, dict[str, float]], title: str) -> str:
    """The paper's Tables 3-4 layout (metrics by hole-ratio band), the mean-colour fill baseline
    beside it, then the other metric variants."""
    labels = list(results)
    header = f"| {title} | " + " | ".join(labels) + " |"
    rule = "|---" * (len(labels) + 1) + "|"
    lines = [header, rule]
    baseline_rows = tuple(
        (f"{name}, {BASELINE_NAME}", BASELINE + key, fmt) for name, key, fmt in PAPER_ROWS
    )
    for rows in (PAPER_ROWS, baseline_rows, OTHER_ROWS):
        for name, key, fmt in rows:
            lines.append(
                f"| {name} | " + " | ".join(fmt.format(results[b][key]) for b in labels) + " |"
            )
    lines.append("| images | " + " | ".join(str(int(results[b]["images"])) for b in labels) + " |")
    lines.append("")
    lines.append(
        "PSNR on 0-255 integers, SSIM with an 11-pixel Gaussian window (sigma 1.5) and zero-padded "
        "borders as the release computes it, L1 = 100 * mean|gt - composite|; all on the "
        f"composite. The {BASELINE_NAME} rows paint every hole with the mean colour of its "
        "image's known pixels (same images and masks): the score of a model that has learned "
        "nothing more."
    )
    return "\n".join(lines)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, checkpoint_arg: str | None = None
) -> dict[str, dict[str, float]]:
    """Restores the generator of a checkpoint and writes the per-band table."""
    workdir = epath.Path(workdir)
    if checkpoint_arg and checkpoint_arg.isdigit():
        path, step = workdir, int(checkpoint_arg)
    else:
        path, step = (epath.Path(checkpoint_arg) if checkpoint_arg else workdir), None
    dtype = jnp.dtype(config.compute_dtype)
    generator, meta = checkpoint.restore_generator(path, step, dtype=dtype)
    logging.info(
        "Evaluating %s (blocks=%d) from %s, step %d (%s).",
        meta["generator"],
        meta["blocks"],
        path,
        meta["step"],
        meta.get("source", "?"),
    )
    mesh = sharding.create_mesh(config.get("mesh"))
    g_def, g_state = nnx.split(generator)
    g_state = jax.device_put(g_state, sharding.replicated(mesh))
    results = evaluate_bands(config, g_def, g_state, mesh, config.eval.num_images_final)

    data = config.data.name if config.data.source == "tfds" else config.data.source
    title = f"{data} ({config.data.eval_split}), step {meta['step']}"
    table = markdown_table(results, title)
    print(table, flush=True)
    if jax.process_index() == 0:
        out = workdir / "eval" / f"step_{meta['step']}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(
            json.dumps({"checkpoint": str(path), "meta": meta, "bands": results}, indent=1)
        )
        (out / "table.md").write_text(table + "\n")
        logging.info("Wrote %s and %s.", out / "results.json", out / "table.md")
    writer = metric_writers.create_default_writer(
        workdir / "eval", just_logging=jax.process_index() > 0
    )
    writer.write_scalars(
        meta["step"],
        {f"{band}/{k}": v for band, values in results.items() for k, v in values.items()},
    )
    writer.flush()
    return results


class PeriodicEvaluator:
    """Evaluation on a small fixed subset during training (``config.eval.num_images``)."""

    def __init__(self, config: ml_collections.ConfigDict, mesh, g_def: Any):
        self.config = config
        self.sums = MetricSums(g_def, mesh)

    def __call__(self, g_params, g_spectral) -> dict[str, float]:
        dataset = input_pipeline.create_eval_dataset(
            self.config,
            band=None,
            num_images=self.config.eval.num_images,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        means = self.sums(nnx.merge_state(g_params, g_spectral), dataset)
        return {f"eval/{k}": v for k, v in means.items() if k != "images"}
