"""The embedding index: build, save/load without pickle, search in every direction, bad queries."""

import numpy as np
import pytest

import trace_jax
from tests.helpers import tiny_config
from trace_jax.data.sources import load_sources
from trace_jax.retrieval.index import Index


@pytest.fixture(scope="module")
def index(aligned_workdir, text_cache_dir):
    config = tiny_config("align", text_cache_dir, steps=2)
    _, source = load_sources(config.data)
    model = trace_jax.load(aligned_workdir)
    return Index.from_examples(model, [source[i] for i in range(len(source))])


def brute_force(queries, bank, k, banned=None):
    sim = queries @ bank.T
    if banned is not None:
        sim = np.where(banned, -np.inf, sim)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, axis=1)


def test_every_direction_matches_brute_force(index):
    z_text = index.model.embed_text(["rising trend with a spike", "flat noisy series"])
    hits = index.search(["rising trend with a spike", "flat noisy series"], k=4)
    order, scores = brute_force(z_text, index.series_embeddings, 4)
    np.testing.assert_array_equal(hits.positions, order)
    np.testing.assert_allclose(hits.scores, scores, atol=1e-5)

    window = np.nan_to_num(index.series[3])
    hits = index.search(window, k=3, target="text")
    rows = np.flatnonzero(index.has_text)
    order, _ = brute_force(index.model.embed_series(window), index.text_embeddings[rows], 3)
    np.testing.assert_array_equal(hits.positions, rows[order])
    assert [h["id"] for h in hits.items(0)] == [index.ids[p] for p in rows[order[0]]]


def test_search_item_skips_itself_and_overlapping_windows(index):
    pos = 5
    hits = index.search_item(index.ids[pos], k=6)
    start, end = index.spans[:, 0], index.spans[:, 1]
    overlap = (
        (start < end[pos]) & (start[pos] < end) & (index.series_groups == index.series_groups[pos])
    )
    order, _ = brute_force(index.series_embeddings[pos][None], index.series_embeddings, 6, overlap)
    np.testing.assert_array_equal(hits.positions, order)
    assert pos not in hits.positions[0]


def test_save_and_load_round_trip_without_pickle(index, tmp_path):
    index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz", "index.json"]
    loaded = Index.load(tmp_path, index.model)
    np.testing.assert_array_equal(loaded.series_embeddings, index.series_embeddings)
    assert loaded.ids == index.ids and loaded.texts == index.texts
    a, b = loaded.search("a noisy series", k=3), index.search("a noisy series", k=3)
    np.testing.assert_array_equal(a.positions, b.positions)


def test_bad_queries_get_clear_errors(index):
    with pytest.raises(ValueError, match="empty"):
        index.search("   ", k=3)
    with pytest.raises(ValueError, match="series query must be"):
        index.search(np.zeros((index.series.shape[1] + 1, index.series.shape[2])), k=3)
    with pytest.raises(ValueError, match="no observed finite value"):
        index.search(np.full(index.series.shape[1:], np.nan), k=3)
    with pytest.raises(ValueError, match="k=.* holds"):
        index.search("rain", k=len(index) + 1)
    with pytest.raises(ValueError, match="target"):
        index.search("rain", k=3, target="image")
