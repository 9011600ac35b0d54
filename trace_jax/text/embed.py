"""Batched sentence embeddings with all-MiniLM-L6-v2.

Texts are tokenised once, sorted by token length (longest first) and cut, in that order, into
batches. A batch is padded to the length bucket of its longest text and to a fixed number of
rows per bucket: ``tokens_per_batch // bucket`` by default (short texts go in big batches,
long ones in small), or ``batch_size`` rows for every bucket when that is given. So each
bucket has one batch shape and the jitted forward compiles at most once per bucket, never per
batch. Rows come back in the caller's order.

The buckets are a subset of ``BUCKETS`` (those above ``max_length`` dropped, ``max_length``
itself last), chosen per call by :meth:`TextEncoder.choose_buckets`: a bucket pays for its
compilation only when enough texts fall in it, and a bucket already compiled is free.

Why these defaults (measured on 2 busy CPU cores, ``benchmarks/text_embedding.py``): the
forward is bound by its dense matmuls, so a padded token costs as much as a real one. With
(16, 32, 64, 128, 256) only ~66% of the computed tokens were real (Weather-Captioned captions
are 46-122 tokens, most 64-96, and landed in 128); the finer buckets (~1.25x apart) keep ~92%.
Batches of ~1024 tokens keep the activations in cache and run ~1.4x faster per token than 64
rows of 96-128 tokens (512 and 2048 tokens were both a little slower). One compilation takes
~0.6-0.8 s of CPU, ``COMPILE_COST_TOKENS`` in the bucket choice.
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

import jax
import numpy as np

from trace_jax.text.minilm import MiniLM, MiniLMConfig
from trace_jax.text.tokenizer import MiniLMTokenizer
from trace_jax.text.weights import PINNED_SHA256

MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MAX_LENGTH = 256  # sentence-transformers' truncation for this model
BUCKETS = (16, 20, 24, 32, 40, 48, 56, 64, 72, 80, 96, 112, 128, 160, 192, 256)
TOKENS_PER_BATCH = 1024
# One compilation (~0.8 CPU s, measured) costs about as much as this many padded tokens.
COMPILE_COST_TOKENS = 7168
PROGRESS_MIN_TEXTS = 2000


def model_id_for(sha256: str, max_length: int) -> str:
    """Cache key of an encoder: model name, weights hash prefix and truncation length."""
    return f"{MODEL_NAME}:{sha256[:12]}:len{max_length}"


# What TextEncoder.load() gives with its defaults (it refuses weights other than the pinned
# ones): known without loading, so a warm text-embedding cache never loads the model.
DEFAULT_MODEL_ID = model_id_for(PINNED_SHA256, DEFAULT_MAX_LENGTH)


def length_buckets(max_length: int, buckets: Sequence[int] = BUCKETS) -> tuple[int, ...]:
    """The buckets not above ``max_length``, plus ``max_length`` itself as the last one."""
    out = tuple(sorted({int(b) for b in buckets if int(b) < max_length}))
    return out + (int(max_length),)


def _validate(texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValueError(
            f"texts must be a list of str, got a single {type(texts).__name__}; wrap it in a list"
        )
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"texts must be a list of str, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError("texts is empty: nothing to embed")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__}, not str")
    return texts


class TextEncoder:
    """Sentence embeddings of all-MiniLM-L6-v2, matching sentence-transformers (len 256)."""

    def __init__(
        self,
        params,
        tokenizer: MiniLMTokenizer,
        sha256: str,
        *,
        tokens_per_batch: int = TOKENS_PER_BATCH,
        batch_size: int | None = None,
        buckets: Sequence[int] = BUCKETS,
        config: MiniLMConfig = MiniLMConfig(),
    ):
        if int(tokens_per_batch) < 1:
            raise ValueError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if any(int(b) < 1 for b in buckets):
            raise ValueError(f"buckets must be positive lengths, got {tuple(buckets)}")
        if tokenizer.max_length > config.max_position_embeddings:
            raise ValueError(
                f"max_length {tokenizer.max_length} exceeds the model's "
                f"{config.max_position_embeddings} positions"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.sha256 = sha256
        self.tokens_per_batch = int(tokens_per_batch)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.max_length = tokenizer.max_length
        self.buckets = length_buckets(self.max_length, buckets)
        self.params = jax.device_put(params)
        self._model = MiniLM(config)
        self._compiled: set[int] = set()  # bucket lengths already compiled (one shape each)
        self.trace_count = 0  # how many times the forward has been traced (≈ compiled)

        def forward(params, input_ids, attention_mask, token_type_ids):
            self.trace_count += 1  # runs at trace time only
            return self._model.apply(params, input_ids, attention_mask, token_type_ids)

        self._forward = jax.jit(forward)

    @classmethod
    def load(
        cls,
        max_length: int = DEFAULT_MAX_LENGTH,
        tokens_per_batch: int = TOKENS_PER_BATCH,
        *,
        batch_size: int | None = None,
        buckets: Sequence[int] = BUCKETS,
        weights_path: str | os.PathLike | None = None,
        tokenizer_path: str | os.PathLike | None = None,
    ) -> "TextEncoder":
        """Load (and sha256-verify) the weights and the tokenizer from the installed package."""
        from trace_jax.text.weights import load_params

        config = MiniLMConfig()
        params, sha = load_params(weights_path, config=config)
        tokenizer = MiniLMTokenizer(tokenizer_path, max_length=max_length)
        return cls(
            params,
            tokenizer,
            sha,
            tokens_per_batch=tokens_per_batch,
            batch_size=batch_size,
            buckets=buckets,
            config=config,
        )

    @property
    def model_id(self) -> str:
        """Cache key: model name, weights hash prefix and truncation length."""
        return model_id_for(self.sha256, self.max_length)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def bucket_for(self, n_tokens: int) -> int:
        for b in self.buckets:
            if n_tokens <= b:
                return b
        raise ValueError(f"{n_tokens} tokens exceed max_length {self.max_length}")

    def rows_for(self, length: int) -> int:
        """Rows of every batch padded to ``length`` (a bucket): fixed per bucket."""
        if self.batch_size is not None:
            return self.batch_size
        return max(1, self.tokens_per_batch // int(length))

    def choose_buckets(self, lengths: Sequence[int]) -> tuple[int, ...]:
        """The buckets to pad these token lengths to: the subset of ``self.buckets`` that
        minimises padded tokens plus ``COMPILE_COST_TOKENS`` for each bucket not compiled yet.

        A bucket that would hold only a few texts is skipped (they go to the next chosen one)
        unless it is already compiled, so a small call does not pay for compilations it cannot
        win back. Dynamic programme over the sorted buckets: ``cost[j]`` covers every text of
        at most ``buckets[j]`` tokens with ``buckets[j]`` as the longest bucket used.
        """
        buckets = self.buckets
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size == 0:
            return ()
        longest = int(lengths.max())
        self.bucket_for(longest)  # raises if over max_length
        # fits[j]: how many texts have at most buckets[j] tokens (fits[-1] = 0: none).
        fits = np.searchsorted(np.sort(lengths), buckets, side="right").tolist() + [0]
        inf = float("inf")
        cost = [inf] * len(buckets) + [0.0]
        prev = [-1] * len(buckets)
        for j, b in enumerate(buckets):
            compile_cost = 0 if b in self._compiled else COMPILE_COST_TOKENS
            for i in range(-1, j):
                c = cost[i] + (fits[j] - fits[i]) * b + compile_cost
                if c < cost[j]:
                    cost[j], prev[j] = c, i
        last = min((j for j, b in enumerate(buckets) if b >= longest), key=lambda j: cost[j])
        chosen = []
        while last >= 0:
            if fits[last] > fits[prev[last]]:  # skip a bucket no text would use
                chosen.append(buckets[last])
            last = prev[last]
        return tuple(reversed(chosen))

    def plan(self, lengths: Sequence[int]) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        """(order, batches): ``order`` sorts the texts longest first; each batch is
        (start, stop, length, rows): ``order[start:stop]`` padded to (rows, length), where
        ``length`` is the chosen bucket of the batch's longest text and ``rows`` is fixed
        per bucket."""
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        buckets = self.choose_buckets(lengths)
        batches, start, n = [], 0, len(order)
        while start < n:
            longest = int(lengths[order[start]])
            length = next(b for b in buckets if b >= longest)
            rows = self.rows_for(length)
            stop = min(start + rows, n)
            batches.append((start, stop, length, rows))
            start = stop
        return order, batches

    def embed(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """(len(texts), 384) float32 L2-normalised embeddings, in input order."""
        texts = _validate(texts)
        n = len(texts)
        ids, types = self.tokenizer.encode(texts)
        order, batches = self.plan([len(x) for x in ids])

        out = np.empty((n, self.dim), dtype=np.float32)
        bar = None
        if progress and n > PROGRESS_MIN_TEXTS:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="embedding texts", unit="text")
        pending = None  # (rows, device array): fetch after the next batch is dispatched
        try:
            for start, stop, length, n_rows in batches:
                rows = order[start:stop]
                batch = self.tokenizer.pad(
                    [ids[i] for i in rows],
                    [types[i] for i in rows],
                    length=length,
                    rows=n_rows,
                )
                emb = self._forward(
                    self.params,
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["token_type_ids"],
                )
                self._compiled.add(length)
                if pending is not None:
                    self._collect(out, *pending, bar)
                pending = (rows, emb)
            if pending is not None:
                self._collect(out, *pending, bar)
        finally:
            if bar is not None:
                bar.close()
        return out

    @staticmethod
    def _collect(out, rows, emb, bar):
        out[rows] = np.asarray(emb)[: len(rows)]  # pad rows discarded
        if bar is not None:
            bar.update(len(rows))

    def __call__(self, texts: list[str], progress: bool = True) -> np.ndarray:
        return self.embed(texts, progress=progress)

    def __repr__(self) -> str:
        rows = (
            f"batch_size={self.batch_size}"
            if self.batch_size is not None
            else f"tokens_per_batch={self.tokens_per_batch}"
        )
        return f"TextEncoder({self.model_id!r}, {rows})"


_default: TextEncoder | None = None
_default_lock = threading.Lock()


def default_encoder() -> TextEncoder:
    """A process-wide encoder with the default settings, loaded on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = TextEncoder.load()
        return _default


def embed_text(texts: list[str], encoder: TextEncoder | None = None) -> np.ndarray:
    """Embed ``texts`` with ``encoder`` (default: the shared default encoder)."""
    texts = _validate(texts)  # fail fast, before loading any weights
    return (encoder or default_encoder()).embed(texts)
