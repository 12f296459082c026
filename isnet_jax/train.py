"""ISNet training: the joint G/D step, Orbax checkpoints, CLU metrics and the loop.

Reads top to bottom: networks -> loss terms -> train step -> state and checkpoints -> loop.
The step is one pure function under ``jax.jit`` over ``nnx.split`` state: G and D are updated
together from one forward pass (simultaneous update), data parallel over a ``Mesh``.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Any

import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from flax import nnx

from isnet_jax import checkpoint, losses, models, sharding
from isnet_jax.models.layers import SpectralState

# Loss terms in a fixed order: the non-finite guard reports them by index.
TERMS = ("l1", "g_adv", "feature_matching", "perceptual", "style", "d_loss")
_WEIGHT_FIELDS = {
    "l1": "l1_weight",
    "g_adv": "adversarial_weight",
    "feature_matching": "feature_matching_weight",
    "perceptual": "perceptual_weight",
    "style": "style_weight",
}


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; training stops before any checkpoint of that state."""


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Networks:
    """Static structure (graph definitions) of the networks; their state lives in TrainState."""

    g_def: Any
    d_def: Any
    vgg_def: Any | None  # None when the perceptual and style weights are both 0
    vgg_layers: tuple[str, ...] = ()


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    name = config.get("compute_dtype", "float32")
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"compute_dtype must be float32, bfloat16 or float16, got {name!r}")
    return jnp.dtype(name)


def uses_vgg(config: ml_collections.ConfigDict) -> bool:
    return config.loss.perceptual_weight != 0 or config.loss.style_weight != 0


def build_networks(
    config: ml_collections.ConfigDict, seed: int | None = None, *, with_vgg: bool = True
):
    """Creates G and D (and VGG19 when the perceptual or style loss is on and ``with_vgg``).

    Returns ``(generator, discriminator, vgg_or_None)`` as NNX modules with float32 parameters.
    The VGG weights come from ``config.loss.vgg_weights``; missing weights stop the run rather
    than silently giving random VGG features.
    """
    seed = config.seed if seed is None else seed
    rngs = nnx.Rngs(seed)
    dtype = compute_dtype(config)
    g = models.create_generator(
        config.model.generator, config.model.blocks, dtype=dtype, remat=config.remat, rngs=rngs
    )
    d = models.Discriminator(dtype=dtype, rngs=rngs)
    # The release initialises G and D alike (BaseNetwork.init_weights); so do we, by config.
    for module in (g, d):
        models.init_weights(module, config.model.init, config.model.init_scale, rngs=rngs)
    vgg = load_vgg(config) if with_vgg and uses_vgg(config) else None
    return g, d, vgg


def load_vgg(config: ml_collections.ConfigDict) -> nnx.Module:
    path = config.loss.vgg_weights
    if not path:
        raise FileNotFoundError(
            "the perceptual and style losses need ImageNet VGG19 weights, and "
            "config.loss.vgg_weights is empty. Get torchvision's vgg19-dcbb9e9d.pth, convert it "
            "with `python -m isnet_jax.convert --vgg19 vgg19-dcbb9e9d.pth --output DIR` and pass "
            "--config.loss.vgg_weights=DIR/vgg19.npz (or set both loss weights to 0 to train "
            "without them)."
        )
    from isnet_jax import convert  # lazily: only runs that use VGG need the reader

    return convert.load_vgg19(
        path, normalization=config.loss.vgg_normalization, dtype=compute_dtype(config)
    )


# ---------------------------------------------------------------------------------------------
# Loss terms
# ---------------------------------------------------------------------------------------------


def compute_terms(
    nets: Networks,
    g_vars: tuple[nnx.State, nnx.State],
    d_vars: tuple[nnx.State, nnx.State],
    vgg_state: nnx.State | None,
    image: jax.Array,
    mask: jax.Array,
    *,
    gan_type: str = "hinge",
    train: bool = True,
):
    """Unweighted loss terms of one step, as the release's ``process()`` computes them.

    One forward pass of G, then three calls of D in the release's order, each (in training)
    advancing D's power iteration once: ``D(image)``, ``D(stop_grad(pred))``, ``D(pred)``. D's
    loss comes from the first two; G's adversarial and feature-matching terms from the third
    (feature matching against the first call's activations). Gradients are routed so that one
    ``jax.grad`` of the *sum* of all terms gives each network exactly its own gradient: D's loss
    sees the prediction detached, G's terms see D's parameters detached.

    Args:
      g_vars, d_vars: ``(params, spectral_state)`` of G and D.
      image: (B, H, W, 3) ground truth in [0, 1]; mask: (B, H, W, 1), 1 = known.
    Returns:
      ``(terms, pred, new_g_spectral, new_d_spectral)``; ``terms`` maps TERMS to scalars.
    """
    # copy=True: fresh Variables at this trace level, so the power iteration may update them.
    g = nnx.merge(nets.g_def, *g_vars, copy=True)
    pred = g(image * mask, train=train)
    new_g_spec = nnx.state(g, SpectralState)

    d = nnx.merge(nets.d_def, *d_vars, copy=True)
    real_logits, real_feats = d(image, train=train)
    fake_logits_detached, _ = d(jax.lax.stop_gradient(pred), train=train)
    # G's call: D's weights detached, its power iteration continuing from the second call's.
    d_for_g = nnx.merge(
        nets.d_def, jax.lax.stop_gradient(d_vars[0]), nnx.state(d, SpectralState), copy=True
    )
    fake_logits, fake_feats = d_for_g(pred, train=train)
    new_d_spec = nnx.state(d_for_g, SpectralState)

    terms = {
        "l1": losses.l1(pred, image, mask),
        "g_adv": losses.generator_adversarial(fake_logits, gan_type),
        "feature_matching": losses.feature_matching(fake_feats, real_feats),
        "d_loss": losses.discriminator(real_logits, fake_logits_detached, gan_type),
    }
    if nets.vgg_def is not None:
        vgg = nnx.merge(nets.vgg_def, jax.lax.stop_gradient(vgg_state), copy=True)
        # Ground-truth features: computed once, and no gradient flows into them.
        real_vgg = jax.lax.stop_gradient(vgg(image, outputs=nets.vgg_layers))
        pred_vgg = vgg(pred, outputs=nets.vgg_layers)
        terms["perceptual"] = losses.perceptual(pred_vgg, real_vgg)
        terms["style"] = losses.style(pred_vgg, real_vgg)
    else:
        terms["perceptual"] = terms["style"] = jnp.zeros((), jnp.float32)
    return terms, pred, new_g_spec, new_d_spec


def loss_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    return {t: float(config.loss[f]) for t, f in _WEIGHT_FIELDS.items()}


GAN_TERMS = ("g_adv", "feature_matching")


def gan_ramp(config: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
    """The factor on G's adversarial and feature-matching weights at ``step`` (0-based):
    0 before ``config.loss.gan_start_step``, then rising linearly to 1 over
    ``config.loss.gan_ramp_steps``. The release has neither (factor 1 throughout); D trains
    from the first step either way."""
    start, ramp = config.loss.gan_start_step, config.loss.gan_ramp_steps
    if start == 0 and ramp == 0:
        return jnp.ones((), jnp.float32)
    return jnp.clip((step.astype(jnp.float32) - start + 1.0) / max(ramp, 1), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Train state and step
# ---------------------------------------------------------------------------------------------


LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(config: ml_collections.ConfigDict, peak: float) -> optax.Schedule:
    """``config.lr_schedule``: "constant" (the release) or "cosine" decay to 0 over
    ``num_train_steps``; either after a linear warm-up of ``config.warmup_steps`` from 0."""
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(
            f"config.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got "
            f"{config.lr_schedule!r}"
        )
    warmup = config.warmup_steps
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup, max(config.num_train_steps, warmup + 1)
        )
    if not warmup:
        return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
    )


def make_optimizers(config: ml_collections.ConfigDict):
    """Adam for G (lr, betas 0 / 0.9) and D (``d_lr_ratio`` x lr), as the release; the
    schedule (``learning_rate_schedule``) counts Adam's own steps, so a resumed run continues it
    and a fine-tuning run starts it afresh."""
    g_tx = optax.adam(
        learning_rate_schedule(config, config.learning_rate), b1=config.beta1, b2=config.beta2
    )
    d_tx = optax.adam(
        learning_rate_schedule(config, config.learning_rate * config.d_lr_ratio),
        b1=config.beta1, b2=config.beta2,
    )
    return g_tx, d_tx


def _split(module: nnx.Module):
    graphdef, params, spectral, rest = nnx.split(module, nnx.Param, SpectralState, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"{type(module).__name__} holds state other than Param/SpectralState")
    return graphdef, params, spectral


def put_global(tree, shardings):
    """Host arrays (identical on every process) -> global ``jax.Array``s with these shardings.

    ``make_array_from_callback`` works when the mesh spans several processes, where each
    process can only place its own devices' shards.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def put(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

    return jax.tree.map(put, tree, shardings)


class Trainer:
    """Owns the networks' structure, the optimisers and the jitted functions for one config."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
        self.config = config
        self.mesh = mesh
        self.g_tx, self.d_tx = make_optimizers(config)
        replicated = sharding.replicated(mesh)

        def init():
            g, d, _ = build_networks(config, with_vgg=False)
            _, g_params, g_spec = _split(g)
            _, d_params, d_spec = _split(d)
            return {
                "step": jnp.zeros((), jnp.int32),
                "g_params": g_params,
                "g_spec": g_spec,
                "d_params": d_params,
                "d_spec": d_spec,
                "g_opt": self.g_tx.init(g_params),
                "d_opt": self.d_tx.init(d_params),
                # The first step whose loss was non-finite (-1: none), and a bitmask over TERMS.
                "bad_step": jnp.full((), -1, jnp.int32),
                "bad_terms": jnp.zeros((), jnp.int32),
            }

        # Structure from an abstract trace; values (only when asked for: a resumed run restores
        # into the abstract state instead) from one compiled program that writes them straight
        # to their shardings (eager init would compile every small initialiser, and could not
        # place arrays on other hosts' devices).
        g, d, _ = nnx.eval_shape(lambda: build_networks(config, with_vgg=False))
        abstract = jax.eval_shape(init)
        self.state_sharding = jax.tree.map(lambda _: replicated, abstract)
        self.abstract_state = _abstract(abstract, self.state_sharding)
        self._init = jax.jit(init, out_shardings=self.state_sharding)
        vgg = load_vgg(config) if uses_vgg(config) else None
        if vgg is not None:
            vgg_def, vgg_state = nnx.split(vgg)
            self.vgg_state = put_global(vgg_state, replicated)
            layers = losses.VGG_LAYERS
        else:
            vgg_def, self.vgg_state, layers = None, None, ()
        self.nets = Networks(_split(g)[0], _split(d)[0], vgg_def, layers)
        self.weights = loss_weights(config)
        self.gan_type = config.loss.gan_type
        batch_sharding = sharding.batch_sharding(mesh)
        self.batch_sharding = batch_sharding
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(
                self.state_sharding,
                None if self.vgg_state is None else replicated,
                batch_sharding,
                batch_sharding,
            ),
            out_shardings=(self.state_sharding, replicated),
            donate_argnums=(0,),
        )
        self.predict = jax.jit(self._predict, out_shardings=batch_sharding)

    def init_state(self) -> dict[str, Any]:
        """A freshly initialised training state, new arrays on every call.

        The training step donates its input state, so a state must not be used twice; each
        call here gives arrays of their own (the init program is compiled once).
        """
        return self._init()

    def read_weights(self, source: str) -> dict[str, nnx.State]:
        """G's and D's weights and spectral-norm vectors from ``source``, as train-state entries.

        ``source`` (``config.init_from``): a folder written by ``python -m isnet_jax.convert``
        (the official weights) or a training workdir, its latest step or ``DIR@STEP``. Returns
        ``{"g_params", "g_spec"}`` and, when the source has a discriminator, ``{"d_params",
        "d_spec"}``: merged into ``init_state()``, a fine-tuning run starts at step 0 with fresh
        Adam moments. A source without a discriminator (converted without ``--discriminator``)
        leaves D as initialised, with a warning. Raises ``FileNotFoundError`` / ``ValueError``
        naming the file (and key) when the source does not fit this config's model.
        """
        path, step = checkpoint.split_step(source)
        g, d, meta = checkpoint.restore_models(
            path, step,
            expect=(self.config.model.generator, self.config.model.blocks),
            sharding=sharding.replicated(self.mesh),
        )
        weights = dict(zip(("g_params", "g_spec"), _split(g)[1:], strict=True))
        logging.info("Initialising G from %s, step %d (%s).", path, meta["step"],
                     meta.get("source", "a training run"))
        if d is None:
            logging.warning(
                "%s holds no discriminator: D starts from its initialisation. To fine-tune the "
                "release's D too, convert with --discriminator InpaintingModel_dis.pth.", path
            )
        else:
            weights.update(zip(("d_params", "d_spec"), _split(d)[1:], strict=True))
            logging.info("Initialising D from the same checkpoint.")
        return weights

    def modules(self, state: dict[str, Any]) -> tuple[nnx.Module, nnx.Module]:
        """``(generator, discriminator)`` of a training state, as NNX modules (copies)."""
        g = nnx.merge(self.nets.g_def, state["g_params"], state["g_spec"], copy=True)
        d = nnx.merge(self.nets.d_def, state["d_params"], state["d_spec"], copy=True)
        return g, d

    # The step ------------------------------------------------------------------------------
    def gradients(self, state, vgg_state, image, mask):
        """``((g_grads, d_grads), (terms, g_loss, pred, new_g_spec, new_d_spec))`` of one step.

        Traceable; the training step applies these through Adam.
        """
        def total_loss(g_params, d_params):
            terms, pred, g_spec, d_spec = compute_terms(
                self.nets, (g_params, state["g_spec"]), (d_params, state["d_spec"]), vgg_state,
                image, mask, gan_type=self.gan_type, train=True,
            )
            ramp = gan_ramp(self.config, state["step"])
            g_loss = sum(
                self.weights[t] * terms[t] * (ramp if t in GAN_TERMS else 1.0)
                for t in self.weights
            )
            # G's terms see D detached and D's loss sees the prediction detached, so one
            # gradient of the sum is each network's own gradient.
            return g_loss + terms["d_loss"], (terms, g_loss, pred, g_spec, d_spec)

        return jax.grad(total_loss, argnums=(0, 1), has_aux=True)(
            state["g_params"], state["d_params"]
        )

    def _train_step(self, state, vgg_state, image, mask):
        grads, aux = self.gradients(state, vgg_state, image, mask)
        terms, g_loss, pred, g_spec, d_spec = aux
        g_updates, g_opt = self.g_tx.update(grads[0], state["g_opt"], state["g_params"])
        d_updates, d_opt = self.d_tx.update(grads[1], state["d_opt"], state["d_params"])
        values = jnp.stack([terms[t] for t in TERMS] + [g_loss])
        finite = jnp.isfinite(values)
        first_bad = (state["bad_step"] < 0) & ~jnp.all(finite)
        bad_bits = jnp.sum(jnp.where(finite[: len(TERMS)], 0, 2 ** jnp.arange(len(TERMS))))
        new_state = {
            "step": state["step"] + 1,
            "g_params": optax.apply_updates(state["g_params"], g_updates),
            "g_spec": g_spec,
            "d_params": optax.apply_updates(state["d_params"], d_updates),
            "d_spec": d_spec,
            "g_opt": g_opt,
            "d_opt": d_opt,
            "bad_step": jnp.where(first_bad, state["step"], state["bad_step"]),
            "bad_terms": jnp.where(first_bad, bad_bits, state["bad_terms"]).astype(jnp.int32),
        }
        comp = pred * (1.0 - mask) + image * mask
        mse = jnp.mean(jnp.square(comp - image), axis=(1, 2, 3))
        metrics = dict(terms)
        metrics["g_loss"] = g_loss
        metrics["train_psnr"] = jnp.mean(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10)))
        metrics["train_l1_percent"] = 100.0 * jnp.mean(jnp.abs(comp - image))
        metrics["hole_fraction"] = jnp.mean(1.0 - mask)
        return new_state, metrics

    def _predict(self, g_params, g_spec, image, mask):
        g = nnx.merge(self.nets.g_def, g_params, g_spec, copy=True)
        return g(image * mask, train=False)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

DATA_ITEM = "data"
_MODEL_ITEMS = {"generator": ("g_params", "g_spec"), "discriminator": ("d_params", "d_spec")}
_STANDARD_ITEMS = (*_MODEL_ITEMS, "g_opt", "d_opt", "step")


def checkpoint_manager(workdir: epath.PathLike, config) -> ocp.CheckpointManager:
    import grain  # the data iterator's state is saved beside the model

    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.max_checkpoints_to_keep,
        enable_async_checkpointing=True,
        create=True,
    )
    return ocp.CheckpointManager(
        checkpoint.checkpoint_dir(workdir),
        options=options,
        item_handlers={
            checkpoint.META: ocp.JsonCheckpointHandler(),
            **{k: ocp.StandardCheckpointHandler() for k in _STANDARD_ITEMS},
            DATA_ITEM: grain.checkpoint.CheckpointHandler(),
        },
    )


def _full_state(params: nnx.State, spectral: nnx.State) -> dict:
    return nnx.to_pure_dict(nnx.merge_state(params, spectral))


def save_checkpoint(mngr, state, data_iterator, config) -> None:
    """Saves every item asynchronously (the arrays are copied off the devices before return)."""
    import grain

    step = int(jax.device_get(state["step"]))
    meta = checkpoint.generator_meta(
        config.model.generator, config.model.blocks, source="isnet-jax training"
    )
    # What the data loader's saved position depends on (checked before a resume).
    meta["data"] = {"num_workers": config.data.num_workers, "process_count": jax.process_count()}
    items = {
        checkpoint.META: ocp.args.JsonSave(meta),
        "g_opt": ocp.args.StandardSave(state["g_opt"]),
        "d_opt": ocp.args.StandardSave(state["d_opt"]),
        "step": ocp.args.StandardSave({"step": state["step"]}),
    }
    for item, (params, spec) in _MODEL_ITEMS.items():
        items[item] = ocp.args.StandardSave(_full_state(state[params], state[spec]))
    if data_iterator is not None:
        items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
    mngr.save(step, args=ocp.args.Composite(**items))


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def restore_checkpoint(mngr, step: int, state, state_sharding, data_iterator):
    """Restores every item of ``step`` into the structure of ``state`` (and the iterator).

    ``state`` may be abstract (``Trainer.abstract_state``): only its structure, shapes and
    dtypes are used. The non-finite record starts clean, as checkpoints never hold a bad state.
    """
    import grain

    replicated = jax.tree.leaves(state_sharding)[0]
    targets = {
        "g_opt": _abstract(state["g_opt"], state_sharding["g_opt"]),
        "d_opt": _abstract(state["d_opt"], state_sharding["d_opt"]),
        "step": {"step": _abstract(state["step"], replicated)},
    }
    for item, (params, spec) in _MODEL_ITEMS.items():
        full = _full_state(state[params], state[spec])
        targets[item] = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), full
        )
    args = {k: ocp.args.StandardRestore(v) for k, v in targets.items()}
    if data_iterator is not None:
        args[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
    new_state = dict(state)
    for item, (params, spec) in _MODEL_ITEMS.items():
        full = nnx.merge_state(state[params], state[spec])
        full = jax.tree.map(lambda x: x, full)  # a fresh State: the template stays untouched
        nnx.replace_by_pure_dict(full, restored[item])
        new_state[params], new_state[spec] = nnx.split_state(full, nnx.Param, SpectralState)
    new_state["g_opt"], new_state["d_opt"] = restored["g_opt"], restored["d_opt"]
    new_state["step"] = restored["step"]["step"]
    new_state["bad_step"] = put_global(np.full((), -1, np.int32), state_sharding["bad_step"])
    new_state["bad_terms"] = put_global(np.zeros((), np.int32), state_sharding["bad_terms"])
    return new_state


def check_resumable(mngr, step: int, config: ml_collections.ConfigDict) -> bool:
    """Checks that checkpoint ``step`` can continue under ``config``.

    Raises ``ValueError`` naming the setting to change when the generator differs, or when the
    data loader's position was saved under another worker or process count (it cannot be
    restored then). Returns whether to restore that position (``config.data.resume_position``).
    """
    meta = checkpoint.read_meta(mngr, step)
    where = f"the checkpoint of step {step} in {mngr.directory}"
    model = (meta.get("generator"), meta.get("blocks"))
    if model != (config.model.generator, config.model.blocks):
        raise ValueError(
            f"{where} holds generator {model[0]!r} with blocks={model[1]}, but this config has "
            f"{config.model.generator!r} with blocks={config.model.blocks}: set "
            "--config.model.generator / --config.model.blocks to match, or use a new workdir."
        )
    if not config.data.resume_position:
        logging.warning(
            "config.data.resume_position is False: the data order restarts from the seed."
        )
        return False
    saved = meta.get("data")  # absent in checkpoints written before it was recorded
    here = {"num_workers": config.data.num_workers, "process_count": jax.process_count()}
    if saved is not None and saved != here:
        raise ValueError(
            f"{where} saved the data loader's position with {saved['num_workers']} worker(s) "
            f"per process in {saved['process_count']} process(es); this run has "
            f"{here['num_workers']} in {here['process_count']}. Pass "
            f"--config.data.num_workers={saved['num_workers']} on as many processes as before, "
            "or --config.data.resume_position=False to keep the weights and optimiser state "
            "and restart the data order."
        )
    return True


def check_finite(state) -> None:
    """Raises NonFiniteLossError naming the first step and loss terms that were not finite."""
    bad_step, bad_terms = (int(x) for x in jax.device_get((state["bad_step"], state["bad_terms"])))
    if bad_step >= 0:
        names = [t for i, t in enumerate(TERMS) if bad_terms & (1 << i)] or ["total G loss"]
        raise NonFiniteLossError(
            f"non-finite loss at step {bad_step + 1} in {', '.join(names)}; training stopped "
            "and no checkpoint of this state was written. Lower the learning rate, check the "
            "data (an all-known mask makes the hole-normalised L1 divide by zero) or use "
            "float32 compute."
        )


# ---------------------------------------------------------------------------------------------
# Sample grids
# ---------------------------------------------------------------------------------------------


def sample_grid(image, mask, pred, max_rows: int = 4) -> np.ndarray:
    """Rows of ``masked input | prediction | composite | ground truth`` as one uint8 image."""
    image, mask, pred = (np.asarray(a, np.float32)[:max_rows] for a in (image, mask, pred))
    masked = image * mask + (1.0 - mask)  # holes shown white
    comp = pred * (1.0 - mask) + image * mask
    rows = [np.concatenate(cols, axis=1) for cols in zip(masked, pred, comp, image, strict=True)]
    grid = np.concatenate(rows, axis=0)
    return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _write_png(path: epath.Path, array: np.ndarray) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _describe(config, mesh, trainer: Trainer) -> None:
    g_params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state["g_params"]))
    logging.info(
        "Training %s (blocks=%d, %s G parameters) at %dx%d, global batch %d, %s compute, on %d "
        "%s device(s) in %d process(es), mesh %s.",
        config.model.generator, config.model.blocks, f"{g_params:,}", config.image_size,
        config.image_size, config.batch_size, config.compute_dtype, jax.device_count(),
        jax.devices()[0].platform, jax.process_count(), dict(mesh.shape),
    )
    if trainer.nets.vgg_def is None:
        logging.info("Perceptual and style losses are off (both weights are 0): VGG19 not used.")
    else:
        logging.info("VGG19 for perceptual/style losses: %s", config.loss.vgg_weights)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains for ``config.num_train_steps``, resuming from ``workdir``'s latest checkpoint.

    Returns the last logged metrics (floats).
    """
    from isnet_jax import input_pipeline

    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_chief = jax.process_index() == 0

    # Mesh and networks ----------------------------------------------------------------------
    mesh = sharding.create_mesh(config.get("mesh"))
    sharding.check_batch_size(config.batch_size, mesh)
    trainer = Trainer(config, mesh)
    _describe(config, mesh, trainer)

    # Input ---------------------------------------------------------------------------------------
    train_iter = input_pipeline.create_train_iterator(
        config, process_index=jax.process_index(), process_count=jax.process_count()
    )

    # Checkpoints -----------------------------------------------------------------------------
    mngr = checkpoint_manager(workdir, config)
    latest = mngr.latest_step()
    if latest is not None:
        logging.info("Resuming from the checkpoint of step %d in %s.", latest, mngr.directory)
        if config.init_from:
            logging.warning(
                "config.init_from=%s is ignored: %s already holds a checkpoint, and resuming it "
                "wins. Use a new workdir to start over from %s.",
                config.init_from, workdir, config.init_from,
            )
        with_position = check_resumable(mngr, latest, config)
        state = restore_checkpoint(
            mngr, latest, trainer.abstract_state, trainer.state_sharding,
            train_iter if with_position else None,
        )
    else:
        logging.info("No checkpoint in %s: starting from step 0.", mngr.directory)
        # Read first: a source that does not fit stops the run before anything is compiled.
        weights = trainer.read_weights(config.init_from) if config.init_from else {}
        state = {**trainer.init_state(), **weights}
    first_step = int(jax.device_get(state["step"]))

    # Metrics -------------------------------------------------------------------------------------
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
    if first_step == 0:
        writer.write_hparams(_flat_hparams(config))
    hooks = []
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=config.num_train_steps, writer=writer, every_secs=None,
        every_steps=config.log_every_steps,
    )
    if is_chief:
        hooks.append(report_progress)

    evaluator = None
    if config.eval_every_steps and config.eval.num_images:
        from isnet_jax import evaluate

        evaluator = evaluate.PeriodicEvaluator(config, mesh, trainer.nets.g_def)

    # Compile ahead of the loop: the compile time is reported, and hosts meet at a barrier
    # before the first collective (CPU collectives give up if peers arrive 30 s apart).
    start = time.perf_counter()
    batch_shape = (config.batch_size, config.image_size, config.image_size)
    train_step = trainer.train_step.lower(
        state,
        trainer.vgg_state,
        jax.ShapeDtypeStruct((*batch_shape, 3), jnp.float32, sharding=trainer.batch_sharding),
        jax.ShapeDtypeStruct((*batch_shape, 1), jnp.float32, sharding=trainer.batch_sharding),
    ).compile()
    logging.info("Compiled the training step in %.1f s.", time.perf_counter() - start)
    sharding.barrier("isnet_jax_train_step_compiled")

    # Loop ----------------------------------------------------------------------------------------
    pending: list[dict[str, jax.Array]] = []
    data_seconds = 0.0
    window_start = time.perf_counter()
    skipped = 0
    last: dict[str, float] = {}
    fixed_batch = None
    step = first_step
    logging.info("Training steps %d..%d; checkpoints every %d steps in %s.", first_step + 1,
                 config.num_train_steps, config.checkpoint_every_steps, mngr.directory)
    def keep_progress(why: str) -> None:
        """Saves the last completed step unless it is saved: the next run resumes from it."""
        check_finite(state)
        if step > first_step and mngr.latest_step() != step:
            logging.warning("%s at step %d: saving a checkpoint before stopping.", why, step)
            save_checkpoint(mngr, state, train_iter, config)

    terminate = _TerminationRequest()
    try:
        with metric_writers.ensure_flushes(writer), terminate:
            while step < config.num_train_steps:
                t0 = time.perf_counter()
                try:
                    with report_progress.timed("data", wait_jax_async_dispatch=False):
                        batch = next(train_iter)
                except Exception:
                    if not terminate.received:
                        raise
                    # A SIGTERM to the whole process group (SLURM does that) also stops
                    # grain's worker processes; the state of the last step is still whole.
                    keep_progress("The data workers stopped with the SIGTERM")
                    break
                t1 = time.perf_counter()
                skipped += int(np.sum(batch.get("skipped", 0)))
                image, mask = (
                    jax.make_array_from_process_local_data(trainer.batch_sharding, batch[k])
                    for k in ("image", "mask")
                )
                if fixed_batch is None:
                    fixed_batch = (image, mask)
                state, metrics = train_step(state, trainer.vgg_state, image, mask)
                pending.append(metrics)
                step += 1
                data_seconds += t1 - t0

                if step % config.log_every_steps == 0 or step == config.num_train_steps:
                    check_finite(state)
                    last = _mean_metrics(pending)
                    pending = []
                    # Share of the wall time since the last log spent waiting for the next batch.
                    now = time.perf_counter()
                    last["data_wait_fraction"] = data_seconds / max(now - window_start, 1e-9)
                    last["skipped_images"] = float(_sum_over_hosts(skipped))
                    writer.write_scalars(step, last)
                    logging.info(
                        "step %d/%d: G %.4f (l1 %.4f, adv %.4f, fm %.4f, perc %.4f, style %.4f) "
                        "D %.4f | train PSNR %.2f dB | data wait %.1f%%",
                        step, config.num_train_steps, last["g_loss"], last["l1"], last["g_adv"],
                        last["feature_matching"], last["perceptual"], last["style"],
                        last["d_loss"], last["train_psnr"], 100 * last["data_wait_fraction"],
                    )
                    data_seconds, window_start = 0.0, time.perf_counter()
                # After the log's device sync: steps are dispatched asynchronously, so a rate
                # measured before it counts dispatches, not finished steps.
                for hook in hooks:
                    hook(step)

                if config.image_every_steps and (
                    step % config.image_every_steps == 0 or step == config.num_train_steps
                ):
                    pred = trainer.predict(state["g_params"], state["g_spec"], *fixed_batch)
                    _write_samples(writer, workdir, step, *fixed_batch, pred, is_chief)

                if evaluator is not None and step % config.eval_every_steps == 0:
                    scalars = evaluator(state["g_params"], state["g_spec"])
                    writer.write_scalars(step, scalars)

                preempted = mngr.reached_preemption(step) or terminate.received
                if (
                    step % config.checkpoint_every_steps == 0
                    or step == config.num_train_steps
                    or preempted
                ):
                    check_finite(state)
                    save_checkpoint(mngr, state, train_iter, config)
                    if preempted:
                        logging.warning(
                            "Preemption or SIGTERM at step %d: checkpoint saved, stopping; "
                            "the same command resumes from here.", step
                        )
                        break
    except KeyboardInterrupt:
        keep_progress("Interrupted")
        mngr.wait_until_finished()
        raise
    finally:
        mngr.wait_until_finished()
    mngr.close()
    logging.info("Done: step %d. Checkpoints in %s.", step, mngr.directory)
    return last


class _TerminationRequest:
    """Turns SIGTERM into "save a checkpoint after this step and stop" in a one-process run.

    SLURM, Kubernetes, ``docker stop`` and spot-VM shutdowns send SIGTERM some seconds before
    killing; by default Python dies on it and the steps since the last checkpoint are lost.
    Runs of several processes get the same from JAX's preemption service through Orbax's
    ``reached_preemption`` (every host must save at the same step, which a local flag cannot
    promise), so the handler is installed only for one process, and only from the main thread.
    """

    def __init__(self):
        self.received = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if not self.received:
            logging.warning("SIGTERM received: saving a checkpoint after the current step.")
        self.received = True

    def __enter__(self) -> _TerminationRequest:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _sum_over_hosts(value: int) -> int:
    if jax.process_count() == 1:
        return value
    gathered = jax.experimental.multihost_utils.process_allgather(np.int64(value))
    return int(np.sum(gathered))


def _mean_metrics(pending: list[dict[str, jax.Array]]) -> dict[str, float]:
    stacked = jax.device_get(pending)
    return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def _write_samples(writer, workdir, step, image, mask, pred, is_chief) -> None:
    image, mask, pred = (
        np.asarray(jax.experimental.multihost_utils.process_allgather(a, tiled=True))
        for a in (image, mask, pred)
    )
    if not is_chief:
        return
    grid = sample_grid(image, mask, pred)
    writer.write_images(step, {"samples": grid[None]})
    samples = workdir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    _write_png(samples / f"step_{step:08d}.png", grid)


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
    flat = {}

    def walk(prefix, node):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, ml_collections.ConfigDict):
                walk(name + ".", value)
            else:
                flat[name] = value if isinstance(value, int | float | str | bool) else str(value)

    walk("", config)
    return flat
