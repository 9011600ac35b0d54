"""Rotary position embedding on a leading fraction of each head's dimensions."""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp


def rotary_dims(head_dim: int, fraction: float) -> int:
    return 2 * int(fraction * head_dim / 2)


def rope_tables(positions: np.ndarray, rot_dims: int, base: float):
    """cos/sin tables (L, rot_dims/2) for integer positions; position 0 is the identity."""
    half = rot_dims // 2
    inv_freq = base ** (-2.0 * np.arange(half) / rot_dims)
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: jnp.ndarray, cos: np.ndarray, sin: np.ndarray) -> jnp.ndarray:
    """Rotates x (..., L, H, hd) in the rotate-half convention; dims past rot_dims pass through.
    cos, sin: (L, rot_dims/2), or (..., L, rot_dims/2) per token."""
    half = cos.shape[-1]
    if half == 0:
        return x
    cos = jnp.asarray(cos, x.dtype)[..., None, :]
    sin = jnp.asarray(sin, x.dtype)[..., None, :]
    a, b, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return jnp.concatenate([a * cos - b * sin, b * cos + a * sin, rest], axis=-1)
