"""Text embeddings computed once and cached on disk, keyed by text model and text hash.

Builders embed every sample and channel text while building, through this cache, so training
never runs the text tower and a rebuild (another window length, another year list) re-embeds
nothing it has seen. One file per text model: ``<cache_dir>/<model_id>.npz`` holding ``keys``
(sha256 of each UTF-8 text, as 64-byte ASCII) and ``embeddings`` (n, dim) float32. No pickle.

The model id is known before the model is loaded (the default text model's is a constant), so a
lookup that the file answers in full never loads the text tower: weights hashing, conversion and
the copy to the device are paid only when there are texts to embed.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import tempfile
from typing import Callable, Protocol, Sequence

import numpy as np


class Encoder(Protocol):
    model_id: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")


def default_cache_dir() -> pathlib.Path:
    return (
        pathlib.Path(
            os.environ.get("TRACE_JAX_CACHE", pathlib.Path.home() / ".cache" / "trace_jax")
        )
        / "text_embeddings"
    )


def _default_encoder() -> Encoder:
    from trace_jax.text import TextEncoder  # pylint: disable=g-import-not-at-top

    return TextEncoder.load()


class TextEmbeddingCache:
    """Embeds texts through a persistent cache; the encoder is loaded only on a miss.

    ``encoder_factory`` loads the encoder (default: the text tower); ``model_id`` names its cache
    file. Without a factory the default text model's id is used. With a factory and no
    ``model_id``, the id is read from the encoder, which then loads on the first lookup.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike | None = None,
        encoder_factory: Callable[[], Encoder] | None = None,
        *,
        model_id: str | None = None,
    ):
        if encoder_factory is None:
            from trace_jax.text.embed import DEFAULT_MODEL_ID  # pylint: disable=g-import-not-at-top

            encoder_factory, model_id = _default_encoder, model_id or DEFAULT_MODEL_ID
        self.cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
        self._encoder_factory = encoder_factory
        self._model_id = model_id
        self._encoder: Encoder | None = None
        self._index: dict[bytes, int] | None = None
        self._embeddings: np.ndarray | None = None  # (n, dim); None while nothing is cached

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            encoder = self._encoder_factory()
            if self._model_id is not None and encoder.model_id != self._model_id:
                # Its embeddings would go into another model's file.
                raise ValueError(
                    f"text encoder {encoder.model_id!r} does not match the cache's model id "
                    f"{self._model_id!r}"
                )
            self._encoder = encoder
        return self._encoder

    @property
    def model_id(self) -> str:
        return self._model_id if self._model_id is not None else self.encoder.model_id

    @property
    def path(self) -> pathlib.Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model_id)
        return self.cache_dir / f"{safe}.npz"

    @property
    def dim(self) -> int:
        """The embedding width: the cached array's, else the encoder's."""
        self._load()
        return self._embeddings.shape[1] if self._embeddings is not None else self.encoder.dim

    def _load(self) -> None:
        if self._index is not None:
            return
        self._index = {}
        if self.path.exists():
            with np.load(self.path, allow_pickle=False) as f:
                keys, self._embeddings = f["keys"], f["embeddings"].astype(np.float32)
            self._index = {k: i for i, k in enumerate(keys.tolist())}

    def _save(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(self._index, key=self._index.get), dtype="S64")
        # Write-then-rename so that an interrupted build never leaves a torn cache file.
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, keys=keys, embeddings=self._embeddings)
        os.replace(tmp, self.path)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Returns (len(texts), dim) float32 embeddings, computing only texts not cached yet."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"text {i} is {type(t).__name__}, expected str")
        self._load()
        keys = [text_key(t) for t in texts]
        missing = {}
        for k, t in zip(keys, texts):
            if k not in self._index and k not in missing:
                missing[k] = t
        if missing:
            new = self.encoder.embed(list(missing.values())).astype(np.float32)
            start = len(self._index)
            self._embeddings = (
                new if self._embeddings is None else np.concatenate([self._embeddings, new])
            )
            for j, k in enumerate(missing):
                self._index[k] = start + j
            self._save()
        return self._embeddings[[self._index[k] for k in keys]]
