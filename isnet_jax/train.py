"""ISNet training: the release's joint G/D step as one pure function under ``jax.jit``, and the
loop around it.

Reads top to bottom: state -> step -> loop. The networks a config describes come from
``models.build_networks``, the optimisers from ``optim.py``, the loss terms from ``losses.py``,
checkpoints from ``checkpoint.py``, sample grids from ``evaluators/sheets.py``. G and D
are updated together from one forward pass (simultaneous update), data parallel over a
``Mesh``; an update whose gradients are not finite is never applied.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics
from etils import epath
from flax import nnx, traverse_util

from isnet_jax import (
    checkpoint,
    errors,
    input_pipeline,
    interrupts,
    losses,
    masks,
    models,
    optim,
    preemption,
    progress,
    sharding,
    summaries,
)
from isnet_jax.evaluators import metrics as image_metrics
from isnet_jax.evaluators import sheets
from isnet_jax.models.layers import SpectralState

# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


def split_module(module: nnx.Module) -> tuple[Any, nnx.State, nnx.State]:
    """``(graphdef, params, spectral_state)``; anything else in the module is a bug."""
    graphdef, params, spectral, rest = nnx.split(module, nnx.Param, SpectralState, ...)
    if jax.tree.leaves(rest):
        raise AssertionError(f"{type(module).__name__} holds state other than Param/SpectralState")
    return graphdef, params, spectral


# Per-step values averaged over each logging window (clu.metrics on the devices).
METRICS = (*losses.TERMS, "g_loss", "train_psnr", "train_l1_percent", "hole_fraction",
           "skipped_update")
TrainMetrics = metrics.Collection.create(**{k: metrics.Average.from_output(k) for k in METRICS})


class Trainer:
    """Owns the networks' structure, the optimisers and the jitted functions for one config.

    The train state is a dict: ``step``, ``g_params`` / ``d_params`` (``nnx.Param``),
    ``g_spectral`` / ``d_spectral`` (the spectral-norm power-iteration vectors), ``g_opt`` /
    ``d_opt``.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
        self.config = config
        self.mesh = mesh
        self.g_tx, self.d_tx = optim.make_optimizers(config)
        replicated = sharding.replicated(mesh)

        def init():
            g, d = models.build_networks(config)
            _, g_params, g_spectral = split_module(g)
            _, d_params, d_spectral = split_module(d)
            return {"step": jnp.zeros((), jnp.int32),
                    "g_params": g_params, "g_spectral": g_spectral,
                    "d_params": d_params, "d_spectral": d_spectral,
                    "g_opt": self.g_tx.init(g_params), "d_opt": self.d_tx.init(d_params)}

        # Structure from an abstract trace; values (only when asked for: a resumed run restores
        # into the abstract state instead) from one compiled program that writes them straight
        # to their shardings (eager init would compile every small initialiser, and could not
        # place arrays on other hosts' devices).
        g, d = models.abstract_networks(config)
        abstract = jax.eval_shape(init)
        self.state_sharding = jax.tree.map(lambda _: replicated, abstract)
        self.abstract_state = checkpoint.abstract_tree(abstract, self.state_sharding)
        self._init = jax.jit(init, out_shardings=self.state_sharding)
        vgg = models.load_vgg(config) if models.uses_vgg(config) else None
        if vgg is not None:
            vgg_def, vgg_state = nnx.split(vgg)
            self.vgg_state = sharding.put_global(vgg_state, replicated)
        else:
            vgg_def, self.vgg_state = None, None
        self.nets = losses.Networks(split_module(g)[0], split_module(d)[0], vgg_def,
                             losses.VGG_LAYERS if vgg is not None else ())
        self.weights = losses.loss_weights(config)
        self.batch_sharding = sharding.batch_sharding(mesh)
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(self.state_sharding, None if vgg is None else replicated,
                          self.batch_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, replicated, replicated),
            donate_argnums=(0,),
        )
        self.predict = jax.jit(self._predict, out_shardings=self.batch_sharding)

    def init_state(self) -> dict[str, Any]:
        """A freshly initialised state, new arrays on every call (the step donates its input:
        a state must not be used twice). The init program is compiled once."""
        return self._init()

    def read_weights(self, source: str) -> dict[str, nnx.State]:
        """``{"g_params", "g_spectral"[, "d_params", "d_spectral"]}`` from ``source``
        (``config.init_from``: a ``convert`` folder, a workdir or ``DIR@STEP``); merged into
        ``init_state()``, a fine-tuning run starts at step 0 with fresh Adam moments. Without a
        discriminator in the source D stays as initialised (with a warning). Raises
        ``FileNotFoundError`` / ``ValueError`` naming the file (and key) on a mismatch."""
        path, step = checkpoint.split_step(source)
        g, d, meta = checkpoint.restore_models(
            path, step, expect=checkpoint.config_model(self.config),
            sharding=sharding.replicated(self.mesh))
        weights = dict(zip(("g_params", "g_spectral"), split_module(g)[1:], strict=True))
        logging.info("Initialising G from %s, step %d (%s).", path, meta["step"],
                     meta.get("source", "a training run"))
        if d is None:
            logging.warning(
                "%s holds no discriminator: D starts from its initialisation. To fine-tune the "
                "release's D too, convert with --discriminator InpaintingModel_dis.pth.", path)
        else:
            weights.update(zip(("d_params", "d_spectral"), split_module(d)[1:], strict=True))
            logging.info("Initialising D from the same checkpoint.")
        return weights

    def modules(self, state: dict[str, Any]) -> tuple[nnx.Module, nnx.Module]:
        """``(generator, discriminator)`` of a training state, as NNX modules (copies)."""
        g = nnx.merge(self.nets.g_def, state["g_params"], state["g_spectral"], copy=True)
        d = nnx.merge(self.nets.d_def, state["d_params"], state["d_spectral"], copy=True)
        return g, d

    # -----------------------------------------------------------------------------------------
    # Step
    # -----------------------------------------------------------------------------------------

    def gradients(self, state, vgg_state, image, mask):
        """``((g_grads, d_grads), (terms, g_loss, pred, new_g_spectral, new_d_spectral))``.

        Traceable; the training step applies the gradients through Adam.
        """
        def total_loss(g_params, d_params):
            terms, pred, g_spectral, d_spectral = losses.compute_terms(
                self.nets, (g_params, state["g_spectral"]), (d_params, state["d_spectral"]),
                vgg_state, image, mask, gan_type=self.config.loss.gan_type, train=True)
            ramp = losses.gan_ramp(self.config, state["step"])
            g_loss = sum(w * terms[t] * (ramp if t in losses.GAN_TERMS else 1.0)
                         for t, w in self.weights.items())
            # G's terms see D detached and D's loss sees the prediction detached, so one
            # gradient of the sum is each network's own gradient.
            return g_loss + terms["d_loss"], (terms, g_loss, pred, g_spectral, d_spectral)

        return jax.grad(total_loss, argnums=(0, 1), has_aux=True)(
            state["g_params"], state["d_params"])

    def _train_step(self, state, vgg_state, image, mask):
        """-> ``(new_state, TrainMetrics, guard)``; ``guard`` holds ``consecutive_skips`` (steps
        in a row whose update was dropped) and ``nonfinite_terms`` (a bitmask over TERMS, then
        the G loss) of this step."""
        grads, (terms, g_loss, pred, g_spectral, d_spectral) = self.gradients(
            state, vgg_state, image, mask)
        g_updates, g_opt = self.g_tx.update(grads[0], state["g_opt"], state["g_params"])
        d_updates, d_opt = self.d_tx.update(grads[1], state["d_opt"], state["d_params"])
        new_state = {
            "step": state["step"] + 1,
            "g_params": optax.apply_updates(state["g_params"], g_updates),
            "g_spectral": g_spectral,
            "d_params": optax.apply_updates(state["d_params"], d_updates),
            "d_spectral": d_spectral,
            "g_opt": g_opt,
            "d_opt": d_opt,
        }
        values = jnp.stack([terms[t] for t in losses.TERMS] + [g_loss])
        guard = {
            "consecutive_skips": jnp.maximum(g_opt.notfinite_count, d_opt.notfinite_count),
            "nonfinite_terms": jnp.sum(jnp.where(jnp.isfinite(values), 0,
                                                 2 ** jnp.arange(len(values)))),
        }
        comp = masks.composite(image, mask, pred)
        mse = jnp.mean(jnp.square(comp - image), axis=(1, 2, 3))
        step_metrics = TrainMetrics.single_from_model_output(
            **terms, g_loss=g_loss,
            # Unquantised, unlike the evaluation's PSNR: a training-progress signal.
            train_psnr=jnp.mean(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))),
            train_l1_percent=jnp.mean(image_metrics.l1_percent(image, comp)),
            hole_fraction=jnp.mean(1.0 - mask),
            skipped_update=1.0 - (g_opt.last_finite & d_opt.last_finite).astype(jnp.float32),
        )
        return new_state, step_metrics, guard

    def _predict(self, g_params, g_spectral, image, mask):
        g = nnx.merge(self.nets.g_def, g_params, g_spectral, copy=True)
        return g(image * mask, train=False)


def nonfinite_names(bits: int) -> list[str]:
    """The loss terms a ``nonfinite_terms`` bitmask names."""
    return [name for i, name in enumerate((*losses.TERMS, "g_loss")) if bits & (1 << i)]


# ---------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------


class NonFiniteLossError(errors.UserError, FloatingPointError):
    """Losses stayed NaN or inf for ``config.max_consecutive_skips`` steps; none was applied."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains for ``config.num_train_steps``, resuming from ``workdir``'s latest checkpoint.

    Returns the last logged metrics (floats).
    """
    workdir = epath.Path(workdir)
    created = not workdir.exists()
    mesh = sharding.create_mesh(config.get("mesh"))
    input_pipeline.host_batch(config.batch_size, jax.process_count(),
                              devices=mesh.shape[sharding.DATA])
    trainer = Trainer(config, mesh)
    _log_setup(config, mesh, trainer)
    train_iter = input_pipeline.create_train_iterator(
        config, process_index=jax.process_index(), process_count=jax.process_count())
    # Orbax's manager starts with a collective; CPU (gloo) collectives give up when processes
    # arrive more than 30 s apart, as a loaded machine's may.
    sharding.barrier("isnet_jax_checkpoint_manager")
    try:
        mngr = checkpoint.training_manager(workdir, config.max_checkpoints_to_keep)
        state = _restore_or_start(config, trainer, mngr, train_iter)
    except BaseException:
        if created and jax.process_index() == 0:  # a failed start leaves no empty workdir
            workdir.rmtree(missing_ok=True)
        raise
    loop = _Loop(config, workdir, trainer, mngr, train_iter, state)
    try:
        loop.run()
    except KeyboardInterrupt:
        loop.keep_progress("Interrupted")
        raise
    finally:
        mngr.wait_until_finished()
        train_iter.close()  # grain's workers and shared memory go now: a run may end in os._exit
    mngr.close()
    logging.info("Done: step %d. Checkpoints in %s.", loop.step, mngr.directory)
    return loop.last


def _log_setup(config, mesh, trainer: Trainer) -> None:
    g_params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state["g_params"]))
    logging.info(
        "Training %s (blocks=%d%s, %s G parameters) at %dx%d, global batch %d, %s compute, on "
        "%d %s device(s) in %d process(es), mesh %s.",
        config.model.generator, config.model.blocks,
        "" if config.model.width == models.WIDTH else f", width={config.model.width}",
        f"{g_params:,}", config.image_size,
        config.image_size, config.batch_size, config.compute_dtype, jax.device_count(),
        jax.devices()[0].platform, jax.process_count(), dict(mesh.shape))
    if trainer.nets.vgg_def is None:
        logging.info("Perceptual and style losses are off (both weights are 0): VGG19 not used.")
    else:
        logging.info("VGG19 for perceptual/style losses: %s", config.loss.vgg_weights
                     or "torchvision's, from the weights cache (isnet_jax.weights)")


def _restore_or_start(config, trainer: Trainer, mngr, train_iter) -> dict[str, Any]:
    """The newest intact checkpoint of the run, or step 0 (from ``config.init_from``)."""
    for aside in checkpoint.set_aside_unfinished(mngr):
        logging.warning("Skipping the unfinished checkpoint of step %s (a process or the bucket "
                        "was lost during its save): moved it to %s.",
                        aside.name.split(".")[0], aside)
    steps = sorted(mngr.all_steps(), reverse=True)
    for step in steps:
        logging.info("Resuming from the checkpoint of step %d in %s.", step, mngr.directory)
        try:
            with_position = checkpoint.check_resumable(mngr, step, config)
            state = checkpoint.restore_train_state(
                mngr, step, trainer.abstract_state, train_iter if with_position else None)
        except checkpoint.DamagedCheckpointError as e:
            # Set aside, not deleted: the run saves this step again, and a person may want to
            # look at what went wrong.
            aside = checkpoint.set_aside(mngr, step)
            logging.warning("%s; moved it to %s and trying the step before it.", e, aside)
            continue
        if config.init_from:
            logging.warning("config.init_from=%s is ignored: %s already holds a checkpoint, and "
                            "resuming it wins. Use a new workdir to start over from it.",
                            config.init_from, mngr.directory)
        return state
    if steps:
        raise checkpoint.DamagedCheckpointError(
            f"every checkpoint in {mngr.directory} (steps {sorted(steps)}) is damaged: move the "
            "folder aside to start from step 0")
    logging.info("No checkpoint in %s: starting from step 0.", mngr.directory)
    # Read first: a source that does not fit stops the run before anything is compiled.
    weights = trainer.read_weights(config.init_from) if config.init_from else {}
    return {**trainer.init_state(), **weights}


class _Loop:
    """The training loop of one run: steps, logs, samples, periodic evaluation, checkpoints."""

    def __init__(self, config, workdir: epath.Path, trainer: Trainer, mngr, train_iter, state):
        self.config, self.workdir, self.trainer = config, workdir, trainer
        self.mngr, self.train_iter, self.state = mngr, train_iter, state
        self.step = self.first_step = int(jax.device_get(state["step"]))
        self.last: dict[str, float] = {}
        self.writer = summaries.create_writer(workdir, just_logging=jax.process_index() != 0)
        if self.first_step == 0:
            flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
            self.writer.write_hparams(
                {k: v if isinstance(v, int | float | str | bool) else str(v)
                 for k, v in flat.items()})
        self.progress = progress.ProgressReport(
            num_train_steps=config.num_train_steps, writer=self.writer,
            every_steps=config.log_every_steps)
        self.evaluator = None
        if config.eval_every_steps and config.eval.num_images:
            from isnet_jax import evaluate

            self.evaluator = evaluate.PeriodicEvaluator(config, trainer.mesh, trainer.nets.g_def)

    def compile(self):
        """Compiled ahead of the loop: the compile time is reported, and hosts meet at a
        barrier before the first collective (CPU collectives give up if peers arrive 30 s
        apart)."""
        start = time.perf_counter()
        shape = (self.config.batch_size, self.config.image_size, self.config.image_size)
        batch = [jax.ShapeDtypeStruct((*shape, c), jnp.float32,
                                      sharding=self.trainer.batch_sharding) for c in (3, 1)]
        step = self.trainer.train_step.lower(self.state, self.trainer.vgg_state, *batch).compile()
        logging.info("Compiled the training step in %.1f s.", time.perf_counter() - start)
        sharding.barrier("isnet_jax_train_step_compiled")
        return step

    def run(self) -> None:
        config = self.config
        train_step = self.compile()
        logging.info("Training steps %d..%d; checkpoints every %d steps in %s.",
                     self.first_step + 1, config.num_train_steps,
                     config.checkpoint_every_steps, self.mngr.directory)
        window, guard, fixed_batch = None, None, None
        self.data_seconds, self.window_start, self.skipped_images = 0.0, time.perf_counter(), 0
        terminate = preemption.TerminationRequest()
        # Ctrl-C (one process) stops between steps: a step cut in half has donated its state.
        with contextlib.closing(self.writer), terminate, interrupts.ctrl_c_deferred(
                jax.process_count() == 1):
            while self.step < config.num_train_steps:
                interrupts.check_interrupted()
                batch = self._next_batch(terminate)
                if batch is None:
                    break
                fixed_batch = fixed_batch or batch
                previous_guard = guard
                self.state, step_metrics, guard = train_step(
                    self.state, self.trainer.vgg_state, *batch)
                self.step += 1
                window = step_metrics if window is None else window.merge(step_metrics)
                # One step behind: reading the previous step's guard does not stall the next.
                self._check_guard(previous_guard, self.step - 1)
                if self.step % config.log_every_steps == 0 or self.step == config.num_train_steps:
                    self._check_guard(guard, self.step)
                    self._log(window)
                    window = None
                # After the log's device sync: a rate measured before it counts dispatches.
                if jax.process_index() == 0:
                    self.progress(self.step)
                self._periodic(fixed_batch)
                preempted = self.mngr.reached_preemption(self.step) or terminate.received
                if self._due(config.checkpoint_every_steps) or preempted:
                    checkpoint.save_train_state(self.mngr, self.state, self.train_iter, config)
                if preempted:
                    logging.warning("Preemption or SIGTERM at step %d: checkpoint saved, "
                                    "stopping; the same command resumes from here.", self.step)
                    break

    def _due(self, every: int) -> bool:
        return bool(every) and (self.step % every == 0 or self.step == self.config.num_train_steps)

    def _next_batch(self, terminate) -> tuple[jax.Array, jax.Array] | None:
        start = time.perf_counter()
        try:
            with self.progress.timed("data"):
                batch = next(self.train_iter)
        except Exception:
            # Ctrl-C in a terminal and a SIGTERM to the whole process group (SLURM does that)
            # also stop grain's worker processes; the state of the last step is still whole.
            interrupts.check_interrupted()
            if not terminate.received:
                raise
            self.keep_progress("The data workers stopped with the SIGTERM")
            return None
        self.data_seconds += time.perf_counter() - start
        self.skipped_images += int(np.sum(batch.get("skipped", 0)))
        arrays = input_pipeline.to_global({k: batch[k] for k in ("image", "mask")},
                                          self.trainer.batch_sharding)
        return arrays["image"], arrays["mask"]

    def _check_guard(self, guard, step: int) -> None:
        if guard is None:
            return
        skips, bits = (int(x) for x in jax.device_get(
            (guard["consecutive_skips"], guard["nonfinite_terms"])))
        if skips == 0:
            return
        names = ", ".join(nonfinite_names(bits)) or "the gradients"
        if skips >= self.config.max_consecutive_skips:
            raise NonFiniteLossError(
                f"non-finite loss ({names}) in {skips} consecutive steps up to step {step}; none "
                "of their updates was applied and the last checkpoint holds finite weights. "
                "Lower the learning rate, check the data (an all-known mask makes the "
                "hole-normalised L1 divide by zero) or use float32 compute.")
        logging.warning("Step %d: non-finite loss (%s): its update was not applied.", step, names)

    def _log(self, window) -> None:
        last = {k: float(v) for k, v in window.compute().items()}
        now = time.perf_counter()
        # Share of the wall time since the last log spent waiting for the next batch.
        last["data_wait_fraction"] = self.data_seconds / max(now - self.window_start, 1e-9)
        last["skipped_images"] = float(_sum_over_hosts(self.skipped_images))
        self.writer.write_scalars(self.step, last)
        logging.info(
            "step %d/%d: G %.4f (l1 %.4f, adv %.4f, fm %.4f, perc %.4f, style %.4f) D %.4f | "
            "train PSNR %.2f dB | data wait %.1f%%", self.step, self.config.num_train_steps,
            last["g_loss"], last["l1"], last["g_adv"], last["feature_matching"],
            last["perceptual"], last["style"], last["d_loss"], last["train_psnr"],
            100 * last["data_wait_fraction"])
        self.last = last
        self.data_seconds, self.window_start = 0.0, time.perf_counter()

    def _periodic(self, fixed_batch) -> None:
        g_vars = (self.state["g_params"], self.state["g_spectral"])
        if self._due(self.config.image_every_steps):
            pred = self.trainer.predict(*g_vars, *fixed_batch)
            sheets.write_samples(self.writer, self.workdir, self.step, *fixed_batch, pred)
        if self.evaluator is not None and self.step % self.config.eval_every_steps == 0:
            scalars = self.evaluator(*g_vars)
            self.writer.write_scalars(self.step, scalars)
            logging.info("step %d: %s", self.step, self.evaluator.summary(scalars))

    def keep_progress(self, why: str) -> None:
        """Saves the last completed step unless it is saved: the next run resumes from it."""
        if self.step > self.first_step and self.mngr.latest_step() != self.step:
            if any(x.is_deleted() for x in jax.tree.leaves(self.state)):  # cut inside a step
                logging.warning("%s inside step %d, whose input state was donated to it: "
                                "nothing newer than step %s can be saved.", why, self.step + 1,
                                self.mngr.latest_step())
                return
            logging.warning("%s at step %d: saving a checkpoint before stopping.", why, self.step)
            checkpoint.save_train_state(self.mngr, self.state, self.train_iter, self.config)


def _sum_over_hosts(value: int) -> int:
    if jax.process_count() == 1:
        return value
    gathered = jax.experimental.multihost_utils.process_allgather(np.int64(value))
    return int(np.sum(gathered))
