r"""Forecasting results table: for each data set, the untrained baselines, DLinear and TRACE
with no / series-only / series+text retrieval, trained and evaluated in one run.

  python -m trace_jax.forecast.suite --encoder_from=runs/tmmd_full --data_dir=data_dir \
      --datasets=forecast_Health_US_L96_H12,forecast_Energy_L96_H12 --out=reports/forecast
  python -m trace_jax.forecast.suite --encoder_from=runs/wc_full \
      --datasets=weather_captioned/window_96/H24 --out=reports/forecast_weather_captioned

Time-MMD data sets are builder configs `forecast_<Domain>_L<lookback>_H<horizon>` (test split);
`<data set>/<builder config>/H<horizon>` forecasts the last H steps of each window of a schema
data set from the rest (Weather-Captioned window_96, H24: 36 h of history, 12 h ahead; its
validation split, 2017, since the builder has no test split).

Each model is `configs/forecast.py:<variant>` with the data set and mode set as overrides, trained
in its own workdir (WORKDIRS/<data set>/<model>; rerunning resumes or just re-evaluates). A
workdir holds the heads of one encoder: a rerun with another --encoder_from (or --variant) into
the same --workdirs is refused before it trains, naming the changed keys. Writes report.md and
report.json with test MSE/MAE (standardised units) and the mean relative reduction of series+text
RAG against no RAG over MSE and MAE (the paper's headline measure).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys

from absl import app
from absl import flags
from absl import logging

_ENCODER = flags.DEFINE_string("encoder_from", None, "Alignment workdir: the frozen encoder.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data_dir", "Built TFDS data sets.")
_DATASETS = flags.DEFINE_list("datasets", ["forecast_Health_US_L96_H12"], "Builder configs.")
_VARIANT = flags.DEFINE_string("variant", "cpu", "Config variant of configs/forecast.py.")
_WORKDIRS = flags.DEFINE_string("workdirs", "runs/forecast", "Parent of the runs' workdirs.")
_OUT = flags.DEFINE_string("out", "reports/forecast", "Directory for report.md/report.json.")
_MODELS = flags.DEFINE_list(
    "models", ["dlinear", "none", "series", "series_text"], "dlinear and/or TRACE RAG modes."
)

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


def main(argv):
    del argv
    from trace_jax.train.forecast import ForecastTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.loop import (  # pylint: disable=g-import-not-at-top
        ConfigChangedError,
        train_and_evaluate,
    )

    if not _ENCODER.value and any(m != "dlinear" for m in _MODELS.value):
        raise app.UsageError("--encoder_from is required for the TRACE models")
    results: dict[str, dict] = {}
    for dataset in _DATASETS.value:
        results[dataset] = {}
        for model in _MODELS.value:
            config = forecast_config(
                _VARIANT.value, dataset, model, _ENCODER.value, _DATA_DIR.value
            )
            workdir = pathlib.Path(_WORKDIRS.value) / dataset / model
            logging.info("training %s on %s in %s", model, dataset, workdir)
            try:
                results[dataset][model] = train_and_evaluate(config, workdir, ForecastTask(config))
            except ConfigChangedError as e:
                sys.exit(f"error: {e} Give each encoder its own --workdirs.")
            print(dataset, model, json.dumps(results[dataset][model]), flush=True)
    command = "python -m trace_jax.forecast.suite " + " ".join(sys.argv[1:])
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"command": command, "results": results}, indent=2))
    report = markdown(results, command, _MODELS.value)
    (out / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    app.run(main)
