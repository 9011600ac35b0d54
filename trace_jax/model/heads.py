"""Models built on the encoder: the alignment model (projections into a shared space) and
the pretraining model (patch reconstruction, optional classification)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from trace_jax.model.encoder import EncoderConfig, TraceEncoder


def l2_normalize(x, eps=1e-12):
    return x / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), eps))


class AlignModel(nn.Module):
    """Series and frozen-text embeddings projected into one L2-normalised space.

    The [CLS] and CIT outputs share the series projection; sample and channel texts share the
    text projection (Dense, LayerNorm), as in TRACE.
    """

    config: EncoderConfig

    def setup(self):
        d = self.config.d_model
        self.encoder = TraceEncoder(self.config)
        self.series_proj = nn.Dense(d)
        self.text_proj = nn.Dense(d)
        self.text_norm = nn.LayerNorm()

    def embed_series(self, series, observed=None, channel_ids=None, *, deterministic=True):
        out = self.encoder(series, observed, channel_ids, deterministic=deterministic)
        return {
            "sample": l2_normalize(self.series_proj(out["cls"])),
            "channels": l2_normalize(self.series_proj(out["channels"])),
            "channel_valid": out["channel_valid"],
        }

    def embed_text(self, text_embedding):
        return l2_normalize(self.text_norm(self.text_proj(text_embedding)))

    def __call__(self, batch, *, deterministic=True):
        series = self.embed_series(
            batch["series"], batch["observed"], batch["channel_ids"], deterministic=deterministic
        )
        return {
            **series,
            "text": self.embed_text(batch["text_embedding"]),
            "channel_text": self.embed_text(batch["channel_text_embedding"]),
        }


class PretrainModel(nn.Module):
    """Masked patches reconstructed from their tokens; optional class logits from [CLS]."""

    config: EncoderConfig
    num_classes: int = 0

    @nn.compact
    def __call__(self, series, observed, channel_ids, mask_patches, *, deterministic=True):
        out = TraceEncoder(self.config, name="encoder")(
            series, observed, channel_ids, mask_patches, deterministic=deterministic
        )
        out["reconstruction"] = nn.Dense(self.config.patch_len, name="reconstruction")(
            out["tokens"]
        )
        if self.num_classes:
            out["logits"] = nn.Dense(self.num_classes, name="classifier")(out["cls"])
        return out
