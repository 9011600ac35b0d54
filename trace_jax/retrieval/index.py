"""An embedding index over windows and their texts, searchable in every direction.

    index = model.build_index(series, texts=captions, spans=spans, labels=labels)
    hits = index.search("heavy rain and strong wind", k=5)            # text -> series
    hits = index.search(window, k=5, target="text")                    # series -> text
    hits = index.search_item(12, k=5)                                  # series -> series
    index.save("runs/index"); Index.load("runs/index", model)

Saved as `arrays.npz` (numeric arrays only, loaded with allow_pickle=False) and `index.json`
(ids, texts, metadata): no pickle. The index records which parameters embedded it (the model's
fingerprint), and loading it with another model is an error: their embeddings do not share a
space. Top-k is exact cosine in JAX, sharded over the local devices
(trace_jax/retrieval/topk.py). A query that is an item of the index (`search_item`) never
retrieves itself, nor, by default, a window of the same series overlapping it in time.

A series query is embedded with the channel ids (CIT rows) its windows were embedded with,
unless it brings its own: Time-MMD's ids, for one, are global (Energy's channels are 12-20),
and an index over several of its domains needs them given.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import numpy as np

from trace_jax.retrieval import topk as topk_lib

ARRAYS = "arrays.npz"
META = "index.json"
FORMAT = "trace_jax.index/2"
TARGETS = ("series", "text")
# Spans of different series are moved this far apart (seconds) so that the overlap exclusion
# only ever matches windows of the same series.
SERIES_OFFSET = 2**42


class StaleIndexError(ValueError):
    """A saved index that the querying model cannot use: another format, or embedded by other
    parameters."""


@dataclasses.dataclass
class Hits:
    """Top-k results of Q queries: (Q, k) arrays, best first; empty slots have position -1."""

    positions: np.ndarray
    scores: np.ndarray
    index: "Index"
    target: str

    def items(self, query: int = 0) -> list[dict[str, Any]]:
        """The hits of one query as records (id, score, text, label, span)."""
        out = []
        for rank, (pos, score) in enumerate(zip(self.positions[query], self.scores[query]), 1):
            if pos < 0:
                break
            out.append({"rank": rank, "score": float(score), **self.index.record(int(pos))})
        return out


@dataclasses.dataclass
class Index:
    series_embeddings: np.ndarray  # (N, d) unit rows
    text_embeddings: np.ndarray  # (N, d) unit rows; zeros where has_text is False
    has_text: np.ndarray  # (N,) bool
    channel_ids: np.ndarray  # (N, C) int32: the CIT ids the windows were embedded with
    ids: list[str]
    texts: list[str]  # '' where there is none
    labels: np.ndarray | None = None  # (N,) int, -1 unknown
    spans: np.ndarray | None = None  # (N, 2) int64 [start, end), e.g. unix seconds
    series_groups: np.ndarray | None = None  # (N,) int: which series a window comes from
    series: np.ndarray | None = None  # (N, C, T) float32 windows (NaN unobserved), for display
    model: Any = None  # trace_jax.api.TraceModel: embeds text and series queries
    # The model the embeddings came from: where it was loaded from, and its fingerprint.
    model_source: str = ""
    model_fingerprint: str = ""
    _banks: dict = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        n = len(self.series_embeddings)
        if len(self.ids) != n or len(self.texts) != n or len(self.has_text) != n:
            raise ValueError("ids, texts and has_text need one entry per window")
        if len(set(self.ids)) != n:
            raise ValueError("ids must be unique")
        self.channel_ids = np.asarray(self.channel_ids, np.int32)
        if self.channel_ids.ndim != 2 or len(self.channel_ids) != n:
            raise ValueError(
                f"channel_ids must be (N, C) with N = {n}, got {self.channel_ids.shape}"
            )
        self._position = {id_: i for i, id_ in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.series_embeddings)

    # Construction --------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model,
        series,
        texts: Sequence[str] | None = None,
        *,
        observed=None,
        channel_ids=None,
        text_embeddings=None,
        ids: Sequence[str] | None = None,
        labels=None,
        spans=None,
        series_groups=None,
        keep_series: bool = True,
    ) -> "Index":
        """Embeds windows (N, C, T) and their texts ('' or None = no text for that window).

        text_embeddings: the frozen text tower's (N, 384) vectors when already computed (the
        data sets carry them); otherwise `texts` are embedded with the model's text tower.
        """
        from trace_jax.api import check_series  # pylint: disable=g-import-not-at-top

        series, observed = check_series(series, observed)
        n = len(series)
        texts = [""] * n if texts is None else ["" if t is None else str(t) for t in texts]
        if len(texts) != n:
            raise ValueError(f"{len(texts)} texts for {n} windows")
        has_text = np.array([bool(t.strip()) for t in texts])
        z_text = np.zeros((n, model.dim), np.float32)
        if text_embeddings is not None:
            z_text[has_text] = model.project_text(np.asarray(text_embeddings)[has_text])
        elif has_text.any():
            z_text[has_text] = model.embed_text([t for t, h in zip(texts, has_text) if h])
        kept = None
        if keep_series:
            kept = np.where(observed, series, np.nan).astype(np.float32)
        channel_ids = np.ascontiguousarray(model.channel_ids_for(n, series.shape[1], channel_ids))
        return cls(
            series_embeddings=model.embed_series(series, observed, channel_ids),
            text_embeddings=z_text,
            has_text=has_text,
            channel_ids=channel_ids,
            ids=[str(i) for i in (range(n) if ids is None else ids)],
            texts=texts,
            labels=None if labels is None else np.asarray(labels, np.int64),
            spans=None if spans is None else np.asarray(spans, np.int64).reshape(n, 2),
            series_groups=None if series_groups is None else np.asarray(series_groups, np.int64),
            series=kept,
            model=model,
            model_source=model.source,
            model_fingerprint=model.fingerprint,
        )

    @classmethod
    def from_examples(cls, model, examples: Sequence[dict], **kwargs) -> "Index":
        """From examples in the shared schema (docs/data_schema.md), e.g. a data-set split."""
        if not examples:
            raise ValueError("no examples")
        stack = lambda k: np.stack([e[k] for e in examples])
        decode = lambda v: v.decode() if isinstance(v, bytes) else str(v)
        texts = [decode(e["text"]) if e["num_texts"] > 0 else "" for e in examples]
        domains = [decode(e.get("domain", "")) for e in examples]
        return cls.build(
            model,
            stack("series"),
            texts,
            observed=stack("observed"),
            channel_ids=stack("channel_ids"),
            text_embeddings=stack("text_embedding")[:, 0],
            ids=[decode(e["example_id"]) for e in examples],
            labels=stack("label"),
            spans=np.stack([stack("start_time"), stack("end_time")], axis=1),
            series_groups=np.unique(domains, return_inverse=True)[1],
            **kwargs,
        )

    # Persistence ---------------------------------------------------------------------------

    def save(self, directory) -> pathlib.Path:
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "series_embeddings": self.series_embeddings,
            "text_embeddings": self.text_embeddings,
            "has_text": self.has_text,
            "channel_ids": self.channel_ids,
        }
        for name in ("labels", "spans", "series_groups", "series"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        np.savez(directory / ARRAYS, **arrays)
        meta = {
            "format": FORMAT,
            "ids": self.ids,
            "texts": self.texts,
            "model": self.model_source,
            "model_fingerprint": self.model_fingerprint,
        }
        (directory / META).write_text(json.dumps(meta))
        return directory

    @classmethod
    def load(cls, directory, model=None) -> "Index":
        """A saved index; with `model` (which embeds the queries), only if the same parameters
        embedded it, else StaleIndexError. Without one it can be searched by stored items."""
        directory = pathlib.Path(directory)
        meta = json.loads((directory / META).read_text())
        if meta.get("format") != FORMAT:
            raise StaleIndexError(
                f"{directory} holds an index of format {meta.get('format')!r}; this version "
                f"reads {FORMAT!r}: rebuild it"
            )
        if model is not None and meta["model_fingerprint"] != model.fingerprint:
            raise StaleIndexError(
                f"{directory} was embedded by {meta['model'] or 'an unrecorded model'} "
                f"(parameters {meta['model_fingerprint'][:12] or 'unknown'}), not by "
                f"{model.source} ({model.fingerprint[:12]}): their embeddings do not share a "
                "space; rebuild the index with this model"
            )
        with np.load(directory / ARRAYS, allow_pickle=False) as arrays:
            fields = {k: arrays[k] for k in arrays.files}
        return cls(
            ids=meta["ids"],
            texts=meta["texts"],
            model=model,
            model_source=meta["model"],
            model_fingerprint=meta["model_fingerprint"],
            **fields,
        )

    # Search ---------------------------------------------------------------------------------

    def record(self, position: int) -> dict[str, Any]:
        out = {"id": self.ids[position], "position": position, "text": self.texts[position]}
        if self.labels is not None:
            out["label"] = int(self.labels[position])
        if self.spans is not None:
            out["span"] = [int(v) for v in self.spans[position]]
        return out

    def _exclusion_spans(self, spans, groups):
        if groups is None:
            return spans
        return spans + (groups * SERIES_OFFSET)[:, None]

    def _bank(self, target: str):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if target not in self._banks:
            rows = np.arange(len(self)) if target == "series" else np.flatnonzero(self.has_text)
            if not rows.size:
                raise ValueError("the index holds no texts to search")
            emb = self.series_embeddings if target == "series" else self.text_embeddings
            keys = {"bank_ids": rows}
            if self.spans is not None:
                groups = None if self.series_groups is None else self.series_groups[rows]
                keys["bank_spans"] = self._exclusion_spans(self.spans[rows], groups)
            self._banks[target] = (topk_lib.put_bank(emb[rows], **keys), rows)
        return self._banks[target]

    def query_channel_ids(self, channels: int) -> np.ndarray:
        """(C,) ids for a series query that brings none: those of the index's windows, which
        must have the query's channel count and all share their ids."""
        if channels != self.channel_ids.shape[1]:
            raise ValueError(
                f"a series query of {channels} channels, but the index's windows have "
                f"{self.channel_ids.shape[1]}: pass the query's channel_ids"
            )
        first = self.channel_ids[0]
        other = np.flatnonzero((self.channel_ids != first).any(axis=1))
        if other.size:
            raise ValueError(
                f"the index's windows have different channel ids ({self.ids[0]}: "
                f"{first.tolist()}, {self.ids[other[0]]}: {self.channel_ids[other[0]].tolist()}): "
                "pass the query's channel_ids"
            )
        return first

    def _embed_query(self, query, channel_ids=None) -> tuple[np.ndarray, str]:
        if self.model is None:
            raise ValueError("this index has no model to embed queries: Index.load(path, model)")
        if isinstance(query, str) or (
            isinstance(query, (list, tuple)) and query and isinstance(query[0], str)
        ):
            if channel_ids is not None:
                raise ValueError("channel_ids are for series queries, this one is text")
            return self.model.embed_text(query), "text"
        query = np.asarray(query, np.float32)
        if self.series is not None:
            want = self.series.shape[1:]
            got = query.shape[-2:]
            if query.ndim not in (2, 3) or got != want:
                raise ValueError(
                    f"a series query must be (C, T) = {want} or (B, C, T), got {query.shape}"
                )
        if channel_ids is None and query.ndim in (2, 3):
            channel_ids = self.query_channel_ids(query.shape[-2])
        return self.model.embed_series(query, channel_ids=channel_ids), "series"

    def search(self, query, k: int = 10, *, target: str = "series", channel_ids=None) -> Hits:
        """Queries are text (a string or a list of strings) or windows ((C, T) or (B, C, T)).
        channel_ids: a series query's (C,) or (B, C) CIT ids; None: query_channel_ids."""
        embedded, _ = self._embed_query(query, channel_ids)
        return self.search_embeddings(embedded, k, target=target)

    def search_embeddings(
        self,
        embeddings,
        k: int = 10,
        *,
        target: str = "series",
        exclude_positions=None,
        exclude_spans=None,
        exclude_groups=None,
    ) -> Hits:
        """Top-k of (Q, d) query vectors. exclude_positions (Q,): an index position each query
        must not retrieve; exclude_spans (Q, 2) with exclude_groups (Q,): overlapping windows
        of the same series are skipped too."""
        bank, rows = self._bank(target)
        if k > len(rows):
            raise ValueError(f"k={k} but the index holds {len(rows)} {target} items")
        keys = {}
        if exclude_positions is not None:
            keys["query_ids"] = np.asarray(exclude_positions, np.int64)
        if exclude_spans is not None:
            if self.spans is None:
                raise ValueError("this index has no spans: overlap exclusion is unavailable")
            keys["query_spans"] = self._exclusion_spans(
                np.asarray(exclude_spans, np.int64),
                None if self.series_groups is None else np.asarray(exclude_groups, np.int64),
            )
        scores, found = topk_lib.search(bank, np.asarray(embeddings, np.float32), k, **keys)
        positions = np.where(found >= 0, rows[np.maximum(found, 0)], -1)
        return Hits(positions, scores, self, target)

    def search_item(
        self,
        item,
        k: int = 10,
        *,
        source: str = "series",
        target: str = "series",
        exclude_overlap: bool = True,
    ) -> Hits:
        """Search with the stored embedding of an item (by id or position) as the query; the
        item itself, and (exclude_overlap) windows of its series overlapping it, are skipped."""
        pos = self._position[item] if isinstance(item, str) else int(item)
        if not 0 <= pos < len(self):
            raise ValueError(f"no item at position {pos}; the index holds {len(self)}")
        if source == "text" and not self.has_text[pos]:
            raise ValueError(f"item {self.ids[pos]} has no text")
        emb = (self.series_embeddings if source == "series" else self.text_embeddings)[pos]
        use_spans = exclude_overlap and self.spans is not None
        return self.search_embeddings(
            emb[None],
            k,
            target=target,
            exclude_positions=[pos],
            exclude_spans=self.spans[pos][None] if use_spans else None,
            exclude_groups=(
                self.series_groups[pos][None]
                if use_spans and self.series_groups is not None
                else None
            ),
        )
