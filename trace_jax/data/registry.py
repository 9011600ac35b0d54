"""The TFDS builders this package ships, by data-set name."""

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
