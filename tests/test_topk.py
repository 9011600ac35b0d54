"""Exact top-k search against a numpy brute force (float64 scores, stable argsort)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trace_jax.retrieval import topk as topk_lib
from trace_jax.retrieval.topk import put_bank, search, topk

DIM = 16


def unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(queries, bank, k, keep=None):
    """(scores, ids) by sorting every score; ties to the lower index, -inf/-1 for excluded."""
    scores = queries.astype(np.float64) @ bank.astype(np.float64).T
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    return top, np.where(top == -np.inf, -1, order)


def assert_same(got, want):
    (scores, ids), (want_scores, want_ids) = got, want
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)  # -inf == -inf passes


def wide(rng, coarse, n):
    """int64 values spread over several high 32-bit words, from -2**33 up across zero."""
    return -(2**33) + rng.integers(0, coarse, n) * 2**29 + rng.integers(0, 3, n)


def twins(rng, n):
    """Six int64 values in pairs with equal low 32 bits."""
    return rng.integers(0, 2, n) * 2**32 + rng.integers(0, 3, n)


def exclusion_data(rng, own, n_bank):
    """Ids, groups and spans that exclude some but not all items; query i has bank item own[i]'s id.

    Ids and groups share their low 32 bits with others, so a comparison that loses the high
    word fails.
    """
    bank_ids = (np.arange(n_bank) % 3) * 2**32 + np.arange(n_bank) // 3
    bank_start, query_start = wide(rng, 40, n_bank), wide(rng, 40, len(own))
    return {
        "query_ids": bank_ids[own],
        "bank_ids": bank_ids,
        "query_groups": twins(rng, len(own)),
        "bank_groups": twins(rng, n_bank),
        "query_spans": np.stack([query_start, query_start + wide(rng, 6, len(own)) + 2**33], 1),
        "bank_spans": np.stack([bank_start, bank_start + wide(rng, 6, n_bank) + 2**33], 1),
    }


def eligible(data, kinds):
    keep = True
    if "ids" in kinds:
        keep = keep & (data["query_ids"][:, None] != data["bank_ids"][None, :])
    if "groups" in kinds:
        keep = keep & (data["query_groups"][:, None] != data["bank_groups"][None, :])
    if "spans" in kinds:
        (qs, qe), (bs, be) = data["query_spans"].T, data["bank_spans"].T
        keep = keep & ~((qs[:, None] < be[None, :]) & (bs[None, :] < qe[:, None]))
    return keep


@pytest.mark.parametrize("k", [1, 7, 40])
def test_matches_brute_force(k):
    rng = np.random.default_rng(k)
    queries, bank = unit(rng, 21, DIM), unit(rng, 203, DIM)
    one = jax.local_devices()[:1]
    # 203 rows in blocks of 32, 21 queries in blocks of 8: both last blocks are padded. k=1 and
    # 7 take the two-stage path (k * 4 < 32), k=40 the direct one with k above the block size.
    got = search(put_bank(bank, block_rows=32, devices=one), queries, k, query_block=8, group=4)
    assert_same(got, brute_force(queries, bank, k))


@pytest.mark.parametrize("kinds", [("ids",), ("groups",), ("spans",), ("ids", "groups", "spans")])
def test_exclusions(kinds):
    rng = np.random.default_rng(len(kinds))
    queries, bank = unit(rng, 19, DIM), unit(rng, 150, DIM)
    own = rng.integers(0, 150, 19)
    data = exclusion_data(rng, own, 150)
    queries[:10] = bank[own[:10]]  # their own item is their best match unless excluded
    bank_keys = {f"bank_{kind}": data[f"bank_{kind}"] for kind in kinds}
    query_keys = {f"query_{kind}": data[f"query_{kind}"] for kind in kinds}
    device_bank = put_bank(bank, block_rows=16, devices=jax.local_devices()[:1], **bank_keys)
    for group in (2, 16):  # two-stage (6 * 2 < 16) and direct block top-k
        got = search(device_bank, queries, 6, group=group, **query_keys)
        assert_same(got, brute_force(queries, bank, 6, eligible(data, kinds)))


def test_unused_bank_keys_exclude_nothing():
    rng = np.random.default_rng(3)
    queries, bank = unit(rng, 5, DIM), unit(rng, 40, DIM)
    data = exclusion_data(rng, np.arange(5), 40)
    device_bank = put_bank(
        bank, bank_ids=data["bank_ids"], bank_groups=data["bank_groups"], block_rows=8
    )
    assert_same(search(device_bank, queries, 4), brute_force(queries, bank, 4))


def test_padding_never_takes_a_slot():
    rng = np.random.default_rng(9)
    # 203 rows in blocks of 32: rows 192-202 and 21 rows of padding, which repeat row 202.
    # Every score is negative (below what zero-padding would score) except query 0's with row
    # 202; rows 192-201 are everyone's best, so the last block's groups decide the result.
    bank, queries = -np.abs(unit(rng, 203, DIM)), np.abs(unit(rng, 4, DIM))
    bank[192:202] *= 0.1
    bank[:192, 0] = -1
    queries[0] = np.eye(DIM)[0]
    queries[1:, 0] = 0
    bank[202] = 2 * np.eye(DIM)[0] - 1  # the worst item of queries 1-3
    ids = np.arange(203)
    device_bank = put_bank(bank, bank_ids=ids, block_rows=32, devices=jax.local_devices()[:1])
    for query_ids in (None, np.array([202, 0, 1, 2])):  # with and without excluding row 202
        got = search(device_bank, queries, 3, query_ids=query_ids, group=2)
        keep = None if query_ids is None else query_ids[:, None] != ids[None, :]
        assert_same(got, brute_force(queries, bank, 3, keep))


def test_fewer_eligible_than_k():
    rng = np.random.default_rng(4)
    queries, bank = unit(rng, 3, DIM), unit(rng, 12, DIM)
    bank_groups = np.array([0] * 9 + [1, 2, 2])
    query_groups = np.array([0, 2, 3])  # 3, 10 and 12 eligible items
    scores, ids = topk(
        queries, bank, 6, query_groups=query_groups, bank_groups=bank_groups, block_rows=8
    )
    keep = query_groups[:, None] != bank_groups[None, :]
    assert_same((scores, ids), brute_force(queries, bank, 6, keep))
    assert (ids[0, 3:] == -1).all() and (scores[0, 3:] == -np.inf).all()
    assert (ids[0, :3] >= 9).all() and (ids[1:] >= 0).all() and np.isfinite(scores[1:]).all()
    # Nothing eligible at all.
    scores, ids = topk(queries[:1], bank, 2, query_groups=[0], bank_groups=np.zeros(12, int))
    assert (ids == -1).all() and (scores == -np.inf).all()


def test_ties_go_to_the_lower_index():
    rng = np.random.default_rng(5)
    # Entries in {-1, 0, 1}: every score is an exact small integer, so ties are real ties.
    bank = rng.integers(-1, 2, (90, DIM)).astype(np.float32)
    bank[50:70] = bank[10]  # duplicates of item 10, across blocks
    queries = rng.integers(-1, 2, (9, DIM)).astype(np.float32)
    queries[0] = bank[10]
    device_bank = put_bank(bank, block_rows=16, devices=jax.local_devices()[:1])
    for k in (3, 30):  # two-stage (3 * 4 < 16) and direct block top-k
        got = search(device_bank, queries, k, group=4)
        assert_same(got, brute_force(queries, bank, k))
    assert list(got[1][0, :21]) == [10] + list(range(50, 70))


def test_sharded_over_8_devices_equals_one_device():
    devices = jax.local_devices()
    assert len(devices) == 8  # tests/conftest.py
    rng = np.random.default_rng(6)
    bank = rng.integers(-1, 2, (301, DIM)).astype(np.float32)  # ties, as above
    bank[200:240] = bank[3]
    queries = np.concatenate([bank[[3, 7]], rng.integers(-1, 2, (11, DIM)).astype(np.float32)])
    data = exclusion_data(rng, np.array([3, 7] + [0] * 11), 301)
    bank_keys = {key: value for key, value in data.items() if key.startswith("bank_")}
    query_keys = {key: value for key, value in data.items() if key.startswith("query_")}
    banks = [put_bank(bank, block_rows=16, devices=d, **bank_keys) for d in (devices[:1], devices)]
    for k in (5, 45):  # two-stage (5 * 2 < 16); 45 > the 16 rows a device holds per block
        results = [search(b, queries, k, query_block=8, group=2, **query_keys) for b in banks]
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
        keep = eligible(data, ("ids", "groups", "spans"))
        assert_same(results[1], brute_force(queries, bank, k, keep))


def test_jax_inputs_and_empty_queries():
    rng = np.random.default_rng(7)
    queries, bank = unit(rng, 4, DIM), unit(rng, 30, DIM)
    scores, ids = topk(jnp.asarray(queries), jnp.asarray(bank), 3, block_rows=8)
    assert isinstance(scores, np.ndarray) and isinstance(ids, np.ndarray)
    assert_same((scores, ids), brute_force(queries, bank, 3))
    scores, ids = topk(np.zeros((0, DIM), np.float32), bank, 3)
    assert scores.shape == ids.shape == (0, 3)


def test_compiles_once_per_block_shape():
    rng = np.random.default_rng(8)
    device_bank = put_bank(unit(rng, 100, DIM), block_rows=16)
    search(device_bank, unit(rng, 5, DIM), 3)
    compiled = topk_lib._step._cache_size()
    # Another bank size with the same block shape, other query counts in the same bucket.
    other = put_bank(unit(rng, 77, DIM), block_rows=16)
    for n in (6, 8):
        search(device_bank, unit(rng, n, DIM), 3)
        search(other, unit(rng, n, DIM), 3)
    assert topk_lib._step._cache_size() == compiled


@pytest.mark.parametrize(
    "change, message",
    [
        ({"k": 31}, "k must be"),
        ({"k": 0}, "k must be"),
        ({"queries": np.full((2, DIM), np.nan, np.float32)}, "queries contains NaN"),
        ({"bank": np.insert(np.ones((29, DIM), np.float32), 3, np.nan, axis=0)}, "bank contains"),
        ({"bank": np.insert(np.ones((29, DIM), np.float32), 3, np.inf, axis=0)}, "bank contains"),
        ({"queries": np.ones((2, DIM + 1), np.float32)}, "queries must be"),
        ({"bank": np.ones(DIM, np.float32)}, "bank must be"),
        ({"bank": np.ones((0, DIM), np.float32)}, "bank is empty"),
        ({"query_ids": [1, 2]}, "needs bank_ids"),
        ({"query_ids": [1], "bank_ids": np.arange(30)}, "query_ids must be"),
        ({"query_spans": [[0, 1], [5, 4]], "bank_spans": np.zeros((30, 2), int)}, "start <= end"),
    ],
)
def test_errors(change, message):
    args = {
        "queries": np.ones((2, DIM), np.float32),
        "bank": np.ones((30, DIM), np.float32),
        "k": 3,
    }
    args.update(change)
    with pytest.raises(ValueError, match=message):
        topk(**args)
