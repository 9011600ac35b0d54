"""LayerNorm whose backward pass reads its normalised output, not its input.

Why: the blocks are post-LN, LN(h + f(h)). Autodiff of a LayerNorm keeps its input h + f(h),
so a rematerialised block has to rerun f's last matmul (fc2, or the attention's output
projection) only to rebuild that sum. The gradient can be written with the normalised output
x^ = (x - mean) / std and 1/std alone, so that is what this one keeps, under the name
NORMALISED_NAME: a remat policy that saves the name (`remat_policy="norms"`) lets the backward
pass skip both matmuls. Without remat it keeps as much as autodiff's (one float32 array of the
input's size and one scalar a row).

Same parameters as `flax.linen.LayerNorm` ("scale", "bias"); statistics in float32 from the
centred input (flax's default takes E[x^2] - E[x]^2, which cancels for large means).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

NORMALISED_NAME = "normalised"


def _statistics(x, eps):
    centred = x - x.mean(-1, keepdims=True)
    inv_std = jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + eps)
    normalised = centred * inv_std
    return checkpoint_name(normalised, NORMALISED_NAME), checkpoint_name(inv_std, NORMALISED_NAME)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def normalise(x: jax.Array, eps: float) -> jax.Array:
    """(x - mean) / sqrt(var + eps) over the last axis."""
    return _statistics(x, eps)[0]


def _normalise_fwd(x, eps):
    normalised, inv_std = _statistics(x, eps)
    return normalised, (normalised, inv_std)


def _normalise_bwd(eps, residuals, g):
    normalised, inv_std = residuals
    # d/dx of (x - mean) * inv_std, projected: the mean and the variance each take one
    # direction out of g.
    g_centred = g - g.mean(-1, keepdims=True)
    along = (g * normalised).mean(-1, keepdims=True)
    return (inv_std * (g_centred - normalised * along),)


normalise.defvjp(_normalise_fwd, _normalise_bwd)


class LayerNorm(nn.Module):
    """x^ * scale + bias, computed in float32; the result has `dtype`."""

    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        y = normalise(x.astype(jnp.float32), self.epsilon) * scale + bias
        return y.astype(self.dtype)
