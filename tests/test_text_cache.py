"""The text-embedding cache: a lookup the file answers in full never loads the text model."""

import numpy as np
import pytest

from tests.test_synthetic import FakeEncoder
from trace_jax.data.text_cache import TextEmbeddingCache
from trace_jax.text.embed import DEFAULT_MODEL_ID, TextEncoder


class CountingEncoder(FakeEncoder):
    def __init__(self, model_id, embedded):
        self.model_id, self.embedded = model_id, embedded

    def embed(self, texts):
        self.embedded.append(list(texts))
        return super().embed(texts)


class CountingFactory:
    """An encoder factory that counts loads and records what its encoders embedded."""

    def __init__(self, model_id=FakeEncoder.model_id):
        self.model_id, self.loads, self.embedded = model_id, 0, []

    def __call__(self):
        self.loads += 1
        return CountingEncoder(self.model_id, self.embedded)


def cache(path, factory):
    return TextEmbeddingCache(path, encoder_factory=factory, model_id=factory.model_id)


def test_a_fully_cached_lookup_does_not_load_the_encoder(tmp_path):
    factory = CountingFactory()
    first = cache(tmp_path, factory).embed(["a", "b", "a"])
    assert factory.loads == 1 and factory.embedded == [["a", "b"]]

    # A new cache on the same directory (as in the next run): answered from the file.
    warm = cache(tmp_path, factory)
    np.testing.assert_array_equal(warm.embed(["b", "a"]), first[[1, 0]])
    assert warm.dim == FakeEncoder.dim
    assert warm.embed([]).shape == (0, FakeEncoder.dim)
    assert factory.loads == 1

    # A miss loads it once and embeds only the missing text.
    np.testing.assert_array_equal(warm.embed(["c", "a"])[1], first[0])
    assert factory.loads == 2 and factory.embedded[-1] == ["c"]


def test_the_default_cache_reads_the_text_models_file_without_loading_it(tmp_path, monkeypatch):
    # Files written before the model id became a constant keep their name.
    assert DEFAULT_MODEL_ID == "all-MiniLM-L6-v2:53aa51172d14:len256"
    written = cache(tmp_path, CountingFactory(DEFAULT_MODEL_ID)).embed(["rain", "wind"])

    def no_load(*args, **kwargs):
        raise AssertionError("the text model was loaded for a cached lookup")

    monkeypatch.setattr(TextEncoder, "load", no_load)
    default = TextEmbeddingCache(tmp_path)
    assert default.path.name == "all-MiniLM-L6-v2_53aa51172d14_len256.npz"
    np.testing.assert_array_equal(default.embed(["wind", "rain"]), written[[1, 0]])


def test_the_default_model_id_is_what_the_loaded_text_model_reports():
    assert TextEncoder.load().model_id == DEFAULT_MODEL_ID


def test_an_encoder_that_is_not_the_caches_model_is_refused(tmp_path):
    factory = CountingFactory("another-model")
    mismatched = TextEmbeddingCache(tmp_path, encoder_factory=factory, model_id="the-cache-model")
    with pytest.raises(ValueError, match="'another-model' does not match .*'the-cache-model'"):
        mismatched.embed(["a"])
    assert not list(tmp_path.iterdir())  # nothing written under either name


def test_without_a_model_id_the_encoder_names_the_file(tmp_path):
    factory = CountingFactory()
    unnamed = TextEmbeddingCache(tmp_path, encoder_factory=factory)
    unnamed.embed(["a"])
    assert unnamed.path == tmp_path / f"{FakeEncoder.model_id}.npz"
    assert factory.loads == 1
