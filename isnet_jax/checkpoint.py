"""Orbax checkpoint layout shared by training, conversion, evaluation and inference.

A checkpoint directory (``WORKDIR/checkpoints`` for a training run) is an Orbax
``CheckpointManager`` directory with one sub-directory per step, each holding named items:

  ``meta``           JSON: which generator (``generator``, ``blocks``) and where it came from
  ``generator``      the generator's state (parameters and spectral-norm vectors)
  ``discriminator``  the discriminator's state (optional: converted weights may lack it)
  ``g_opt``, ``d_opt``, ``data``  optimiser states and the grain iterator (training only)

Any item can be restored alone, so evaluation never builds optimiser state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from isnet_jax import models

META = "meta"
GENERATOR = "generator"
DISCRIMINATOR = "discriminator"
FORMAT_VERSION = 1


def checkpoint_dir(workdir: epath.PathLike) -> epath.Path:
    return epath.Path(workdir) / "checkpoints"


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
        steps = ocp.utils.checkpoint_steps(directory)
        if steps:
            if step is None:
                return directory, max(steps)
            if step in steps:
                return directory, step
            raise FileNotFoundError(
                f"{directory} has no checkpoint for step {step}; it has steps {sorted(steps)}"
            )
    raise FileNotFoundError(
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
    options = ocp.CheckpointManagerOptions(
        read_only=read_only, create=not read_only, save_interval_steps=0 if read_only else 1
    )
    # Handlers named up front: item metadata (to check a tree before restoring it) needs them.
    handlers = {
        META: ocp.JsonCheckpointHandler(),
        GENERATOR: ocp.StandardCheckpointHandler(),
        DISCRIMINATOR: ocp.StandardCheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The ``meta`` item (generator name, blocks, provenance) of ``step`` in an open manager."""
    restored = mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    return dict(restored[META])


def generator_meta(name: str, blocks: int, source: str) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "generator": name, "blocks": blocks, "source": source}


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
        raise ValueError(f"{where} does not fit this model: {problems[0]}{more}")


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
    _check_tree(ocp.StandardCheckpointHandler().metadata(where), target, str(where))
    restored = mngr.restore(
        step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)})
    )
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, restored[item])
    return nnx.merge(graphdef, state)


def restore_models(
    path: epath.PathLike,
    step: int | None = None,
    *,
    dtype: jnp.dtype = jnp.float32,
    expect: tuple[str, int] | None = None,
    with_discriminator: bool = True,
    sharding: jax.sharding.Sharding | None = None,
) -> tuple[nnx.Module, nnx.Module | None, dict[str, Any]]:
    """Builds a checkpoint's generator (and discriminator, if it holds one) with their weights
    and spectral-norm vectors.

    ``path`` is a training workdir, its ``checkpoints/`` folder, a folder written by
    ``python -m isnet_jax.convert``, or one step's folder. ``expect``, a ``(generator, blocks)``
    pair, is checked against the checkpoint's meta before anything is restored. Returns
    ``(generator, discriminator_or_None, meta)``; ``meta["step"]`` is the restored step.
    """
    directory, step = resolve(path, step)
    with _manager(directory) as mngr:
        meta = read_meta(mngr, step)
        model = (meta.get("generator"), meta.get("blocks"))
        if expect is not None and model != tuple(expect):
            raise ValueError(
                f"{directory / str(step) / META} holds generator {model[0]!r} with "
                f"blocks={model[1]}, but the config asks for {expect[0]!r} with "
                f"blocks={expect[1]}: set --config.model.generator={model[0]} "
                f"--config.model.blocks={model[1]} to match"
            )
        # Built abstractly: running the initialisers eagerly would cost far more than the restore.
        g = _restore_module(
            mngr, step, GENERATOR,
            nnx.eval_shape(lambda: models.create_generator(
                model[0], model[1], dtype=dtype, rngs=nnx.Rngs(0))),
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
