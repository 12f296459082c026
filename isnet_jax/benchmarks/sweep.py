"""What a training setting learns: held-out PSNR per hole-ratio band against steps, beside the
mean-colour fill and OpenCV's inpainters on the same images and masks.

    python -m isnet_jax.benchmarks.sweep --config=configs/demo.py --workdir=DIR \\
        --eval_steps=200,400,600 [--config.learning_rate=1e-4 ...]

trains ``config`` for ``max(eval_steps)`` steps (resuming DIR if it holds a run), evaluates the
checkpoint of each step on ``--eval_images`` held-out images per band (the same images and masks
for every step and every setting of one config), and prints one JSON line per step and a
Markdown row per step, "PSNR (difference to the mean fill / to OpenCV Telea)": the table
BENCHMARKS.md keeps for the demo's sweep. Results also go to
``DIR/sweep.json``. "The loss went down" is not evidence; this is.
"""

from __future__ import annotations

import json
import time

import jax
from absl import app, flags, logging
from etils import epath
from flax import nnx

from isnet_jax import checkpoint, cli, evaluate, masks, sharding, train

_CONFIG = cli.define_config_flag(None)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumed if it holds a run).")
_EVAL_STEPS = flags.DEFINE_list("eval_steps", ["200"], "Steps whose checkpoints are evaluated.")
_EVAL_IMAGES = flags.DEFINE_integer("eval_images", 64, "Held-out images per band.")
_LABEL = flags.DEFINE_string("label", "", "Name of this setting in the table.")

BANDS = masks.EVAL_BANDS[:-1]  # the paper's four bands


def evaluate_steps(config, workdir: epath.Path, steps: list[int], num_images: int) -> list[dict]:
    """Per step: PSNR per band of the model and of each baseline."""
    mesh = sharding.create_mesh(config.get("mesh"))
    rows = []
    for step in steps:
        generator, _ = checkpoint.restore_generator(workdir, step)
        g_def, g_state = nnx.split(generator)
        g_state = jax.device_put(g_state, sharding.replicated(mesh))
        results = evaluate.evaluate_bands(config, g_def, g_state, mesh, num_images, BANDS)
        row = {"step": step, "psnr": {b: round(r["psnr"], 2) for b, r in results.items()}}
        for prefix, _ in evaluate.BASELINES:
            if prefix + "psnr" in results[next(iter(results))]:
                row[prefix.rstrip("/") + "_psnr"] = {b: round(r[prefix + "psnr"], 2)
                                                     for b, r in results.items()}
        rows.append(row)
    return rows


def main(argv):
    del argv
    config = _CONFIG.value
    steps = sorted(int(s) for s in _EVAL_STEPS.value)
    config.num_train_steps = steps[-1]
    # Keep every checkpoint of the run: the evaluations below read the asked steps back.
    config.max_checkpoints_to_keep = steps[-1] // config.checkpoint_every_steps + 1
    workdir = epath.Path(_WORKDIR.value)
    start = time.perf_counter()
    train.train_and_evaluate(config, str(workdir))
    train_seconds = time.perf_counter() - start
    # Checkpoints are written every checkpoint_every_steps: the asked steps must be among them.
    available = set(checkpoint.all_steps(workdir))
    missing = [s for s in steps if s not in available]
    if missing:
        raise app.UsageError(
            f"no checkpoint for steps {missing} in {workdir} (it has {sorted(available)}): make "
            "every --eval_steps entry a multiple of --config.checkpoint_every_steps"
        )
    rows = evaluate_steps(config, workdir, steps, _EVAL_IMAGES.value)
    label = _LABEL.value or workdir.name
    with (workdir / "sweep.json").open("a") as f:
        for row in rows:
            row.update(label=label, train_seconds=round(train_seconds, 1))
            line = json.dumps(row)
            print(line, flush=True)
            f.write(line + "\n")
    for row in rows:
        model, fill, telea = row["psnr"], row["mean_fill_psnr"], row.get("telea_psnr")
        cells = " | ".join(
            f"{model[b]:.2f} ({model[b] - fill[b]:+.2f}"
            + (f" / {model[b] - telea[b]:+.2f})" if telea else ")") for b in model)
        print(f"| {label} | {row['step']} | {cells} |", flush=True)
    for prefix, name in evaluate.BASELINES:  # the same images and masks at every step
        if (key := prefix.rstrip("/") + "_psnr") in rows[-1]:
            print(f"| {name} | | " + " | ".join(f"{v:.2f}" for v in rows[-1][key].values())
                  + " |", flush=True)
    logging.info("Trained %d steps in %.0f s.", steps[-1], train_seconds)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=cli.parse_flags(lambda: _CONFIG))
