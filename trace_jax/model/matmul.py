"""Matmuls with operands rounded to bfloat16 and products accumulated in float32.

On a CPU with AVX512-BF16 (AMD Zen 4/5, Intel Cooper Lake and later), XLA runs a
bfloat16 x bfloat16 -> float32 dot at about twice the float32 rate (745-896 vs 375-450 GFLOP/s
on the encoder's shapes here, BENCHMARKS.md), while a bfloat16 -> bfloat16 dot falls back to a
slow path (about 340). XLA:CPU ignores `precision` and dot-algorithm presets (a float32 dot with
BF16_BF16_F32 still computes in float32), so the rounding has to be explicit.

JAX's own transpose rules would run the backward products with a float32 cotangent against a
bfloat16 operand (the slow float32 path again) and round the weight gradient to bfloat16. The
custom VJP below rounds the cotangent instead and keeps both gradients' products in float32:
forward and backward each do their products at the bfloat16 rate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

OPERAND_DTYPE = jnp.bfloat16


def _product(a, b, dims):
    return jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32)


@jax.custom_vjp
def bf16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (..., k) @ w (k, n) with both rounded to bfloat16, accumulated in float32; the result
    has x's dtype."""
    y = _product(x.astype(OPERAND_DTYPE), w.astype(OPERAND_DTYPE), ((x.ndim - 1,), (0,)))
    return y.astype(x.dtype)


def _forward(x, w):
    # The residuals are the unrounded operands, which the backward pass rounds again: x is
    # usually kept anyway (by a LayerNorm's or GELU's backward), so a rounded copy would add
    # half its bytes again (at 112 channels that overflowed 24 GiB).
    return bf16_matmul(x, w), (x, w)


def _backward(residuals, g):
    x, w = residuals
    xr, wr, gr = (t.astype(OPERAND_DTYPE) for t in (x, w, g))
    dx = _product(gr, wr, ((gr.ndim - 1,), (1,))).astype(x.dtype)
    leading = tuple(range(xr.ndim - 1))
    dw = _product(xr, gr, (leading, leading)).astype(w.dtype)
    return dx, dw


bf16_matmul.defvjp(_forward, _backward)


def bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`bf16_matmul` behind `jax.lax.dot_general`'s signature, for `nn.Dense(dot_general=...)`:
    only Dense's contraction (lhs's last axis with rhs's first, no batch axes)."""
    contract, batch = (tuple(map(tuple, pair)) for pair in dimension_numbers)
    dense = contract == ((lhs.ndim - 1,), (0,)) and batch == ((), ()) and rhs.ndim == 2
    if not dense or preferred_element_type is not None:
        raise NotImplementedError(
            f"bf16_dot_general supports nn.Dense's products only, got {dimension_numbers} "
            f"for shapes {lhs.shape} x {rhs.shape}"
        )
    return bf16_matmul(lhs, rhs)


def dense_dot_general(bf16: bool):
    """`nn.Dense`'s dot_general: bf16_dot_general, or None (its default, lax.dot_general)."""
    return bf16_dot_general if bf16 else None


def matmul(x: jax.Array, w: jax.Array, bf16: bool) -> jax.Array:
    """x (..., k) @ w (k, n): exact in x's dtype, or as `bf16_matmul`."""
    return bf16_matmul(x, w) if bf16 else jnp.matmul(x, w)
