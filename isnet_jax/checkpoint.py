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


def _manager(directory: epath.Path, read_only: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        read_only=read_only, create=not read_only, save_interval_steps=0 if read_only else 1
    )
    return ocp.CheckpointManager(directory, options=options)


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


def restore_generator(
    path: epath.PathLike,
    step: int | None = None,
    *,
    dtype: jnp.dtype = jnp.float32,
) -> tuple[nnx.Module, dict[str, Any]]:
    """Builds the checkpoint's generator and loads its weights and spectral-norm state.

    Returns ``(generator, meta)``; ``meta["step"]`` is the restored step.
    """
    directory, step = resolve(path, step)
    with _manager(directory) as mngr:
        meta = read_meta(mngr, step)
        # Built abstractly: running the initialisers eagerly would cost far more than the restore.
        abstract = nnx.eval_shape(
            lambda: models.create_generator(
                meta["generator"], meta["blocks"], dtype=dtype, rngs=nnx.Rngs(0)
            )
        )
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                **{GENERATOR: ocp.args.StandardRestore(abstract_pure_state(abstract))}
            ),
        )
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, restored[GENERATOR])
    generator = nnx.merge(graphdef, state)
    meta["step"] = step
    return generator, meta


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
