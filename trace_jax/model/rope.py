"""Rotary position embedding on a leading fraction of each head's dimensions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rotary_dims(head_dim: int, fraction: float) -> int:
    return 2 * int(fraction * head_dim / 2)


def rope_tables(positions: np.ndarray, rot_dims: int, base: float):
    """cos/sin tables (L, rot_dims/2) for integer positions; position 0 is the identity."""
    half = rot_dims // 2
    inv_freq = base ** (-2.0 * np.arange(half) / rot_dims)
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rotate(x, cos, sin):
    """cos, sin broadcast against x[..., :rot_dims/2]."""
    half = cos.shape[-1]
    a, b, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return jnp.concatenate([a * cos - b * sin, b * cos + a * sin, rest], axis=-1)


# The gradient of a rotation is the rotation back: written so, the backward pass is one more
# slice-and-concatenate like the forward, where autodiff's transpose of the slices is three
# zero-padded arrays per rotated tensor that XLA materialises and adds.
@jax.custom_vjp
def _rope(x, cos, sin):
    return _rotate(x, cos, sin)


def _rope_forward(x, cos, sin):
    return _rotate(x, cos, sin), (cos, sin)


def _rope_backward(tables, g):
    cos, sin = tables
    return _rotate(g, cos, -sin), jnp.zeros_like(cos), jnp.zeros_like(sin)


_rope.defvjp(_rope_forward, _rope_backward)


def apply_rope(
    x: jnp.ndarray, cos: np.ndarray, sin: np.ndarray, head_major: bool = False
) -> jnp.ndarray:
    """Rotates x (..., L, H, hd), or (..., L, hd) when head_major, in the rotate-half
    convention; dims past rot_dims pass through. cos, sin: (L, rot_dims/2), or
    (..., L, rot_dims/2) per token; they get no gradient."""
    if cos.shape[-1] == 0:
        return x
    cos, sin = (jnp.asarray(t, x.dtype) for t in (cos, sin))
    if not head_major:
        cos, sin = cos[..., None, :], sin[..., None, :]
    return _rope(x, cos, sin)
