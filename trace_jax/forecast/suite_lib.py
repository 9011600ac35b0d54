"""The forecasting suite's pure parts: a run's config per data set and model, the headline
reduction and the report table (trace_jax/forecast/suite.py runs them; no flags here, so tests and
other entry points import them freely)."""

from __future__ import annotations

import importlib.util
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]


def forecast_config(variant: str, dataset: str, model: str, encoder_from: str, data_dir: str):
    spec = importlib.util.spec_from_file_location("forecast", REPO / "configs" / "forecast.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    time_mmd = re.fullmatch(r"forecast_\w+_L\d+_H(\d+)", dataset)
    windows = re.fullmatch(r"(\w+)/(\w+)/H(\d+)", dataset)
    if time_mmd:
        config.data.builder_config = dataset
        config.forecast.horizon = int(time_mmd.group(1))
    elif windows:  # e.g. weather_captioned/window_96/H24: the last 24 steps of each window
        config.data.name, config.data.builder_config = windows.group(1), windows.group(2)
        config.data.validation_split = "validation"
        config.forecast.horizon = int(windows.group(3))
    else:
        raise ValueError(
            f"{dataset!r} is neither forecast_<Domain>_L<lookback>_H<horizon> (Time-MMD) nor "
            "<data set>/<builder config>/H<horizon>"
        )
    config.data.data_dir = data_dir
    if model == "dlinear":
        config.forecast.model = "dlinear"
    else:
        config.forecast.rag = model
        config.forecast.encoder_from = encoder_from
    return config


def relative_reduction(rag: dict, none: dict) -> float:
    """Mean over MSE and MAE of 1 - rag/none, in percent."""
    return 100.0 * sum(1 - rag[m] / none[m] for m in ("mse", "mae")) / 2


def markdown(results: dict, command: str, models: list[str]) -> str:
    """The report: one row per data set, the untrained baselines, then `models` in order."""
    lines = [
        "# Forecasting: MSE / MAE on the evaluation split (standardised units)",
        "",
        f"Command: `{command}`",
        "",
        "| data set | last value | seasonal naive | "
        + " | ".join({"dlinear": "DLinear"}.get(m, f"TRACE rag={m}") for m in models)
        + " | series+text vs none |",
        "|---" * (len(models) + 4) + "|",
    ]
    for dataset, runs in results.items():
        any_run = next(iter(runs.values()))
        cells = [
            f"{any_run['last_value_mse']:.3f} / {any_run['last_value_mae']:.3f}",
            f"{any_run['seasonal_naive_mse']:.3f} / {any_run['seasonal_naive_mae']:.3f}",
        ] + [f"{runs[m]['mse']:.3f} / {runs[m]['mae']:.3f}" for m in models]
        gain = (
            f"{relative_reduction(runs['series_text'], runs['none']):+.2f}%"
            if {"series_text", "none"} <= set(runs)
            else "n/a"
        )
        lines.append(f"| {dataset} | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(lines) + "\n"
