"""The embedding index: build, save/load without pickle, search in every direction, the overlap
exclusion, channel ids of series queries, the model check on load, bad queries."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import trace_jax
from tests.helpers import tiny_config
from trace_jax.data.sources import load_sources
from trace_jax.retrieval.index import META, Index, StaleIndexError


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


def test_search_item_skips_overlapping_windows_of_its_own_series_only():
    """Two series of ten windows each, [10i, 10i + 30): window 3 of series 0 overlaps windows
    1-5 of both series; only those of its own series (and itself) are skipped."""
    slots = np.tile(np.arange(10), 2)
    groups = np.repeat([0, 1], 10)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = Index(
        series_embeddings=emb,
        text_embeddings=np.zeros_like(emb),
        has_text=np.zeros(20, bool),
        channel_ids=np.zeros((20, 1), np.int32),
        ids=[f"s{g}-w{i}" for g, i in zip(groups, slots)],
        texts=[""] * 20,
        spans=np.stack([10 * slots, 10 * slots + 30], axis=1),
        series_groups=groups,
    )
    pos = 3
    skipped = {1, 2, 3, 4, 5}  # series 0: itself and its overlapping windows
    kept = set(range(20)) - skipped
    hits = index.search_item(pos, k=len(kept))
    assert set(hits.positions[0]) == kept
    assert {11, 12, 13, 14, 15} <= kept  # series 1's windows overlapping it in time
    order, _ = brute_force(emb[pos][None], emb, len(kept), np.isin(np.arange(20), list(skipped)))
    np.testing.assert_array_equal(hits.positions, order)

    everything_else = index.search_item(pos, k=19, exclude_overlap=False)
    assert set(everything_else.positions[0]) == set(range(20)) - {pos}


def with_distinct_channel_identities(model):
    """The tiny run's CIT rows are still near their N(0, 0.02) start, too small beside the patch
    tokens for a channel's id to show in the embedding; rows of unit scale make it count."""
    params = jax.tree.map(lambda x: x, model.params)  # new dicts, the same arrays
    cit = params["encoder"]["channel_identity"]
    cit["embedding"] = np.random.default_rng(0).normal(size=cit["embedding"].shape)
    return dataclasses.replace(model, params=params)


def test_series_queries_use_the_channel_ids_of_the_windows(index, tmp_path):
    """Windows embedded with global channel ids (as Time-MMD's, e.g. Energy's 12-20): a window
    queried as a series finds itself at cosine 1 with them, not with the default 0..C-1."""
    model = with_distinct_channel_identities(index.model)
    series = np.nan_to_num(index.series[:6])
    c = series.shape[1]
    energy_like = np.arange(12, 12 + c)
    shifted = model.build_index(series, channel_ids=energy_like)
    np.testing.assert_array_equal(shifted.channel_ids, np.tile(energy_like, (6, 1)))
    hits = shifted.search(series[2], k=1)
    assert hits.positions[0, 0] == 2 and hits.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    default = model.embed_series(series[2])
    assert float(default[0] @ shifted.series_embeddings[2]) < 0.99

    shifted.save(tmp_path)
    loaded = Index.load(tmp_path, model)
    np.testing.assert_array_equal(loaded.channel_ids, shifted.channel_ids)
    assert loaded.search(series[2], k=1).scores[0, 0] == pytest.approx(1.0, abs=1e-5)

    mixed = model.build_index(series, channel_ids=[energy_like] * 3 + [np.arange(c)] * 3)
    with pytest.raises(ValueError, match="different channel ids.*pass the query's channel_ids"):
        mixed.search(series[4], k=1)
    hits = mixed.search(series[4], k=1, channel_ids=np.arange(c))
    assert hits.positions[0, 0] == 4 and hits.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="CIT table"):
        mixed.search(series[4], k=1, channel_ids=np.full(c, model.encoder_config.num_channels))
    with pytest.raises(ValueError, match="for series queries"):
        mixed.search("rain", k=1, channel_ids=np.arange(c))


def test_an_index_is_only_loaded_with_the_model_that_embedded_it(index, tmp_path):
    model = index.model
    index.save(tmp_path / "index")
    exported = trace_jax.load(model.save(tmp_path / "export"))  # same weights, another path
    assert Index.load(tmp_path / "index", exported).model is exported
    other = dataclasses.replace(model, params=jax.tree.map(lambda x: x * 1.01, model.params))
    with pytest.raises(StaleIndexError, match="not by .*rebuild the index with this model"):
        Index.load(tmp_path / "index", other)
    assert len(Index.load(tmp_path / "index")) == len(index)  # no model: nothing to check

    meta = json.loads((tmp_path / "index" / META).read_text())
    (tmp_path / "index" / META).write_text(json.dumps({**meta, "format": "trace_jax.index/1"}))
    with pytest.raises(StaleIndexError, match="format 'trace_jax.index/1'"):
        Index.load(tmp_path / "index", model)


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
