"""Train state, optimizer, and the generic jitted training step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train.learning_rate,
        warmup_steps=train.warmup_steps,
        decay_steps=max(train.steps, train.warmup_steps + 1),
        end_value=0.01 * train.learning_rate,
    )


def decays(path, param) -> bool:
    """Weight decay for matrices only: not biases, norm scales or scalars. Blocks stacked by
    `model.scan_layers` carry a leading layer axis, which does not make a bias a matrix."""
    stacked = any(getattr(k, "key", None) == "blocks" for k in path)
    return param.ndim - stacked >= 2


def make_optimizer(
    train: ml_collections.ConfigDict, trainable=None
) -> optax.GradientTransformation:
    """AdamW with warmup+cosine and global-norm clipping; no decay on biases, norms, scalars.

    trainable: optional params -> pytree of marks; a leaf marked False never changes (a frozen
    encoder under a trained head) and carries no Adam moments. A boolean array mark freezes part
    of a leaf: `head_and_last_blocks` gives stacked (scanned) blocks one mark per layer.
    """
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(decays, params)
    adamw = optax.chain(
        optax.clip_by_global_norm(train.grad_clip),
        optax.adamw(
            learning_rate_schedule(train), weight_decay=train.weight_decay, mask=decay_mask
        ),
    )
    if trainable is None:
        return adamw
    labels = lambda params: jax.tree.map(
        lambda mark: "train" if np.any(mark) else "freeze", trainable(params)
    )
    by_leaf = optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels)

    def zero_frozen_layers(updates, params):
        # np.ndim(True) == 0: whole leaves pass through; multi_transform already handles them.
        keep = lambda u, mark: u * mark if np.ndim(mark) else u
        return jax.tree.map(keep, updates, trainable(params))

    # Before AdamW, so frozen layers neither count in the clipping norm nor build moments; after
    # it, so weight decay does not shrink them.
    return optax.chain(
        optax.stateless(zero_frozen_layers), by_leaf, optax.stateless(zero_frozen_layers)
    )


def head_and_last_blocks(params, num_layers: int, tune_last_blocks: int):
    """Trainable marks for a head on a frozen encoder: all but `encoder`, plus its last
    `tune_last_blocks` blocks (light tuning). Blocks stacked by `model.scan_layers` (one leaf,
    leading axis = layer) get a boolean array mark, one entry per layer."""
    first_tuned = num_layers - tune_last_blocks
    tuned = {f"block_{i}" for i in range(first_tuned, num_layers)}

    def mark(path, leaf):
        keys = [getattr(k, "key", None) for k in path]
        if "encoder" not in keys:
            return True
        if "blocks" in keys:
            per_layer = np.arange(num_layers) >= first_tuned
            return per_layer.reshape((num_layers,) + (1,) * (np.ndim(leaf) - 1))
        return any(k in tuned for k in keys)

    return jax.tree_util.tree_map_with_path(mark, params)


def init_state(task, optimizer, seed: int, batch) -> dict:
    """{'step', 'params', 'opt_state', 'rng'}: everything a checkpoint must hold but the data."""
    init_rng, train_rng = jax.random.split(jax.random.key(seed))
    params = task.init_params(init_rng, batch)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": optimizer.init(params),
        # Raw key data: a plain uint32 array checkpoints like any other leaf.
        "rng": jax.random.key_data(train_rng),
    }


def make_train_step(task, optimizer, schedule: optax.Schedule):
    """(state, batch) -> (state, metrics), pure; the caller jits it with shardings."""

    trainable = getattr(task, "trainable", None)

    def trained_part(grads, params):
        # The norm that clipping sees: frozen parameters' gradients are never applied.
        if trainable is None:
            return grads
        return jax.tree.map(lambda g, mark: jnp.where(mark, g, 0.0), grads, trainable(params))

    def train_step(state, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        (_, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(
            state["params"], batch, rng
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        metrics["grad_norm"] = optax.tree.norm(trained_part(grads, state["params"]))
        metrics["learning_rate"] = schedule(state["step"])
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "rng": state["rng"],
        }
        return new_state, metrics

    return train_step
