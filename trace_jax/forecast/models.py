"""Heads on the TRACE encoder: forecasting (with optional retrieved soft prompts) and
classification."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from trace_jax.model.encoder import EncoderConfig, TraceEncoder

RAG_MODES = ("none", "series", "series_text")


def encode(config: EncoderConfig, batch, deterministic: bool, frozen: bool) -> dict:
    """The encoder's outputs for a batch. Frozen: constants for the backward pass, and no
    dropout, so a head trains on the features it is evaluated on."""
    out = TraceEncoder(config, name="encoder")(
        batch["series"],
        batch["observed"],
        batch["channel_ids"],
        deterministic=deterministic or frozen,
    )
    return jax.lax.stop_gradient(out) if frozen else out


class ForecastModel(nn.Module):
    """Per-channel forecasts of `horizon` steps from the encoder's patch tokens.

    The head maps a channel's flattened patch tokens (and, with RAG, the soft prompt) to the
    horizon in RevIN-normalised space; the output is de-normalised with the window's own mean
    and std. RAG: each retrieved (series, text) pair [z_s; z_t] is projected to a prompt
    vector (masked when the slot is empty); the R prompts are concatenated before the head, as
    the paper does for encoder forecasters. Mode `series` zeroes the text half.
    """

    config: EncoderConfig
    horizon: int
    rag: str = "none"
    prompt_dim: int = 32
    frozen_encoder: bool = False  # no gradient through the encoder: head-only training is cheap

    @nn.compact
    def __call__(self, batch, *, deterministic=True):
        out = encode(self.config, batch, deterministic, self.frozen_encoder)
        b, c, n, d = out["tokens"].shape
        features = out["tokens"].reshape(b, c, n * d)
        if self.rag != "none":
            text = (
                batch["rag_text"]
                if self.rag == "series_text"
                else jnp.zeros_like(batch["rag_text"])
            )
            pairs = jnp.concatenate([batch["rag_series"], text], axis=-1)  # (B, R, 2d')
            prompt = nn.Dense(self.prompt_dim, name="rag_projection")(pairs)
            prompt = jnp.where(batch["rag_valid"][..., None], prompt, 0.0)
            prompt = jnp.broadcast_to(
                prompt.reshape(b, 1, -1), (b, c, prompt.shape[1] * self.prompt_dim)
            )
            features = jnp.concatenate([features, prompt], axis=-1)
        normalised = nn.Dense(self.horizon, name="head")(features)
        return normalised * out["revin_std"][..., None] + out["revin_mean"][..., None]


class ClassifierModel(nn.Module):
    """Class logits from the [CLS] embedding and the mean patch token."""

    config: EncoderConfig
    num_classes: int
    frozen_encoder: bool = False

    @nn.compact
    def __call__(self, batch, *, deterministic=True):
        out = encode(self.config, batch, deterministic, self.frozen_encoder)
        features = jnp.concatenate([out["cls"], out["pooled"]], axis=-1)
        return nn.Dense(self.num_classes, name="head")(features)
