"""Cutting channels into non-overlapping patches."""

from __future__ import annotations

import math

import jax.numpy as jnp


def num_patches(length: int, patch_len: int) -> int:
    return math.ceil(length / patch_len)


def patchify(values: jnp.ndarray, observed: jnp.ndarray, patch_len: int):
    """(..., T) -> (..., N, P) with N = ceil(T / P).

    When T is not a multiple of P, N*P - T unobserved zeros are prepended so that the last
    patch ends at the last time step: the most recent data, which forecasting and captions
    care about most, always fills whole patches.
    """
    length = values.shape[-1]
    pad = num_patches(length, patch_len) * patch_len - length
    if pad:
        widths = [(0, 0)] * (values.ndim - 1) + [(pad, 0)]
        values = jnp.pad(values, widths)
        observed = jnp.pad(observed, widths, constant_values=False)
    shape = values.shape[:-1] + (-1, patch_len)
    return values.reshape(shape), observed.reshape(shape)
