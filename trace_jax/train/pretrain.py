"""Stage 1: masked-patch reconstruction (MSE on masked observed points, normalised space)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trace_jax.model import EncoderConfig
from trace_jax.model.heads import PretrainModel
from trace_jax.train.losses import (
    labelled_cross_entropy,
    masked_reconstruction_loss,
    random_series_patch_mask,
    reconstruction_mask,
)

# Validation masks come from a fixed key so every evaluation scores the same patches.
EVAL_MASK_SEED = 1234


class PretrainTask:
    """Pure pieces of the pretraining trainer: init, loss, evaluation."""

    requires_text = False

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config.pretrain
        self.encoder_config = EncoderConfig.from_mapping(config.model.to_dict())
        self.model = PretrainModel(self.encoder_config, num_classes=self.config.num_classes)

    def _mask(self, rng, batch):
        return random_series_patch_mask(
            rng,
            batch["series"],
            batch["observed"],
            self.encoder_config.patch_len,
            self.config.mask_ratio,
        )

    def _apply(self, params, batch, mask, **kwargs):
        return self.model.apply(
            {"params": params["model"]},
            batch["series"],
            batch["observed"],
            batch["channel_ids"],
            mask,
            **kwargs,
        )

    def init_params(self, rng, batch):
        mask = jnp.zeros(
            batch["series"].shape[:2]
            + (-(-batch["series"].shape[2] // self.encoder_config.patch_len),),
            bool,
        )
        variables = self.model.init(
            rng, batch["series"], batch["observed"], batch["channel_ids"], mask
        )
        return {"model": variables["params"]}

    def loss(self, params, batch, rng):
        mask_rng, dropout_rng = jax.random.split(rng)
        mask, query, query_masked = reconstruction_mask(
            mask_rng, batch, self.encoder_config.patch_len, self.config.mask_ratio
        )
        out = self._apply(
            params,
            batch,
            mask,
            deterministic=False,
            rngs={"dropout": dropout_rng},
            query_patches=query,
        )
        loss, metrics = masked_reconstruction_loss(
            out["reconstruction"],
            out["patches"],
            out["patch_observed"],
            query_masked,
        )
        if self.config.num_classes:
            # The auxiliary class term of the public code, on the examples that have a label.
            metrics["label_loss"] = labelled_cross_entropy(out["logits"], batch["label"])
            loss = loss + self.config.label_weight * metrics["label_loss"]
        metrics["loss"] = loss
        return loss, metrics

    def eval_outputs(self, params, batch):
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(EVAL_MASK_SEED), i))(
            batch["index"]
        )
        mask = jax.vmap(lambda k, b: self._mask(k, jax.tree.map(lambda x: x[None], b))[0])(
            keys, {k: batch[k] for k in ("series", "observed")}
        )
        out = self._apply(params, batch, mask)
        points = out["patch_observed"] & mask[..., None]
        sq = jnp.where(points, jnp.square(out["reconstruction"] - out["patches"]), 0.0)
        return {"sq_error": sq.sum((1, 2, 3)), "num_points": points.sum((1, 2, 3))}

    @staticmethod
    def eval_metrics(outputs: dict[str, np.ndarray]) -> dict[str, float]:
        n = float(outputs["num_points"].sum())
        return {"masked_mse": float(outputs["sq_error"].sum()) / max(n, 1.0)}
