"""Train state, optimizer, and the generic jitted training step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train.learning_rate,
        warmup_steps=train.warmup_steps,
        decay_steps=max(train.steps, train.warmup_steps + 1),
        end_value=0.01 * train.learning_rate,
    )


def make_optimizer(
    train: ml_collections.ConfigDict, trainable=None
) -> optax.GradientTransformation:
    """AdamW with warmup+cosine and global-norm clipping; no decay on biases, norms, scalars.

    trainable: optional params -> pytree of bools; parameters marked False never change (a
    frozen encoder under a trained head) and carry no Adam moments.
    """
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = optax.chain(
        optax.clip_by_global_norm(train.grad_clip),
        optax.adamw(
            learning_rate_schedule(train), weight_decay=train.weight_decay, mask=decay_mask
        ),
    )
    if trainable is None:
        return adamw
    labels = lambda params: jax.tree.map(lambda t: "train" if t else "freeze", trainable(params))
    return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels)


def head_and_last_blocks(params, num_layers: int, tune_last_blocks: int):
    """Trainable marks for a head on a frozen encoder: all but `encoder`, plus its last
    `tune_last_blocks` blocks (light tuning)."""
    tuned = {f"block_{i}" for i in range(num_layers - tune_last_blocks, num_layers)}

    def mark(path, _):
        keys = [getattr(k, "key", None) for k in path]
        return "encoder" not in keys or any(k in tuned for k in keys)

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

    def train_step(state, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        (_, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(
            state["params"], batch, rng
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = schedule(state["step"])
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "rng": state["rng"],
        }
        return new_state, metrics

    return train_step
