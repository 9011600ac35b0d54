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

import json
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

from trace_jax.forecast.suite_lib import forecast_config, markdown

_ENCODER = flags.DEFINE_string("encoder_from", None, "Alignment workdir: the frozen encoder.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data_dir", "Built TFDS data sets.")
_DATASETS = flags.DEFINE_list("datasets", ["forecast_Health_US_L96_H12"], "Builder configs.")
_VARIANT = flags.DEFINE_string("variant", "cpu", "Config variant of configs/forecast.py.")
_WORKDIRS = flags.DEFINE_string("workdirs", "runs/forecast", "Parent of the runs' workdirs.")
_OUT = flags.DEFINE_string("out", "reports/forecast", "Directory for report.md/report.json.")
_MODELS = flags.DEFINE_list(
    "models", ["dlinear", "none", "series", "series_text"], "dlinear and/or TRACE RAG modes."
)

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
