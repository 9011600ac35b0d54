"""The device mesh and how parameters, optimizer state and batches are laid out on it.

Axes: `data` (pure data parallelism) and `fsdp` (data parallel for the batch, and every large
parameter split along its largest divisible dimension: ZeRO-3 style). The batch is split over
both axes, so negatives of the contrastive loss always span the global batch.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
# Parameters smaller than this stay replicated: splitting them costs more than it saves.
MIN_SHARDED_SIZE = 2**14


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves one -1 entry to the devices left over; checks the product."""
    unknown = [a for a in MESH_AXES if a not in axis_sizes]
    extra = [a for a in axis_sizes if a not in MESH_AXES]
    if unknown or extra:
        raise ValueError(f"mesh needs exactly the axes {MESH_AXES}, got {sorted(axis_sizes)}")
    sizes = [int(axis_sizes[a]) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(axis_sizes)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not divide into mesh {dict(axis_sizes)}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"{num_devices} are present"
        )
    return tuple(sizes)


def make_mesh(axis_sizes: Mapping[str, int], devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(axis_sizes, len(devices))
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def leaf_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Splits the largest dimension divisible by the fsdp axis; small leaves stay whole."""
    if fsdp_size == 1 or not shape or math.prod(shape) < MIN_SHARDED_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(mesh, abstract_state):
    """NamedShardings for a pytree of ShapeDtypeStructs (parameters, optimizer state, step)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, leaf_spec(tuple(x.shape), fsdp)), abstract_state
    )


def local_batch_size(global_batch_size: int, mesh) -> int:
    """Rows each process feeds; the global batch must split evenly over devices."""
    devices = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    if global_batch_size % devices:
        raise ValueError(
            f"batch_size {global_batch_size} is not divisible by the {devices} "
            "devices of the mesh's batch axes"
        )
    return global_batch_size // jax.process_count()
