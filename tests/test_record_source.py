"""RecordSource decodes a built split exactly as TFDS's own data source does, only faster.

The two builders' end-to-end tests (test_weather_captioned.py, test_time_mmd.py) call
`assert_same_examples` on every split they build; the tests here cover what those builds do not
(uint64 and raw-bytes tensors, unsupported features, records missing a feature, pickling,
decoding a subset of the features).
"""

import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.test_pipeline import assert_batches_equal, take
from trace_jax.data import pipeline
from trace_jax.data.record_source import RecordSource


def assert_same_examples(tfds_source) -> RecordSource:
    """Every example of `tfds_source`: same keys, Python types, dtypes, shapes and values."""
    fast = RecordSource(tfds_source)
    assert len(fast) == len(tfds_source)
    indices = list(range(len(tfds_source)))
    for want, got in zip(tfds_source.__getitems__(indices), fast.__getitems__(indices)):
        assert want.keys() == got.keys()
        for key, value in want.items():
            assert type(got[key]) is type(value), key
            if isinstance(value, np.ndarray):
                assert (got[key].dtype, got[key].shape) == (value.dtype, value.shape), key
                np.testing.assert_array_equal(got[key], value, err_msg=key)
            else:
                assert got[key] == value, key
    if len(fast):
        for key, value in tfds_source[len(tfds_source) - 1].items():
            np.testing.assert_array_equal(fast[len(fast) - 1][key], value)
    return fast


def assert_same_batches(tfds_source) -> None:
    """The training pipeline (which decodes only the batch's features) gives the same batches."""
    make = lambda source: pipeline.make_train_iterator(
        source, global_batch_size=4, seed=3, shard_index=0, shard_count=1, require_text=True
    )
    want, got = make(tfds_source), make(RecordSource(tfds_source))
    assert got.reader.source._specs.keys() == set(pipeline.SOURCE_KEYS)
    assert_batches_equal(take(want, 2), take(got, 2))


class Kinds(tfds.core.GeneratorBasedBuilder):
    """Every storage the decoder handles, with values at their dtypes' edges."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        f = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            features=f.FeaturesDict(
                {
                    "f32": f.Tensor(shape=(2, 3), dtype=np.float32),
                    "zlib": f.Tensor(shape=(2, 2), dtype=np.float32, encoding=f.Encoding.ZLIB),
                    "raw": f.Tensor(shape=(3,), dtype=np.int16, encoding=f.Encoding.BYTES),
                    "u64": f.Tensor(shape=(2,), dtype=np.uint64),
                    "flags": f.Tensor(shape=(3,), dtype=np.bool_),
                    "words": f.Tensor(shape=(2,), dtype=np.str_),
                    "f64": f.Scalar(dtype=np.float64),
                    "i32": f.Scalar(dtype=np.int32),
                    "yes": f.Scalar(dtype=np.bool_),
                    "u64_scalar": f.Scalar(dtype=np.uint64),
                    "text": f.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(5):
            yield (
                i,
                {
                    "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / (i + 3),
                    "zlib": np.full((2, 2), i - 1.5, np.float32),
                    "raw": np.array([-32768, i, 32767], np.int16),
                    "u64": np.array([2**64 - 1 - i, i], np.uint64),
                    "flags": np.array([i % 2, 1, 0], np.bool_),
                    "words": [f"w{i}", "é" * i],
                    "f64": 0.1 * i,
                    "i32": -(2**31) + i,
                    "yes": i % 2 == 0,
                    "u64_scalar": np.uint64(2**63 + i),
                    "text": "" if i == 0 else f"text {i}",
                },
            )


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    builder = Kinds(data_dir=tmp_path_factory.mktemp("kinds"), file_format="array_record")
    builder.download_and_prepare()
    return builder.as_data_source(split="train")


def test_every_storage_kind_decodes_as_tfds_does(kinds):
    fast = assert_same_examples(kinds)
    by_key = {ex["i32"] + 2**31: ex for ex in (fast[i] for i in range(len(fast)))}
    assert by_key[2]["u64"].tolist() == [2**64 - 3, 2]
    assert by_key[4]["words"].tolist() == [b"w4", "éééé".encode()]
    assert by_key[3]["u64_scalar"] == 2**63 + 3 and by_key[0]["text"] == b""


def test_pickles_for_grain_workers(kinds):
    fast = pickle.loads(pickle.dumps(RecordSource(kinds)))
    assert len(fast) == 5 and fast[1]["text"] == kinds[1]["text"]
    assert "split='train'" in repr(fast)


def test_unsupported_feature_is_refused_by_name(tmp_path):
    class Images(Kinds):
        def _info(self):
            info = super()._info()
            info.features._feature_dict["picture"] = tfds.features.Image(shape=(4, 4, 3))
            return info

    fake = type("Source", (), {})()
    fake.dataset_info, fake.split, fake.data_source = Images(data_dir=tmp_path).info, "x", []
    with pytest.raises(TypeError, match="'picture' \\(Image\\)"):
        RecordSource(fake)


def test_record_missing_a_feature_says_rebuild(kinds):
    fast = RecordSource(kinds)
    fast._specs = {**fast._specs, "added_later": fast._specs["i32"]}
    with pytest.raises(ValueError, match="lacks feature 'added_later'.*Rebuild"):
        fast[0]


def test_with_keys_decodes_those_features_only(kinds):
    fast = RecordSource(kinds).with_keys(["text", "u64"])
    assert fast[0].keys() == {"text", "u64"} and len(fast) == len(kinds)
    np.testing.assert_array_equal(fast[0]["u64"], kinds[0]["u64"])
    with pytest.raises(KeyError, match="no feature \\['nope'\\]"):
        RecordSource(kinds).with_keys(["text", "nope"])
