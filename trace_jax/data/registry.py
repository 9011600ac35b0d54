"""The TFDS builders this package ships, by data-set name, and building one."""

from __future__ import annotations

import importlib

BUILDERS = {
    "weather_captioned": "trace_jax.data.weather_captioned:WeatherCaptioned",
    "time_mmd": "trace_jax.data.time_mmd:TimeMmd",
}


def builder_class(name: str):
    if name not in BUILDERS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(BUILDERS)}")
    module, cls = BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build(
    dataset: str,
    data_dir: str,
    manual_dir: str | None = None,
    config: str | None = None,
    text_cache_dir: str | None = None,
):
    """Builds `dataset` into `data_dir` and returns the prepared builder."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = builder_class(dataset)(
        data_dir=data_dir, config=config, text_cache_dir=text_cache_dir
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder
