"""The evaluation report's pieces: exclusions, metrics per direction, baselines, markdown."""

import numpy as np
import pytest

import trace_jax
from tests.helpers import tiny_config
from trace_jax import evaluate
from trace_jax.data.sources import load_sources
from trace_jax.eval import baselines


@pytest.fixture(scope="module")
def split(aligned_workdir, text_cache_dir):
    """The shared tiny model and the synthetic validation split in load_split's layout."""
    workdir = aligned_workdir
    config = tiny_config("align", text_cache_dir, steps=2)
    _, source = load_sources(config.data)
    ex = [source[i] for i in range(len(source))]
    stack = lambda k: np.stack([e[k] for e in ex])
    data = {
        "series": stack("series"),
        "observed": stack("observed"),
        "channel_ids": stack("channel_ids"),
        "text_embedding": stack("text_embedding")[:, 0],
        "channel_text_embedding": stack("channel_text_embedding"),
        "channel_text_valid": stack("channel_text_valid"),
        "has_text": stack("num_texts") > 0,
        "label": stack("label"),
        "start": stack("start_time"),
        "end": stack("end_time"),
        "group": np.zeros(len(ex), int),
    }
    return trace_jax.load(workdir), data


def test_overlap_exclusion_is_per_series():
    data = {
        "start": np.array([0, 5, 20, 0]),
        "end": np.array([10, 15, 30, 10]),
        "group": np.array([0, 0, 0, 1]),
    }
    expected = np.array(
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], bool
    )  # window 3 is another series: never excluded for the others
    np.testing.assert_array_equal(evaluate.overlap_exclusion(data), expected)


def test_model_and_baselines_report(split):
    model, data = split
    methods = {"TRACE": evaluate.evaluate_model(model, data)}
    methods.update(evaluate.evaluate_baselines(["random", "euclidean", "dtw"], data, seed=0))
    for name in ("TRACE", "random"):
        for direction in ("text->series", "series->text", "series->series"):
            m = methods[name][direction]
            assert 0 <= m["label_p@1"] <= 1 and 0 <= m["label_mrr"] <= 1
        assert methods[name]["text->series"]["n_queries"] == data["has_text"].sum()
    assert set(methods["dtw"]) == {"series->series", "seconds"}
    # The synthetic windows have channel texts: each channel's text among the same channel's.
    n_channel_texts = data["channel_text_valid"].sum()
    for direction in ("text->channel", "channel->text"):
        m = methods["TRACE"][direction]
        assert set(m) == {"hit@1", "mrr", "chance_hit@1", "n_queries"}
        assert 0 < m["chance_hit@1"] < 1 and 0 <= m["hit@1"] <= 1
        assert m["n_queries"] == n_channel_texts
    report = {
        "dataset": "synthetic",
        "split": "validation",
        "n_windows": len(data["label"]),
        "n_captioned": int(data["has_text"].sum()),
        "command": "python -m trace_jax.evaluate",
        "methods": methods,
    }
    text = evaluate.markdown(report)
    assert "## text->series" in text and "| dtw |" in text and "nan" not in text
    assert "## channel->text" in text


def test_baselines_match_direct_computations():
    rng = np.random.default_rng(0)
    series = rng.normal(size=(6, 2, 16)).astype(np.float32)
    observed = rng.random(series.shape) > 0.2
    z = baselines.z_normalise(series, observed)
    euclid = baselines.euclidean_similarity(series, observed)
    direct = -np.linalg.norm(z[:, None].reshape(6, 1, -1) - z[None].reshape(1, 6, -1), axis=-1)
    np.testing.assert_allclose(euclid, direct, atol=1e-6)
    from dtaidistance import dtw_ndim

    dtw = baselines.dtw_similarity(series, observed, window_fraction=0.25)
    zt = z.transpose(0, 2, 1)
    assert dtw[1, 4] == pytest.approx(-dtw_ndim.distance(zt[1].copy(), zt[4].copy(), window=4))
    np.testing.assert_allclose(dtw, dtw.T)
    sax = baselines.sax_vsm_similarity(series, observed, window_size=8)
    assert sax.shape == (6, 6) and np.allclose(np.diag(sax), 1.0)
