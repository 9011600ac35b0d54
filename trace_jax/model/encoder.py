"""The TRACE time-series encoder as a pure-functional Flax Linen module.

The exact forward pass is specified in docs/encoder_spec.md and checked against the independent
float64 numpy model in tests/numpy_reference.py.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from trace_jax.model.activations import gelu, layer_zero
from trace_jax.model.attention import ATTENTION_IMPLEMENTATIONS, ChannelBiasedAttention
from trace_jax.model.channel_attention_kernel import MIN_TILE, is_tile_size
from trace_jax.model.dropout import Dropout
from trace_jax.model.layout import CHANNEL_BIAS_MODES, TokenLayout, Tokens, take_tokens
from trace_jax.model.matmul import dense_dot_general
from trace_jax.model.norm import NORMALISED_NAME, LayerNorm
from trace_jax.model.patching import patchify
from trace_jax.model.revin import revin
from trace_jax.model.rope import rope_tables, rotary_dims

LAYER_NORM_EPS = 1e-5


# remat_policy -> which named intermediates a rematerialised block keeps (None: none).
REMAT_POLICIES = {
    "full": None,
    "mlp": jax.checkpoint_policies.save_only_these_names("mlp_hidden", "mlp_out"),
    "norms": jax.checkpoint_policies.save_only_these_names(NORMALISED_NAME),
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Encoder hyper-parameters; defaults are the paper size."""

    patch_len: int = 6
    d_model: int = 384
    num_heads: int = 6
    num_layers: int = 6
    mlp_dim: int = 1536
    num_channels: int = 64  # size of the CIT table: the largest channel id + 1
    channel_bias: str = "block_diagonal"
    rope_fraction: float = 0.5  # share of each head's dims rotated (public code: half)
    rope_base: float = 10000.0
    dropout: float = 0.1
    attention_dropout: float = 0.0
    # How block_diagonal runs each channel's attention: "xla" (batched products; the CPU's
    # choice) or "pallas" (one Triton kernel over token-major q, k, v; GPU only, needs a
    # bfloat16/float16 dtype, attention_dropout 0 and a power-of-two head dimension >= 16).
    attention_impl: str = "xla"
    dtype: str = "float32"  # compute dtype; parameters are always float32
    # Round the operands of the blocks' matmuls (query/key/value, attention output, MLP) to
    # bfloat16 and accumulate their products in float32; results come out in `dtype`, so with
    # float32 the activations, LayerNorms, softmax and residuals stay float32. About twice the
    # float32 matmul rate on CPUs with AVX512-BF16 (trace_jax/model/matmul.py). Off: exact.
    bf16_matmuls: bool = False
    # Add an embedding of each channel's RevIN mean and std to its CIT. RevIN removes the
    # absolute level, which captions often state ("high pressure", "very humid"); this gives it
    # back to the model without undoing the normalisation of the patches. Off in the paper.
    level_embedding: bool = False
    # Recompute each block's activations in the backward pass instead of keeping them: memory
    # per layer drops from all intermediates to the block input.
    remat: bool = False
    # What remat keeps: "full" only the block input (the least memory; the backward pass reruns
    # the whole block); "norms" also both LayerNorms' normalised outputs (2 d_model floats a
    # token a layer), so the backward pass reruns neither fc2 nor the attention's output
    # projection, whose outputs only those LayerNorms read (trace_jax/model/norm.py); "mlp" the
    # outputs of fc1 and fc2 (mlp_dim + d_model floats), so it reruns only attention.
    remat_policy: str = "full"
    # Run the blocks as one nn.scan over stacked parameters (params["blocks"], leading axis =
    # layer) instead of block_0..block_{n-1}. With remat this is what bounds memory on XLA:CPU,
    # whose scheduler otherwise runs every block's recomputation up front (memory as without
    # remat); it also compiles one block instead of num_layers.
    scan_layers: bool = False

    def __post_init__(self):
        if self.channel_bias not in CHANNEL_BIAS_MODES:
            raise ValueError(
                f"channel_bias must be one of {CHANNEL_BIAS_MODES}, got {self.channel_bias!r}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}"
            )
        for name in ("patch_len", "d_model", "num_heads", "num_layers", "mlp_dim", "num_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention_impl must be one of {ATTENTION_IMPLEMENTATIONS}, "
                f"got {self.attention_impl!r}"
            )
        head_dim = self.d_model // self.num_heads
        if self.attention_impl == "pallas" and (
            self.channel_bias != "block_diagonal"
            or self.attention_dropout
            or self.dtype not in ("bfloat16", "float16")
            or not is_tile_size(head_dim)
        ):
            raise ValueError(
                "attention_impl='pallas' needs channel_bias='block_diagonal', "
                "attention_dropout=0, dtype bfloat16 or float16 and a power-of-two head "
                f"dimension >= {MIN_TILE}; got {self.channel_bias!r}, {self.attention_dropout}, "
                f"{self.dtype!r}, head dimension {head_dim}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy must be one of {tuple(REMAT_POLICIES)}, got {self.remat_policy!r}"
            )
        if not 0.0 <= self.rope_fraction <= 1.0:
            raise ValueError(f"rope_fraction must be in [0, 1], got {self.rope_fraction}")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "EncoderConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(m) - known
        if unknown:
            raise ValueError(
                f"unknown encoder config keys {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**dict(m))


def check_inputs(
    config: EncoderConfig,
    series,
    observed=None,
    channel_ids=None,
    mask_patches=None,
    query_patches=None,
) -> None:
    """Raises ValueError naming what is wrong with the encoder's inputs (static checks)."""
    shape = getattr(series, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"series must have rank 3 (batch, channels, time), got shape {shape}")
    if not jnp.issubdtype(series.dtype, jnp.floating):
        raise ValueError(f"series must be floating point, got dtype {series.dtype}")
    b, c, t = shape
    if c < 1 or t < 1:
        raise ValueError(f"series needs at least one channel and one time step, got {shape}")
    if observed is not None:
        if tuple(observed.shape) != tuple(shape):
            raise ValueError(f"observed has shape {observed.shape}, series has {shape}")
        if observed.dtype != jnp.bool_:
            raise ValueError(f"observed must be bool, got dtype {observed.dtype}")
    if channel_ids is None:
        if c > config.num_channels:
            raise ValueError(
                f"series has {c} channels but the CIT table holds {config.num_channels} "
                "(model.num_channels); pass channel_ids or use a larger table"
            )
    else:
        if tuple(channel_ids.shape) != (b, c):
            raise ValueError(f"channel_ids must have shape {(b, c)}, got {channel_ids.shape}")
        if not jnp.issubdtype(channel_ids.dtype, jnp.integer):
            raise ValueError(f"channel_ids must be integers, got dtype {channel_ids.dtype}")
        if not isinstance(channel_ids, jax.core.Tracer):
            ids = np.asarray(channel_ids)
            if ids.size and (ids.min() < 0 or ids.max() >= config.num_channels):
                raise ValueError(
                    f"channel_ids must lie in [0, {config.num_channels}), got "
                    f"[{ids.min()}, {ids.max()}]"
                )
    if mask_patches is not None:
        n = -(-t // config.patch_len)
        if tuple(mask_patches.shape) != (b, c, n):
            raise ValueError(f"mask_patches must have shape {(b, c, n)}, got {mask_patches.shape}")
    if query_patches is not None:
        if query_patches.ndim != 3 or tuple(query_patches.shape[:2]) != (b, c):
            raise ValueError(
                f"query_patches must be (B, C, M) = ({b}, {c}, M), got {query_patches.shape}"
            )
        if not jnp.issubdtype(query_patches.dtype, jnp.integer):
            raise ValueError(f"query_patches must be integers, got {query_patches.dtype}")


class Mlp(nn.Module):
    mlp_dim: int
    dtype: jnp.dtype
    bf16_matmuls: bool = False

    @nn.compact
    def __call__(self, h):
        d = h.shape[-1]
        dense = functools.partial(
            nn.Dense, dtype=self.dtype, dot_general=dense_dot_general(self.bf16_matmuls)
        )
        fc1 = dense(self.mlp_dim, name="fc1")
        h = checkpoint_name(fc1(h), "mlp_hidden")
        h = gelu(h, layer_zero(fc1.variables["params"]["bias"]))
        return checkpoint_name(dense(d, name="fc2")(h), "mlp_out")


class EncoderBlock(nn.Module):
    """Post-LN transformer block (as the public code): LN(h + attn(h)), LN(h + mlp(h)).

    h is the token sequence as `Tokens`; every layer but attention is token-wise and maps over
    its two arrays with the same weights.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(
        self, h: Tokens, layout, key_valid, rope, deterministic: bool, query_positions=None
    ) -> Tokens:
        """query_positions (B, C, Sq) int: outputs for [CLS] and those tokens of each channel
        only (0 its CIT, 1 + i its patch i), (B, 1, d) and (B, C, Sq, d); every token still
        serves as a key and value (block_diagonal only)."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        drop = Dropout(cfg.dropout)
        attn = ChannelBiasedAttention(
            cfg.num_heads,
            cfg.channel_bias,
            cfg.attention_dropout,
            dtype,
            cfg.bf16_matmuls,
            implementation=cfg.attention_impl,
            name="attention",
        )(h, layout, key_valid, rope, deterministic, query_positions)
        if query_positions is not None:
            h = h._replace(channels=take_tokens(h.channels, query_positions))
        attention_norm = LayerNorm(LAYER_NORM_EPS, dtype, name="attention_norm")
        h = jax.tree.map(
            lambda x, a: attention_norm(x + drop(a, deterministic=deterministic)), h, attn
        )
        mlp = Mlp(cfg.mlp_dim, dtype, cfg.bf16_matmuls, name="mlp")
        mlp_norm = LayerNorm(LAYER_NORM_EPS, dtype, name="mlp_norm")
        return jax.tree.map(lambda x: mlp_norm(x + drop(mlp(x), deterministic=deterministic)), h)


def constrain_to_batch(h: Tokens) -> Tokens:
    """Between blocks the batch is split over the batch axes and nothing else, so FSDP- and
    model-sharded weights are gathered or reduced inside a block."""
    return jax.tree.map(
        lambda x: nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1)), h
    )


class ScannedBlock(nn.Module):
    """One EncoderBlock as a scan body: (h, per-layer nothing) -> (h, None)."""

    config: EncoderConfig
    layout: TokenLayout
    deterministic: bool

    @nn.compact
    def __call__(self, h: Tokens, key_valid, rope):
        block = EncoderBlock(self.config, name="block")
        return block(constrain_to_batch(h), self.layout, key_valid, rope, self.deterministic), None


# Length scales s (in the data's units) of the sinusoidal features of a channel's level:
# sin(mean / s) has period 2*pi*s.
LEVEL_SCALES = (0.1, 1.0, 10.0, 100.0, 1000.0)


def level_features(mean, std):
    """(B, C) RevIN statistics -> (B, C, 2*len(LEVEL_SCALES) + 1) bounded features.

    sin/cos of the mean at several scales (so 5 vs 15 degrees and 990 vs 1030 mbar both
    differ), and the log of the std. Clipped first so that no input makes them non-finite.
    """
    m = jnp.clip(mean, -1e6, 1e6)[..., None] / jnp.asarray(LEVEL_SCALES, jnp.float32)
    log_std = jnp.log(jnp.clip(std, 1e-3, 1e6))[..., None]
    return jnp.concatenate([jnp.sin(m), jnp.cos(m), log_std], axis=-1)


def _masked_mean(x, valid, axis):
    w = valid.astype(x.dtype)[..., None]
    return (x * w).sum(axis) / jnp.maximum(w.sum(axis), 1.0)


class ChannelIdentity(nn.Module):
    """The CIT table: channel id -> (d,) vector, as nn.Embed (same parameter, same values).

    Looked up as a one-hot matmul for tables up to ONE_HOT_MAX_CHANNELS rows: a gather's
    gradient is a scatter-add, and every sample of a batch adds into the same few rows, which a
    GPU serialises (8% of an H200 alignment step); the matmul's gradient is a matmul.
    """

    num_channels: int
    features: int
    dtype: jnp.dtype

    ONE_HOT_MAX_CHANNELS = 1024

    @nn.compact
    def __call__(self, channel_ids):
        table = self.param(
            "embedding", nn.initializers.normal(0.02), (self.num_channels, self.features)
        ).astype(self.dtype)
        if self.num_channels > self.ONE_HOT_MAX_CHANNELS:
            return jnp.take(table, channel_ids, axis=0)
        one_hot = jax.nn.one_hot(channel_ids, self.num_channels, dtype=self.dtype)
        # HIGHEST: a float32 matmul may otherwise run in TF32 on a GPU and round the table.
        return jnp.matmul(one_hot, table, precision=jax.lax.Precision.HIGHEST)


class TraceEncoder(nn.Module):
    """Series (B, C, T) -> [CLS], per-channel CIT and patch-token embeddings.

    Call with `model.apply(params, series, observed, channel_ids, mask_patches,
    deterministic=False, rngs={'dropout': key})` for training; defaults are evaluation mode.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(
        self,
        series,
        observed=None,
        channel_ids=None,
        mask_patches=None,
        *,
        deterministic: bool = True,
        summary_only: bool = False,
        query_patches=None,
    ):
        """summary_only: outputs for [CLS] and the CIT tokens only (no 'tokens', 'pooled', ...).
        query_patches (B, C, M) int: 'tokens', 'patches' and 'patch_observed' only at those
        patches of each channel, (B, C, M, ...), and no pooled outputs.

        Either way the last block skips the other patch tokens' attention outputs, LayerNorms
        and MLP, which nothing reads (with summary_only about a sixth of the forward); every
        token is still attended to. Unrolled block-diagonal layers only; otherwise everything is
        computed and the wanted outputs picked.
        """
        cfg = self.config
        check_inputs(cfg, series, observed, channel_ids, mask_patches, query_patches)
        if summary_only and query_patches is not None:
            raise ValueError("pass summary_only or query_patches, not both")
        b, c, _ = series.shape
        partial = summary_only or query_patches is not None
        skip_in_last_block = (
            partial and not cfg.scan_layers and cfg.channel_bias == "block_diagonal"
        )
        series = series.astype(jnp.float32)
        if observed is None:
            observed = jnp.ones(series.shape, bool)
        if channel_ids is None:
            channel_ids = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (b, c))

        normalised, obs, mean, std = revin(series, observed)
        patches, patch_observed = patchify(normalised, obs, cfg.patch_len)
        patch_valid = patch_observed.any(-1)  # (B, C, N)
        channel_valid = patch_valid.any(-1)  # (B, C)
        n = patches.shape[2]
        layout = TokenLayout(c, n)

        dtype = jnp.dtype(cfg.dtype)
        init = nn.initializers.normal(0.02)
        mask_embedding = self.param("mask_embedding", init, (cfg.d_model,))
        cls_token = self.param("cls_token", init, (cfg.d_model,))
        tokens = nn.Dense(cfg.d_model, dtype=dtype, name="patch_embed")(patches)
        if mask_patches is not None:
            tokens = jnp.where(mask_patches[..., None], mask_embedding.astype(dtype), tokens)
        cit = ChannelIdentity(cfg.num_channels, cfg.d_model, dtype, name="channel_identity")(
            channel_ids
        )
        if cfg.level_embedding:
            cit = cit + nn.Dense(cfg.d_model, dtype=dtype, name="level_embed")(
                level_features(mean, std)
            )
        h = Tokens(
            cls=jnp.broadcast_to(cls_token.astype(dtype), (b, 1, cfg.d_model)),
            channels=jnp.concatenate([cit[:, :, None], tokens], axis=2),  # (B, C, N+1, d)
        )
        key_valid = layout.key_valid(channel_valid, patch_valid)
        rope = rope_tables(
            layout.channel_positions,
            rotary_dims(cfg.d_model // cfg.num_heads, cfg.rope_fraction),
            cfg.rope_base,
        )
        # Channel positions wanted: the CIT (0), then the query patches (1 + index).
        wanted = jnp.zeros((b, c, 1), jnp.int32) if partial else None
        if query_patches is not None:
            wanted = jnp.concatenate([wanted, 1 + query_patches.astype(jnp.int32)], axis=-1)
        if cfg.scan_layers:
            policy = REMAT_POLICIES[cfg.remat_policy]
            body = (
                nn.remat(ScannedBlock, prevent_cse=False, policy=policy)
                if cfg.remat
                else ScannedBlock
            )
            blocks = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
            )(cfg, layout, deterministic, name="blocks")
            h, _ = blocks(h, key_valid, rope)
        else:
            # Static under remat: the layout (hashable) and the flags.
            block = (
                nn.remat(
                    EncoderBlock,
                    static_argnums=(2, 5),
                    policy=REMAT_POLICIES[cfg.remat_policy],
                )
                if cfg.remat
                else EncoderBlock
            )
            for i in range(cfg.num_layers):
                h = constrain_to_batch(h)
                last = skip_in_last_block and i == cfg.num_layers - 1
                h = block(cfg, name=f"block_{i}")(
                    h, layout, key_valid, rope, deterministic, wanted if last else None
                )
        if partial and not skip_in_last_block:
            h = h._replace(channels=take_tokens(h.channels, wanted))

        per_channel = h.channels.astype(jnp.float32)
        common = {
            "cls": h.cls[:, 0].astype(jnp.float32),
            "channels": per_channel[:, :, 0],
            "patch_valid": patch_valid,
            "channel_valid": channel_valid,
            "revin_mean": mean,
            "revin_std": std,
        }
        if summary_only:
            return common
        out_tokens = per_channel[:, :, 1:]
        if query_patches is not None:
            return {
                **common,
                "tokens": out_tokens,
                "patches": take_tokens(patches, query_patches),
                "patch_observed": take_tokens(patch_observed, query_patches),
            }
        return {
            **common,
            "tokens": out_tokens,
            "channel_pooled": _masked_mean(out_tokens, patch_valid, axis=2),
            "pooled": _masked_mean(
                out_tokens.reshape(b, c * n, -1), patch_valid.reshape(b, c * n), axis=1
            ),
            "patches": patches,
            "patch_observed": patch_observed,
        }
