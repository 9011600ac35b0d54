"""Retrieval metrics on hand-made similarity matrices and against brute-force references."""

import jax.numpy as jnp
import numpy as np
import pytest

from trace_jax.eval.retrieval_metrics import (
    channel_text_metrics,
    exact_pair_metrics,
    identical_rows,
    label_metrics,
    series_series_metrics,
    text_series_metrics,
)


def test_exact_perfect_reversed_ties():
    m = exact_pair_metrics(np.eye(6), ks=(1, 5))
    assert m == {"hit@1": 1.0, "hit@5": 1.0, "mrr": 1.0, "n_queries": 6.0}
    m = exact_pair_metrics(-np.eye(6), ks=(1, 5, 6))  # the positive is always last
    assert m["hit@1"] == 0.0 and m["hit@5"] == 0.0 and m["hit@6"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 6)
    m = exact_pair_metrics(np.zeros((4, 4)), ks=(1,))  # all tied: pessimistic rank 4
    assert m["hit@1"] == 0.0 and m["mrr"] == pytest.approx(0.25)
    assert all(type(v) is float for v in m.values())


def test_exact_three_by_three_by_hand():
    sim = np.array(
        [
            [0.9, 0.1, 0.5],  # positive best: rank 1
            [0.8, 0.7, 0.2],  # one above: rank 2
            [0.3, 0.3, 0.3],
        ]
    )  # two tied: rank 3
    m = exact_pair_metrics(sim, ks=(1, 2, 3))
    assert m["hit@1"] == pytest.approx(1 / 3)
    assert m["hit@2"] == pytest.approx(2 / 3)
    assert m["hit@3"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def brute_exact(sim, ks):
    ranks = np.array(
        [
            1 + sum(sim[i, j] >= sim[i, i] for j in range(sim.shape[1]) if j != i)
            for i in range(sim.shape[0])
        ]
    )
    out = {f"hit@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["mrr"] = float(np.mean(1.0 / ranks))
    return out


def test_exact_chunking_and_jax_input():
    rng = np.random.default_rng(0)
    sim = np.round(rng.normal(size=(37, 50)), 1).astype(np.float32)  # rounding makes ties
    sim[np.arange(37), np.arange(37)] += 0.5
    ref = brute_exact(sim, (1, 5, 10))
    full = exact_pair_metrics(sim, chunk_size=10_000)
    for chunk in (1, 7, 37):
        assert exact_pair_metrics(sim, chunk_size=chunk) == full
    assert exact_pair_metrics(jnp.asarray(sim), chunk_size=8) == full
    for key, value in ref.items():
        assert full[key] == pytest.approx(value)
    with pytest.raises(ValueError):
        exact_pair_metrics(sim.T)


def brute_label(sim, ql, cl, ks, exclude_self):
    """Full sort per query, ties ordered with non-matching candidates first."""
    p = {k: [] for k in ks}
    rr = []
    for i in range(sim.shape[0]):
        cands = [j for j in range(sim.shape[1]) if not (exclude_self and j == i)]
        order = sorted(cands, key=lambda j: (-sim[i, j], cl[j] == ql[i]))
        rel = [cl[j] == ql[i] for j in order]
        for k in ks:
            kk = min(k, len(order))
            p[k].append(sum(rel[:kk]) / kk)
        rr.append(1.0 / (rel.index(True) + 1) if any(rel) else 0.0)
    out = {f"label_p@{k}": float(np.mean(p[k])) for k in ks}
    out["label_mrr"] = float(np.mean(rr))
    return out


def test_label_metrics_by_hand():
    sim = np.array([[0.9, 0.8, 0.1, 0.5], [0.2, 0.3, 0.9, 0.4], [0.7, 0.6, 0.6, 0.1]])
    ql = np.array(["a", "b", "a"])
    cl = np.array(["a", "b", "b", "a"])
    m = label_metrics(sim, ql, cl, ks=(1, 2))
    # q0 order: c0(a) c1(b) c3(a) c2 -> P@1 1, P@2 1/2, RR 1
    # q1 order: c2(b) c3(a) c1(b) c0 -> P@1 1, P@2 1/2, RR 1
    # q2 order: c0(a) c1/c2 tied (b,b) c3(a) -> P@1 1, P@2 1/2, RR 1
    assert m["label_p@1"] == pytest.approx(1.0)
    assert m["label_p@2"] == pytest.approx(0.5)
    assert m["label_mrr"] == pytest.approx(1.0)
    # Series->series with the query itself as candidate i: self must be dropped.
    ss = np.array([[1.0, 0.2, 0.6], [0.2, 1.0, 0.9], [0.6, 0.9, 1.0]])
    labels = np.array([0, 1, 0])
    m = label_metrics(ss, labels, labels, ks=(1,), exclude_self=True)
    # q0: c2 (0) best -> 1; q1: c2 (0) -> 0, first match none -> RR 0; q2: c1 (1) then c0 (0) -> RR 1/2
    assert m["label_p@1"] == pytest.approx(1 / 3)
    assert m["label_mrr"] == pytest.approx((1 + 0 + 0.5) / 3)
    m = label_metrics(ss, labels, labels, ks=(1,))
    assert m["label_p@1"] == 1.0 and m["label_mrr"] == 1.0


def test_label_metrics_ties_pessimistic():
    sim = np.zeros((1, 4))
    m = label_metrics(sim, [1], [0, 1, 0, 0], ks=(1, 3, 4, 9))
    assert m["label_p@1"] == 0.0 and m["label_p@3"] == 0.0
    assert m["label_p@4"] == pytest.approx(0.25) and m["label_p@9"] == pytest.approx(0.25)
    assert m["label_mrr"] == pytest.approx(0.25)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_label_metrics_against_brute_force_and_chunking(exclude_self):
    rng = np.random.default_rng(1)
    sim = rng.integers(0, 5, size=(23, 30)).astype(np.float32)  # many ties
    ql = rng.integers(0, 4, size=23)
    cl = rng.integers(0, 4, size=30)
    ks = (1, 3, 5)
    ref = brute_label(sim, ql, cl, ks, exclude_self)
    full = label_metrics(sim, ql, cl, ks=ks, exclude_self=exclude_self, chunk_size=1000)
    for key, value in ref.items():
        assert full[key] == pytest.approx(value)
    for chunk in (1, 4):
        got = label_metrics(sim, ql, cl, ks=ks, exclude_self=exclude_self, chunk_size=chunk)
        for key in full:
            assert got[key] == pytest.approx(full[key], abs=1e-12)
    got = label_metrics(
        jnp.asarray(sim),
        jnp.asarray(ql),
        jnp.asarray(cl),
        ks=ks,
        exclude_self=exclude_self,
        chunk_size=5,
    )
    for key in full:
        assert got[key] == pytest.approx(full[key], abs=1e-12)
        assert type(got[key]) is float


def test_exclusions_and_candidate_masks_match_brute_force():
    rng = np.random.default_rng(7)
    sim = rng.normal(size=(30, 30))
    labels = rng.integers(0, 3, 30)
    exclude = rng.random((30, 30)) < 0.3
    np.fill_diagonal(exclude, True)
    got = label_metrics(sim, labels, labels, ks=(1, 5), exclude=exclude, chunk_size=7)
    p1, p5, rr = [], [], []
    for q in range(30):
        order = [c for c in np.argsort(-sim[q], kind="stable") if not exclude[q, c]]
        hits = labels[order] == labels[q]
        p1.append(hits[:1].mean())
        p5.append(hits[:5].mean())
        rr.append(1.0 / (1 + np.argmax(hits)) if hits.any() else 0.0)
    assert got["label_p@1"] == pytest.approx(np.mean(p1))
    assert got["label_p@5"] == pytest.approx(np.mean(p5))
    assert got["label_mrr"] == pytest.approx(np.mean(rr))

    allowed = labels[:, None] == labels[None, :]  # e.g. within one domain
    got = exact_pair_metrics(sim, ks=(1, 5), candidate_mask=allowed, chunk_size=4)
    ranks = [1 + np.sum((sim[q] > sim[q, q]) & allowed[q]) for q in range(30)]
    assert got["hit@1"] == pytest.approx(np.mean(np.array(ranks) <= 1))
    assert got["mrr"] == pytest.approx(np.mean(1.0 / np.array(ranks)))


def test_label_metrics_skip_unlabelled_items_instead_of_the_whole_metric():
    """Weather-Captioned blocks with no condition reading carry label -1: the label metrics
    cover the labelled pairs rather than disappearing for every pair."""
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(12, 12))
    labels = rng.integers(0, 3, 12)
    labels[[2, 7]] = -1
    found = text_series_metrics(sim, labels)
    keep = labels >= 0
    for name, s in (("text->series", sim), ("series->text", sim.T)):
        subset = label_metrics(s[keep][:, keep], labels[keep], labels[keep], ks=(1, 5))
        for key in ("label_p@1", "label_p@5", "label_mrr"):
            assert found[name][key] == subset[key]
        assert found[name]["n_labelled_queries"] == 10 and found[name]["n_queries"] == 12
        assert found[name]["hit@10"] == exact_pair_metrics(s)["hit@10"]
    assert "label_p@1" not in text_series_metrics(sim, np.full(12, -1))["text->series"]
    exclude = np.eye(12, dtype=bool)
    ss = series_series_metrics(sim, labels, exclude)["series->series"]
    expected = label_metrics(
        sim[keep][:, keep], labels[keep], labels[keep], ks=(1, 5), exclude=exclude[keep][:, keep]
    )
    assert ss == expected and series_series_metrics(sim, np.full(12, -1), exclude) == {}


def test_identical_pairs_are_equally_right_answers():
    """Two reports on one series window (Time-MMD): the window appears twice among the series,
    ties with itself, and without `equivalent` each query's own copy ranks second at best."""
    series = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = np.array([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.5, 0.9]])
    same = identical_rows(texts, series)
    np.testing.assert_array_equal(same, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    sim = texts @ series.T
    assert exact_pair_metrics(sim, ks=(1,))["hit@1"] == 0.5  # the tied copies rank 2
    assert exact_pair_metrics(sim, ks=(1,), equivalent=same)["hit@1"] == 1.0
    assert identical_rows(np.eye(3)).sum() == 3 and identical_rows(np.ones((3, 2))).all()
    # A candidate outside the query's group never counts, equivalent or not.
    group = np.array([[1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
    found = text_series_metrics(sim, np.zeros(4, int), same_group=group, same_pair=same)
    assert found["text->series (within domain)"]["hit@1"] == 1.0



def test_channel_text_retrieval_across_windows_by_hand():
    e = np.eye(3, dtype=np.float32)
    # Three windows of two channels (ids 4 and 7). Channel 4's texts: windows 0 and 1 share one
    # sentence. Channel 7 is unobserved in window 2, so it is retrieved among two windows.
    channels = np.stack([[e[0], e[0]], [e[1], e[1]], [e[2], e[2]]])
    text = channels.copy()
    text[0, 0] = e[1]  # window 0's channel-4 text: the sentence of window 1's
    text[1, 1] = e[0]  # window 1's channel-7 text embeds as window 0's
    valid = np.array([[True, True], [True, True], [True, False]])
    ids = np.array([[4, 7]] * 3)
    keys = np.array([[[1], [10]], [[1], [11]], [[2], [12]]])  # text identity
    found = channel_text_metrics(channels, text, valid, ids, keys)
    # Every channel a text describes is a right answer. text->channel, channel 4: text 0 (the
    # sentence of windows 0 and 1) picks window 1's channel: right; texts 1 and 2 right.
    # Channel 7: text 0 right; text 1 prefers window 0's channel: wrong.
    assert found["text->channel"]["hit@1"] == pytest.approx(4 / 5)
    assert found["text->channel"]["n_queries"] == 5.0
    # channel->text, channel 4: channel 0 ties its sentence with window 2's text (pessimistic:
    # wrong), 1 and 2 right. Channel 7: both channels tie their text with the other's: wrong.
    assert found["channel->text"]["hit@1"] == pytest.approx(2 / 5)
    # MRR: channel 7's text 1 finds its channel second; channel->text's misses all rank 2.
    assert found["text->channel"]["mrr"] == pytest.approx((4 + 1 / 2) / 5)
    assert found["channel->text"]["mrr"] == pytest.approx((2 + 3 / 2) / 5)
    # Random ranking: channel 4 (2/3 + 2/3 + 1/3), channel 7 (1/2 + 1/2), over 5 queries.
    assert found["text->channel"]["chance_hit@1"] == pytest.approx((5 / 3 + 1) / 5)
    assert channel_text_metrics(channels, text, valid & False, ids, keys) == {}

