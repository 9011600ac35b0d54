"""Grain pipelines: determinism, paraphrase sampling, process sharding, exact resume, global arrays."""

import json

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec

from tests.test_synthetic import fake_cache
from trace_jax.data import pipeline
from trace_jax.data import synthetic

N, G = 150, 16  # 9 full global batches per epoch, 6 examples dropped


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return synthetic.SyntheticCaptioned(
        N, seed=1, text_cache=fake_cache(tmp_path_factory.mktemp("text_cache"))
    )


def take(it, n):
    return pipeline.iterate_numpy(it, n)


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype, k
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def train_it(source, **kw):
    kw = {"global_batch_size": G, "seed": 0, "shard_index": 0, "shard_count": 1, **kw}
    return pipeline.make_train_iterator(source, **kw)


def test_batch_matches_source(source):
    (batch,) = take(train_it(source), 1)
    shapes = {
        "series": (G, 5, 96),
        "observed": (G, 5, 96),
        "channel_ids": (G, 5),
        "text_embedding": (G, 384),
        "has_text": (G,),
        "channel_text_embedding": (G, 5, 384),
        "channel_text_valid": (G, 5),
        "label": (G,),
        "index": (G,),
        "valid": (G,),
    }
    assert {k: v.shape for k, v in batch.items()} == shapes
    assert batch["series"].dtype == np.float32 and batch["index"].dtype == np.int64
    assert batch["channel_ids"].dtype == np.int32 and batch["label"].dtype == np.int32
    assert batch["valid"].all()
    for row, i in enumerate(batch["index"]):
        ex = source[int(i)]
        for k in (
            "series",
            "observed",
            "channel_ids",
            "channel_text_embedding",
            "channel_text_valid",
            "label",
        ):
            np.testing.assert_array_equal(batch[k][row], ex[k], err_msg=k)
        assert batch["has_text"][row] == (ex["num_texts"] > 0)


def test_deterministic_and_seeded_per_epoch_shuffle(source):
    steps = 2 * (N // G) + 2  # across two epoch boundaries
    a = take(train_it(source), steps)
    assert_batches_equal(a, take(train_it(source), steps))
    other = take(train_it(source, seed=1), steps)
    assert not np.array_equal(a[0]["index"], other[0]["index"])
    per_epoch = N // G
    epochs = [
        np.concatenate([b["index"] for b in a[e * per_epoch : (e + 1) * per_epoch]])
        for e in range(2)
    ]
    for idx in epochs:  # an epoch visits distinct examples, all but the remainder
        assert len(np.unique(idx)) == per_epoch * G and idx.min() >= 0 and idx.max() < N
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    plain = take(train_it(source, shuffle=False), per_epoch + 1)
    np.testing.assert_array_equal(
        np.concatenate([b["index"] for b in plain]), np.r_[np.arange(per_epoch * G), np.arange(G)]
    )


def test_paraphrase_sampling_seeded_and_within_num_texts(source):
    per_epoch = N // G
    choice = {}
    for b_seed in (0, 0, 5):
        it = train_it(source, seed=b_seed, shuffle=False)
        seen = {}
        for epoch in range(3):
            for b in take(it, per_epoch):
                for row, i in enumerate(b["index"]):
                    ex = source[int(i)]
                    n = int(ex["num_texts"])
                    got = b["text_embedding"][row]
                    if n == 0:
                        assert not b["has_text"][row]
                        np.testing.assert_array_equal(got, 0)
                        continue
                    match = [v for v in range(n) if np.array_equal(got, ex["text_embedding"][v])]
                    assert len(match) == 1
                    seen[(epoch, int(i))] = match[0]
        choice.setdefault(b_seed, []).append(seen)
    assert choice[0][0] == choice[0][1]  # same seed -> same choices
    assert choice[0][0] != choice[5][0]  # another seed -> others
    counts = np.bincount(list(choice[0][0].values()), minlength=3)
    assert counts.min() > 0.2 * counts.sum()  # all three paraphrases are used
    by_epoch = [[choice[0][0].get((e, i)) for i in range(N)] for e in range(3)]
    assert by_epoch[0] != by_epoch[1]  # resampled each epoch
    expected = pipeline.paraphrase_choice(0, 1, np.arange(N), source.num_texts)
    for i in range(N):
        if (1, i) in choice[0][0]:
            assert choice[0][0][(1, i)] == expected[i]


def test_two_processes_concatenate_to_the_global_batch(source):
    steps = N // G + 3  # across an epoch boundary
    whole = take(train_it(source, seed=3), steps)
    parts = [take(train_it(source, seed=3, shard_index=p, shard_count=2), steps) for p in range(2)]
    for step in range(steps):
        assert parts[0][step]["series"].shape[0] == G // 2
        assert not set(parts[0][step]["index"]) & set(parts[1][step]["index"])
        for k in whole[step]:
            np.testing.assert_array_equal(
                np.concatenate([parts[0][step][k], parts[1][step][k]]), whole[step][k]
            )


def test_resume_from_state_dict(source):
    k, more = 7, 6  # the next batches cross the epoch boundary (9 steps per epoch)
    it = train_it(source, seed=4, num_threads=2, prefetch=3)
    take(it, k)
    state = json.loads(json.dumps(it.get_state()))
    assert state["step"] == k
    expected = take(it, more)
    fresh = train_it(source, seed=4, num_threads=0)  # other read settings: same stream
    fresh.set_state(state)
    assert_batches_equal(take(fresh, more), expected)
    # The state is the same on every process: restore a one-process state into two processes.
    halves = []
    for p in range(2):
        part = train_it(source, seed=4, shard_index=p, shard_count=2)
        part.set_state(state)
        halves.append(take(part, more))
    for step in range(more):
        np.testing.assert_array_equal(
            np.concatenate([halves[0][step]["index"], halves[1][step]["index"]]),
            expected[step]["index"],
        )
    with pytest.raises(ValueError, match="another pipeline"):
        train_it(source, seed=5).set_state(state)


def test_resume_through_orbax_and_grain_handler(source, tmp_path):
    it = train_it(source, seed=6)
    take(it, 4)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:  # async by default
        mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        expected = take(it, 8)  # training goes on while the checkpoint is written
        mngr.wait_until_finished()
    fresh = train_it(source, seed=6)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        assert mngr.latest_step() == 4
        restored = mngr.restore(
            4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
        )
    assert restored["data"] is fresh and fresh.step == 4
    assert_batches_equal(take(fresh, 8), expected)


def test_global_arrays_over_eight_devices(source):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    expected = take(train_it(source, seed=2), 2)
    it = train_it(source, seed=2, shard_index=None, shard_count=None, sharding=sharding)
    for want in expected:
        got = next(it)
        for k, v in got.items():
            assert isinstance(v, jax.Array) and v.shape == want[k].shape, k
            assert v.sharding.is_equivalent_to(sharding, v.ndim), k
            assert len(v.addressable_shards) == 8
            assert v.addressable_shards[3].data.shape[0] == G // 8
            np.testing.assert_array_equal(np.asarray(v), want[k], err_msg=k)
    assert got["index"].dtype == np.int32  # x64 off
    with pytest.raises(ValueError, match="one shard per JAX process"):
        train_it(source, shard_index=0, shard_count=2, sharding=sharding)


class _Plain:
    """A source without the synthetic set's `num_texts` array (like a TFDS data source)."""

    def __init__(self, source):
        self._source = source

    def __len__(self):
        return len(self._source)

    def __getitem__(self, i):
        return self._source[i]


def test_require_text_filters(source):
    with_text = np.flatnonzero(source.num_texts > 0)
    assert 0 < len(with_text) < N
    np.testing.assert_array_equal(pipeline.text_indices(_Plain(source)), with_text)
    it = train_it(_Plain(source), require_text=True, num_epochs=1)
    assert it.steps_per_epoch == len(with_text) // G
    batches = take(it, it.steps_per_epoch)
    with pytest.raises(StopIteration):
        next(it)
    idx = np.concatenate([b["index"] for b in batches])
    assert np.all(np.concatenate([b["has_text"] for b in batches]))
    assert set(idx) <= set(with_text) and len(set(idx)) == len(idx)


def test_eval_batches_cover_the_split_once(source):
    whole = list(pipeline.make_eval_batches(source, 32, shard_index=0, shard_count=1))
    assert len(whole) == 5  # ceil(150 / 32)
    idx = np.concatenate([b["index"] for b in whole])
    valid = np.concatenate([b["valid"] for b in whole])
    np.testing.assert_array_equal(idx[valid], np.arange(N))
    assert not valid[N:].any() and np.all(idx[N:] == -1)
    last = whole[-1]
    np.testing.assert_array_equal(last["series"][~last["valid"]], 0)
    for row, i in enumerate(whole[1]["index"]):  # paraphrase 0 (the primary text)
        np.testing.assert_array_equal(
            whole[1]["text_embedding"][row], source[int(i)]["text_embedding"][0]
        )
    halves = [
        list(pipeline.make_eval_batches(source, 32, shard_index=p, shard_count=2)) for p in range(2)
    ]
    for step in range(5):
        for k in whole[step]:
            np.testing.assert_array_equal(
                np.concatenate([halves[0][step][k], halves[1][step][k]]), whole[step][k]
            )


def test_worker_processes_give_the_same_stream(source):
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # Grain multiprocessing reads absl flags
    expected = take(train_it(source, seed=9), 5)
    it = train_it(source, seed=9, worker_count=1)
    try:
        assert_batches_equal(take(it, 3), expected[:3])
        state = it.get_state()
    finally:
        it.close()
    resumed = train_it(source, seed=9, worker_count=1)
    resumed.set_state(state)
    try:
        assert_batches_equal(take(resumed, 2), expected[3:])
    finally:
        resumed.close()


def test_automatic_worker_count_leaves_a_cpu_step_its_cores(source):
    resolve = pipeline.resolve_worker_count
    assert resolve(-1, "cpu", 64) == 0  # the step runs on these cores
    assert resolve(-1, "gpu", 16) == 8 and resolve(-1, "tpu", 240) == pipeline.MAX_AUTO_WORKERS
    assert resolve(-1, "gpu", 1) == 1 and resolve(-1, "gpu", None) == 1
    assert resolve(3, "gpu", 16) == 3 and resolve(0, "gpu", 16) == 0  # as configured
    with pytest.raises(ValueError, match="worker_count must be >= -1"):
        resolve(-2, "cpu", 2)
    with pytest.raises(ValueError, match="resolve_worker_count"):
        train_it(source, seed=0, worker_count=-1)
