"""Channel-biased multi-head attention: one dense masked path and one block-diagonal path.

Every query may always read itself, so no row is empty and no mask pattern yields NaN.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from trace_jax.model.channel_attention_kernel import channel_attention
from trace_jax.model.dropout import Dropout
from trace_jax.model.layout import TokenLayout, Tokens, take_tokens
from trace_jax.model.matmul import dense_dot_general, matmul
from trace_jax.model.rope import apply_rope

Array = jax.Array
DropoutFn = Callable[[Array], Array]


def _attend(q, k, v, allowed, dropout: DropoutFn, scores_spec: str, out_spec: str):
    """softmax(q k^T / sqrt(hd), masked) v, with scores and softmax in float32."""
    scores = jnp.einsum(scores_spec, q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(q.shape[-1])
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(scores, axis=-1))
    return jnp.einsum(out_spec, probs.astype(v.dtype), v)


def dense_attention(q, k, v, key_valid, layout: TokenLayout, mode: str, dropout: DropoutFn):
    """q, k, v (B, L, H, hd); the (L, L) mask of `mode` combined with key padding (B, L)."""
    eye = np.eye(layout.length, dtype=bool)
    structural = layout.structural_mask(mode)
    allowed = structural[None] & (key_valid[:, None, :] | eye[None])  # (B, L, L)
    return _attend(q, k, v, allowed[:, None], dropout, "bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd")


def block_diagonal_attention(
    q: Tokens,
    k: Tokens,
    v: Tokens,
    key_valid: Tokens,
    dropout: DropoutFn,
    query_positions: Array | None = None,
    key_rope: tuple[np.ndarray, np.ndarray] | None = None,
):
    """The block-diagonal mask without building it: cost linear in the number of channels.

    q, k, v: Tokens of (B, 1, H, hd) and (B, C, S, H, hd); key_valid: Tokens of (B, 1) and
    (B, C, S). Channel tokens attend as B*C independent sequences of S tokens (their CIT and
    patches); [CLS] is one query over every key of its sample, itself included. With
    `query_positions` (B, C, Sq), q.channels (B, C, Sq, H, hd) holds only the queries of those
    tokens of each channel. With `key_rope` (cos, sin), each (S, rot/2), the channel keys come
    unrotated and are rotated here, after their head-major transpose: XLA:CPU then writes
    them once, where rotating first and transposing after took two passes.
    """
    b, c, s_q, h, hd = q.channels.shape
    s = k.channels.shape[2]
    scale = 1.0 / math.sqrt(hd)

    # [CLS] joins every channel's queries as one more row, so its scores and its weighted sum
    # of values come out of the channels' two batched products: the keys and values are laid
    # out head-major once, for both, instead of once more for [CLS]'s own (C*S)-key products.
    def heads(t):  # (B, C, S, H, hd) -> (B, H, C, S, hd)
        return t.transpose(0, 3, 1, 2, 4)

    cls_query = jnp.broadcast_to(heads(q.cls[:, None]), (b, h, c, 1, hd))
    queries = jnp.concatenate([heads(q.channels), cls_query], axis=3)  # (B, H, C, Sq + 1, hd)
    keys, values = heads(k.channels), heads(v.channels)
    if key_rope is not None:
        keys = apply_rope(keys, *key_rope, head_major=True)
    scores = jnp.einsum("bhcqd,bhckd->bhcqk", queries, keys, preferred_element_type=jnp.float32)
    scores = scores * scale
    # A query may always read its own key: query i is token i, or token query_positions[..., i].
    if query_positions is None:
        itself = np.eye(s_q, s, dtype=bool)
    else:
        itself = query_positions[..., None] == jnp.arange(s)  # (B, C, Sq, S)
    allowed = key_valid.channels[:, :, None, :] | itself  # (B, C, Sq, S)
    channel_scores = jnp.where(allowed[:, None], scores[:, :, :, :s_q], jnp.finfo(jnp.float32).min)
    channel_probs = dropout(jax.nn.softmax(channel_scores, axis=-1))  # (B, H, C, Sq, S)
    # [CLS]: scores over its own key and the C*S channel keys, one softmax over both.
    to_self = jnp.einsum("bqhd,bqhd->bhq", q.cls, k.cls, preferred_element_type=jnp.float32)
    cls_scores = jnp.concatenate([to_self * scale, scores[:, :, :, s_q].reshape(b, h, c * s)], -1)
    valid = jnp.concatenate([key_valid.cls, key_valid.channels.reshape(b, c * s)], axis=-1)
    cls_scores = jnp.where(valid[:, None], cls_scores, jnp.finfo(jnp.float32).min)
    cls_probs = dropout(jax.nn.softmax(cls_scores, axis=-1))  # (B, H, 1 + C*S)
    probs = jnp.concatenate([channel_probs, cls_probs[..., 1:].reshape(b, h, c, 1, s)], axis=3)
    out = jnp.einsum("bhcqk,bhckd->bhcqd", probs.astype(values.dtype), values)
    channels = out[:, :, :, :s_q].transpose(0, 2, 3, 1, 4)  # (B, C, Sq, H, hd)
    to_self_out = jnp.einsum("bhq,bqhd->bqhd", cls_probs[..., :1].astype(v.cls.dtype), v.cls)
    cls = to_self_out + out[:, :, :, s_q].sum(axis=2)[:, None]
    return Tokens(cls, channels)


ATTENTION_IMPLEMENTATIONS = ("xla", "pallas")


def _channel_attention_per_device(q, k, v, key_valid, interpret: bool):
    """channel_attention of (N, S, H, hd) q, k, v, each device running its own sequences and
    heads under the mesh of `jax.set_mesh`, split as the logical axis rules split "batch" and
    "heads" (the trainer's rules; whole without them).

    Why: a pallas_call has no partitioning rule, so under a multi-device mesh XLA would gather
    q, k and v whole onto every device and run every sequence there. A dimension whose mesh
    axes are missing from the mesh or do not divide it stays whole on every device.
    """
    attention = functools.partial(channel_attention, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return attention(q, k, v, key_valid)

    def dividing(axes, n):  # None for an axis this mesh lacks or whose size does not divide n
        names = (axes,) if isinstance(axes, str) else axes or ()
        if not names or any(a not in mesh.shape for a in names):
            return None
        return axes if n % math.prod(mesh.shape[a] for a in names) == 0 else None

    names = nn.logical_to_mesh_axes(("batch", None, "heads", None))
    tiles = P(*(dividing(axes, n) for axes, n in zip(names, q.shape)))
    # check_vma=False: pallas_call does not say which mesh axes its outputs vary over.
    return jax.shard_map(
        attention,
        in_specs=(tiles, tiles, tiles, P(tiles[0], None)),
        out_specs=tiles,
        check_vma=False,
    )(q, k, v, key_valid)


def kernel_block_diagonal_attention(
    q: Tokens,
    k: Tokens,
    v: Tokens,
    key_valid: Tokens,
    key_rope: tuple[np.ndarray, np.ndarray] | None = None,
    interpret: bool = False,
):
    """block_diagonal_attention (all queries, no attention dropout) with each channel's own
    attention in one GPU kernel over the token-major arrays (channel_attention_kernel.py says
    why). [CLS], one query over all C*S keys of its sample, takes two multiply-reduce passes
    over the keys and values in their own layout. `interpret`: Pallas's interpreter, for the
    tests on a CPU."""
    if not interpret and jax.default_backend() != "gpu":
        raise ValueError(
            f"attention_impl='pallas' runs on a GPU; this process runs on "
            f"{jax.default_backend()!r}: use attention_impl='xla'"
        )
    b, c, s, h, hd = q.channels.shape
    scale = 1.0 / math.sqrt(hd)
    keys = k.channels if key_rope is None else apply_rope(k.channels, *key_rope)
    channels = _channel_attention_per_device(
        q.channels.reshape(b * c, s, h, hd),
        keys.reshape(b * c, s, h, hd),
        v.channels.reshape(b * c, s, h, hd),
        key_valid.channels.reshape(b * c, s),
        interpret,
    ).reshape(b, c, s, h, hd)
    # [CLS]: its scores over its own key and the C*S channel keys, one softmax over both.
    f32 = jnp.float32
    query = q.cls[:, 0].astype(f32)  # (B, H, hd)
    to_self = jnp.sum(query * k.cls[:, 0].astype(f32), axis=-1) * scale  # (B, H)
    to_keys = jnp.sum(query[:, None, None] * keys.astype(f32), axis=-1) * scale  # (B, C, S, H)
    to_keys = jnp.where(key_valid.channels[..., None], to_keys, jnp.finfo(f32).min)
    to_keys = to_keys.reshape(b, c * s, h).transpose(0, 2, 1)  # (B, H, C*S)
    to_self = jnp.where(key_valid.cls, to_self, jnp.finfo(f32).min)  # (B, 1) over heads
    probs = jax.nn.softmax(jnp.concatenate([to_self[..., None], to_keys], axis=-1), axis=-1)
    to_keys_probs = probs[..., 1:].transpose(0, 2, 1).reshape(b, c, s, h)
    cls = probs[..., 0, None] * v.cls[:, 0].astype(f32) + jnp.sum(
        to_keys_probs[..., None] * v.channels.astype(f32), axis=(1, 2)
    )
    return Tokens(cls[:, None].astype(v.cls.dtype), channels)


class DenseParams(nn.Module):
    """The kernel (and bias) an `nn.Dense(features)` of that name would create, unapplied."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (in_features, self.features), jnp.float32
        )
        if not self.use_bias:
            return kernel, jnp.zeros((self.features,), jnp.float32)
        return kernel, self.param(
            "bias", nn.initializers.zeros_init(), (self.features,), jnp.float32
        )


class ChannelBiasedAttention(nn.Module):
    """Multi-head self-attention over the TRACE token sequence with RoPE and a channel bias.

    Kernels stay 2-D (d, d) and heads come from reshapes: >2-D kernels break partitioning
    under `jax.set_mesh` in flax 0.12.
    """

    num_heads: int
    channel_bias: str
    dropout_rate: float
    dtype: jnp.dtype
    bf16_matmuls: bool = False
    # block_diagonal's per-channel attention: "xla" (block_diagonal_attention) or "pallas"
    # (kernel_block_diagonal_attention; GPU). Passes that read a subset of queries
    # (query_positions) take the XLA path either way.
    implementation: str = "xla"

    @nn.compact
    def __call__(
        self,
        x: Tokens,
        layout: TokenLayout,
        key_valid: Tokens,
        rope,
        deterministic,
        query_positions=None,
    ):
        """query_positions (B, C, Sq) int: queries (and outputs) from [CLS] and those tokens of
        each channel only (0 its CIT, 1 + i its patch i); every token is still a key and value.
        block_diagonal only."""
        d = x.cls.shape[-1]
        hd = d // self.num_heads
        # Three Dense layers' parameters (same paths and initialisers as nn.Dense), applied as
        # one (d, 3d) matmul: on a CPU three (d, d) products run at 230-300 GFLOP/s where
        # one three times wider runs near the machine's best dot. No key bias: it adds the same
        # q.b to every score of a query, which softmax ignores; its exact gradient is 0, so
        # Adam would only turn rounding into noise.
        kernels, biases = zip(
            *(
                DenseParams(d, use_bias=name != "key", name=name)(d)
                for name in ("query", "key", "value")
            )
        )
        kernel = jnp.concatenate(kernels, axis=1).astype(self.dtype)  # (d, 3d)
        biases = [b.astype(self.dtype).reshape(self.num_heads, hd) for b in biases]

        def project(t):
            qkv = matmul(t.astype(self.dtype), kernel, self.bf16_matmuls)
            parts = jnp.unstack(qkv.reshape(*t.shape[:-1], 3, self.num_heads, hd), axis=-3)
            # Biases added per part, not to the (3d) product: their gradients then reduce q's
            # and v's gradients, and the stacked gradient has one reader, the product's
            # backward, so XLA writes it once (in bfloat16 with bf16_matmuls), not once more
            # in float32 for a (3d) bias reduction.
            return [p + b for p, b in zip(parts, biases)]

        qkv_cls, qkv_channels = project(x.cls), project(x.channels)
        q, k, v = (Tokens(c, t) for c, t in zip(qkv_cls, qkv_channels))
        # [CLS] sits at position 0, where the rotation is the identity.
        if query_positions is not None:
            if self.channel_bias != "block_diagonal":
                raise ValueError("query_positions need channel_bias='block_diagonal'")
            cos, sin = (jnp.asarray(t)[query_positions] for t in rope)  # (B, C, Sq, rot/2)
            picked = take_tokens(q.channels, query_positions)
            q = q._replace(channels=apply_rope(picked, cos, sin))
        else:
            q = q._replace(channels=apply_rope(q.channels, *rope))
        drop = Dropout(self.dropout_rate)
        dropout = lambda p: drop(p, deterministic=deterministic)
        fused = self.implementation == "pallas" and query_positions is None
        if self.channel_bias == "block_diagonal" and fused:
            out = kernel_block_diagonal_attention(q, k, v, key_valid, key_rope=rope)
        elif self.channel_bias == "block_diagonal":
            out = block_diagonal_attention(
                q, k, v, key_valid, dropout, query_positions, key_rope=rope
            )
        else:
            k = k._replace(channels=apply_rope(k.channels, *rope))
            joined = dense_attention(
                q.joined(),
                k.joined(),
                v.joined(),
                key_valid.joined(),
                layout,
                self.channel_bias,
                dropout,
            )
            out = Tokens.split(joined, layout)
        out_proj = nn.Dense(
            d, dtype=self.dtype, dot_general=dense_dot_general(self.bf16_matmuls), name="out"
        )
        return jax.tree.map(lambda t: out_proj(t.reshape(*t.shape[:-2], d)), out)
