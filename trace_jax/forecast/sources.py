"""Forecasting examples in the trainer's batch schema, with retrieved context for RAG.

A Time-MMD forecasting example (history, target, report context; trace_jax/data/time_mmd.py)
becomes a one-channel window: `series` (1, L) is the standardised history, `channel_ids` the
domain's OT id. `target`/`target_observed` (H,) and the retrieved context ride along as extra
batch keys (trace_jax/data/pipeline.py).

Retrieval (`retrieve_context`): the frozen aligned model embeds every window's history, and each
query takes the top-R training windows by cosine similarity of those embeddings, each as the
pair (series embedding, embedding of its most recent report fact). No leakage: a training window
is eligible only if it ends (its own target included) no later than the query's forecast start,
so nothing retrieved overlaps or follows the forecast window, and the query's own window (which
ends after its forecast start) is never retrieved. Queries with fewer eligible windows get
empty slots (`rag_valid` False).
"""

from __future__ import annotations

import numpy as np

from trace_jax.retrieval import topk as topk_lib

FAR_FUTURE = np.iinfo(np.int64).max // 2


def decode(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def windows(examples) -> dict[str, np.ndarray]:
    """Stacked histories, spans and first context embedding of forecasting examples."""
    stack = lambda k: np.stack([np.asarray(e[k]) for e in examples])
    return {
        "series": stack("history")[:, None].astype(np.float32),
        "observed": stack("history_observed")[:, None],
        "start": stack("start_time").astype(np.int64),
        "forecast_start": stack("forecast_start_time").astype(np.int64),
        "end": stack("end_time").astype(np.int64),
        "context": stack("context_embedding")[:, 0].astype(np.float32),  # most recent first
        "has_context": stack("context_valid")[:, 0].astype(bool),
    }


def eligible(bank: dict, queries: dict) -> np.ndarray:
    """(queries, bank) bool: the leakage rule, for tests and documentation."""
    return bank["end"][None, :] <= queries["forecast_start"][:, None]


def retrieve_context(model, channel_id: int, bank: dict, queries: dict, top_r: int) -> dict:
    """Top-R eligible bank windows per query: their series and text embeddings (aligned space)."""
    embed = lambda w: model.embed_series(
        np.where(w["observed"], w["series"], np.nan),
        channel_ids=np.full((len(w["series"]), 1), channel_id, np.int32),
    )
    z_bank, z_query = embed(bank), embed(queries)
    z_text = np.zeros_like(z_bank)
    if bank["has_context"].any():
        z_text[bank["has_context"]] = model.project_text(bank["context"][bank["has_context"]])
    r = min(top_r, len(z_bank))
    # The span rule as an interval overlap: bank [start, end) against [forecast start, far).
    _, ids = topk_lib.topk(
        z_query,
        z_bank,
        r,
        bank_spans=np.stack([bank["start"], bank["end"]], 1),
        query_spans=np.stack(
            [queries["forecast_start"], np.full(len(z_query), FAR_FUTURE, np.int64)], 1
        ),
    )
    valid = ids >= 0
    pick = np.maximum(ids, 0)
    return {
        "rag_series": np.where(valid[..., None], z_bank[pick], 0.0).astype(np.float32),
        "rag_text": np.where(
            (valid & bank["has_context"][pick])[..., None], z_text[pick], 0.0
        ).astype(np.float32),
        "rag_valid": valid,
        "rag_ids": ids,
    }


class ForecastSource:
    """Random access to forecasting examples in the batch schema (+ targets and context)."""

    extra_batch_keys = ("target", "target_observed", "rag_series", "rag_text", "rag_valid")

    def __init__(self, source, channel_id: int, rag: dict | None, top_r: int, dim: int):
        self.source, self.channel_id = source, int(channel_id)
        n = len(source)
        self.rag = rag or {
            "rag_series": np.zeros((n, top_r, dim), np.float32),
            "rag_text": np.zeros((n, top_r, dim), np.float32),
            "rag_valid": np.zeros((n, top_r), bool),
        }

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        e = self.source[int(i)]
        k = np.asarray(e["context_embedding"]).shape[-1]
        return {
            "series": np.asarray(e["history"], np.float32)[None],
            "observed": np.asarray(e["history_observed"], bool)[None],
            "channel_ids": np.array([self.channel_id], np.int32),
            "text_embedding": np.zeros((1, k), np.float32),
            "num_texts": 0,
            "channel_text_embedding": np.zeros((1, k), np.float32),
            "channel_text_valid": np.zeros((1,), bool),
            "label": -1,
            "target": np.asarray(e["target"], np.float32),
            "target_observed": np.asarray(e["target_observed"], bool),
            **{key: self.rag[key][int(i)] for key in ("rag_series", "rag_text", "rag_valid")},
        }
