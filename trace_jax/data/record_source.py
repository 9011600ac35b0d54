"""Random access to a built TFDS split, its records decoded straight into numpy.

`builder.as_data_source(split)` decodes each record through TFDS's generic feature machinery
(flatten the feature tree, a Python call per feature and value, nest again): 173 us an example of
Weather-Captioned on the project's Zen 4 CPU, against about 95 us here for every feature, less
for the batch's features alone (`with_keys`, which the input pipeline uses). In one Python
process TFDS's decoding bounded the pipeline at about 5,000 examples a second, under what one
GPU's alignment step consumes (BENCHMARKS.md, "Input pipeline"). `RecordSource` reads the same
ArrayRecord records and returns the same dict, values, dtypes and Python types as the TFDS source
(tests/test_record_source.py, and both builders' end-to-end tests), for the feature kinds this
package's builders use: fixed-shape `Tensor`, `Scalar` and `Text`, stored plain or as ZLIB / raw
bytes.
"""

from __future__ import annotations

import copy
import dataclasses
import zlib
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

_SUPPORTED = (tfds.features.Tensor, tfds.features.Scalar, tfds.features.Text)


@dataclasses.dataclass(frozen=True)
class _FeatureSpec:
    """How one top-level feature is stored in a record and what it decodes to."""

    dtype: np.dtype  # of the decoded value (object for strings)
    shape: tuple[int, ...]  # of the decoded value; () decodes to a Python scalar / bytes
    encoding: str  # "none", "bytes" or "zlib" (tfds.features.Encoding's values)


def _feature_spec(name: str, feature) -> _FeatureSpec:
    if type(feature) not in _SUPPORTED or (
        isinstance(feature, tfds.features.Text) and feature.encoder is not None
    ):
        raise TypeError(
            f"RecordSource cannot decode feature {name!r} ({type(feature).__name__}); it "
            "decodes fixed-shape Tensor, Scalar and plain Text features"
        )
    if any(d is None or d < 0 for d in feature.shape):
        raise TypeError(f"RecordSource needs a fixed shape; feature {name!r} has {feature.shape}")
    return _FeatureSpec(
        dtype=np.dtype(feature.np_dtype),
        shape=tuple(int(d) for d in feature.shape),
        encoding=feature._encoding.value,  # pylint: disable=protected-access
    )


def _decode_value(name: str, feature, spec: _FeatureSpec) -> Any:
    kind = feature.WhichOneof("kind")  # float_list, int64_list or bytes_list
    if kind is None:  # absent: the record's feature map hands out an empty default
        raise ValueError(f"lacks feature {name!r}")
    values = getattr(feature, kind).value
    if spec.encoding != "none":
        (blob,) = values
        if spec.encoding == "zlib":
            blob = zlib.decompress(blob)
        return np.frombuffer(blob, dtype=spec.dtype).reshape(spec.shape)
    if spec.dtype == np.uint64:  # stored bit-cast as int64, as TFDS writes it
        array = np.array(values, np.int64).view(np.uint64)
        return array.item() if not spec.shape else array.reshape(spec.shape)
    if not spec.shape:  # TFDS returns np.array(values, dtype).item(): a Python scalar or bytes
        (value,) = values
        return value if spec.dtype == object else spec.dtype.type(value).item()
    return np.array(values, dtype=spec.dtype).reshape(spec.shape)


class RecordSource:
    """`len`, `[i]` and `__getitems__` over one split, like TFDS's data source, only faster.

    Picklable (Grain worker processes receive it): it holds the ArrayRecord reader and the
    feature specs, never decoded data.
    """

    def __init__(self, tfds_source):
        self.dataset_info = tfds_source.dataset_info
        self.split = tfds_source.split
        self._records = tfds_source.data_source  # array_record's random-access reader
        self._specs = {
            name: _feature_spec(name, feature)
            for name, feature in self.dataset_info.features.items()
        }

    def with_keys(self, keys: Sequence[str]) -> "RecordSource":
        """The same split, its examples holding `keys` only (the others are not decoded)."""
        unknown = sorted(set(keys) - set(self._specs))
        if unknown:
            raise KeyError(f"{self.dataset_info.full_name} has no feature {unknown}")
        subset = copy.copy(self)
        subset._specs = {k: self._specs[k] for k in keys}
        return subset

    def __len__(self) -> int:
        return len(self._records)

    def _decode(self, record: bytes) -> dict[str, Any]:
        stored = tf_example_pb2.Example.FromString(record).features.feature
        try:
            return {
                name: _decode_value(name, stored[name], spec) for name, spec in self._specs.items()
            }
        except ValueError as e:
            raise ValueError(
                f"a record of {self.dataset_info.full_name} ({self.split}) {e}: built by another "
                "version of the builder? Rebuild it"
            ) from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._decode(self._records[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self._decode(r) for r in self._records.__getitems__(list(indices))]

    def __repr__(self) -> str:
        return f"RecordSource({self.dataset_info.full_name}, split={self.split!r}, n={len(self)})"
