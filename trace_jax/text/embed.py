"""Batched sentence embeddings with all-MiniLM-L6-v2.

Texts are tokenised once, sorted by token length (longest first) and cut into batches of ``batch_size``.
Each batch is padded to the next length bucket (16, 32, 64, 128, 256; capped at
``max_length``) and to exactly ``batch_size`` rows, so the jitted forward compiles at most
once per bucket, never per batch. Rows come back in the caller's order.
"""
from __future__ import annotations

import os
import threading
from typing import Sequence

import jax
import numpy as np

from trace_jax.text.minilm import MiniLM, MiniLMConfig
from trace_jax.text.tokenizer import MiniLMTokenizer

MODEL_NAME = "all-MiniLM-L6-v2"
BUCKETS = (16, 32, 64, 128, 256)
PROGRESS_MIN_TEXTS = 2000


def length_buckets(max_length: int, buckets: Sequence[int] = BUCKETS) -> tuple[int, ...]:
    """The buckets not above ``max_length``, plus ``max_length`` itself as the last one."""
    out = tuple(b for b in sorted(buckets) if b < max_length)
    return out + (int(max_length),)


def _validate(texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValueError(
            f"texts must be a list of str, got a single {type(texts).__name__}; wrap it in a list"
        )
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(
            f"texts must be a list of str, got {type(texts).__name__}"
        ) from None
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
        batch_size: int = 64,
        config: MiniLMConfig = MiniLMConfig(),
    ):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if tokenizer.max_length > config.max_position_embeddings:
            raise ValueError(
                f"max_length {tokenizer.max_length} exceeds the model's "
                f"{config.max_position_embeddings} positions"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.sha256 = sha256
        self.batch_size = int(batch_size)
        self.max_length = tokenizer.max_length
        self.buckets = length_buckets(self.max_length)
        self.params = jax.device_put(params)
        self._model = MiniLM(config)
        self.trace_count = 0  # how many times the forward has been traced (≈ compiled)

        def forward(params, input_ids, attention_mask, token_type_ids):
            self.trace_count += 1  # runs at trace time only
            return self._model.apply(params, input_ids, attention_mask, token_type_ids)

        self._forward = jax.jit(forward)

    @classmethod
    def load(
        cls,
        max_length: int = 256,
        batch_size: int = 64,
        *,
        weights_path: str | os.PathLike | None = None,
        tokenizer_path: str | os.PathLike | None = None,
    ) -> "TextEncoder":
        """Load (and sha256-verify) the weights and the tokenizer from the installed package."""
        from trace_jax.text.weights import load_params

        config = MiniLMConfig()
        params, sha = load_params(weights_path, config=config)
        tokenizer = MiniLMTokenizer(tokenizer_path, max_length=max_length)
        return cls(params, tokenizer, sha, batch_size=batch_size, config=config)

    @property
    def model_id(self) -> str:
        """Cache key: model name, weights hash prefix and truncation length."""
        return f"{MODEL_NAME}:{self.sha256[:12]}:len{self.max_length}"

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def bucket_for(self, n_tokens: int) -> int:
        for b in self.buckets:
            if n_tokens <= b:
                return b
        raise ValueError(f"{n_tokens} tokens exceed max_length {self.max_length}")

    def embed(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """(len(texts), 384) float32 L2-normalised embeddings, in input order."""
        texts = _validate(texts)
        n = len(texts)
        ids, types = self.tokenizer.encode(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        # Longest first: full batches take the long texts, the partial last one the shortest.
        order = np.argsort(-lengths, kind="stable")

        out = np.empty((n, self.dim), dtype=np.float32)
        bar = None
        if progress and n > PROGRESS_MIN_TEXTS:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="embedding texts", unit="text")
        pending = None  # (rows, device array): fetch after the next batch is dispatched
        try:
            for start in range(0, n, self.batch_size):
                rows = order[start : start + self.batch_size]
                length = self.bucket_for(int(lengths[rows[0]]))  # rows sorted, longest first
                batch = self.tokenizer.pad(
                    [ids[i] for i in rows], [types[i] for i in rows],
                    length=length, rows=self.batch_size,
                )
                emb = self._forward(
                    self.params, batch["input_ids"], batch["attention_mask"],
                    batch["token_type_ids"],
                )
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
        return f"TextEncoder({self.model_id!r}, batch_size={self.batch_size})"


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
