"""all-MiniLM-L6-v2 as pure-functional Flax Linen modules.

A 6-layer BERT encoder (hidden 384, 12 heads, FFN 1536) followed by masked mean pooling
and L2 normalisation, i.e. the sentence-transformers model ``all-MiniLM-L6-v2``.

Everything is computed in float32 with ``Precision.HIGHEST`` matmuls, so accelerators
do not silently drop to TF32/bf16 passes. Every ``Dense`` kernel is 2-D (heads are made
by reshaping activations, not kernels), which keeps the parameters shardable under
``jax.set_mesh``.

Parameter tree (``params = model.init(...)``, or :func:`trace_jax.text.weights.load_params`)::

    params
      embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
      embeddings/LayerNorm/{scale,bias}
      layer_{i}/attention/{query,key,value,output}/{kernel,bias}
      layer_{i}/attention/LayerNorm/{scale,bias}
      layer_{i}/intermediate/{kernel,bias}
      layer_{i}/output/{kernel,bias}
      layer_{i}/output_LayerNorm/{scale,bias}
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from trace_jax.model.activations import gelu

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class MiniLMConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Guards the pooled mean (sentence-transformers clamps the token count at 1e-9) and the
    # L2 norm (torch.nn.functional.normalize uses max(norm, 1e-12)): an all-pad row gives 0.
    pool_eps: float = 1e-9
    norm_eps: float = 1e-12

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=_HIGHEST,
        kernel_init=nn.initializers.normal(0.02),
        name=name,
    )


def _layer_norm(cfg: MiniLMConfig, name: str) -> nn.LayerNorm:
    # use_fast_variance=False: E[(x-mean)^2], as torch does, not E[x^2]-E[x]^2.
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        name=name,
    )


class Embeddings(nn.Module):
    config: MiniLMConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids):
        cfg = self.config
        seq_len = input_ids.shape[1]
        if seq_len > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings "
                f"{cfg.max_position_embeddings}"
            )
        init = nn.initializers.normal(0.02)
        word = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=init,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            name="word_embeddings",
        )
        pos = nn.Embed(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            embedding_init=init,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            name="position_embeddings",
        )
        typ = nn.Embed(
            cfg.type_vocab_size,
            cfg.hidden_size,
            embedding_init=init,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            name="token_type_embeddings",
        )
        positions = jnp.arange(seq_len, dtype=jnp.int32)[None, :]
        x = word(input_ids) + typ(token_type_ids) + pos(positions)
        return _layer_norm(cfg, "LayerNorm")(x)


class SelfAttention(nn.Module):
    """BERT self-attention plus its output projection, residual and LayerNorm."""

    config: MiniLMConfig

    @nn.compact
    def __call__(self, x, attention_mask):
        cfg = self.config
        b, l, _ = x.shape
        h, d = cfg.num_heads, cfg.head_dim

        def heads(t):  # (B, L, H*D) -> (B, H, L, D); the kernel itself stays 2-D
            return t.reshape(b, l, h, d).transpose(0, 2, 1, 3)

        # Scale q before the product: one pass over (B, L, D) instead of (B, H, L, L).
        q = heads(_dense(cfg.hidden_size, "query")(x)) * jnp.float32(1.0 / d**0.5)
        k = heads(_dense(cfg.hidden_size, "key")(x))
        v = heads(_dense(cfg.hidden_size, "value")(x))

        scores = jnp.matmul(q, k.swapaxes(-1, -2), precision=_HIGHEST)  # (B, H, Lq, Lk)
        # A large negative (not -inf) on padded keys: an all-pad row stays finite (uniform).
        bias = jnp.where(attention_mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min).astype(
            jnp.float32
        )[:, None, None, :]
        probs = jax.nn.softmax(scores + bias, axis=-1)
        ctx = jnp.matmul(probs, v, precision=_HIGHEST)  # (B, H, L, D)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, l, h * d)

        out = _dense(cfg.hidden_size, "output")(ctx)
        return _layer_norm(cfg, "LayerNorm")(out + x)


class TransformerLayer(nn.Module):
    config: MiniLMConfig

    @nn.compact
    def __call__(self, x, attention_mask):
        cfg = self.config
        x = SelfAttention(cfg, name="attention")(x, attention_mask)
        y = _dense(cfg.intermediate_size, "intermediate")(x)
        y = gelu(y)  # exact erf GELU, BERT's formula
        y = _dense(cfg.hidden_size, "output")(y)
        return _layer_norm(cfg, "output_LayerNorm")(y + x)


def mean_pool(hidden, attention_mask, eps: float = 1e-9):
    """Masked mean over the sequence axis: (B, L, D), (B, L) -> (B, D)."""
    m = attention_mask.astype(jnp.float32)[..., None]
    summed = jnp.sum(hidden * m, axis=1)
    count = jnp.maximum(jnp.sum(m, axis=1), eps)
    return summed / count


def l2_normalize(x, eps: float = 1e-12):
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


class MiniLM(nn.Module):
    """BERT encoder + masked mean pooling + L2 normalisation.

    ``model.apply(params, input_ids, attention_mask, token_type_ids)`` -> (B, hidden) float32
    unit vectors (zero vectors for rows whose mask is all zero). With ``pooled=False`` the
    last hidden states (B, L, hidden) are returned instead.
    """

    config: MiniLMConfig = MiniLMConfig()

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, pooled: bool = True):
        cfg = self.config
        input_ids = jnp.asarray(input_ids, jnp.int32)
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        token_type_ids = jnp.asarray(token_type_ids, jnp.int32)

        x = Embeddings(cfg, name="embeddings")(input_ids, token_type_ids)
        for i in range(cfg.num_layers):
            x = TransformerLayer(cfg, name=f"layer_{i}")(x, attention_mask)
        if not pooled:
            return x
        return l2_normalize(mean_pool(x, attention_mask, cfg.pool_eps), cfg.norm_eps)
