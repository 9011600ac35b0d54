"""Residual cross-attention between the channel embeddings of one sample (CIT <-> channel text).

TRACE's optional fusion step: channel texts attend over the sample's channel embeddings, then
channel embeddings attend over the fused texts, one module serving both directions (as in the
public code). A query reads only the valid channels of its own sample.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from trace_jax.model.dropout import Dropout


class ChannelCrossAttention(nn.Module):
    """LN(x + dropout(MHA(x, context))) over the channel axis; x, context (B, C, d)."""

    num_heads: int
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, x, context, context_valid, *, deterministic: bool = True):
        b, c, d = x.shape
        if d % self.num_heads:
            raise ValueError(
                f"width {d} is not divisible by {self.num_heads} cross-attention heads"
            )
        hd = d // self.num_heads

        # 2-D kernels and reshapes, like the encoder's attention (partitionable under set_mesh).
        def heads(name, source):
            return nn.Dense(d, name=name)(source).reshape(b, c, self.num_heads, hd)

        q, k, v = heads("query", x), heads("key", context), heads("value", context)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        # A sample with no valid channel leaves its rows uniform instead of NaN; those rows
        # are excluded from the loss anyway.
        scores = jnp.where(context_valid[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        probs = Dropout(self.dropout_rate)(jax.nn.softmax(scores, -1), deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, c, d)
        out = nn.Dense(d, name="out")(out)
        out = Dropout(self.dropout_rate)(out, deterministic=deterministic)
        return nn.LayerNorm(name="norm")(x + out)
