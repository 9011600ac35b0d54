"""The device mesh and how parameters, optimizer state and batches are laid out on it.

Axes: `data` (pure data parallelism), `fsdp` (data parallel for the batch, and parameters split
along their `embed` dimension: ZeRO-3 style) and `model` (tensor parallelism: the FFN hidden
width and the attention heads split across devices). The batch is split over `data` and `fsdp`,
so the negatives of the contrastive loss always span the global batch.

Parameters carry logical axis names (trace_jax/model/partitioning.py); the config's logical
axis rules map those names onto mesh axes, as they do for the activation constraints inside the
model (`flax.linen.with_logical_constraint`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from trace_jax.model.partitioning import logical_axes

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (or axes); a name with no rule is never split.
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
)
# Parameters smaller than this stay replicated: splitting them costs more than it saves.
MIN_SHARDED_SIZE = 2**14

Rules = Sequence[tuple[str, str | Sequence[str] | None]]


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes in MESH_AXES order: an omitted axis is 1, one -1 takes the devices left over."""
    extra = [a for a in axis_sizes if a not in MESH_AXES]
    if extra:
        raise ValueError(f"unknown mesh axes {extra}; the mesh axes are {MESH_AXES}")
    sizes = [int(axis_sizes.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(axis_sizes)}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(axis_sizes)}")
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


def logical_to_mesh(
    names: Sequence[str | None], shape: Sequence[int], mesh, rules: Rules, min_size: int
) -> P:
    """A PartitionSpec for one array: each named dimension gets its rule's mesh axes, unless
    they do not divide it, are already used by another dimension, or the array is small."""
    if math.prod(shape) < min_size:
        return P()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if mesh.shape[a] > 1)
        if not axes or used & set(axes) or size % math.prod(mesh.shape[a] for a in axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def _path_string(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def state_shardings(mesh, abstract_state, rules: Rules = DEFAULT_RULES, min_size=MIN_SHARDED_SIZE):
    """NamedShardings for a pytree of ShapeDtypeStructs (parameters, optimizer state, step)."""

    def one(path, leaf):
        names = logical_axes(_path_string(path), len(leaf.shape))
        return NamedSharding(mesh, logical_to_mesh(names, leaf.shape, mesh, rules, min_size))

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def local_batch_size(global_batch_size: int, mesh) -> int:
    """Rows each process feeds; the global batch must split evenly over devices."""
    devices = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    if global_batch_size % devices:
        raise ValueError(
            f"batch_size {global_batch_size} is not divisible by the {devices} "
            "devices of the mesh's batch axes"
        )
    return global_batch_size // jax.process_count()
