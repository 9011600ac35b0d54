"""The forecasting suite's pieces that need no training: configs per data set and model, the
headline reduction and the report table."""

import pytest

from trace_jax.forecast.suite_lib import forecast_config, markdown, relative_reduction


def test_configs_for_time_mmd_and_window_data_sets():
    config = forecast_config("cpu", "forecast_Energy_L96_H48", "series_text", "runs/enc", "dd")
    assert config.data.builder_config == "forecast_Energy_L96_H48"
    assert config.forecast.horizon == 48
    assert config.forecast.rag == "series_text" and config.forecast.encoder_from == "runs/enc"
    assert config.data.data_dir == "dd"

    config = forecast_config("cpu", "weather_captioned/window_96/H24", "dlinear", "", "dd")
    assert (config.data.name, config.data.builder_config) == ("weather_captioned", "window_96")
    assert config.data.validation_split == "validation"
    assert config.forecast.horizon == 24 and config.forecast.model == "dlinear"

    with pytest.raises(ValueError, match="neither"):
        forecast_config("cpu", "Energy_H48", "none", "runs/enc", "dd")


def test_relative_reduction_and_report_by_hand():
    none = {"mse": 2.0, "mae": 1.0}
    rag = {"mse": 1.0, "mae": 0.9}
    assert relative_reduction(rag, none) == pytest.approx(100 * (0.5 + 0.1) / 2)

    baselines = {
        "last_value_mse": 3.0,
        "last_value_mae": 1.5,
        "seasonal_naive_mse": 2.5,
        "seasonal_naive_mae": 1.25,
    }
    results = {"a": {"none": {**none, **baselines}, "series_text": {**rag, **baselines}}}
    lines = markdown(results, "cmd", ["none", "series_text"]).splitlines()
    assert lines[2] == "Command: `cmd`"
    assert lines[4].endswith("| TRACE rag=none | TRACE rag=series_text | series+text vs none |")
    assert lines[6] == (
        "| a | 3.000 / 1.500 | 2.500 / 1.250 | 2.000 / 1.000 | 1.000 / 0.900 | +30.00% |"
    )
    # Without both RAG modes there is no headline reduction to report.
    only_none = markdown({"b": {"none": {**none, **baselines}}}, "cmd", ["none"])
    assert only_none.splitlines()[6].endswith("| 2.000 / 1.000 | n/a |")
