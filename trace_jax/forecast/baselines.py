"""Forecasting baselines: last value, seasonal naive, and DLinear (Zeng et al. 2023) in Flax.

All work on standardised univariate or per-channel histories (..., L) -> (..., H).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def last_value(history, observed) -> np.ndarray:
    """Repeats the last observed value of each history (0, the mean, when none is observed)."""
    history, observed = np.asarray(history), np.asarray(observed, bool)
    last = np.where(observed.any(-1), np.argmax(np.cumsum(observed, -1), -1), 0)
    value = np.take_along_axis(history, last[..., None], -1)
    return np.where(observed.any(-1, keepdims=True), value, 0.0)


def seasonal_naive(history, observed, horizon: int, period: int) -> np.ndarray:
    """Repeats the last `period` steps of the history (last value where one is unobserved)."""
    history, observed = np.asarray(history), np.asarray(observed, bool)
    if period > history.shape[-1]:
        raise ValueError(f"period {period} is longer than the history {history.shape[-1]}")
    season = history[..., -period:]
    seen = observed[..., -period:]
    season = np.where(seen, season, last_value(history, observed))
    reps = -(-horizon // period)
    return np.tile(season, reps)[..., :horizon]


def moving_average(x, kernel: int):
    """Centred moving average over the last axis, edges padded by repetition (as DLinear)."""
    front = jnp.repeat(x[..., :1], (kernel - 1) // 2, axis=-1)
    back = jnp.repeat(x[..., -1:], kernel // 2, axis=-1)
    padded = jnp.concatenate([front, x, back], axis=-1)
    windows = jnp.stack([padded[..., i : i + x.shape[-1]] for i in range(kernel)], axis=0)
    return windows.mean(0)


class DLinear(nn.Module):
    """Series decomposition (moving-average trend + remainder), one linear map L -> H each."""

    horizon: int
    kernel: int = 25

    @nn.compact
    def __call__(self, history):
        trend = moving_average(history, self.kernel)
        seasonal = history - trend
        return nn.Dense(self.horizon, name="trend")(trend) + nn.Dense(
            self.horizon, name="seasonal"
        )(seasonal)
