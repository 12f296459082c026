"""Orbax checkpoint layout shared by training, conversion, evaluation and inference.

A checkpoint directory (``WORKDIR/checkpoints`` for a training run) is an Orbax
``CheckpointManager`` directory with one sub-directory per step, each holding named items:

  ``meta``           JSON: which generator (``generator``, ``blocks``) and where it came from
  ``generator``      the generator's state (parameters and spectral-norm vectors)
  ``discriminator``  the discriminator's state (optional: converted weights may lack it)
  ``g_opt``, ``d_opt``, ``step``, ``data``  optimiser states, the step and the grain
                     iterator's position (training runs only)

Any item can be restored alone, so evaluation never builds optimiser state. All Orbax code of
the project is here: the model-only restores (evaluation, inference, ``config.init_from``,
``convert``) first, then the training state (save, resume checks, restore).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from isnet_jax import errors, models, sharding, weights

META = "meta"
GENERATOR = "generator"
DISCRIMINATOR = "discriminator"
G_OPT, D_OPT, STEP, DATA = "g_opt", "d_opt", "step", "data"
# 1: model-only checkpoints and training runs before non-finite updates were skipped;
# 2: the optimiser states are wrapped in optax.apply_if_finite.
FORMAT_VERSION = 2


# Orbax shares the writing of a replicated array among its replicas by slicing it on each
# device: one compiled program per array shape and device at every process's first save (145
# for the tiny model on 4 CPU devices, 0.1-0.5 s each on CPU: a minute of a rehearsal host's
# first save). Slicing speeds up only the writing of large arrays; smaller ones are written
# whole by one replica. The threshold is per replica's slice, as Orbax's option.
MIN_REPLICA_SLICE_BYTES = 4 << 20


def _slice_large_arrays_only() -> None:
    # Set on the registered handler itself: registering a new one logs a warning in every
    # command, and would drop whatever else its owner configured.
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(handler, "_min_slice_bytes_for_replica_parallel", 0) is None:
        handler._min_slice_bytes_for_replica_parallel = MIN_REPLICA_SLICE_BYTES


_slice_large_arrays_only()


class DamagedCheckpointError(errors.UserError):
    """A checkpoint step that exists but cannot be read back (a file missing or truncated)."""


def checkpoint_dir(workdir: epath.PathLike) -> epath.Path:
    return epath.Path(workdir) / "checkpoints"


def _absolute(directory: epath.Path) -> epath.Path:
    # Orbax refuses a relative path ("Checkpoint path should be absolute") in its background
    # commit, after the step ran: --workdir=runs/demo must work as well as an absolute one.
    return directory if directory.is_absolute() else directory.resolve()


def resolve(path: epath.PathLike, step: int | None = None) -> tuple[epath.Path, int]:
    """Finds the manager directory and step for a workdir, a manager directory or a step directory.

    Raises FileNotFoundError naming the path when no checkpoint is there.
    """
    path = epath.Path(path)
    candidates = [path, checkpoint_dir(path)]
    if path.name.isdigit():  # a step directory
        candidates.insert(0, path.parent)
        step = int(path.name) if step is None else step
    for directory in candidates:
        if not directory.is_dir():
            continue
        with _manager(directory) as mngr:
            steps = sorted(mngr.all_steps())
        if steps:
            if step is None:
                return directory, steps[-1]
            if step in steps:
                return directory, step
            raise errors.MissingFileError(
                f"{directory} has no checkpoint for step {step}; it has steps {steps}"
            )
    if not path.exists() and str(path) in weights.table():
        weights.fetch(str(path))  # the release's weights: says where they are and how to convert
    raise errors.MissingFileError(
        f"no Orbax checkpoint found at {path} (looked in {', '.join(map(str, candidates))}); "
        "pass a training workdir, its checkpoints/ folder, or a folder written by "
        "`python -m isnet_jax.convert`"
    )


def all_steps(path: epath.PathLike) -> list[int]:
    """The steps saved under a workdir (or a checkpoint folder), oldest first; [] when none."""
    path = epath.Path(path)
    for directory in (checkpoint_dir(path), path):
        if directory.is_dir():
            with _manager(directory) as mngr:
                steps = sorted(mngr.all_steps())
            if steps:
                return steps
    return []


def split_step(source: str | epath.PathLike) -> tuple[epath.Path, int | None]:
    """``"DIR@STEP"`` -> ``(DIR, STEP)``; ``"DIR"`` -> ``(DIR, None)`` (the latest step)."""
    head, sep, tail = str(source).rpartition("@")
    if sep and tail.isdigit():
        return epath.Path(head), int(tail)
    return epath.Path(source), None


def _manager(directory: epath.Path, read_only: bool = True) -> ocp.CheckpointManager:
    # Reading needs no read_only option (it only logs a warning per manager): a manager that
    # may not create its folder writes nothing until it is asked to save.
    options = ocp.CheckpointManagerOptions(create=not read_only)
    # Handlers named up front: item metadata (to check a tree before restoring it) needs them.
    handlers = {
        META: ocp.JsonCheckpointHandler(),
        GENERATOR: ocp.StandardCheckpointHandler(),
        DISCRIMINATOR: ocp.StandardCheckpointHandler(),
    }
    return ocp.CheckpointManager(_absolute(directory), options=options, item_handlers=handlers)


def _damaged(mngr: ocp.CheckpointManager, step: int, items, error: BaseException):
    # Orbax reports a missing or truncated file as a bare Exception holding TensorStore's
    # whole spec, which names neither the item nor the file: say which items were read.
    reason = str(error).split(". See full", 1)[0].splitlines()[0][:120]
    return DamagedCheckpointError(
        f"the checkpoint of step {step} in {mngr.directory} is damaged: its "
        f"{'/'.join(items)} cannot be read (a file is missing or truncated: {reason})"
    )


def _restore(mngr: ocp.CheckpointManager, step: int, /, **args) -> Any:
    """``mngr.restore`` of these items; any failure to read them is a DamagedCheckpointError.

    After a failure Orbax's abandoned reads print their own errors as they are collected: the
    command lines drop those (``cli.quiet_abandoned_reads``)."""
    try:
        return mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # noqa: BLE001 - Orbax raises plain Exception for unreadable data
        raise _damaged(mngr, step, args, e) from None


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The ``meta`` item (generator name, blocks, provenance) of ``step`` in an open manager."""
    return dict(_restore(mngr, step, **{META: ocp.args.JsonRestore()})[META])


def generator_meta(name: str, blocks: int, source: str,
                   width: int = models.WIDTH) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "generator": name, "blocks": blocks, "width": width,
            "source": source}


def saved_model(meta: dict[str, Any]) -> tuple[str, int, int]:
    """``(generator, blocks, width)`` of a checkpoint's meta (without a width: the release's,
    as every checkpoint before the width option)."""
    return meta.get("generator"), meta.get("blocks"), meta.get("width", models.WIDTH)


def config_model(config) -> tuple[str, int, int]:
    """``(generator, blocks, width)`` that ``config.model`` asks for."""
    return config.model.generator, config.model.blocks, config.model.width


def _model_mismatch(where: str, saved: tuple[str, int, int], wanted: tuple[str, int, int],
                    asks: str, then: str = "") -> errors.ConfigError:
    """The one line for a checkpoint whose model is not the config's: the flags to pass."""
    def describe(m):
        return f"generator {m[0]!r} with blocks={m[1]}, width={m[2]}"

    return errors.ConfigError(
        f"{where} holds {describe(saved)}, but {asks} {describe(wanted)}: set "
        f"--config.model.generator={saved[0]} --config.model.blocks={saved[1]} "
        f"--config.model.width={saved[2]} to match{then}")


def abstract_pure_state(module: nnx.Module, sharding: jax.sharding.Sharding | None = None) -> dict:
    """The module's state as a pure dict of ``jax.ShapeDtypeStruct`` (an Orbax restore target).

    The sharding (default: this process's first device) is part of the target so that a
    checkpoint written by another topology (several hosts, another device count) restores here.
    """
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        nnx.to_pure_dict(nnx.state(module)),
    )


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    # "stages/0/blocks0/...": saved trees name list entries "0" where the live one has 0.
    name = lambda k: str(getattr(k, "key", getattr(k, "idx", k)))  # noqa: E731
    return {"/".join(map(name, path)): tuple(leaf.shape) for path, leaf in flat}


def _check_tree(saved, target, where: str) -> None:
    """Names the first key that is missing, unexpected or of another shape in a saved item."""
    saved, target = _shapes(saved), _shapes(target)
    problems = [f"missing key {k}" for k in target if k not in saved]
    problems += [f"unexpected key {k}" for k in saved if k not in target]
    problems += [
        f"key {k} is {saved[k]}, expected {shape}"
        for k, shape in target.items()
        if k in saved and saved[k] != shape
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise errors.ConfigError(f"{where} does not fit this model: {problems[0]}{more}")


def _item_dir(mngr: ocp.CheckpointManager, step: int, item: str) -> epath.Path:
    return epath.Path(mngr.directory) / str(step) / item


def _restore_module(
    mngr: ocp.CheckpointManager,
    step: int,
    item: str,
    abstract: nnx.Module,
    sharding: jax.sharding.Sharding | None,
) -> nnx.Module:
    """Restores ``item`` of ``step`` into the abstract module (every key and shape checked)."""
    target = abstract_pure_state(abstract, sharding)
    # The item's own metadata: the manager's would scan (and warn about) every other item.
    where = _item_dir(mngr, step, item)
    try:
        saved = ocp.StandardCheckpointHandler().metadata(where)
    except Exception as e:  # noqa: BLE001 - as _restore
        raise _damaged(mngr, step, [item], e) from e
    _check_tree(saved, target, str(where))
    restored = _restore(mngr, step, **{item: ocp.args.StandardRestore(target)})
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, restored[item])
    return nnx.merge(graphdef, state)


def restore_models(
    path: epath.PathLike,
    step: int | None = None,
    *,
    dtype: jnp.dtype = jnp.float32,
    expect: tuple[str, int, int] | None = None,
    with_discriminator: bool = True,
    sharding: jax.sharding.Sharding | None = None,
) -> tuple[nnx.Module, nnx.Module | None, dict[str, Any]]:
    """Builds a checkpoint's generator (and discriminator, if it holds one) with their weights
    and spectral-norm vectors.

    ``path`` is a training workdir, its ``checkpoints/`` folder, a folder written by
    ``python -m isnet_jax.convert``, or one step's folder. ``expect``, ``(generator, blocks,
    width)`` (``config_model``), is checked against the checkpoint's meta before anything is
    restored. Returns ``(generator, discriminator_or_None, meta)``; ``meta["step"]`` is the
    restored step.

    Without ``step``, a damaged latest step (a file missing or truncated) is skipped with a
    warning that names it, for the newest intact one; a damaged ``step`` asked for by number
    raises ``DamagedCheckpointError`` naming the intact steps to pass instead.
    """
    directory, chosen = resolve(path, step)
    if step is not None or epath.Path(path).name.isdigit():  # a step asked for by number
        return _restore_models(directory, chosen, dtype, expect, with_discriminator, sharding)
    steps = all_steps(directory)
    for candidate in reversed(steps):
        try:
            return _restore_models(directory, candidate, dtype, expect, with_discriminator,
                                   sharding)
        except DamagedCheckpointError as e:
            logging.warning("%s; trying the step before it.", e)
    raise DamagedCheckpointError(f"every checkpoint in {directory} (steps {steps}) is damaged")


def _restore_models(directory, step, dtype, expect, with_discriminator, sharding):
    try:
        return _read_models(directory, step, dtype, expect, with_discriminator, sharding)
    except DamagedCheckpointError as e:
        others = [s for s in all_steps(directory) if s != step]
        hint = f"; steps {others} are there too" if others else ""
        raise DamagedCheckpointError(f"{e}{hint}") from e.__cause__


def _read_models(directory, step, dtype, expect, with_discriminator, sharding):
    with _manager(directory) as mngr:
        meta = read_meta(mngr, step)
        model = saved_model(meta)
        if expect is not None and model != tuple(expect):
            raise _model_mismatch(f"{directory / str(step) / META}", model, tuple(expect),
                                  "the config asks for")
        # Built abstractly: running the initialisers eagerly would cost far more than the restore.
        g = _restore_module(
            mngr, step, GENERATOR,
            nnx.eval_shape(lambda: models.create_generator(
                model[0], model[1], width=model[2], dtype=dtype, rngs=nnx.Rngs(0))),
            sharding,
        )
        d = None
        if with_discriminator and _item_dir(mngr, step, DISCRIMINATOR).exists():
            d = _restore_module(
                mngr, step, DISCRIMINATOR,
                nnx.eval_shape(lambda: models.Discriminator(dtype=dtype, rngs=nnx.Rngs(0))),
                sharding,
            )
    meta["step"] = step
    return g, d, meta


def restore_generator(
    path: epath.PathLike,
    step: int | None = None,
    *,
    dtype: jnp.dtype = jnp.float32,
) -> tuple[nnx.Module, dict[str, Any]]:
    """Builds the checkpoint's generator and loads its weights and spectral-norm state.

    Returns ``(generator, meta)``; ``meta["step"]`` is the restored step.
    """
    g, _, meta = restore_models(path, step, dtype=dtype, with_discriminator=False)
    return g, meta


def write_models(
    directory: epath.PathLike,
    step: int,
    meta: dict[str, Any],
    generator: nnx.Module,
    discriminator: nnx.Module | None = None,
) -> epath.Path:
    """Writes a model-only checkpoint (what `python -m isnet_jax.convert` produces)."""
    directory = epath.Path(directory)
    items = {
        META: ocp.args.JsonSave(meta),
        GENERATOR: ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(generator))),
    }
    if discriminator is not None:
        items[DISCRIMINATOR] = ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(discriminator)))
    with _manager(directory, read_only=False) as mngr:
        mngr.save(step, args=ocp.args.Composite(**items))
        mngr.wait_until_finished()
    return directory / str(step)


# ---------------------------------------------------------------------------------------------
# The training state: ``train.Trainer``'s dict of G / D parameters and spectral-norm vectors,
# optimiser states and step, saved as the items above plus the data iterator's position.

_MODEL_ITEMS = {GENERATOR: ("g_params", "g_spectral"), DISCRIMINATOR: ("d_params", "d_spectral")}


def training_manager(workdir: epath.PathLike, max_to_keep: int) -> ocp.CheckpointManager:
    """The manager of a training run's ``WORKDIR/checkpoints`` (asynchronous saves)."""
    import grain  # the data iterator's state is saved beside the model

    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True
    )
    return ocp.CheckpointManager(
        _absolute(checkpoint_dir(workdir)),
        options=options,
        item_handlers={
            META: ocp.JsonCheckpointHandler(),
            **{k: ocp.StandardCheckpointHandler()
               for k in (GENERATOR, DISCRIMINATOR, G_OPT, D_OPT, STEP)},
            DATA: grain.checkpoint.CheckpointHandler(),
        },
    )


def _model_dict(state: dict[str, Any], item: str) -> dict:
    params, spectral = _MODEL_ITEMS[item]
    return nnx.to_pure_dict(nnx.merge_state(state[params], state[spectral]))


def save_train_state(
    mngr: ocp.CheckpointManager, state: dict[str, Any], data_iterator, config
) -> None:
    """Saves every item asynchronously (the arrays are copied off the devices before return)."""
    import grain

    step = int(jax.device_get(state["step"]))
    name, blocks, width = config_model(config)
    meta = generator_meta(name, blocks, "isnet-jax training", width)
    # What the data loader's saved position depends on (checked before a resume).
    meta["data"] = {"num_workers": config.data.num_workers, "process_count": jax.process_count()}
    items = {
        META: ocp.args.JsonSave(meta),
        G_OPT: ocp.args.StandardSave(state["g_opt"]),
        D_OPT: ocp.args.StandardSave(state["d_opt"]),
        STEP: ocp.args.StandardSave({"step": state["step"]}),
        **{item: ocp.args.StandardSave(_model_dict(state, item)) for item in _MODEL_ITEMS},
    }
    if data_iterator is not None:
        items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    mngr.save(step, args=ocp.args.Composite(**items))


def abstract_tree(tree, shardings):
    """``tree``'s leaves as ``jax.ShapeDtypeStruct`` with ``shardings`` (a restore target)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def set_aside(mngr: ocp.CheckpointManager, step: int) -> epath.Path:
    """Renames a damaged step's folder to ``STEP.damaged`` (no longer a step to Orbax)."""
    source = epath.Path(mngr.directory) / str(step)
    target = source.parent / f"{step}.damaged"
    if jax.process_index() == 0:
        if target.exists():
            target.rmtree()
        source.rename(target)
    mngr.reload()
    return target


def set_aside_unfinished(mngr: ocp.CheckpointManager) -> list[epath.Path]:
    """Moves step folders whose save never finished (a process or the bucket lost during it)
    to ``STEP.unfinished``: Orbax lists only finished steps, but saving that step again would
    meet the old files. Returns the new paths, for the log."""
    directory = epath.Path(mngr.directory)
    finished = set(mngr.all_steps())
    unfinished = [
        path for path in (sorted(directory.iterdir()) if directory.exists() else [])
        if path.name.split(".", 1)[0].isdigit()
        and int(path.name.split(".", 1)[0]) not in finished
        and not path.name.endswith((".damaged", ".unfinished"))
    ]
    sharding.barrier("isnet_jax_unfinished_listed")  # before process 0 moves anything
    moved = [directory / f"{path.name.split('.', 1)[0]}.unfinished" for path in unfinished]
    if jax.process_index() == 0:
        for path, target in zip(unfinished, moved, strict=True):
            if target.exists():
                target.rmtree()
            path.rename(target)
    sharding.barrier("isnet_jax_unfinished_moved")
    if moved:
        mngr.reload()
    return moved


def check_resumable(mngr: ocp.CheckpointManager, step: int, config) -> bool:
    """Checks that checkpoint ``step`` can continue under ``config``.

    Raises ``ValueError`` naming the setting to change when the generator differs, when the
    checkpoint predates this version's training state, or when the data loader's position was
    saved under another worker or process count (it cannot be restored then). Returns whether to
    restore that position (``config.data.resume_position``).
    """
    meta = read_meta(mngr, step)
    where = f"the checkpoint of step {step} in {mngr.directory}"
    model = saved_model(meta)
    if model != config_model(config):
        raise _model_mismatch(where, model, config_model(config), "this config has",
                              ", or use a new workdir.")
    if meta.get("format", 1) < FORMAT_VERSION:
        raise errors.ConfigError(
            f"{where} was written by an older isnet-jax, whose optimiser state this version "
            "cannot continue. Start a new workdir with --config.init_from="
            f"{mngr.directory.parent}@{step} to keep its weights."
        )
    if not config.data.resume_position:
        logging.warning(
            "config.data.resume_position is False: the data order restarts from the seed."
        )
        return False
    saved = meta.get("data")
    here = {"num_workers": config.data.num_workers, "process_count": jax.process_count()}
    if saved is not None and saved != here:
        raise errors.ConfigError(
            f"{where} saved the data loader's position with {saved['num_workers']} worker(s) "
            f"per process in {saved['process_count']} process(es); this run has "
            f"{here['num_workers']} in {here['process_count']}. Pass "
            f"--config.data.num_workers={saved['num_workers']} on as many processes as before, "
            "or --config.data.resume_position=False to keep the weights and optimiser state "
            "and restart the data order."
        )
    return True


def restore_train_state(
    mngr: ocp.CheckpointManager, step: int, abstract_state: dict, data_iterator
) -> dict[str, Any]:
    """Restores every item of ``step`` into the structure and shardings of ``abstract_state``
    (``abstract_tree``'s leaves), and the data iterator's position into ``data_iterator``
    unless it is None."""
    import grain

    targets = {
        G_OPT: abstract_state["g_opt"],
        D_OPT: abstract_state["d_opt"],
        STEP: {"step": abstract_state["step"]},
    }
    for item, keys in _MODEL_ITEMS.items():
        targets[item] = _model_dict({k: abstract_state[k] for k in keys}, item)
    args = {k: ocp.args.StandardRestore(v) for k, v in targets.items()}
    if data_iterator is not None:
        args[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = _restore(mngr, step, **args)
    state = {"g_opt": restored[G_OPT], "d_opt": restored[D_OPT], "step": restored[STEP]["step"]}
    for item, (params, spectral) in _MODEL_ITEMS.items():
        full = nnx.merge_state(abstract_state[params], abstract_state[spectral])
        full = jax.tree.map(lambda x: x, full)  # a fresh State: the template stays untouched
        nnx.replace_by_pure_dict(full, restored[item])
        state[params], state[spectral] = nnx.split_state(full, nnx.Param, models.SpectralState)
    return state
