"""Forecasting examples in the trainer's batch schema, with retrieved context for RAG.

Two kinds of examples become one form, `forecast_example`: a (C, L) standardised history, a
(C, H) target, the window's span and forecast start, and its most recent text embedding.
  * Time-MMD forecasting examples (trace_jax/data/time_mmd.py): univariate OT, already
    standardised by the builder (train-fitted scaler); the channel id is the domain's OT id.
  * Any schema window (e.g. Weather-Captioned): its last H steps are the target, the rest the
    history; channels are standardised with the training split's per-channel mean and std; the
    text is its caption, which describes the window's own last block.
`series`/`observed`/`channel_ids` carry the history; `target`, `target_observed` and the retrieved
context ride along as extra batch keys (trace_jax/data/pipeline.py).

Retrieval (`retrieve_context`): the frozen aligned model embeds every history, and each query
takes the top-R training windows by cosine similarity, each as the pair (series embedding, text
embedding). No leakage: a training window is eligible only if it ends (its target included) no
later than the query's forecast start, so nothing retrieved overlaps or follows the forecast
window, and the query's own window (which ends after its forecast start) is never retrieved.
Queries with fewer eligible windows get empty slots (`rag_valid` False).
"""

from __future__ import annotations

import numpy as np

from trace_jax.retrieval import topk as topk_lib

FAR_FUTURE = np.iinfo(np.int64).max // 2


def decode(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def is_time_mmd(example) -> bool:
    return "history" in example


def fit_scaler(examples) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the observed points of schema windows (training split)."""
    x = np.stack([np.asarray(e["series"], np.float64) for e in examples])
    seen = np.stack([np.asarray(e["observed"], bool) for e in examples]) & np.isfinite(x)
    n = np.maximum(seen.sum((0, 2)), 1)
    mean = np.where(seen, x, 0.0).sum((0, 2)) / n
    var = (np.where(seen, x - mean[None, :, None], 0.0) ** 2).sum((0, 2)) / n
    return mean, np.sqrt(np.maximum(var, 1e-12))


def forecast_example(e, horizon: int, channel_id: int = 0, scaler=None) -> dict:
    if is_time_mmd(e):
        return {
            "series": np.asarray(e["history"], np.float32)[None],
            "observed": np.asarray(e["history_observed"], bool)[None],
            "channel_ids": np.array([channel_id], np.int32),
            "target": np.asarray(e["target"], np.float32)[None],
            "target_observed": np.asarray(e["target_observed"], bool)[None],
            "start": int(e["start_time"]),
            "forecast_start": int(e["forecast_start_time"]),
            "end": int(e["end_time"]),
            "context": np.asarray(e["context_embedding"], np.float32)[0],  # most recent first
            "has_context": bool(np.asarray(e["context_valid"])[0]),
        }
    series = np.asarray(e["series"], np.float32)
    observed = np.asarray(e["observed"], bool) & np.isfinite(series)
    mean, std = scaler
    series = np.where(observed, (series - mean[:, None]) / std[:, None], 0.0).astype(np.float32)
    t = series.shape[-1]
    if not 0 < horizon < t:
        raise ValueError(f"horizon {horizon} must be shorter than the windows ({t} steps)")
    step = (int(e["end_time"]) - int(e["start_time"])) // t
    has_text = int(e["num_texts"]) > 0
    return {
        "series": series[:, : t - horizon],
        "observed": observed[:, : t - horizon],
        "channel_ids": np.asarray(e["channel_ids"], np.int32),
        "target": series[:, t - horizon :],
        "target_observed": observed[:, t - horizon :],
        "start": int(e["start_time"]),
        "forecast_start": int(e["end_time"]) - horizon * step,
        "end": int(e["end_time"]),
        "context": np.asarray(e["text_embedding"], np.float32)[0],
        "has_context": has_text,
    }


def windows(examples: list[dict]) -> dict[str, np.ndarray]:
    """Stacked forecast examples (the bank or the queries of retrieval)."""
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def eligible(bank: dict, queries: dict) -> np.ndarray:
    """(queries, bank) bool: the leakage rule, for tests and documentation."""
    return bank["end"][None, :] <= queries["forecast_start"][:, None]


def retrieve_context(model, bank: dict, queries: dict, top_r: int) -> dict:
    """Top-R eligible bank windows per query: their series and text embeddings (aligned space)."""

    def embed(w):
        # A history with nothing observed (a data gap) has no embedding: never retrieved, and
        # as a query it retrieves nothing.
        usable = w["observed"].any((1, 2))
        z = np.zeros((len(usable), model.dim), np.float32)
        if usable.any():
            z[usable] = model.embed_series(
                np.where(w["observed"], w["series"], np.nan)[usable],
                channel_ids=w["channel_ids"][usable],
            )
        return z, usable

    (z_bank, bank_usable), (z_query, query_usable) = embed(bank), embed(queries)
    z_text = np.zeros_like(z_bank)
    if bank["has_context"].any():
        z_text[bank["has_context"]] = model.project_text(bank["context"][bank["has_context"]])
    r = min(top_r, len(z_bank))
    # The rule as an interval overlap: bank [start, end) against [forecast start, far future).
    _, ids = topk_lib.topk(
        z_query,
        z_bank,
        r,
        # An unusable bank window gets a span overlapping every query: it never takes a slot.
        bank_spans=np.where(
            bank_usable[:, None],
            np.stack([bank["start"], bank["end"]], 1),
            np.array([-FAR_FUTURE, FAR_FUTURE]),
        ),
        query_spans=np.stack(
            [queries["forecast_start"], np.full(len(z_query), FAR_FUTURE, np.int64)], 1
        ),
    )
    ids = np.where(query_usable[:, None], ids, -1)
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
    """Random access to forecast examples in the batch schema (+ targets and context)."""

    extra_batch_keys = ("target", "target_observed", "rag_series", "rag_text", "rag_valid")

    def __init__(self, source, convert, rag: dict | None, top_r: int, dim: int):
        self.source, self.convert = source, convert
        n = len(source)
        self.rag = rag or {
            "rag_series": np.zeros((n, top_r, dim), np.float32),
            "rag_text": np.zeros((n, top_r, dim), np.float32),
            "rag_valid": np.zeros((n, top_r), bool),
        }

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        f = self.convert(self.source[int(i)])
        c = f["series"].shape[0]
        k = f["context"].shape[-1]
        return {
            "series": f["series"],
            "observed": f["observed"],
            "channel_ids": f["channel_ids"],
            "text_embedding": np.zeros((1, k), np.float32),
            "num_texts": 0,
            "channel_text_embedding": np.zeros((c, k), np.float32),
            "channel_text_valid": np.zeros((c,), bool),
            "label": -1,
            "target": f["target"],
            "target_observed": f["target_observed"],
            **{key: self.rag[key][int(i)] for key in ("rag_series", "rag_text", "rag_valid")},
        }
