"""Classification of windows (e.g. Weather-Captioned condition labels) with a head on the
TRACE encoder: frozen and aligned (head-only, or light tuning of the last blocks), or trained
from scratch as the baseline (`classify.encoder_from=''`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trace_jax.forecast.models import ClassifierModel
from trace_jax.model import EncoderConfig
from trace_jax.train.losses import labelled_cross_entropy
from trace_jax.train.state import head_and_last_blocks


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes present in `labels` or `predicted`."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


class ClassifyTask:
    requires_text = False
    shared_modules = ("encoder",)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = cc = config.classify
        self.init_from = cc.encoder_from
        if cc.encoder_from:
            from trace_jax.api import TraceModel  # pylint: disable=g-import-not-at-top

            encoder_config = TraceModel.from_workdir(cc.encoder_from).encoder_config
        else:
            encoder_config = EncoderConfig.from_mapping(config.model.to_dict())
        self.encoder_config = encoder_config
        self.model = ClassifierModel(
            encoder_config,
            cc.num_classes,
            frozen_encoder=bool(cc.encoder_from) and cc.tune_last_blocks == 0,
        )

    def init_params(self, rng, batch):
        return {"model": self.model.init(rng, batch)["params"]}

    def trainable(self, params):
        """From scratch: everything. From an aligned encoder: the head (+ last blocks)."""
        if not self.init_from:
            return jax.tree.map(lambda _: True, params)
        return head_and_last_blocks(
            params, self.encoder_config.num_layers, self.config.tune_last_blocks
        )

    def loss(self, params, batch, rng):
        logits = self.model.apply(
            {"params": params["model"]}, batch, deterministic=False, rngs={"dropout": rng}
        )
        loss = labelled_cross_entropy(logits, batch["label"])
        labelled = batch["label"] >= 0
        accuracy = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) & labelled) / jnp.maximum(
            labelled.sum(), 1
        )
        return loss, {"loss": loss, "accuracy": accuracy}

    def eval_outputs(self, params, batch):
        logits = self.model.apply({"params": params["model"]}, batch)
        return {"predicted": jnp.argmax(logits, -1), "label": batch["label"]}

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        keep = outputs["label"] >= 0
        labels, predicted = outputs["label"][keep], outputs["predicted"][keep]
        majority = np.bincount(labels, minlength=self.config.num_classes).argmax()
        return {
            "accuracy": float(np.mean(predicted == labels)) if keep.any() else 0.0,
            "macro_f1": macro_f1(labels, predicted, self.config.num_classes),
            "majority_accuracy": float(np.mean(labels == majority)) if keep.any() else 0.0,
            "num_labelled": float(keep.sum()),
        }
