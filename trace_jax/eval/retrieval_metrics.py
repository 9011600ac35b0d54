"""Retrieval metrics on a query-by-candidate similarity matrix.

Both functions accept numpy or JAX arrays and walk the queries in chunks of rows, so only a
(chunk_size, n_candidates) block is ever held on the host. Ties are broken pessimistically:
a candidate scoring exactly as high as a relevant one is ranked ahead of it. Results are
plain Python floats.
"""

from __future__ import annotations

from typing import Dict, Iterable, Sequence

import numpy as np


def _chunks(n: int, chunk_size: int) -> Iterable[slice]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def _shape(sim) -> tuple:
    if not hasattr(sim, "shape"):
        sim = np.asarray(sim)
    if len(sim.shape) != 2:
        raise ValueError(f"sim must be (n_queries, n_candidates), got shape {sim.shape}")
    return tuple(sim.shape)


def _block(sim, rows: slice) -> np.ndarray:
    # Slicing first keeps a JAX matrix on its device; only the block is copied to the host.
    if not hasattr(sim, "shape"):
        sim = np.asarray(sim)
    return np.asarray(sim[rows])


def _check_ks(ks: Sequence[int]) -> tuple:
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")
    return ks


def exact_pair_metrics(
    sim,
    ks: Sequence[int] = (1, 5, 10),
    *,
    candidate_mask=None,
    equivalent=None,
    chunk_size: int = 1024,
) -> Dict[str, float]:
    """hit@k and MRR where query i's correct candidate is candidate i.

    The rank of the positive is 1 + the number of other candidates whose score is >= its own.
    `candidate_mask`, (n_queries, n_candidates) bool, limits each query to some candidates
    (e.g. those of its own domain); the positive always competes. `equivalent`, the same shape,
    marks candidates as right as the positive (the same series window as the query's pair, or
    the same text): they never count as ahead of it, since nothing can rank one of two
    identical items above the other.
    Returns {"hit@k": ..., "mrr": ..., "n_queries": ...}.
    """
    nq, nc = _shape(sim)
    if nq > nc:
        raise ValueError(
            f"query i pairs with candidate i: need n_queries <= n_candidates, got {nq} > {nc}"
        )
    ks = _check_ks(ks)
    ranks = np.zeros(nq, np.int64)  # one int per query; the blocks are never kept
    for rows in _chunks(nq, chunk_size):
        block = _block(sim, rows)
        local = np.arange(block.shape[0])
        cols = local + rows.start
        positive = block[local, cols]
        ahead = block >= positive[:, None]
        if candidate_mask is not None:
            ahead &= np.asarray(candidate_mask[rows], bool)
        if equivalent is not None:
            ahead &= ~np.asarray(equivalent[rows], bool)
        ahead[local, cols] = True
        # >= counts the positive itself, so this is already 1 + the candidates ahead of it.
        ranks[rows] = np.count_nonzero(ahead, axis=1)
    out = {f"hit@{k}": float(np.mean(ranks <= k)) if nq else 0.0 for k in ks}
    out["mrr"] = float(np.mean(1.0 / ranks)) if nq else 0.0
    out["n_queries"] = float(nq)
    return out


def label_metrics(
    sim,
    query_labels,
    candidate_labels,
    ks: Sequence[int] = (1, 5),
    exclude_self: bool = False,
    *,
    exclude=None,
    chunk_size: int = 1024,
) -> Dict[str, float]:
    """Label precision@k and label MRR.

    label_p@k: fraction of the top-k candidates whose label equals the query's, averaged over
    queries (k is capped at the number of candidates available to the query). label_mrr: mean
    reciprocal rank of the first candidate with the query's label (0 for a query whose label no
    candidate has). exclude_self drops candidate i for query i (series -> series retrieval;
    needs n_queries <= n_candidates); `exclude`, an (n_queries, n_candidates) bool array, drops
    any other pairs (e.g. windows overlapping the query's in time). Ties at the k-th score are
    resolved pessimistically by counting.
    """
    nq, nc = _shape(sim)
    ks = _check_ks(ks)
    qlab = np.asarray(query_labels)
    clab = np.asarray(candidate_labels)
    if qlab.shape != (nq,) or clab.shape != (nc,):
        raise ValueError(f"labels must be ({nq},) and ({nc},), got {qlab.shape} and {clab.shape}")
    if exclude_self and nq > nc:
        raise ValueError(f"exclude_self needs n_queries <= n_candidates, got {nq} > {nc}")
    if exclude is not None and np.shape(exclude) != (nq, nc):
        raise ValueError(f"exclude must be ({nq}, {nc}), got {np.shape(exclude)}")

    # Per-query values (not running sums) so the result does not depend on chunk_size.
    precision = {k: np.zeros(nq) for k in ks}
    rr = np.zeros(nq)
    for rows in _chunks(nq, chunk_size):
        block = _block(sim, rows)
        if not np.issubdtype(block.dtype, np.floating):
            block = block.astype(np.float64)
        available = np.ones(block.shape, bool)
        if exclude is not None:
            available &= ~np.asarray(exclude[rows], bool)
        if exclude_self:
            local = np.arange(block.shape[0])
            available[local, local + rows.start] = False
        n_avail = available.sum(axis=1)
        if (n_avail < 1).any():
            raise ValueError("a query has no candidate left to retrieve")
        block = np.where(available, block, -np.inf)  # excluded pairs sort last
        relevant = (qlab[rows][:, None] == clab[None, :]) & available
        irrelevant = available & ~relevant

        # Label MRR: first relevant rank = 1 + irrelevant candidates scoring >= the best relevant.
        best_rel = np.max(np.where(relevant, block, -np.inf), axis=1)
        any_rel = relevant.any(axis=1)
        ahead = np.count_nonzero(irrelevant & (block >= best_rel[:, None]), axis=1)
        rr[rows] = np.where(any_rel, 1.0 / (1.0 + ahead), 0.0)

        # P@k: with t the k-th best available score, take every candidate > t, then fill the
        # remaining slots from the ties at t, irrelevant ones first.
        descending = -np.sort(-block, axis=1)
        for k in ks:
            ke = np.minimum(k, n_avail)
            t = np.take_along_axis(descending, (ke - 1)[:, None], axis=1)
            above = available & (block > t)
            tied = available & (block == t)
            n_above = np.count_nonzero(above, axis=1)
            rel_above = np.count_nonzero(above & relevant, axis=1)
            irr_tied = np.count_nonzero(tied & ~relevant, axis=1)
            rel_tied = np.count_nonzero(tied & relevant, axis=1)
            rel_taken = np.clip(ke - n_above - irr_tied, 0, rel_tied)
            precision[k][rows] = (rel_above + rel_taken) / ke
    out = {f"label_p@{k}": float(np.mean(precision[k])) if nq else 0.0 for k in ks}
    out["label_mrr"] = float(np.mean(rr)) if nq else 0.0
    out["n_queries"] = float(nq)
    return out


def labelled_label_metrics(sim, query_labels, candidate_labels, ks=(1, 5), *, exclude=None):
    """label_metrics over the queries and candidates that have a label (>= 0): an unlabelled
    item (a Weather-Captioned block with no condition reading) is neither right nor wrong.
    {} when no query or no candidate has one; n_queries counts the labelled queries."""
    qlab, clab = np.asarray(query_labels), np.asarray(candidate_labels)
    q, c = qlab >= 0, clab >= 0
    if not q.any() or not c.any():
        return {}
    sim = np.asarray(sim)[q][:, c]
    if exclude is not None:
        exclude = np.asarray(exclude)[q][:, c]
    return label_metrics(sim, qlab[q], clab[c], ks=ks, exclude=exclude)


def identical_rows(*arrays) -> np.ndarray:
    """(n, n) bool: pairs (i, j) equal in every column of at least one of the (n, ...) arrays."""
    same = None
    for x in arrays:
        x = np.asarray(x).reshape(len(x), -1)
        _, group = np.unique(x, axis=0, return_inverse=True)
        group = group.reshape(-1)
        rows = group[:, None] == group[None, :]
        same = rows if same is None else same | rows
    return same


def text_series_metrics(
    sim_ts, labels, same_group=None, same_pair=None
) -> Dict[str, Dict[str, float]]:
    """Both directions of an exact-pair (texts x series) similarity matrix: hit@1/5/10 and MRR
    of the pair, label P@1/5 and MRR over the labelled pairs, and with `same_group` ((texts,
    texts) bool) the exact-pair metrics within a group (domain). `same_pair` ((n, n) bool,
    symmetric; `identical_rows`): pairs sharing a text or a series window, each as right an
    answer as the other (Time-MMD ties several reports to one window)."""
    out = {}
    for name, s in (("text->series", sim_ts), ("series->text", np.asarray(sim_ts).T)):
        m = exact_pair_metrics(s, ks=(1, 5, 10), equivalent=same_pair)
        labelled = labelled_label_metrics(s, labels, labels, ks=(1, 5))
        if labelled:
            m.update({k: v for k, v in labelled.items() if k != "n_queries"})
            m["n_labelled_queries"] = labelled["n_queries"]
        out[name] = m
        if same_group is not None:
            out[f"{name} (within domain)"] = exact_pair_metrics(
                s, ks=(1, 5, 10), candidate_mask=same_group, equivalent=same_pair
            )
    return out


def series_series_metrics(sim, labels, exclude) -> Dict[str, Dict[str, float]]:
    """Label retrieval among the series, `exclude` ((n, n) bool) dropping each query itself and
    whatever else must not count (windows overlapping it in time); {} when none is labelled."""
    found = labelled_label_metrics(sim, labels, labels, ks=(1, 5), exclude=exclude)
    return {"series->series": found} if found else {}


def channel_text_metrics(channels, channel_text, valid, channel_ids, text_keys):
    """Retrieval between channels and their texts among the channels of the same channel (id)
    across windows: which window's temperature a temperature description is of, and back.
    Within one window the channel identity alone tells them apart; across windows only the
    alignment of what the series does with what the text says can.

    channels, channel_text: (n, C, d) embeddings; valid (n, C) bool: the channel is observed
    and has a text; channel_ids (n, C) int; text_keys (n, C, k): equal rows mean the same text
    (losses.content_keys). Channel texts repeat across windows ("temperature stays level"), so
    every channel a query text describes is a right answer, and for a channel every copy of its
    text: hit@1 is whether the top candidate is right, MRR the reciprocal rank of the first
    right one (ties pessimistic; label_metrics with the text as label). Pooled over channel
    ids, each query once; `chance_hit@1` is a random ranking's. {} when no channel id has two
    valid channels.
    """
    valid = np.asarray(valid, bool)
    if not valid.any():
        return {}
    flat = lambda x: np.asarray(x)[valid]
    channels, channel_text = flat(channels), flat(channel_text)
    channel_ids, text_keys = flat(channel_ids), flat(text_keys).reshape(int(valid.sum()), -1)
    per_channel = {"text->channel": [], "channel->text": []}  # (queries, hit@1, mrr, chance)
    for channel in np.unique(channel_ids):
        rows = np.flatnonzero(channel_ids == channel)
        if len(rows) < 2:
            continue
        _, text = np.unique(text_keys[rows], axis=0, return_inverse=True)
        text = text.reshape(-1)
        sim = channel_text[rows] @ channels[rows].T
        chance = float(np.mean(np.bincount(text)[text] / len(rows)))
        for name, s in (("text->channel", sim), ("channel->text", sim.T)):
            found = label_metrics(s, text, text, ks=(1,))
            per_channel[name].append((len(rows), found["label_p@1"], found["label_mrr"], chance))
    out = {}
    for name, groups in per_channel.items():
        if groups:
            n, hit, mrr, chance = np.asarray(groups, np.float64).T
            average = lambda x: float(np.average(x, weights=n))
            out[name] = {
                "hit@1": average(hit),
                "mrr": average(mrr),
                "chance_hit@1": average(chance),
                "n_queries": float(n.sum()),
            }
    return out
