r"""Forecasting on the frozen TRACE encoder, optionally retrieval-augmented; or DLinear.

Time-MMD (after `python -m trace_jax.data.build --dataset=time_mmd --builder_config=
forecast_Health_US_L96_H12 --manual_dir=../shared/data/time_mmd --data_dir=data_dir`) with the
encoder of a Time-MMD alignment run (configs/align.py on time_mmd):
  python -m trace_jax.main --config=configs/forecast.py:cpu --workdir=runs/fc_health12_rag \
      --config.forecast.encoder_from=runs/tmmd_full --config.forecast.rag=series_text

forecast.rag: none | series | series_text (top_r retrieved training windows, no leakage).
forecast.model=dlinear trains the DLinear baseline instead (no encoder needed). The builder config
names domain, lookback and horizon: `forecast_<Domain>_L<lookback>_H<horizon>`; forecast.horizon
must match it. Metrics are on the test split (data.validation_split), standardised units.
"""

import ml_collections

from trace_jax import presets


def get_config(arg=None):
    c = presets.base_config("forecast", arg)
    c.data.name = "time_mmd"
    c.data.builder_config = "forecast_Health_US_L96_H12"
    c.data.data_dir = "data_dir"
    c.data.validation_split = "test"  # reported split; no model selection happens on it
    c.train.batch_size = {"": 64, "cpu": 32, "tiny": 8}[arg or ""]
    c.train.steps = {"": 2000, "cpu": 600, "tiny": 4}[arg or ""]
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = {"": 100, "cpu": 30, "tiny": 1}[arg or ""]
    c.train.eval_every = c.train.steps
    c.train.checkpoint_every = c.train.steps
    c.forecast = ml_collections.ConfigDict()
    c.forecast.model = "trace"  # or dlinear
    c.forecast.encoder_from = ""  # an alignment workdir: its encoder, frozen
    c.forecast.horizon = 12
    c.forecast.rag = "none"  # none | series | series_text
    c.forecast.top_r = 5
    c.forecast.prompt_dim = 32
    c.forecast.tune_last_blocks = 0  # > 0: light tuning of the encoder's last blocks
    c.forecast.dlinear_kernel = 25
    c.forecast.season_period = 0  # seasonal-naive period; 0 = by frequency (7, 52, 12)
    return c
