"""The built-in synthetic captioned data set: schema, determinism, and a real series-text relation."""

import hashlib

import numpy as np
import pytest

from trace_jax.data import synthetic
from trace_jax.data.text_cache import TextEmbeddingCache

C, T, V, D = synthetic.NUM_CHANNELS, synthetic.NUM_STEPS, synthetic.NUM_PARAPHRASES, 384


class FakeEncoder:
    """Deterministic stand-in for the text tower: a unit vector seeded by the text's hash."""

    model_id = "fake-hash-encoder"
    dim = D

    def embed(self, texts):
        out = np.zeros((len(texts), D), np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(D)
            out[i] = v / np.linalg.norm(v)
        return out


def fake_cache(path) -> TextEmbeddingCache:
    return TextEmbeddingCache(cache_dir=path, encoder_factory=FakeEncoder)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return fake_cache(tmp_path_factory.mktemp("text_cache"))


@pytest.fixture(scope="module")
def data(cache):
    return synthetic.SyntheticCaptioned(300, seed=7, text_cache=cache)


def _same(a: dict, b: dict) -> bool:
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape or not np.array_equal(x, y):
            return False
    return True


def test_schema_shapes_and_dtypes(data):
    expected = {
        "series": ((C, T), np.float32),
        "observed": ((C, T), np.bool_),
        "channel_ids": ((C,), np.int32),
        "text_embedding": ((V, D), np.float32),
        "num_texts": ((), np.int32),
        "channel_texts": ((C,), np.object_),
        "channel_text_embedding": ((C, D), np.float32),
        "channel_text_valid": ((C,), np.bool_),
        "label": ((), np.int32),
        "start_time": ((), np.int64),
        "end_time": ((), np.int64),
    }
    for k in (0, 1, len(data) - 1):
        ex = data[k]
        for name, (shape, dtype) in expected.items():
            assert np.shape(ex[name]) == shape, name
            assert np.asarray(ex[name]).dtype == dtype, name
        assert isinstance(ex["text"], str) and isinstance(ex["example_id"], str)
        assert ex["end_time"] - ex["start_time"] == T * synthetic.STEP_SECONDS
    assert len({data[k]["example_id"] for k in range(len(data))}) == len(data)
    starts = [int(data[k]["start_time"]) for k in range(5)]
    assert np.all(np.diff(starts) == T * synthetic.STEP_SECONDS)  # consecutive windows
    with pytest.raises(IndexError):
        data[len(data)]


def test_texts_and_embeddings_consistent(data, cache):
    n_text = data.num_texts
    assert set(np.unique(n_text)) == {0, V}
    assert 0.03 < np.mean(n_text == 0) < 0.2  # a few uncaptioned (pretraining-only) examples
    for k in range(0, len(data), 7):
        ex = data[k]
        n = int(ex["num_texts"])
        texts = list(ex["texts"][:n])
        if n:
            assert ex["text"] == texts[0] and len(set(texts)) == V
            np.testing.assert_array_equal(ex["text_embedding"][:n], cache.embed(texts))
        else:
            assert ex["text"] == ""
        np.testing.assert_array_equal(ex["text_embedding"][n:], 0)
        valid = ex["channel_text_valid"]
        np.testing.assert_array_equal(valid, [bool(t) for t in ex["channel_texts"]])
        np.testing.assert_array_equal(ex["channel_text_embedding"][~valid], 0)
        if valid.any():
            np.testing.assert_array_equal(
                ex["channel_text_embedding"][valid], cache.embed(list(ex["channel_texts"][valid]))
            )


def test_deterministic_for_seed_and_prefix_stable(cache, data):
    again = synthetic.SyntheticCaptioned(40, seed=7, text_cache=cache)
    for k in range(40):
        assert _same(again[k], data[k])  # example k does not depend on the set size
    other = synthetic.SyntheticCaptioned(40, seed=8, text_cache=cache)
    assert not np.array_equal(other.series, again.series)
    splits = synthetic.synthetic_splits(40, 20, seed=7, text_cache=cache)
    assert _same(splits["train"][3], data[3])
    val = splits["validation"]
    assert not np.allclose(val.series[:20], again.series[:20])
    assert val[0]["start_time"] == data[40]["start_time"]  # validation windows follow train


def test_missing_spans_are_masked(data):
    observed, series = data.observed, data.series
    assert np.all(series[~observed] == 0)
    partly = observed.any(-1) & ~observed.all(-1)
    assert 0.15 < partly.mean() < 0.35
    dead = ~observed.any(-1)
    assert 5 <= dead.sum() <= 50 and dead.sum(1).max() == 1
    k, c = np.argwhere(dead)[0]
    ex = data[k]
    assert not ex["channel_text_valid"][c] and ex["channel_texts"][c] == ""
    name = synthetic.CHANNELS[c]
    assert all(name not in t.lower() for t in ex["texts"])  # no text talks about it
    # Spikes are never hidden.
    spike = data.attributes["spike"] > 0
    for k, c in np.argwhere(spike & partly)[:40]:
        lo, hi = synthetic._SPIKE_CENTRE[data.attributes["spike"][k, c]]
        assert observed[k, c, lo - 1 : hi + 2][np.argmax(series[k, c, lo - 1 : hi + 2])]


def _fit(x, m):
    """Least squares on [1, t, cos, sin(daily)] over observed points: (slope per window, amp)."""
    t = np.arange(T)
    w = 2 * np.pi / 24
    design = np.stack([np.ones(T), t / (T - 1), np.cos(w * t), np.sin(w * t)], 1)
    coef, *_ = np.linalg.lstsq(design[m], x[m], rcond=None)
    return coef[1], np.hypot(coef[2], coef[3]), x - design @ coef


def test_attributes_shape_the_series(data):
    a = data.attributes
    live = data.observed.any(-1)
    checked = {"rising": 0, "falling": 0, "cycle": 0, "spike": 0}
    for k, c in np.argwhere(live):
        scale = synthetic._SCALE[c]
        slope, amp, resid = _fit(data.series[k, c] / scale, data.observed[k, c])
        if a["trend"][k, c] == synthetic.TREND_RISING:
            assert slope > 1.0, (k, c, slope)
            checked["rising"] += 1
        elif a["trend"][k, c] == synthetic.TREND_FALLING:
            assert slope < -1.0, (k, c, slope)
            checked["falling"] += 1
        elif a["shift"][k, c] == synthetic.SHIFT_NONE and a["spike"][k, c] == 0:
            assert abs(slope) < 1.0, (k, c, slope)
        clean = a["shift"][k, c] == synthetic.SHIFT_NONE and a["spike"][k, c] == 0
        if clean and a["cycle"][k, c]:  # (a step or spike biases the sine fit)
            assert amp > 1.0, (k, c, amp)
            checked["cycle"] += 1
        elif clean:
            assert amp < 0.6, (k, c, amp)
        if a["spike"][k, c]:
            lo, hi = synthetic._SPIKE_CENTRE[a["spike"][k, c]]
            peak = np.argmax(np.where(data.observed[k, c], resid, -np.inf))
            assert lo - 1 <= peak <= hi + 1, (k, c, peak)
            checked["spike"] += 1
    assert min(checked.values()) > 50, checked
    # Label = net direction of the observed channels.
    up = (((a["trend"] == 1) | (a["shift"] == 1)) & live).sum(1)
    down = (((a["trend"] == 2) | (a["shift"] == 2)) & live).sum(1)
    np.testing.assert_array_equal(data.labels, np.where(up > down, 0, np.where(down > up, 1, 2)))
    assert np.bincount(data.labels, minlength=3).min() > 0.1 * len(data)


def test_texts_are_rendered_from_attributes(data):
    a = data.attributes
    for k in range(0, len(data), 5):
        ex = data[k]
        for c in np.flatnonzero(ex["channel_text_valid"]):
            attrs = [int(a[n][k, c]) for n in ("trend", "shift", "cycle", "spike", "noise")]
            renders = {synthetic.channel_text(c, *attrs, v) for v in range(V)}
            assert ex["channel_texts"][c] in renders
        if ex["num_texts"]:
            live = ex["observed"].any(-1)
            score = [
                (
                    synthetic.salience(
                        *(int(a[n][k, c]) for n in ("trend", "shift", "cycle", "spike"))
                    )
                    if live[c]
                    else -1
                )
                for c in range(C)
            ]
            best = max(score)
            top = [c for c in range(C) if score[c] == best]
            assert any(synthetic.CHANNELS[c] in ex["text"].lower() for c in top)


def test_series_features_predict_real_caption_embeddings(tmp_path_factory):
    """Learnability with the REAL text tower: a linear map from six simple series features to
    MiniLM channel-text embeddings retrieves held-out captions far better than the channel
    name alone or a map fitted on shuffled pairs."""
    cache = TextEmbeddingCache(cache_dir=tmp_path_factory.mktemp("real_text_cache"))
    data = synthetic.SyntheticCaptioned(90, seed=3, text_cache=cache)
    t = np.arange(T)
    feats, emb, example, chan = [], [], [], []
    for k, c in np.argwhere(data._channel_rows > 0):
        x, m = data.series[k, c], data.observed[k, c]
        x = (x - x[m].mean()) / (x[m].std() + 1e-6)
        slope, amp, resid = _fit(x, m)
        resid = np.where(m, resid, -np.inf)
        peak = int(np.argmax(resid))
        where = np.eye(3)[min(2, 3 * peak // T)] * resid[peak]
        step = x[m & (t >= T // 2)].mean() - x[m & (t < T // 2)].mean()
        rough = np.median(np.abs(np.diff(resid[np.isfinite(resid)])))
        feats.append(np.r_[slope, amp, where, resid[peak], rough, step, np.eye(C)[c]])
        emb.append(data._table[data._channel_rows[k, c]])
        example.append(k)
        chan.append(c)
    feats, emb, chan = np.array(feats), np.array(emb), np.array(chan)
    train = np.array(example) < 60

    def mrr(x, y_train):
        w = np.linalg.solve(x[train].T @ x[train] + 1e-2 * np.eye(x.shape[1]), x[train].T @ y_train)
        pred = x[~train] @ w
        pred /= np.linalg.norm(pred, axis=1, keepdims=True) + 1e-9
        target = emb[~train] / np.linalg.norm(emb[~train], axis=1, keepdims=True)
        sim = pred @ target.T
        rank = (sim >= np.diag(sim)[:, None]).sum(1) - 1  # ties count against
        return float(np.mean(1.0 / (rank + 1)))

    full = mrr(feats, emb[train])
    names_only = mrr(np.eye(C)[chan], emb[train])
    shuffled = mrr(feats, emb[train][np.random.default_rng(0).permutation(train.sum())])
    chance = float(np.mean(1.0 / np.arange(1, (~train).sum() + 1)))
    print(
        f"held-out caption MRR: series features {full:.3f}, channel name only "
        f"{names_only:.3f}, shuffled pairs {shuffled:.3f}, chance {chance:.3f}"
    )
    assert full > 1.8 * names_only and full > 3 * shuffled and full > 5 * chance, (
        full,
        names_only,
        shuffled,
        chance,
    )
