"""The device mesh and the shardings that training, evaluation and the input pipeline share.

Data parallel by default: one ``data`` axis over every device of every host, the batch split
along it, parameters replicated. ``config.mesh`` names the axis sizes so a larger model or
resolution can shard differently later without code changes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from isnet_jax import errors

DATA = "data"


def create_mesh(mesh_config: Any = None, devices: list | None = None) -> Mesh:
    """A mesh with the axes of ``config.mesh`` (``{"data": -1}``: all devices on ``data``).

    One axis may be -1 (the remaining devices). The product must equal the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    axes = dict(mesh_config.items()) if mesh_config is not None else {DATA: -1}
    if DATA not in axes:
        raise errors.ConfigError(f"config.mesh must have a '{DATA}' axis, got {axes}")
    sizes = list(axes.values())
    if sizes.count(-1) > 1:
        raise errors.ConfigError(f"config.mesh may leave at most one axis as -1, got {axes}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise errors.ConfigError(f"config.mesh {axes} does not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise errors.ConfigError(
            f"config.mesh {axes} needs {int(np.prod(sizes))} devices but {len(devices)} are "
            "available; use -1 for one axis to take the rest"
        )
    # Auto axes: XLA's partitioner propagates the batch sharding through the convolutions.
    auto = (jax.sharding.AxisType.Auto,) * len(sizes)
    return jax.make_mesh(tuple(sizes), tuple(axes), axis_types=auto, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Waits until every process reaches ``name`` (no-op for one process).

    Uses the distributed runtime's coordination service rather than a device collective, so it
    works before any collective communicator exists.
    """
    if jax.process_count() == 1:
        return
    coordination_client().wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def coordination_client():
    """JAX's distributed-runtime client (barriers, key-value store) of this process."""
    import orbax.checkpoint as ocp  # JAX exports no name for its coordination client; Orbax does

    return ocp.multihost.get_jax_distributed_client()


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
