"""Random-access sources for the configured data set: the synthetic set or a built TFDS set."""

from __future__ import annotations

import ml_collections

from trace_jax.data import registry
from trace_jax.data.synthetic import synthetic_splits
from trace_jax.data.text_cache import TextEmbeddingCache

# Split names the synthetic set answers to. It holds out one split, which configs reporting on
# a "test" split (configs/forecast.py) get under that name.
SYNTHETIC_SPLITS = {"train": "train", "validation": "validation", "test": "validation"}


def load_sources(data: ml_collections.ConfigDict):
    """(train, validation) sources yielding examples in the shared schema (docs/data_schema.md)."""
    if data.name == "synthetic":
        names = [data.train_split, data.validation_split]
        unknown = [name for name in names if name not in SYNTHETIC_SPLITS]
        if unknown:
            raise ValueError(
                f"the synthetic set has no split {unknown[0]!r}; choose from "
                f"{sorted(SYNTHETIC_SPLITS)}"
            )
        splits = synthetic_splits(
            data.num_synthetic_train,
            data.num_synthetic_validation,
            seed=0,
            text_cache=TextEmbeddingCache(data.text_cache_dir or None),
        )
        return tuple(splits[SYNTHETIC_SPLITS[name]] for name in names)
    if data.name not in registry.BUILDERS:
        raise ValueError(
            f"unknown data set {data.name!r}; choose synthetic or one of "
            f"{sorted(registry.BUILDERS)}"
        )
    if not data.data_dir:
        raise ValueError(
            f"config.data.data_dir is empty: build {data.name} first with "
            f"`python -m trace_jax.data.build --dataset={data.name} --manual_dir=... "
            "--data_dir=DIR` and pass --config.data.data_dir=DIR"
        )
    from trace_jax.data.record_source import (  # pylint: disable=g-import-not-at-top
        RecordSource,  # imports TFDS: only for built sets, never for the synthetic one
    )

    builder = registry.builder_class(data.name)(
        data_dir=data.data_dir, config=data.builder_config or None
    )
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{data.name}/{builder.builder_config.name} is not built under {data.data_dir}: run "
            f"`python -m trace_jax.data.build --dataset={data.name} --data_dir={data.data_dir} "
            "--manual_dir=...` first"
        )
    return (
        RecordSource(builder.as_data_source(split=data.train_split)),
        RecordSource(builder.as_data_source(split=data.validation_split)),
    )
