"""Evaluation: the paper's Tables 3-4 (PSNR / SSIM / L1 % per hole-ratio band) from a checkpoint.

``python -m isnet_jax.main --config=... --workdir=DIR --mode=eval [--checkpoint=DIR_OR_STEP]``
restores the generator alone (no optimiser state), runs the eval split against the
deterministic evaluation masks of each band and writes ``DIR/eval/step_N/{results.json,
table.md}`` and TensorBoard scalars. Metrics are computed on the composite, on the devices,
batched and sharded like training; sums are reduced on the devices so any number of hosts works.
With weight files in ``config.eval`` it adds FID and LPIPS per band
(``isnet_jax.evaluators.fid_lpips``), and it writes an image sheet per band (``sheet_BAND.png``,
and to TensorBoard).
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
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from isnet_jax import checkpoint, errors, input_pipeline, masks, models, sharding, summaries
from isnet_jax.evaluators import classical, fid_lpips, metrics, sheets

PAPER_ROWS = (
    ("PSNR", "psnr", "{:.2f}"),
    ("SSIM", "ssim", "{:.3f}"),
    ("L1 (%)", "l1_percent", "{:.2f}"),
)
BASELINE = fid_lpips.BASELINE  # key prefix of the mean-colour fill's metrics
BASELINE_NAME = "mean-colour fill"
# Every baseline a table can show: (key prefix in the results, name in the table).
BASELINES = ((BASELINE, BASELINE_NAME),) + tuple(
    (f"{key}/", name) for key, (name, _) in classical.METHODS.items())
ENABLE_CLASSICAL = (
    "set config.eval.classical_baselines (e.g. to telea,navier_stokes) for OpenCV's rows"
)
OTHER_ROWS = (
    ("SSIM, skimage (cropped borders)", "ssim_skimage", "{:.3f}"),
    ("EdgeConnect-script PSNR (grey)", "ec_psnr", "{:.2f}"),
    ("EdgeConnect-script SSIM (grey, 51-px window)", "ec_ssim", "{:.3f}"),
    ("EdgeConnect-script MAE, sum|a-b|/sum(a+b)", "ec_mae", "{:.4f}"),
)


def eval_set_name(config: ml_collections.ConfigDict) -> str:
    """What the table evaluates, for its title: the split, or the held-out skimage photos."""
    data = config.data
    if data.source == "skimage":
        _, photos = input_pipeline.skimage_split(data.skimage_eval_photos)
        return f"skimage, held-out photos {', '.join(photos)}"
    return f"{data.name if data.source == 'tfds' else data.source} ({data.eval_split})"


class MetricSums:
    """A jitted (generator state, batch) -> per-metric sums over the valid images, for the model
    and for every baseline on the same images and masks.

    Reduced on the devices to replicated scalars, so every host can read them. The classical
    baselines (``classical``: names of ``classical.METHODS``) run on each host's images.
    """

    def __init__(self, g_def: Any, mesh: jax.sharding.Mesh, classical: tuple[str, ...] = ()):
        self.g_def = g_def
        self.mesh = mesh
        self.classical = tuple(classical)
        self.batch_sharding = sharding.batch_sharding(mesh)
        # The composites stay on the devices, sharded, for FID / LPIPS and the image sheets.
        self._fn = jax.jit(
            self._sums,
            out_shardings=(sharding.replicated(mesh), self.batch_sharding, self.batch_sharding),
        )

    def _sums(self, g_state, image, mask, valid, classical):
        g = nnx.merge(self.g_def, g_state, copy=True)
        pred = g(image * mask, train=False)
        result = masks.composite(image, mask, pred)
        # The baselines on the very same images and masks, so that every report shows at once
        # whether the model has learned more than an average colour, and more than a method
        # that needs no training.
        candidates = {"": result, BASELINE: metrics.mean_colour_fill(image, mask)}
        candidates |= {f"{name}/": filled for name, filled in classical.items()}
        candidates = {k: masks.composite(image, mask, v) for k, v in candidates.items()}
        # One compute_all over all candidates, (B, K, ...) flattened batch-major so that each
        # device keeps its own images: K copies of the metrics would compile K times over.
        k = len(candidates)
        stacked = jnp.stack(list(candidates.values()), axis=1).reshape(-1, *image.shape[1:])
        tiled = jnp.repeat(image, k, axis=0)
        values = {}
        for name, v in metrics.compute_all(stacked, tiled).items():
            v = v.reshape(-1, k)
            values |= {prefix + name: v[:, i] for i, prefix in enumerate(candidates)}
        weight = valid.astype(jnp.float32)
        sums = {k: jnp.sum(jnp.where(valid, v, 0.0)) for k, v in values.items()}
        sums["count"] = jnp.sum(weight)
        del candidates[""]
        return sums, result, candidates

    def __call__(
        self,
        g_state,
        dataset,
        band: fid_lpips.BandAccumulator | None = None,
        sheet: SheetRows | None = None,
    ) -> dict[str, float]:
        """Means of every metric over one pass of ``dataset`` (eval batches with ``valid``);
        with ``band`` also its FID / LPIPS, with ``sheet`` its first images collected."""
        totals: dict[str, float] = {}
        last_report = time.perf_counter()
        for batch in dataset:
            filled = {name: classical.inpaint(batch["image"], batch["mask"], name)
                      for name in self.classical}
            arrays = input_pipeline.to_global(
                {k: batch[k] for k in ("image", "mask", "valid")}
                | {f"classical/{k}": v for k, v in filled.items()},
                self.batch_sharding,
            )
            sums, composite, baselines = self._fn(
                g_state, arrays["image"], arrays["mask"], arrays["valid"],
                {name: arrays[f"classical/{name}"] for name in self.classical},
            )
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(np.asarray(v.addressable_data(0)))
            if band is not None:
                band.update(batch["index"][batch["valid"]], arrays["image"],
                            {"": composite} | baselines, arrays["valid"])
            if sheet is not None:
                sheet.add(arrays["image"], arrays["mask"], composite, arrays["valid"])
            if time.perf_counter() - last_report > 30:
                logging.info("eval: %d images done", totals.get("count", 0))
                last_report = time.perf_counter()
        count = totals.pop("count", 0.0)
        if not count:
            raise errors.ConfigError(
                "the evaluation set is empty: check config.data and config.eval")
        means = {k: v / count for k, v in totals.items()}
        means["images"] = count
        if band is not None:
            means.update(band.result(count))
        return means


class SheetRows:
    """The first ``n`` valid images of a pass (gathered from every host), for an image sheet."""

    def __init__(self, n: int):
        self.n = n
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, image, mask, composite, valid) -> None:
        if len(self.rows) >= self.n:  # every host sees the same count: no host gathers alone
            return
        image, mask, composite, valid = (
            np.asarray(multihost_utils.process_allgather(a, tiled=True))
            for a in (image, mask, composite, valid)
        )
        for i in np.flatnonzero(valid)[: self.n - len(self.rows)]:
            self.rows.append((image[i], mask[i], composite[i]))

    def sheet(self) -> np.ndarray | None:
        if not self.rows:
            return None
        image, mask, composite = (np.stack(x) for x in zip(*self.rows, strict=True))
        return sheets.image_sheet(image, mask, composite)


def evaluate_bands(
    config: ml_collections.ConfigDict,
    g_def: Any,
    g_state,
    mesh,
    num_images: int,
    bands=masks.EVAL_BANDS,
    perceptual_metrics: fid_lpips.PerceptualMetrics | None = None,
    sheet_images: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """``{band label: {metric: mean}}`` over the eval split for each hole-ratio band.

    With ``perceptual_metrics``, FID / LPIPS too; a ``sheet_images`` dict receives each band's
    image sheet of the first ``config.eval.sheet_images`` images.
    """
    evaluator = MetricSums(g_def, mesh, classical_baselines(config))
    results = {}
    num_sheet = config.eval.get("sheet_images", 0) if sheet_images is not None else 0
    for band in bands:
        start = time.perf_counter()
        dataset = input_pipeline.create_eval_dataset(
            config,
            band=band,
            num_images=num_images,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        name = masks.band_name(band)
        accumulator = (perceptual_metrics.band(f"band {name}")
                       if perceptual_metrics is not None else None)
        rows = SheetRows(num_sheet) if num_sheet > 0 else None
        r = results[name] = evaluator(g_state, dataset, accumulator, rows)
        if rows is not None and (sheet := rows.sheet()) is not None:
            sheet_images[name] = sheet
        shown = [(p, n) for p, n in BASELINES if p + "psnr" in r]
        if "fid" in r or "lpips" in r:
            logging.info(
                "eval band %s: %s", name,
                ", ".join(f"{p}{k} {r[p + k]:.4f}" for k in ("fid", "lpips")
                          for p in ("", *(p for p, _ in shown)) if p + k in r),
            )
        logging.info(
            "eval band %s: %d images, PSNR %.2f, SSIM %.4f, L1 %.2f%% | %s (%.1f s)",
            name, r["images"], r["psnr"], r["ssim"], r["l1_percent"],
            " | ".join(f"{name}: PSNR {r[p + 'psnr']:.2f}, SSIM {r[p + 'ssim']:.4f}, "
                       f"L1 {r[p + 'l1_percent']:.2f}%" for p, name in shown),
            time.perf_counter() - start,
        )
    return results


def classical_baselines(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The OpenCV baselines ``config.eval.classical_baselines`` asks for (names of
    ``classical.METHODS``)."""
    return classical.parse(config.eval.get("classical_baselines", ""))


def markdown_table(
    results: dict[str, dict[str, float]], title: str, lpips_net: str = "", note: str = ""
) -> str:
    """The paper's Tables 3-4 layout (metrics by hole-ratio band): the model's rows, a row group
    per baseline on the same images and masks (mean-colour fill, OpenCV Telea, Navier-Stokes,
    those computed), FID and LPIPS when computed (``note``: the line that says how to add what
    was not), then the other metric variants of each."""
    labels = list(results)  # band names, "10-20" ... "all"
    columns = [b if b == masks.band_name(None) else f"{b} %" for b in labels]
    header = f"| {title} | " + " | ".join(columns) + " |"
    rule = "|---" * (len(labels) + 1) + "|"
    lines = [header, rule]
    first = results[labels[0]]
    shown = [(p, name) for p, name in BASELINES if p + "psnr" in first]

    def group(rows, extra=()):
        return [(f"{name}, {b_name}", prefix + key, fmt)
                for prefix, b_name in extra for name, key, fmt in rows]

    perceptual_rows = []
    if "fid" in first:
        # FID is biased upwards for few images: every value carries its count.
        fid = [("FID", "fid", "{:.2f} (n={:d})")]
        perceptual_rows += fid + group(fid, shown)
    if "lpips" in first:
        lpips_row = [(f"LPIPS ({lpips_net})", "lpips", "{:.4f}")]
        perceptual_rows += lpips_row + group(lpips_row, shown)

    def cell(fmt: str, values: dict[str, float], key: str) -> str:
        if key.endswith("fid"):
            return fmt.format(values[key], int(values["fid_images"]))
        return fmt.format(values[key])

    for rows in (PAPER_ROWS, group(PAPER_ROWS, shown), perceptual_rows, OTHER_ROWS,
                 group(OTHER_ROWS, shown)):
        for name, key, fmt in rows:
            lines.append(
                f"| {name} | " + " | ".join(cell(fmt, results[b], key) for b in labels) + " |"
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
    if any(p != BASELINE for p, _ in shown):
        lines[-1] += (
            f" The OpenCV rows fill the same holes with cv2.inpaint (radius {classical.RADIUS}; "
            "Telea's fast marching, Navier-Stokes after Bertalmio et al.): classical methods "
            "that need no training."
        )
    if perceptual_rows:
        lines.append("")
        lines.append(
            "FID: pytorch-fid's Inception (2048-d pool features) of the composites against the "
            "band's ground-truth images, n images each (FID of few images is biased upwards: "
            "compare values of equal n only). LPIPS v0.1: mean over images of LPIPS(composite, "
            "ground truth)."
        )
    if note:
        lines.append("")
        lines.append(note)
    return "\n".join(lines)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, checkpoint_arg: str | None = None,
    step: int | None = None,
) -> dict[str, dict[str, float]]:
    """Restores the generator of a checkpoint (``checkpoint_arg``, default ``workdir``; its
    latest step unless ``step``) and writes the per-band table under ``workdir``."""
    workdir = epath.Path(workdir)
    path = epath.Path(checkpoint_arg) if checkpoint_arg else workdir
    mesh = sharding.create_mesh(config.get("mesh"))
    # Every weight file is read and checked before the long work, and before anything is
    # written; so is the choice of baselines.
    classical_baselines(config)
    perceptual_metrics = fid_lpips.PerceptualMetrics.from_config(config, mesh)
    dtype = models.compute_dtype(config)
    generator, meta = checkpoint.restore_generator(path, step, dtype=dtype)
    logging.info(
        "Evaluating %s (blocks=%d) from %s, step %d (%s).",
        meta["generator"],
        meta["blocks"],
        path,
        meta["step"],
        meta.get("source", "?"),
    )
    g_def, g_state = nnx.split(generator)
    g_state = jax.device_put(g_state, sharding.replicated(mesh))
    sheet_images: dict[str, np.ndarray] = {}
    results = evaluate_bands(config, g_def, g_state, mesh, config.eval.num_images_final,
                             perceptual_metrics=perceptual_metrics, sheet_images=sheet_images)

    title = f"{eval_set_name(config)}, step {meta['step']}"
    missing = "" if classical_baselines(config) else (
        f"OpenCV baselines not computed: {ENABLE_CLASSICAL}.")
    note = "\n".join(x for x in [perceptual_metrics.not_computed(), missing,
                                  *(f"Note: {f}." for f in perceptual_metrics.fallbacks)] if x)
    table = markdown_table(results, title, perceptual_metrics.lpips_net, note)
    print(table, flush=True)
    if jax.process_index() == 0:
        out = workdir / "eval" / f"step_{meta['step']}"
        out.mkdir(parents=True, exist_ok=True)
        report = {"checkpoint": str(path), "meta": meta, "bands": results,
                  **perceptual_metrics.describe()}
        if perceptual_metrics.not_computed():
            report["not_computed"] = perceptual_metrics.not_computed()
        (out / "results.json").write_text(json.dumps(report, indent=1))
        (out / "table.md").write_text(table + "\n")
        for band, sheet in sheet_images.items():
            (out / f"sheet_{band}.png").write_bytes(sheets.png_bytes(sheet))
        logging.info("Wrote %s, %s and %d image sheets (masked input | result | ground truth).",
                     out / "results.json", out / "table.md", len(sheet_images))
    writer = summaries.create_writer(workdir / "eval", just_logging=jax.process_index() > 0)
    writer.write_scalars(
        meta["step"],
        {f"{band}/{k}": v for band, values in results.items() for k, v in values.items()},
    )
    if sheet_images:
        writer.write_images(
            meta["step"], {f"{band}/sheet": sheet[None] for band, sheet in sheet_images.items()}
        )
    writer.flush()
    return results


class PeriodicEvaluator:
    """Evaluation on a small fixed subset during training (``config.eval.num_images``)."""

    def __init__(self, config: ml_collections.ConfigDict, mesh, g_def: Any):
        self.config = config
        self.sums = MetricSums(g_def, mesh, classical_baselines(config))

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

    def summary(self, scalars: dict[str, float]) -> str:
        """The log line of one periodic evaluation: the model's PSNR beside every baseline's."""
        baselines = ", ".join(f"{name} {scalars[f'eval/{p}psnr']:.2f}"
                              for p, name in BASELINES if f"eval/{p}psnr" in scalars)
        return (f"held-out PSNR {scalars['eval/psnr']:.2f} dB ({baselines} dB) on "
                f"{self.config.eval.num_images} images of {eval_set_name(self.config)}")
