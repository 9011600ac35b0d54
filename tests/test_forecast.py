"""Forecasting and classification heads: baselines, the no-leakage retrieval rule on real
Time-MMD windows, and head-only training that leaves the aligned encoder untouched."""

import dataclasses

import jax
import numpy as np
import pytest

import trace_jax
import trace_jax.data.time_mmd as tm
from tests.helpers import missing_shared_data, read_params, tiny_config
from tests.test_time_mmd import ROOT, FakeEncoder
from trace_jax.forecast import sources
from trace_jax.forecast.baselines import last_value, moving_average, seasonal_naive
from trace_jax.train.classify import ClassifyTask, macro_f1
from trace_jax.train.forecast import ForecastTask
from trace_jax.train.loop import train_and_evaluate

needs_time_mmd = pytest.mark.skipif(
    missing_shared_data(ROOT), reason=f"real Time-MMD not at {ROOT}"
)


@pytest.fixture(scope="module")
def aligned(aligned_workdir):
    """The shared tiny alignment workdir: the frozen encoder of the heads."""
    return aligned_workdir


def test_untrained_baselines():
    history = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    observed = np.array([[True, True, True, True, True, False]])
    np.testing.assert_array_equal(last_value(history, observed), [[5.0]])
    np.testing.assert_array_equal(seasonal_naive(history, observed, 5, 3), [[4, 5, 5, 4, 5]])
    np.testing.assert_array_equal(last_value(history, np.zeros_like(observed)), [[0.0]])
    ma = np.asarray(moving_average(np.arange(6.0), 3))
    np.testing.assert_allclose(ma, [1 / 3, 1, 2, 3, 4, 14 / 3])
    assert macro_f1(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3) == pytest.approx(
        (2 / 3 + 0.8) / 2
    )


@needs_time_mmd
@pytest.mark.parametrize("domain", ["Health_US", "Energy"])
def test_retrieval_never_leaks_on_real_time_mmd_windows(domain, aligned):
    series, facts = tm.load_domain(ROOT, domain)
    out, _ = tm.forecast_examples(series, facts, 96, 12)
    for split in out.values():
        for e in split:
            e["context_embedding"] = np.zeros((1, 384), np.float32)
    model = trace_jax.load(aligned)
    channel = tm.CHANNEL_VOCAB[(domain, "OT")]
    stack = lambda split: sources.windows(
        [sources.forecast_example(e, 12, channel) for e in out[split]]
    )
    bank = stack("train")
    for name in ("train", "test"):
        queries = stack(name)
        rag = sources.retrieve_context(model, bank, queries, top_r=5)
        allowed = sources.eligible(bank, queries)
        ids = rag["rag_ids"]
        rows = np.nonzero(ids >= 0)
        # Nothing retrieved ends after the query's forecast starts (so nothing overlaps or
        # follows its forecast window), and a window never retrieves itself.
        assert (bank["end"][ids[rows]] <= queries["forecast_start"][rows[0]]).all()
        if name == "train":
            assert not (ids == np.arange(len(ids))[:, None]).any()
        # Every slot that could be filled is: min(R, eligible windows) per query.
        np.testing.assert_array_equal((ids >= 0).sum(1), np.minimum(5, allowed.sum(1)))
        # And they are the most similar eligible windows.
        z = lambda w: model.embed_series(
            np.where(w["observed"], w["series"], np.nan), channel_ids=w["channel_ids"]
        )
        sim = np.where(allowed, z(queries) @ z(bank).T, -np.inf)
        q = int(np.argmax(allowed.sum(1) >= 5))
        np.testing.assert_array_equal(ids[q], np.argsort(-sim[q], kind="stable")[:5])


@needs_time_mmd
def test_head_only_forecasting_and_dlinear_train_on_a_real_build(aligned, tmp_path, text_cache_dir):
    import tensorflow_datasets as tfds

    builder = tm.TimeMmd(
        data_dir=str(tmp_path / "data"),
        config="forecast_Energy_L24_H4",
        text_cache_dir=str(tmp_path / "cache"),
        text_encoder_factory=FakeEncoder,
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(ROOT)))
    results = {}
    for model in ("series_text", "dlinear"):
        config = tiny_config("forecast", tmp_path / "cache")
        config.data.update(data_dir=str(tmp_path / "data"), builder_config="forecast_Energy_L24_H4")
        config.forecast.update(horizon=4, encoder_from=str(aligned))
        if model == "dlinear":
            config.forecast.model = "dlinear"
        else:
            config.forecast.rag = model
        workdir = tmp_path / model
        results[model] = train_and_evaluate(config, workdir, ForecastTask(config))
        for key in ("mse", "mae", "last_value_mse", "seasonal_naive_mae"):
            assert np.isfinite(results[model][key]) and results[model][key] > 0
    assert results["dlinear"]["last_value_mse"] == results["series_text"]["last_value_mse"]
    # Head-only: the encoder's parameters are exactly the aligned run's.
    _, trained = read_params(tmp_path / "series_text", config_for(aligned, tmp_path))
    _, original = read_params(aligned, tiny_config("align", text_cache_dir))
    for a, b in zip(
        jax.tree.leaves(trained["model"]["encoder"]), jax.tree.leaves(original["model"]["encoder"])
    ):
        np.testing.assert_array_equal(a, b)


def config_for(aligned, tmp_path):
    config = tiny_config("forecast", tmp_path / "cache")
    config.data.update(data_dir=str(tmp_path / "data"), builder_config="forecast_Energy_L24_H4")
    config.forecast.update(horizon=4, encoder_from=str(aligned), rag="series_text")
    return config


def test_classification_head_on_the_frozen_encoder(aligned, tmp_path, text_cache_dir):
    config = tiny_config("classify", text_cache_dir)
    config.data.name = "synthetic"
    config.classify.update(encoder_from=str(aligned), num_classes=3)
    metrics = train_and_evaluate(config, tmp_path / "cls", ClassifyTask(config))
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["macro_f1"] <= 1
    assert metrics["num_labelled"] > 0


def test_forecasting_schema_windows_splits_history_and_target(aligned, tmp_path, text_cache_dir):
    """Windows of any schema data set (here the synthetic one, as for Weather-Captioned): the
    last `horizon` steps are the target, channels standardised with the training split."""
    config = tiny_config("forecast", text_cache_dir)
    config.data.name = "synthetic"
    config.forecast.update(horizon=16, encoder_from=str(aligned), rag="series_text")
    task = ForecastTask(config)
    from trace_jax.data.sources import load_sources

    train, validation = task.prepare_sources(*load_sources(config.data))
    x = validation[0]
    assert x["series"].shape == (5, 80) and x["target"].shape == (5, 16)
    assert x["rag_valid"].dtype == bool and x["rag_series"].shape == (5, 32)
    metrics = train_and_evaluate(config, tmp_path / "fc", ForecastTask(config))
    assert np.isfinite(metrics["mse"]) and metrics["seasonal_naive_mse"] > 0


def test_a_frozen_encoder_runs_without_dropout_under_a_training_head():
    """Head-only training sees the features evaluation sees; a tuned encoder keeps dropout."""
    from tests.test_encoder import TINY, awkward_inputs
    from trace_jax.forecast.models import ClassifierModel

    config = dataclasses.replace(TINY, dropout=0.3)
    series, observed = awkward_inputs(2, 3, 16, seed=0)
    batch = {"series": series, "observed": observed, "channel_ids": np.zeros((2, 3), np.int32)}
    for frozen in (True, False):
        model = ClassifierModel(config, num_classes=3, frozen_encoder=frozen)
        params = model.init(jax.random.key(0), batch)
        logits = jax.jit(
            lambda p, rng: model.apply(p, batch, deterministic=False, rngs={"dropout": rng})
        )
        a, b = logits(params, jax.random.key(1)), logits(params, jax.random.key(2))
        assert np.array_equal(a, b) == frozen
