"""Stage 2: contrastive alignment of series with frozen text embeddings (the TRACE loss)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trace_jax.eval.retrieval_metrics import (
    channel_text_metrics,
    identical_rows,
    text_series_metrics,
)
from trace_jax.model import EncoderConfig
from trace_jax.model.heads import AlignModel
from trace_jax.train.losses import (
    content_keys,
    masked_reconstruction_loss,
    reconstruction_mask,
    sample_and_channel_loss,
)


def duplicate_keys(batch) -> dict:
    """Content keys of what makes two pairs the same: a sample's caption or its series window
    (Time-MMD ties several reports to one window), a channel's text (Weather-Captioned gives its
    three wind channels one sentence)."""
    usable = batch["observed"] & jnp.isfinite(batch["series"])
    series = jnp.where(usable, batch["series"], jnp.nan)
    sample = [
        content_keys(batch["text_embedding"]),
        content_keys(series.reshape(*series.shape[:1], -1)),
    ]
    return {
        "sample_keys": jnp.stack(sample, axis=-2),
        "channel_keys": content_keys(batch["channel_text_embedding"])[..., None, :],
    }


class AlignTask:
    """Pure pieces of the alignment trainer: init, loss, evaluation embeddings and metrics."""

    requires_text = True
    shared_modules = ("encoder", "reconstruction")  # taken from a pretraining run (init_from)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config.align
        self.init_from = self.config.init_from
        self.encoder_config = EncoderConfig.from_mapping(config.model.to_dict())
        self.model = AlignModel(
            self.encoder_config,
            cross_attention_heads=self.config.cross_attention_heads,
            reconstruct=self.config.reconstruction_weight > 0,
        )

    def init_params(self, rng, batch):
        params = {"model": self.model.init(rng, batch)["params"]}
        if self.config.learn_temperature:
            params["log_temperature"] = jnp.asarray(math.log(self.config.temperature), jnp.float32)
        return params

    def temperature(self, params):
        if self.config.learn_temperature:
            return jnp.exp(params["log_temperature"])
        return self.config.temperature

    def loss(self, params, batch, rng):
        mask_rng, dropout_rng = jax.random.split(rng)
        mask = query = None
        if self.model.reconstruct:
            mask, query, query_masked = reconstruction_mask(
                mask_rng, batch, self.encoder_config.patch_len, self.config.mask_ratio
            )
        out = self.model.apply(
            {"params": params["model"]},
            batch,
            mask,
            deterministic=False,
            rngs={"dropout": dropout_rng},
            query_patches=query,
        )
        loss, metrics = sample_and_channel_loss(
            out["sample"],
            out["text"],
            out["channels"],
            out["channel_text"],
            has_text=batch["has_text"],
            channel_valid=out["channel_valid"] & batch["channel_text_valid"],
            temperature=self.temperature(params),
            channel_weight=self.config.channel_weight,
            hard_negatives=self.config.hard_negatives,
            **(duplicate_keys(batch) if self.config.exclude_duplicates else {}),
        )
        if self.model.reconstruct:
            recon, recon_metrics = masked_reconstruction_loss(
                out["reconstruction"], out["patches"], out["patch_observed"], query_masked
            )
            loss = loss + self.config.reconstruction_weight * recon
            metrics.update(recon_metrics, loss=loss)
        metrics["temperature"] = jnp.asarray(self.temperature(params), jnp.float32)
        return loss, metrics

    def eval_outputs(self, params, batch):
        """Embeddings with masking and dropout off (the public code leaves masking on)."""
        model = {"params": params["model"]}
        series = self.model.apply(
            model,
            batch["series"],
            batch["observed"],
            batch["channel_ids"],
            method=AlignModel.embed_series,
        )
        embed_text = lambda x: self.model.apply(model, x, method=AlignModel.embed_text)
        return {
            "series": series["sample"],
            "text": embed_text(batch["text_embedding"]),
            "label": batch["label"],
            "has_text": batch["has_text"],
            # Retrieval's channel embeddings: no cross-attention, which needs the text.
            "channels": series["channels"],
            "channel_text": embed_text(batch["channel_text_embedding"]),
            "channel_valid": series["channel_valid"] & batch["channel_text_valid"],
            "channel_ids": batch["channel_ids"],
            "channel_text_keys": content_keys(batch["channel_text_embedding"]),
        }

    @staticmethod
    def eval_metrics(outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """text->series and series->text retrieval of the exact pair among the evaluation set;
        where windows have channel texts, a channel's text among the same channel's in every
        window, and back (channel_text_metrics)."""
        keep = outputs["has_text"].astype(bool)
        series, text = outputs["series"][keep], outputs["text"][keep]
        # Identical inputs embed identically: equal rows are pairs sharing a text or a window.
        same_pair = identical_rows(text, series)
        found = text_series_metrics(text @ series.T, outputs["label"][keep], same_pair=same_pair)
        metrics = {"num_pairs": float(keep.sum())}
        for name, short in (("text->series", "t2s"), ("series->text", "s2t")):
            metrics.update(
                {f"{short}_{k}": v for k, v in found[name].items() if not k.startswith("n_")}
            )
        channel = channel_text_metrics(
            outputs["channels"],
            outputs["channel_text"],
            outputs["channel_valid"],
            outputs["channel_ids"],
            outputs["channel_text_keys"],
        )
        for name, short in (("text->channel", "channel_t2c"), ("channel->text", "channel_c2t")):
            metrics.update(
                {f"{short}_{k}": v for k, v in channel.get(name, {}).items() if k != "n_queries"}
            )
        return metrics
