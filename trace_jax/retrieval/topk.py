"""Exact cosine top-k over an embedding bank: blocked, sharded over devices, with exclusions.

Embeddings are L2-normalised, so the inner product is the cosine. The search is exact: it returns
what sorting the full (queries, bank) score matrix would, with ties broken by lower bank index.

Shape of the computation, and why:

- The bank is put on the devices once (`put_bank`), padded and cut into blocks of
  `block_rows * n_devices` rows, each block split over all local devices (mesh axis "bank").
  Searches then only move the queries; the bank's transfer is a one-time cost.
- `search` walks the bank one block at a time. Each device scores its part of the block
  against a block of queries, takes the block's top-k and merges it into its running top-k.
  Only a (query_block, block_rows) score matrix exists at any time, and one compiled step serves
  every block and every bank size: the last blocks are padded, not compiled again.
- A block's top-k is taken in two stages because on CPU `lax.top_k` over 4096 scores a row costs
  half as much as the matmul that made them (single-threaded, ~1.5 ns a score): first the top-k
  of the maxima of groups of `group` consecutive items (a cheap vectorised reduction), then the
  top-k of the k*group items of those groups together with the running top-k. This is exact:
  an item outside the k best groups is beaten by each of those groups' maxima (ties included, as
  a group wins a tie of maxima only over groups of higher index).
- Padding repeats the bank's last row, so it never changes a group's maximum and is dropped
  after the group stage, among a few candidates, rather than by masking every score.
- At the end every device's running top-k is gathered and sorted by (score descending, index
  ascending), so the result does not depend on the number of devices.

Exclusions are masks applied before any top-k, so an excluded item never takes a slot:
  ids     a query never gets a bank item with its own id (e.g. itself);
  groups  nor one of its group (e.g. the same series);
  spans   nor one whose [start, end) span overlaps its own (e.g. leakage in time).
Ids, groups and span ends are int64 (unix seconds for spans, as in the data schema). JAX runs
without x64 here, so each is carried as a (high int32, low uint32) pair and compared as such.

When fewer than k bank items are eligible for a query, its remaining slots hold id -1 and score
-inf. k larger than the bank, non-finite values (NaN, inf) and mismatched shapes raise ValueError
before anything runs, so scores are never NaN.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "bank"
# Bank indices are int32 on the devices (x64 is off).
MAX_BANK_SIZE = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True)
class DeviceBank:
    """A bank resident on the devices, ready for `search`.

    blocks[j] holds rows j*R .. (j+1)*R-1 of the padded bank, R = block_rows * n_devices, split
    over the mesh axis "bank"; meta[j] holds the same rows of the exclusion keys.
    """

    blocks: tuple[jax.Array, ...]
    meta: tuple[dict, ...]
    size: int
    dim: int
    mesh: Mesh


def _finite(name: str, x: np.ndarray) -> None:
    # A float sum is one fast pass that turns any NaN or inf into a non-finite result; the exact
    # elementwise test (which allocates a mask as large as x) only runs when the sum fails.
    if not np.isfinite(x.sum(dtype=np.float32)) and not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf: scores would not be comparable")


def _vectors(name: str, x, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, d)"
        raise ValueError(f"{name} must be {want}, got shape {x.shape}")
    _finite(name, x)
    return x


def _split64(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 -> (high int32, low uint32): order and equality as the int64 under x64-off JAX."""
    x = x.astype(np.int64)
    return (x >> 32).astype(np.int32), (x & 0xFFFFFFFF).astype(np.uint32)


def _keys(side: str, n: int, ids=None, spans=None, groups=None) -> dict:
    """Checked exclusion keys of one side as {kind: (hi, lo) or ((hi, lo), (hi, lo))}."""
    keys = {}
    for kind, value in (("ids", ids), ("groups", groups)):
        if value is not None:
            value = np.asarray(value)
            if value.shape != (n,) or not np.issubdtype(value.dtype, np.integer):
                raise ValueError(f"{side}_{kind} must be ({n},) integers, got {value.shape}")
            keys[kind] = _split64(value)
    if spans is not None:
        spans = np.asarray(spans)
        if spans.shape != (n, 2) or not np.issubdtype(spans.dtype, np.integer):
            raise ValueError(f"{side}_spans must be ({n}, 2) integers, got {spans.shape}")
        if (spans[:, 0] > spans[:, 1]).any():
            raise ValueError(f"{side}_spans must have start <= end")
        keys["spans"] = (_split64(spans[:, 0]), _split64(spans[:, 1]))
    return keys


def _power_of_two(n: int) -> int:
    """The smallest power of two >= n, at least 8."""
    return max(8, 1 << (n - 1).bit_length())


def _put_rows(x: np.ndarray, start: int, rows: int, sharding: NamedSharding) -> jax.Array:
    """x[start:start+rows] on the devices; a short last block repeats x's last row.

    Repeating a real row (vector and keys alike) means padding never raises a group's maximum,
    so the padding can be dropped after the group stage instead of masking every score.
    """
    piece = x[start : start + rows]
    if len(piece) < rows:
        piece = np.concatenate([piece, np.repeat(x[-1:], rows - len(piece), axis=0)])
    return jax.device_put(piece, sharding)


def put_bank(
    bank,
    *,
    bank_ids=None,
    bank_spans=None,
    bank_groups=None,
    block_rows: int = 4096,
    devices: Sequence[jax.Device] | None = None,
) -> DeviceBank:
    """Checks the bank and puts it on `devices` (default: all local devices), split over them.

    bank: (n, d) float, L2-normalised rows. bank_ids / bank_groups: (n,) ints; bank_spans: (n, 2)
    ints [start, end). Keys given here can be used by any later search; none is required.
    block_rows: bank rows per device per step (the score block is query_block x block_rows).
    """
    bank = _vectors("bank", bank)
    n, dim = bank.shape
    if n == 0:
        raise ValueError("bank is empty")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    keys = _keys("bank", n, bank_ids, bank_spans, bank_groups)
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = Mesh(np.asarray(devices), (AXIS,))
    # A small bank needs no large block; powers of two keep the compiled shapes few.
    block_rows = min(block_rows, _power_of_two(-(-n // len(devices))))
    step = block_rows * len(devices)
    padded = -(-n // step) * step
    if padded > MAX_BANK_SIZE:
        raise ValueError(f"bank has {n} rows, padded to {padded}: more than {MAX_BANK_SIZE}")
    split = NamedSharding(mesh, P(AXIS))
    blocks, meta = [], []
    for start in range(0, padded, step):
        blocks.append(_put_rows(bank, start, step, split))
        meta.append(
            jax.tree.map(functools.partial(_put_rows, start=start, rows=step, sharding=split), keys)
        )
    return DeviceBank(tuple(blocks), tuple(meta), n, dim, mesh)


def _equal(a, b):
    return (a[0] == b[0]) & (a[1] == b[1])


def _less(a, b):
    return (a[0] < b[0]) | ((a[0] == b[0]) & (a[1] < b[1]))


def _excluded(bank_keys: Mapping, query_keys: Mapping):
    """Mask of (query, item) pairs to exclude; keys broadcast (queries, 1) against (1, items)."""
    out = False
    if "ids" in query_keys:
        out |= _equal(bank_keys["ids"], query_keys["ids"])
    if "groups" in query_keys:
        out |= _equal(bank_keys["groups"], query_keys["groups"])
    if "spans" in query_keys:
        (b_start, b_end), (q_start, q_end) = bank_keys["spans"], query_keys["spans"]
        out |= _less(q_start, b_end) & _less(b_start, q_end)
    return out


def _local_step(queries, query_keys, block, block_keys, block_index, size, top, idx, *, k, group):
    """One device: score its rows of the block and merge their top-k into (top, idx).

    Rows at index >= size are padding (copies of the bank's last row, see `_put_rows`).
    """
    n_queries, rows = queries.shape[0], block.shape[0]
    first = (block_index * lax.axis_size(AXIS) + lax.axis_index(AXIS)) * rows
    scores = lax.dot_general(
        queries, block, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST
    )
    if query_keys:  # an excluded item must not even raise its group's maximum
        bank_keys = jax.tree.map(lambda a: a[None, :], block_keys)
        query_keys = jax.tree.map(lambda a: a[:, None], query_keys)
        scores = jnp.where(_excluded(bank_keys, query_keys), -jnp.inf, scores)
    if k * group >= rows or rows % group:
        cand, cols = scores, jnp.broadcast_to(jnp.arange(rows), scores.shape)
    else:
        maxima = scores.reshape(n_queries, rows // group, group).max(axis=-1)
        maxima = jnp.where(first + jnp.arange(0, rows, group) < size, maxima, -jnp.inf)
        _, best = lax.top_k(maxima, k)
        # Ascending groups keep candidates in bank order, so top_k's stable ties pick lower ones.
        cols = jnp.sort(best, axis=-1)[:, :, None] * group + jnp.arange(group)
        cols = cols.reshape(n_queries, k * group)
        cand = jnp.take_along_axis(scores, cols, axis=-1)
    cand = jnp.where(first + cols < size, cand, -jnp.inf)
    # The running top-k holds lower indices (earlier blocks) and comes first: ties stay in order.
    top, pos = lax.top_k(jnp.concatenate([top[0], cand], axis=1), k)
    idx = jnp.take_along_axis(jnp.concatenate([idx[0], first + cols], axis=1), pos, axis=1)
    return top[None], idx[None]


@functools.partial(jax.jit, static_argnames=("mesh", "k", "group"))
def _step(queries, query_keys, block, block_keys, block_index, size, top, idx, *, mesh, k, group):
    split = P(AXIS)
    return jax.shard_map(
        functools.partial(_local_step, k=k, group=group),
        mesh=mesh,
        in_specs=(P(), P(), split, split, P(), P(), split, split),
        out_specs=(split, split),
    )(queries, query_keys, block, block_keys, block_index, size, top, idx)


@functools.partial(jax.jit, static_argnames=("k",))
def _merge(top, idx, *, k):
    """Devices' (n_dev, q, k) running top-k -> (q, k), sorted by score then index."""
    n_dev, q, _ = top.shape
    top = jnp.moveaxis(top, 0, 1).reshape(q, n_dev * k)
    idx = jnp.moveaxis(idx, 0, 1).reshape(q, n_dev * k)
    neg, idx = lax.sort((-top, idx), dimension=1, num_keys=2)
    top, idx = -neg[:, :k], idx[:, :k]
    return top, jnp.where(top == -jnp.inf, -1, idx)


def search(
    bank: DeviceBank,
    queries,
    k: int,
    *,
    query_ids=None,
    query_spans=None,
    query_groups=None,
    query_block: int = 1024,
    group: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k bank items of each query by inner product (cosine for unit vectors).

    queries: (q, d) float. query_ids / query_groups: (q,) ints, query_spans: (q, 2) ints
    [start, end); each turns on its exclusion and needs the bank's matching keys.
    query_block: queries per step (at most; fewer queries round up to a power of two).
    group: items per group in the two-stage block top-k; blocks whose rows are not a multiple of
    it, or are at most k * group, take the top-k of every score directly.
    Returns (scores float32 (q, k), ids int64 (q, k)), best first, ties to the lower bank index;
    slots beyond the eligible items hold score -inf and id -1.
    """
    k = int(k)
    if query_block < 1 or group < 1:
        raise ValueError(f"query_block and group must be >= 1, got {query_block}, {group}")
    if not 1 <= k <= bank.size:
        raise ValueError(f"k must be in 1..{bank.size} (the bank size), got {k}")
    queries = _vectors("queries", queries, bank.dim)
    n = len(queries)
    keys = _keys("query", n, query_ids, query_spans, query_groups)
    missing = sorted(set(keys) - set(bank.meta[0]))
    if missing:
        raise ValueError(f"exclusion by {missing} needs bank_{missing[0]} in put_bank")
    if n == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

    mesh, n_dev = bank.mesh, bank.mesh.size
    whole, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
    # Powers of two: few distinct compiled shapes, at most 2x padding.
    qb = min(query_block, _power_of_two(n))
    starts = range(0, n, qb)
    q_blocks, q_keys, state = [], [], []
    for s in starts:
        q_blocks.append(_put_rows(queries, s, qb, whole))
        q_keys.append(
            jax.tree.map(functools.partial(_put_rows, start=s, rows=qb, sharding=whole), keys)
        )
        state.append(
            (
                jax.device_put(np.full((n_dev, qb, k), -np.inf, np.float32), split),
                jax.device_put(np.full((n_dev, qb, k), -1, np.int32), split),
            )
        )
    # Bank blocks outside, query blocks inside: each bank block is read from memory once.
    for j, (block, meta) in enumerate(zip(bank.blocks, bank.meta)):
        for i in range(len(starts)):
            state[i] = _step(
                q_blocks[i],
                q_keys[i],
                block,
                {kind: meta[kind] for kind in keys},
                j,
                bank.size,
                *state[i],
                mesh=mesh,
                k=k,
                group=group,
            )
    scores, ids = [], []
    for i, s in enumerate(starts):
        top, idx = jax.device_get(_merge(*state[i], k=k))
        scores.append(top[: min(qb, n - s)])
        ids.append(idx[: min(qb, n - s)])
    return np.concatenate(scores).astype(np.float32), np.concatenate(ids).astype(np.int64)


def topk(
    queries,
    bank,
    k: int,
    *,
    query_ids=None,
    bank_ids=None,
    query_spans=None,
    bank_spans=None,
    query_groups=None,
    bank_groups=None,
    devices: Sequence[jax.Device] | None = None,
    block_rows: int = 4096,
    query_block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """One-off search: `put_bank` then `search` (keep the DeviceBank to search it again)."""
    device_bank = put_bank(
        bank,
        bank_ids=bank_ids,
        bank_spans=bank_spans,
        bank_groups=bank_groups,
        block_rows=block_rows,
        devices=devices,
    )
    return search(
        device_bank,
        queries,
        k,
        query_ids=query_ids,
        query_spans=query_spans,
        query_groups=query_groups,
        query_block=query_block,
    )
