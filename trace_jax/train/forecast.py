"""Forecasting on the frozen TRACE encoder (head-only or light tuning), with or without
retrieved context, and the DLinear baseline: one task, one shared loop.

Metrics are MSE and MAE over observed target points in standardised units (the builder's scaler,
fitted on the training part), on the evaluation split, beside two untrained baselines computed on
the same windows: last value and seasonal naive.
"""

from __future__ import annotations

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trace_jax.forecast import sources as forecast_sources
from trace_jax.forecast.baselines import DLinear, last_value, seasonal_naive
from trace_jax.forecast.models import RAG_MODES, ForecastModel
from trace_jax.train.state import head_and_last_blocks

SEASON = {"daily": 7, "weekly": 52, "monthly": 12}  # seasonal-naive periods of Time-MMD


class ForecastTask:
    requires_text = False
    shared_modules = ("encoder",)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = fc = config.forecast
        if fc.model not in ("trace", "dlinear"):
            raise ValueError(f"forecast.model must be trace or dlinear, got {fc.model!r}")
        if fc.rag not in RAG_MODES:
            raise ValueError(f"forecast.rag must be one of {RAG_MODES}, got {fc.rag!r}")
        self.init_from = ""
        self.aligned = None
        self.encoder_config = None  # DLinear has none
        if fc.model == "trace":
            if not fc.encoder_from:
                raise ValueError(
                    "forecast.encoder_from must name an alignment workdir (the frozen encoder)"
                )
            from trace_jax.api import TraceModel  # pylint: disable=g-import-not-at-top

            self.aligned = TraceModel.from_workdir(fc.encoder_from)
            self.encoder_config = self.aligned.encoder_config
            self.init_from = fc.encoder_from
            self.model = ForecastModel(
                self.encoder_config,
                fc.horizon,
                rag=fc.rag,
                prompt_dim=fc.prompt_dim,
                frozen_encoder=fc.tune_last_blocks == 0,
            )
        else:
            self.model = DLinear(fc.horizon, kernel=fc.dlinear_kernel)

    # Data ----------------------------------------------------------------------------------

    def prepare_sources(self, train, validation):
        from trace_jax.data.time_mmd import (
            CHANNEL_VOCAB,
            FREQUENCY,
        )  # pylint: disable=g-import-not-at-top

        first = train[0]
        channel, scaler = 0, None
        if forecast_sources.is_time_mmd(first):
            domain = forecast_sources.decode(first["domain"])
            channel = CHANNEL_VOCAB[(domain, "OT")]
            season = SEASON[FREQUENCY[domain]]
        else:  # schema windows, e.g. Weather-Captioned: standardise with the training split
            scaler = forecast_sources.fit_scaler([train[i] for i in range(len(train))])
            season = 0
        convert = lambda e: forecast_sources.forecast_example(
            e, self.config.horizon, channel, scaler
        )
        example = convert(first)
        if example["target"].shape[-1] != self.config.horizon:
            raise ValueError(
                f"forecast.horizon={self.config.horizon} but the data's targets have "
                f"{example['target'].shape[-1]} steps"
            )
        lookback = example["series"].shape[-1]
        self.season = self.config.season_period or season or lookback
        if self.season > lookback:
            logging.warning(
                "seasonal period %d > lookback %d: using %d", self.season, lookback, lookback
            )
            self.season = lookback
        dim = self.aligned.dim if self.aligned is not None else 1
        rag = {"train": None, "validation": None}
        if self.config.rag != "none":
            converted = lambda split: forecast_sources.windows(
                [convert(split[i]) for i in range(len(split))]
            )
            bank = converted(train)
            for name, split in (("train", train), ("validation", validation)):
                queries = bank if split is train else converted(split)
                rag[name] = forecast_sources.retrieve_context(
                    self.aligned, bank, queries, self.config.top_r
                )
        make = lambda split, r: forecast_sources.ForecastSource(
            split, convert, r, self.config.top_r, dim
        )
        return make(train, rag["train"]), make(validation, rag["validation"])

    # Model ---------------------------------------------------------------------------------

    def _predict(self, params, batch, **kwargs):
        if self.config.model == "dlinear":
            history = jnp.where(batch["observed"], batch["series"], 0.0)
            return self.model.apply({"params": params["model"]}, history)
        return self.model.apply({"params": params["model"]}, batch, **kwargs)

    def init_params(self, rng, batch):
        if self.config.model == "dlinear":
            return {"model": self.model.init(rng, batch["series"])["params"]}
        return {"model": self.model.init(rng, batch)["params"]}

    def trainable(self, params):
        """Head-only by default; tune_last_blocks > 0 also trains the encoder's last blocks."""
        if self.config.model == "dlinear":
            return jax.tree.map(lambda _: True, params)
        return head_and_last_blocks(
            params, self.encoder_config.num_layers, self.config.tune_last_blocks
        )

    def loss(self, params, batch, rng):
        pred = self._predict(params, batch, deterministic=False, rngs={"dropout": rng})
        observed = batch["target_observed"].astype(jnp.float32)
        err = (pred - batch["target"]) * observed
        loss = jnp.sum(err**2) / jnp.maximum(jnp.sum(observed), 1.0)
        return loss, {"loss": loss, "mse": loss}

    def eval_outputs(self, params, batch):
        return {
            "pred": self._predict(params, batch),
            "target": batch["target"],
            "target_observed": batch["target_observed"],
            "history": batch["series"],
            "history_observed": batch["observed"],
        }

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        target, observed = outputs["target"], outputs["target_observed"].astype(bool)
        horizon = target.shape[-1]
        history, seen = outputs["history"], outputs["history_observed"].astype(bool)
        predictions = {
            "": outputs["pred"],
            "last_value_": np.broadcast_to(last_value(history, seen), target.shape),
            "seasonal_naive_": seasonal_naive(history, seen, horizon, self.season),
        }
        n = max(observed.sum(), 1)
        metrics = {"num_windows": float(len(target))}
        for prefix, pred in predictions.items():
            err = np.where(observed, pred - target, 0.0)
            metrics[f"{prefix}mse"] = float((err**2).sum() / n)
            metrics[f"{prefix}mae"] = float(np.abs(err).sum() / n)
        return metrics
