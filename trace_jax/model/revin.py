"""Reversible instance normalisation over observed points only (no affine)."""

from __future__ import annotations

import jax.numpy as jnp

EPS = 1e-5


def revin(series: jnp.ndarray, observed: jnp.ndarray):
    """Normalises each (sample, channel) by the mean and std of its observed points.

    Args:
      series: (..., T) float32; values at unobserved points are ignored (may be NaN/inf).
      observed: (..., T) bool; NaN and inf are treated as unobserved whatever it says.

    Returns:
      (normalised, observed, mean, std): normalised is 0 at unobserved points; mean/std have
      shape (...,). A series with no observed point has mean 0 and std sqrt(EPS).
    """
    obs = observed & jnp.isfinite(series)
    x = jnp.where(obs, series, 0.0)
    n = jnp.maximum(obs.sum(-1, keepdims=True), 1).astype(x.dtype)
    # Divide by the largest magnitude first: float32 sums of squares of values near 1e19 and
    # beyond would overflow to inf and turn the output into NaN. The algebra below is exactly
    # (x - mean) / sqrt(var + EPS), rewritten in the scaled variables.
    scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    scale = jnp.where(scale > 0, scale, 1.0)
    xs = x / scale
    mean_s = xs.sum(-1, keepdims=True) / n
    var_s = jnp.where(obs, jnp.square(xs - mean_s), 0.0).sum(-1, keepdims=True) / n
    denom_sq = jnp.maximum(var_s + EPS / jnp.square(scale), jnp.finfo(x.dtype).tiny)
    normalised = jnp.where(obs, (xs - mean_s) * jnp.sqrt(1.0 / denom_sq), 0.0)
    mean = (mean_s * scale)[..., 0]
    # Two forms of sqrt(scale^2 var_s + EPS) so that neither scale^2 nor EPS/scale^2 overflows.
    std = jnp.where(
        scale > 1.0,
        scale * jnp.sqrt(var_s + EPS / jnp.square(jnp.maximum(scale, 1.0))),
        jnp.sqrt(jnp.square(jnp.minimum(scale, 1.0)) * var_s + EPS),
    )[..., 0]
    return normalised, obs, mean, std
