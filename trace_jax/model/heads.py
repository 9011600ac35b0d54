"""Models built on the encoder: the alignment model (projections into a shared space) and
the pretraining model (patch reconstruction, optional classification)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from trace_jax.model.cross_attention import ChannelCrossAttention
from trace_jax.model.encoder import EncoderConfig, TraceEncoder


def l2_normalize(x, eps=1e-12):
    # The max inside the root keeps zero rows (padding) finite, gradients included.
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), eps))


class AlignModel(nn.Module):
    """Series and frozen-text embeddings projected into one L2-normalised space.

    The [CLS] and CIT outputs share the series projection; sample and channel texts share the
    text projection (Dense, LayerNorm), as in TRACE. Options for training only:
    `cross_attention_heads` > 0 fuses CIT and channel-text embeddings before the channel-level
    loss (the paper's optional cross-attention; the fused channel embeddings depend on the
    sample's channel texts, so `embed_series` never applies it), and `reconstruct` adds the
    masked-patch reconstruction head of pretraining.
    """

    config: EncoderConfig
    cross_attention_heads: int = 0
    reconstruct: bool = False

    def setup(self):
        d = self.config.d_model
        self.encoder = TraceEncoder(self.config)
        self.series_proj = nn.Dense(d)
        self.text_proj = nn.Dense(d)
        self.text_norm = nn.LayerNorm()
        if self.cross_attention_heads:
            self.cross_attention = ChannelCrossAttention(
                self.cross_attention_heads, self.config.dropout
            )
        if self.reconstruct:
            self.reconstruction = nn.Dense(self.config.patch_len)

    def embed_series(self, series, observed=None, channel_ids=None, *, deterministic=True):
        out = self.encoder(
            series, observed, channel_ids, deterministic=deterministic, summary_only=True
        )
        return {
            "sample": l2_normalize(self.series_proj(out["cls"])),
            "channels": l2_normalize(self.series_proj(out["channels"])),
            "channel_valid": out["channel_valid"],
        }

    def _project_text(self, text_embedding):
        return self.text_norm(self.text_proj(text_embedding))

    def embed_text(self, text_embedding):
        return l2_normalize(self._project_text(text_embedding))

    def __call__(self, batch, mask_patches=None, *, deterministic=True, query_patches=None):
        """query_patches (B, C, M), with reconstruct: reconstruct those patches only."""
        out = self.encoder(
            batch["series"],
            batch["observed"],
            batch["channel_ids"],
            mask_patches,
            deterministic=deterministic,
            summary_only=not self.reconstruct,
            query_patches=query_patches if self.reconstruct else None,
        )
        channels = self.series_proj(out["channels"])
        channel_text = self._project_text(batch["channel_text_embedding"])
        if self.cross_attention_heads:
            fuse = lambda x, context, valid: self.cross_attention(
                x, context, valid, deterministic=deterministic
            )
            channel_text = fuse(channel_text, channels, out["channel_valid"])
            channels = fuse(channels, channel_text, batch["channel_text_valid"])
        result = {
            "sample": l2_normalize(self.series_proj(out["cls"])),
            "channels": l2_normalize(channels),
            "channel_valid": out["channel_valid"],
            "text": self.embed_text(batch["text_embedding"]),
            "channel_text": l2_normalize(channel_text),
        }
        if self.reconstruct:
            result["reconstruction"] = self.reconstruction(out["tokens"])
            result["patches"], result["patch_observed"] = out["patches"], out["patch_observed"]
        return result


class PretrainModel(nn.Module):
    """Masked patches reconstructed from their tokens; optional class logits from [CLS]."""

    config: EncoderConfig
    num_classes: int = 0

    @nn.compact
    def __call__(
        self, series, observed, channel_ids, mask_patches, *, deterministic=True, query_patches=None
    ):
        """query_patches (B, C, M): reconstruct those patches only (TraceEncoder's option)."""
        out = TraceEncoder(self.config, name="encoder")(
            series,
            observed,
            channel_ids,
            mask_patches,
            deterministic=deterministic,
            query_patches=query_patches,
        )
        out["reconstruction"] = nn.Dense(self.config.patch_len, name="reconstruction")(
            out["tokens"]
        )
        if self.num_classes:
            out["logits"] = nn.Dense(self.num_classes, name="classifier")(out["cls"])
        return out
