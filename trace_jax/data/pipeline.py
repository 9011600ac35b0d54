"""Grain input pipelines for pretraining, alignment and evaluation.

Input: any random-access source of schema dicts (docs/data_schema.md): ``SyntheticCaptioned``,
a ``RecordSource`` over a built Weather-Captioned / Time-MMD split (``load_sources``; it decodes
only the features a batch needs) or that split's ``tfds.data_source(...)``.

Batches are dicts of numpy arrays (strings dropped)::

    series (B, C, T) float32          observed (B, C, T) bool      channel_ids (B, C) int32
    text_embedding (B, D) float32     has_text (B,) bool           label (B,) int32
    channel_text_embedding (B, C, D)  channel_text_valid (B, C)    index (B,) int64
    valid (B,) bool                   (False on padding rows; all True when drop_remainder)

plus any numeric key a source names in its ``extra_batch_keys`` attribute (task-specific
inputs, e.g. forecasting targets), stacked as they are.

``text_embedding`` is ONE of the ``num_texts`` real paraphrases, sampled per example and epoch
by a hash of (seed, epoch, source index) (training), or paraphrase 0 (evaluation); zeros when
the example has no text.

Determinism and sharding. The global stream depends only on (source, seed, global batch size,
shuffle, drop_remainder, require_text): epoch e visits the examples in the order of
``default_rng([seed, e]).permutation(n)``; global step s of epoch e holds positions
``[s*G, (s+1)*G)`` of that order; process p of P receives rows ``[p*G/P, (p+1)*G/P)`` of every
global batch, so the local batches concatenated in process order are exactly the global batch of
a one-process run. With ``drop_remainder`` an epoch has ``n // G`` steps (every epoch drops a
different remainder); without, ``ceil(n / G)`` steps, the last one padded (``valid`` False).

Grain runs it: ``MapDataset.range(step, total_steps).map(read_local_batch)`` then
``to_iter_dataset(ReadOptions)`` (thread prefetch of whole batches) and, with
``worker_count > 0``, ``mp_prefetch`` (worker processes; the source must be picklable, and Grain
multiprocessing needs absl flags parsed, e.g. under ``absl.app.run``).

State. ``BatchIterator`` is a ``grain.DatasetIterator`` whose state is a small JSON dict
(``{"step": ..., "seed": ..., ...}``): restoring rebuilds the Grain pipeline from that step, so
a restored iterator yields exactly the batches an uninterrupted one would, independent of the
worker/thread settings (and of the process count: the step is the same on every process).
Checkpoint it with Orbax through Grain's own handler: ``grain.checkpoint.CheckpointSave(it)`` /
``grain.checkpoint.CheckpointRestore(it)`` in an ``ocp.args.Composite`` (one JSON file per
process), or with ``get_state``/``set_state`` directly.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np

BATCH_KEYS = (
    "series",
    "observed",
    "channel_ids",
    "text_embedding",
    "has_text",
    "channel_text_embedding",
    "channel_text_valid",
    "label",
    "index",
    "valid",
)
# What a batch is made of, per example: a source that can decode a subset (RecordSource)
# decodes only these, plus the source's extra_batch_keys.
SOURCE_KEYS = (
    "series",
    "observed",
    "channel_ids",
    "text_embedding",
    "num_texts",
    "channel_text_embedding",
    "channel_text_valid",
    "label",
)
_STATE_VERSION = 1
_CHECKED_STATE_KEYS = (
    "seed",
    "global_batch_size",
    "num_examples",
    "shuffle",
    "drop_remainder",
    "require_text",
    "paraphrase",
)


def _read(source, indices: Sequence[int]) -> list[Mapping[str, Any]]:
    indices = [int(i) for i in indices]
    if not indices:
        return []
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        return list(getitems(indices))
    return [source[i] for i in indices]


def text_indices(source, chunk: int = 512) -> np.ndarray:
    """Indices (int64, ascending) of the examples with at least one text (num_texts > 0).

    Uses ``source.num_texts`` when the source exposes it as an array (synthetic set); else
    reads every example's ``num_texts`` once.
    """
    counts = getattr(source, "num_texts", None)
    if isinstance(counts, np.ndarray) and counts.shape == (len(source),):
        return np.flatnonzero(counts > 0).astype(np.int64)
    if hasattr(source, "with_keys"):
        source = source.with_keys(("num_texts",))
    keep = []
    for start in range(0, len(source), chunk):
        stop = min(start + chunk, len(source))
        for i, ex in zip(range(start, stop), _read(source, range(start, stop))):
            if int(ex["num_texts"]) > 0:
                keep.append(i)
    return np.asarray(keep, np.int64)


def steps_per_epoch(num_examples: int, global_batch_size: int, drop_remainder: bool) -> int:
    if drop_remainder:
        return num_examples // global_batch_size
    return math.ceil(num_examples / global_batch_size)


MAX_AUTO_WORKERS = 8


def resolve_worker_count(requested: int, platform: str, cpu_count: int | None) -> int:
    """Grain worker processes for `config.data.worker_count` (-1: chosen for the machine).

    -1 gives none where the step runs on the CPU (the step needs the cores, and one process
    prepares Weather-Captioned batches 14x faster than the :cpu alignment step takes them) and
    half the cores, at most MAX_AUTO_WORKERS, beside an accelerator: one process prepares
    9,000-11,000 Weather-Captioned examples a second (BENCHMARKS.md, "Input pipeline"), under
    what a GPU's step takes.
    """
    if requested < -1:
        raise ValueError(f"data.worker_count must be >= -1 (-1: automatic), got {requested}")
    if requested >= 0:
        return requested
    if platform == "cpu":
        return 0
    return min(MAX_AUTO_WORKERS, max(1, (cpu_count or 1) // 2))


_M1, _M2, _GOLD = (
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
    np.uint64(0x9E3779B97F4A7C15),
)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def paraphrase_choice(
    seed: int, epoch: int, index: np.ndarray, num_texts: np.ndarray
) -> np.ndarray:
    """Which paraphrase row each example uses: hash(seed, epoch, index) mod num_texts (0 if none)."""
    index = np.asarray(index, np.int64).astype(np.uint64)
    key = _splitmix64(
        _splitmix64(np.full(index.shape, seed % 2**64, np.uint64)) ^ np.uint64(epoch % 2**64)
    )
    h = _splitmix64(key ^ index)
    n = np.maximum(np.asarray(num_texts, np.int64), 1).astype(np.uint64)
    return np.where(np.asarray(num_texts) > 0, h % n, 0).astype(np.int64)


class LocalBatchReader:
    """Picklable map function: global step -> this process's local batch (numpy dict)."""

    def __init__(
        self,
        source,
        positions: np.ndarray,
        *,
        global_batch_size: int,
        shard_index: int,
        shard_count: int,
        drop_remainder: bool,
        seed: int,
        shuffle: bool,
        paraphrase: str,
    ):
        if global_batch_size <= 0 or global_batch_size % shard_count:
            raise ValueError(
                f"global_batch_size {global_batch_size} must be a positive "
                f"multiple of the process count {shard_count}"
            )
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
        if paraphrase not in ("sample", "first"):
            raise ValueError(f"paraphrase must be 'sample' or 'first', got {paraphrase!r}")
        if hasattr(source, "with_keys"):
            source = source.with_keys(SOURCE_KEYS + tuple(getattr(source, "extra_batch_keys", ())))
        self.source = source
        self.positions = np.asarray(positions, np.int64)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // shard_count
        self.shard_index, self.shard_count = shard_index, shard_count
        self.seed, self.shuffle, self.paraphrase = int(seed), bool(shuffle), paraphrase
        self.steps_per_epoch = steps_per_epoch(
            len(self.positions), global_batch_size, drop_remainder
        )
        self._spec = self._element_spec()
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_orders"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _element_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        if not len(self.positions):
            raise ValueError("the source has no (eligible) examples")
        ex = _read(self.source, [self.positions[0]])[0]
        c_t = np.shape(ex["series"])
        dim = np.shape(ex["text_embedding"])[-1]
        return {
            "series": (c_t, np.float32),
            "observed": (c_t, np.bool_),
            "channel_ids": (c_t[:1], np.int32),
            "text_embedding": ((dim,), np.float32),
            "has_text": ((), np.bool_),
            "channel_text_embedding": ((c_t[0], dim), np.float32),
            "channel_text_valid": (c_t[:1], np.bool_),
            "label": ((), np.int32),
            "index": ((), np.int64),
            "valid": ((), np.bool_),
            **{
                k: (np.shape(ex[k]), np.asarray(ex[k]).dtype)
                for k in getattr(self.source, "extra_batch_keys", ())
            },
        }

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Positions (into ``positions``) in the order epoch `epoch` visits them."""
        n = len(self.positions)
        if not self.shuffle:
            return np.arange(n)
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                order = np.random.default_rng([self.seed, epoch]).permutation(n)
                self._orders = {e: o for e, o in self._orders.items() if e > epoch - 2}
                self._orders[epoch] = order
        return order

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, in_epoch = divmod(int(step), self.steps_per_epoch)
        start = in_epoch * self.global_batch_size + self.shard_index * self.local_batch_size
        slots = np.arange(start, start + self.local_batch_size)
        real = slots < len(self.positions)
        index = self.positions[self.epoch_order(epoch)[slots[real]]]
        examples = _read(self.source, index)
        b = self.local_batch_size
        batch = {k: np.zeros((b,) + shape, dtype) for k, (shape, dtype) in self._spec.items()}
        batch["label"][:] = -1
        batch["index"][:] = -1
        if not examples:
            return batch
        num_texts = np.array([int(ex["num_texts"]) for ex in examples], np.int64)
        if self.paraphrase == "sample":
            rows = paraphrase_choice(self.seed, epoch, index, num_texts)
        else:
            rows = np.zeros(len(examples), np.int64)
        n = len(examples)
        batch["series"][:n] = np.stack([np.asarray(ex["series"], np.float32) for ex in examples])
        batch["observed"][:n] = np.stack([np.asarray(ex["observed"], bool) for ex in examples])
        batch["channel_ids"][:n] = np.stack([np.asarray(ex["channel_ids"]) for ex in examples])
        for i, (ex, row) in enumerate(zip(examples, rows)):
            if num_texts[i] > 0:
                batch["text_embedding"][i] = np.asarray(ex["text_embedding"])[row]
        batch["has_text"][:n] = num_texts > 0
        batch["channel_text_embedding"][:n] = np.stack(
            [np.asarray(ex["channel_text_embedding"], np.float32) for ex in examples]
        )
        batch["channel_text_valid"][:n] = np.stack(
            [np.asarray(ex["channel_text_valid"], bool) for ex in examples]
        )
        batch["label"][:n] = [int(ex["label"]) for ex in examples]
        for k in getattr(self.source, "extra_batch_keys", ()):
            batch[k][:n] = np.stack([np.asarray(ex[k]) for ex in examples])
        batch["index"][:n] = index
        batch["valid"][:n] = True
        return batch


class BatchIterator(grain.DatasetIterator):
    """Iterator over local (or, with `sharding`, global ``jax.Array``) batches.

    A ``grain.DatasetIterator``: ``get_state()`` is a JSON-serialisable dict, ``set_state``
    restores it exactly, and Grain's Orbax handler (``grain.checkpoint.CheckpointSave`` /
    ``CheckpointRestore``) checkpoints it. The Grain pipeline is built lazily (first
    ``next``/``start_prefetch``), so restoring right after construction starts workers once.
    """

    def __init__(
        self,
        reader: LocalBatchReader,
        *,
        num_epochs: int | None,
        sharding=None,
        worker_count: int = 0,
        num_threads: int = 1,
        prefetch: int = 2,
        drop_remainder: bool = True,
        require_text: bool = False,
    ):
        super().__init__()
        self._it = None  # the Grain iterator, built lazily (close() may run from __del__)
        if worker_count < 0:
            raise ValueError(
                f"worker_count must be >= 0, got {worker_count} (resolve a config's -1 with "
                "resolve_worker_count)"
            )
        if reader.steps_per_epoch == 0:
            raise ValueError(
                f"{len(reader.positions)} examples make no batch of "
                f"{reader.global_batch_size} (drop_remainder=True)"
            )
        self.reader = reader
        self.num_epochs = num_epochs
        self.total_steps = (
            sys.maxsize if num_epochs is None else num_epochs * reader.steps_per_epoch
        )
        self.sharding = sharding
        self.worker_count, self.num_threads, self.prefetch = worker_count, num_threads, prefetch
        self._fingerprint = {
            "seed": reader.seed,
            "global_batch_size": reader.global_batch_size,
            "num_examples": int(len(reader.positions)),
            "shuffle": reader.shuffle,
            "drop_remainder": bool(drop_remainder),
            "require_text": bool(require_text),
            "paraphrase": reader.paraphrase,
        }
        self._step = 0
        if sharding is not None:
            import jax  # pylint: disable=g-import-not-at-top

            if reader.shard_count != jax.process_count():
                raise ValueError(
                    f"global arrays need one shard per JAX process: shard_count "
                    f"{reader.shard_count} != jax.process_count() {jax.process_count()}"
                )

    @property
    def step(self) -> int:
        """Batches returned so far (the global step of the next batch)."""
        return self._step

    @property
    def steps_per_epoch(self) -> int:
        return self.reader.steps_per_epoch

    @property
    def epoch(self) -> int:
        """The epoch of the next batch."""
        return self._step // self.reader.steps_per_epoch

    def _grain_iterator(self):
        if self._it is None:
            ds = grain.MapDataset.range(self._step, self.total_steps).map(self.reader)
            ds = ds.to_iter_dataset(
                grain.ReadOptions(
                    num_threads=self.num_threads if self.prefetch else 0,
                    prefetch_buffer_size=self.prefetch if self.num_threads else 0,
                )
            )
            if self.worker_count > 0:
                ds = ds.mp_prefetch(
                    grain.MultiprocessingOptions(
                        num_workers=self.worker_count, per_worker_buffer_size=max(1, self.prefetch)
                    )
                )
            self._it = iter(ds)
        return self._it

    def __next__(self) -> dict[str, Any]:
        self._assert_not_closed()
        if self._step >= self.total_steps:
            raise StopIteration
        batch = next(self._grain_iterator())
        self._step += 1
        if self.sharding is not None:
            batch = self._to_global(batch)
        return batch

    def _to_global(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import jax  # pylint: disable=g-import-not-at-top

        g = self.reader.global_batch_size
        out = {}
        for k, x in batch.items():
            if x.dtype == np.int64 and not jax.config.jax_enable_x64:
                x = x.astype(np.int32)  # source indices fit; avoids a truncation warning
            out[k] = jax.make_array_from_process_local_data(self.sharding, x, (g,) + x.shape[1:])
        return out

    def get_state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "step": self._step,
            **self._fingerprint,
            "shard_index": self.reader.shard_index,
            "shard_count": self.reader.shard_count,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown iterator state version {state.get('version')}")
        wrong = {k: (state.get(k), v) for k, v in self._fingerprint.items() if state.get(k) != v}
        if wrong:
            raise ValueError(f"iterator state from another pipeline (saved, current): {wrong}")
        step = int(state["step"])
        if not 0 <= step <= self.total_steps:
            raise ValueError(f"step {step} outside [0, {self.total_steps}]")
        self._close_grain_iterator()
        self._step = step

    def start_prefetch(self) -> None:
        self._grain_iterator().start_prefetch()

    def _close_grain_iterator(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None

    def close(self) -> None:
        if not self._closed:
            self._close_grain_iterator()
        super().close()

    def __str__(self) -> str:
        return (
            f"BatchIterator(step={self._step}, steps_per_epoch={self.steps_per_epoch}, "
            f"{self._fingerprint})"
        )


def _shards(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # pylint: disable=g-import-not-at-top

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    return int(shard_index), int(shard_count)


def make_train_iterator(
    source,
    *,
    global_batch_size: int,
    seed: int,
    sharding=None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = True,
    worker_count: int = 0,
    require_text: bool = False,
    num_threads: int = 1,
    prefetch: int = 2,
) -> BatchIterator:
    """Training batches: seeded per-epoch shuffle, one sampled paraphrase, sharded by process.

    `sharding`: a ``NamedSharding`` whose first axis is the batch; batches become global
    ``jax.Array`` (int64 ``index`` becomes int32 unless x64 is on). `shard_index`/`shard_count`
    default to ``jax.process_index()``/``jax.process_count()``. `require_text` keeps only
    examples with text (alignment). `num_threads`/`prefetch`: Grain read threads and how many
    batches are prepared ahead (defaults suit a 2-core CPU); `worker_count > 0` adds
    ``mp_prefetch`` worker processes.
    """
    return _batch_iterator(
        source,
        global_batch_size,
        seed=seed,
        shuffle=shuffle,
        paraphrase="sample",
        drop_remainder=drop_remainder,
        num_epochs=num_epochs,
        sharding=sharding,
        shard_index=shard_index,
        shard_count=shard_count,
        require_text=require_text,
        worker_count=worker_count,
        num_threads=num_threads,
        prefetch=prefetch,
    )


def make_eval_batches(
    source,
    batch_size: int,
    *,
    sharding=None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    require_text: bool = False,
    worker_count: int = 0,
    num_threads: int = 1,
    prefetch: int = 2,
) -> BatchIterator:
    """One deterministic, unshuffled pass over the whole split, the last batch padded.

    `batch_size` is global; padding rows have ``valid`` False, ``index``/``label`` -1 and zeros
    elsewhere. Texts use paraphrase 0 (the primary text).
    """
    return _batch_iterator(
        source,
        batch_size,
        seed=0,
        shuffle=False,
        paraphrase="first",
        drop_remainder=False,
        num_epochs=1,
        sharding=sharding,
        shard_index=shard_index,
        shard_count=shard_count,
        require_text=require_text,
        worker_count=worker_count,
        num_threads=num_threads,
        prefetch=prefetch,
    )


def _batch_iterator(
    source,
    global_batch_size: int,
    *,
    seed: int,
    shuffle: bool,
    paraphrase: str,
    drop_remainder: bool,
    num_epochs: int | None,
    sharding,
    shard_index: int | None,
    shard_count: int | None,
    require_text: bool,
    worker_count: int,
    num_threads: int,
    prefetch: int,
) -> BatchIterator:
    shard_index, shard_count = _shards(shard_index, shard_count)
    positions = text_indices(source) if require_text else np.arange(len(source), dtype=np.int64)
    reader = LocalBatchReader(
        source,
        positions,
        global_batch_size=global_batch_size,
        shard_index=shard_index,
        shard_count=shard_count,
        drop_remainder=drop_remainder,
        seed=seed,
        shuffle=shuffle,
        paraphrase=paraphrase,
    )
    return BatchIterator(
        reader,
        num_epochs=num_epochs,
        sharding=sharding,
        worker_count=worker_count,
        num_threads=num_threads,
        prefetch=prefetch,
        drop_remainder=drop_remainder,
        require_text=require_text,
    )


def iterate_numpy(it: Iterator[dict[str, Any]], num_batches: int) -> list[dict[str, np.ndarray]]:
    """Takes `num_batches` batches as numpy (test and debugging helper)."""
    return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(num_batches)]
