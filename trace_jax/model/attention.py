"""Channel-biased multi-head attention: one dense masked path and one block-diagonal path.

Every query may always read itself, so no row is empty and no mask pattern yields NaN.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trace_jax.model.layout import TokenLayout
from trace_jax.model.rope import apply_rope

Array = jax.Array
Dropout = Callable[[Array], Array]


def _attend(q, k, v, allowed, dropout: Dropout, scores_spec: str, out_spec: str):
    """softmax(q k^T / sqrt(hd), masked) v, with scores and softmax in float32."""
    scores = jnp.einsum(scores_spec, q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(q.shape[-1])
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(scores, axis=-1))
    return jnp.einsum(out_spec, probs.astype(v.dtype), v)


def dense_attention(q, k, v, key_valid, layout: TokenLayout, mode: str, dropout: Dropout):
    """q, k, v (B, L, H, hd); the (L, L) mask of `mode` combined with key padding."""
    eye = np.eye(layout.length, dtype=bool)
    structural = layout.structural_mask(mode)
    allowed = structural[None] & (key_valid[:, None, :] | eye[None])  # (B, L, L)
    return _attend(q, k, v, allowed[:, None], dropout, "bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd")


def block_diagonal_attention(q, k, v, key_valid, layout: TokenLayout, dropout: Dropout):
    """The block-diagonal mask without building it: cost linear in the number of channels.

    Channel tokens attend as B*C independent sequences of N+1 tokens (their CIT and patches);
    [CLS] is one query over every key of its sample.
    """
    b, _, h, hd = q.shape
    c, s = layout.num_channels, layout.channel_length

    def per_channel(x):
        return x[:, 1:].reshape(b, c, s, h, hd)

    valid = key_valid[:, 1:].reshape(b, c, s)
    allowed = valid[:, :, None, :] | np.eye(s, dtype=bool)  # (B, C, S, S)
    channel_out = _attend(
        per_channel(q),
        per_channel(k),
        per_channel(v),
        allowed[:, :, None],
        dropout,
        "bcqhd,bckhd->bchqk",
        "bchqk,bckhd->bcqhd",
    )
    cls_out = _attend(
        q[:, :1], k, v, key_valid[:, None, None, :], dropout, "bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd"
    )
    return jnp.concatenate([cls_out, channel_out.reshape(b, c * s, h, hd)], axis=1)


class ChannelBiasedAttention(nn.Module):
    """Multi-head self-attention over the TRACE token sequence with RoPE and a channel bias.

    Kernels stay 2-D (d, d) and heads come from reshapes: >2-D kernels break partitioning
    under `jax.set_mesh` in flax 0.12.
    """

    num_heads: int
    channel_bias: str
    dropout_rate: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, h, layout: TokenLayout, key_valid, rope, deterministic: bool):
        b, length, d = h.shape
        hd = d // self.num_heads

        def project(name):
            # No key bias: it adds the same q.b to every score of a query, which softmax
            # ignores; its exact gradient is 0, so Adam would only turn rounding into noise.
            dense = nn.Dense(d, dtype=self.dtype, use_bias=name != "key", name=name)
            return dense(h).reshape(b, length, self.num_heads, hd)

        cos, sin = rope
        q = apply_rope(project("query"), cos, sin)
        k = apply_rope(project("key"), cos, sin)
        v = project("value")

        drop = nn.Dropout(self.dropout_rate)
        dropout = lambda p: drop(p, deterministic=deterministic)
        if self.channel_bias == "block_diagonal":
            out = block_diagonal_attention(q, k, v, key_valid, layout, dropout)
        else:
            out = dense_attention(q, k, v, key_valid, layout, self.channel_bias, dropout)
        return nn.Dense(d, dtype=self.dtype, name="out")(out.reshape(b, length, d))
