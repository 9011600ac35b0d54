"""Each channel's own attention as one Pallas (Triton) GPU kernel over token-major q, k, v.

Why: XLA runs block_diagonal's per-channel products as batched matmuls whose batch axes
(B, H, C) must lead, so q, k, v and their gradients are transposed head-major and back around
them, and the softmax, its mask and [CLS]'s concatenations each take a pass over memory: on an
H200 those passes took 9 ms of a 68 ms step against 5 ms for the products. cuDNN's flash
kernels, sized for long sequences, were slower still at 32 keys (BENCHMARKS.md, session 12).
Here one program per (sequence, head) reads its S x hd tiles of q, k, v where they lie (rows
H*hd apart), keeps the S x S scores, mask and softmax in registers and writes its output in
the same layout; the backward pass recomputes the probabilities (cheaper at S keys than
storing them) and writes dq, dk, dv in place.

On a CPU the kernels run only in Pallas's interpreter (`interpret=True`): the tests' way to
check them against the batched XLA path. Measured on a GPU by `benchmarks/gpu_check.sh`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

# Triton's tiles must be powers of two and its dot at least 16 on each side.
MIN_TILE = 16


def is_tile_size(n: int) -> bool:
    """Whether n can be a tile side as it is (the head dimension must; S is padded)."""
    return n >= MIN_TILE and not n & (n - 1)


def channel_attention(q, k, v, key_valid, *, interpret: bool = False):
    """softmax(q k^T / sqrt(hd)) v per sequence and head: q, k, v (N, S, H, hd); key_valid
    (N, S) bool. Query i reads key j when key_valid[:, j] or i == j (a query always reads
    itself, so no row is empty). Differentiable in q, k, v."""
    s, hd = q.shape[1], q.shape[3]
    if not is_tile_size(hd):
        raise ValueError(f"the head dimension must be a power of two >= {MIN_TILE}, got {hd}")
    tile = max(MIN_TILE, pl.next_power_of_2(s))
    if tile != s:  # padded keys are invalid; padded queries' rows are dropped below
        pad = ((0, 0), (0, tile - s), (0, 0), (0, 0))
        q, k, v = (jnp.pad(t, pad) for t in (q, k, v))
        key_valid = jnp.pad(key_valid, ((0, 0), (0, tile - s)))
    out = _attention(q, k, v, key_valid.astype(jnp.int32), interpret)
    return out[:, :s]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, valid, interpret):
    return _call(_forward_kernel, (q,), q, k, v, valid, interpret=interpret)[0]


def _attention_fwd(q, k, v, valid, interpret):
    return _attention(q, k, v, valid, interpret), (q, k, v, valid)


def _attention_bwd(interpret, residuals, grad_out):
    q, k, v, valid = residuals
    dq, dk, dv = _call(
        _backward_kernel, (q, k, v), q, k, v, valid, grad_out.astype(q.dtype), interpret=interpret
    )
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _call(kernel, like, q, k, v, valid, *more, interpret):
    """One program per (sequence, head); outputs shaped and typed as `like`."""
    n, s, h, hd = q.shape
    tiles = pl.BlockSpec((pl.squeezed, s, pl.squeezed, hd), lambda i, j: (i, 0, j, 0))
    mask = pl.BlockSpec((pl.squeezed, s), lambda i, j: (i, 0))
    return pl.pallas_call(
        functools.partial(kernel, scale=1.0 / math.sqrt(hd)),
        out_shape=[jax.ShapeDtypeStruct(t.shape, t.dtype) for t in like],
        grid=(n, h),
        in_specs=[tiles, tiles, tiles, mask, *(tiles for _ in more)],
        out_specs=[tiles for _ in like],
        interpret=interpret,
        # Triton, not JAX's default GPU backend (Mosaic GPU), whose loads need 128 elements.
        compiler_params=pltriton.CompilerParams(),
    )(q, k, v, valid, *more)


def _probabilities(q, k, valid, scale):
    """(S, S) float32 softmax of the allowed scores of one sequence and head."""
    scores = pltriton.dot(q, k, trans_b=True) * scale
    rows = jax.lax.broadcasted_iota(jnp.int32, scores.shape, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
    allowed = (valid[None, :] != 0) | (rows == cols)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    p = jnp.exp(scores - jnp.max(scores, axis=1, keepdims=True))
    return p / jnp.sum(p, axis=1, keepdims=True)


def _forward_kernel(q_ref, k_ref, v_ref, valid_ref, o_ref, *, scale):
    v = v_ref[...]
    p = _probabilities(q_ref[...], k_ref[...], valid_ref[...], scale)
    o_ref[...] = pltriton.dot(p.astype(v.dtype), v).astype(o_ref.dtype)


def _backward_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, dq_ref, dk_ref, dv_ref, *, scale):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    p = _probabilities(q, k, valid_ref[...], scale)
    dv_ref[...] = pltriton.dot(p.astype(do.dtype), do, trans_a=True).astype(dv_ref.dtype)
    dp = pltriton.dot(do, v, trans_b=True)
    ds = p * (dp - jnp.sum(p * dp, axis=1, keepdims=True))  # softmax's backward
    dq_ref[...] = (pltriton.dot(ds.astype(k.dtype), k) * scale).astype(dq_ref.dtype)
    dk_ref[...] = (pltriton.dot(ds.astype(q.dtype), q, trans_a=True) * scale).astype(dk_ref.dtype)
