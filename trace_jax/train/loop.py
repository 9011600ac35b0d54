"""The one training loop every stage shares.

Phases: data -> mesh and state shardings -> restore or initialise -> jitted step -> loop with
logging, evaluation, checkpoints and preemption. The stage-specific parts come from a task
object (trace_jax/train/align.py, pretrain.py): init_params, loss, eval_outputs, eval_metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import signal
import sys
import time
from typing import Callable

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import numpy as np

from trace_jax import xla_options
from trace_jax.data import pipeline
from trace_jax.data.sources import load_sources
from trace_jax.train import sharding as shard_lib
from trace_jax.train.checkpoint import Checkpointer, config_changes, restore_params
from trace_jax.train.metrics_writer import MetricsWriter
from trace_jax.train.state import (
    init_state,
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
)


class PreemptionFlag:
    """Set by SIGTERM: the loop saves a checkpoint at the next step boundary and returns."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def should_stop(self, step: int, sync_every: int) -> bool:
        """Whether every process stops after `step`.

        All processes must save the same step, so with several processes the flags are combined
        with a collective every `sync_every` steps (a host sync, hence not every step).
        """
        if jax.process_count() == 1:
            return self.requested
        if step % sync_every:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


class Progress:
    """A tqdm bar (rate, ETA) on a terminal; plain periodic lines otherwise."""

    def __init__(self, total: int, initial: int):
        self.total, self.start_step, self.start = total, initial, time.time()
        self.bar = None
        if sys.stderr.isatty() and jax.process_index() == 0:
            import tqdm  # pylint: disable=g-import-not-at-top

            self.bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, summary: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if summary:
                self.bar.set_postfix(
                    {k: f"{v:.4g}" for k, v in summary.items() if k in ("loss", "masked_mse")}
                )
        elif summary is not None and jax.process_index() == 0:
            rate = (step - self.start_step) / max(time.time() - self.start, 1e-9)
            eta = (self.total - step) / max(rate, 1e-9)
            print(
                f"step {step}/{self.total} {rate:.2f} steps/s eta {eta:.0f}s "
                + " ".join(f"{k}={v:.4g}" for k, v in sorted(summary.items())),
                flush=True,
            )

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
    host = jax.device_get(pending)  # the only host sync: once per log interval
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def evaluate(task, params, source, eval_fn, batch_sharding, batch_size: int) -> dict:
    """Runs eval_outputs over a whole split (padding rows dropped), then eval_metrics."""
    collected: dict[str, list[np.ndarray]] = {}
    for batch in pipeline.make_eval_batches(
        source, batch_size, sharding=batch_sharding, require_text=task.requires_text
    ):
        out = jax.device_get(eval_fn(params, batch))
        valid = out.pop("valid")
        for k, v in out.items():
            collected.setdefault(k, []).append(v[valid])
    return task.eval_metrics({k: np.concatenate(v) for k, v in collected.items()})


def task_sources(config, task):
    """(train, validation) sources of the configured data, with the task's own inputs added
    (e.g. retrieved context for forecasting) when it has any."""
    train, validation = load_sources(config.data)
    if hasattr(task, "prepare_sources"):
        train, validation = task.prepare_sources(train, validation)
    return train, validation


def example_batch(source) -> dict[str, np.ndarray]:
    """One host batch holding the source's first example: shapes and dtypes for initialisation."""
    batch = next(iter(pipeline.make_eval_batches(source, 1, shard_index=0, shard_count=1)))
    batch.pop("valid")
    return batch


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The jitted, sharded functions of one task on one mesh."""

    mesh: jax.sharding.Mesh
    batch_sharding: jax.sharding.NamedSharding
    abstract_state: dict  # ShapeDtypeStructs carrying the state's shardings
    init: Callable  # example batch -> state
    step: Callable  # (state, batch) -> (state, metrics); donates state
    eval_outputs: Callable  # (params, batch) -> replicated per-example outputs and "valid"


def _with_rules(fn, rules):
    """fn traced under the logical axis rules, wherever it is first called."""

    @functools.wraps(fn)
    def wrapped(*args):
        with nn.logical_axis_rules(rules):
            return fn(*args)

    return wrapped


def build_trainer(config, task, mesh, example) -> Trainer:
    optimizer = make_optimizer(config.train, getattr(task, "trainable", None))
    make_state = functools.partial(init_state, task, optimizer, config.seed)
    abstract = jax.eval_shape(make_state, example)
    rules = tuple((name, axes) for name, axes in config.sharding.rules)
    state_sharding = shard_lib.state_shardings(
        mesh, abstract, rules, config.sharding.min_sharded_size
    )
    batch_sharding = shard_lib.batch_sharding(mesh)
    replicated = shard_lib.replicated(mesh)
    return Trainer(
        mesh=mesh,
        batch_sharding=batch_sharding,
        abstract_state=_with_sharding(abstract, state_sharding),
        init=jax.jit(make_state, out_shardings=state_sharding),
        step=jax.jit(
            _with_rules(
                make_train_step(task, optimizer, learning_rate_schedule(config.train)), rules
            ),
            in_shardings=(state_sharding, batch_sharding),
            out_shardings=(state_sharding, replicated),
            donate_argnums=0,
        ),
        eval_outputs=jax.jit(
            _with_rules(
                lambda params, batch: {**task.eval_outputs(params, batch), "valid": batch["valid"]},
                rules,
            ),
            in_shardings=(state_sharding["params"], batch_sharding),
            out_shardings=replicated,
            compiler_options=xla_options.encoder_forward(task.encoder_config),
        ),
    )


class ConfigChangedError(ValueError):
    """The workdir's checkpoint was saved under another config: resuming it would continue one
    experiment under another's settings (or report the old run's results as the new one's)."""


def check_resumable(checkpointer: Checkpointer, config: dict, allow_config_change: bool) -> None:
    """Refuses a config (as a dict) that differs from the one saved with the latest checkpoint,
    but in keys that only say how long or where the run goes on (checkpoint.RESUMABLE_KEYS); with
    `allow_config_change` it logs the differences and lets the run resume."""
    step = checkpointer.latest_step()
    if step is None:
        return
    changes = config_changes(checkpointer.saved_config(step), config)
    if not changes:
        return
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
    if allow_config_change:
        logging.warning("resuming step %d under a changed config: %s", step, listed)
        return
    raise ConfigChangedError(
        f"{checkpointer.directory.parent} holds a run whose checkpoint (step {step}) was saved "
        f"under another config: {listed}. Run the new config in a new workdir."
    )


def initial_state(task, trainer: Trainer, example, checkpointer, train_iter):
    """The latest checkpoint's state (and data position), else a fresh one."""
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(trainer.abstract_state, train_iter)
        logging.info("resumed from step %d", int(state["step"]))
        return state
    state = trainer.init(example)
    init_from = getattr(task, "init_from", "")
    if init_from:
        # The modules the task shares with the earlier stage's model, under the same names.
        model = trainer.abstract_state["params"]["model"]
        shared = {k: model[k] for k in task.shared_modules if k in model}
        restored = restore_params(init_from, {"model": shared})["model"]
        state["params"]["model"].update(restored)
        logging.info("%s initialised from %s", " and ".join(restored), init_from)
    return state


def train_and_evaluate(
    config, workdir: str | pathlib.Path, task, *, allow_config_change: bool = False
) -> dict[str, float]:
    """Trains `task` as configured; resumes from the latest checkpoint in `workdir`.

    A checkpoint saved under another config is refused before anything is loaded or written
    (check_resumable), unless `allow_config_change`.
    """
    workdir = pathlib.Path(workdir)
    train_cfg = config.train
    config_dict = config.to_dict()  # what is checked against the checkpoint is what is saved
    checkpointer = Checkpointer(
        workdir / "checkpoints", keep=train_cfg.keep_checkpoints, every=train_cfg.checkpoint_every
    )
    try:
        check_resumable(checkpointer, config_dict, allow_config_change)
    except ConfigChangedError:
        checkpointer.close()
        raise

    # Data and mesh.
    train_source, validation_source = task_sources(config, task)
    mesh = shard_lib.make_mesh(config.mesh)
    shard_lib.local_batch_size(train_cfg.batch_size, mesh)  # checks divisibility early
    example = example_batch(train_source)
    trainer = build_trainer(config, task, mesh, example)
    worker_count = pipeline.resolve_worker_count(
        config.data.worker_count, jax.default_backend(), os.cpu_count()
    )
    logging.info("input pipeline: %d Grain worker processes", worker_count)
    train_iter = pipeline.make_train_iterator(
        train_source,
        global_batch_size=train_cfg.batch_size,
        seed=config.seed,
        sharding=trainer.batch_sharding,
        require_text=task.requires_text,
        worker_count=worker_count,
    )
    writer = MetricsWriter(workdir)

    with jax.set_mesh(mesh):
        state = initial_state(task, trainer, example, checkpointer, train_iter)

        def run_eval(params):
            return evaluate(
                task,
                params,
                validation_source,
                trainer.eval_outputs,
                trainer.batch_sharding,
                train_cfg.batch_size,
            )

        start = int(state["step"])
        preemption = PreemptionFlag()
        progress = Progress(train_cfg.steps, start)
        pending, eval_metrics = [], {}
        try:
            for step in range(start + 1, train_cfg.steps + 1):
                state, metrics = trainer.step(state, next(train_iter))
                pending.append(metrics)
                summary = None
                if step % train_cfg.log_every == 0 or step == train_cfg.steps:
                    summary = _mean_metrics(pending)
                    pending = []
                    writer.write(step, summary, "train")
                progress.update(step, summary)
                if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
                    eval_metrics = run_eval(state["params"])
                    writer.write(step, eval_metrics, "validation")
                stop = preemption.should_stop(step, train_cfg.log_every)
                checkpointer.save(
                    step, state, train_iter, config_dict, force=step == train_cfg.steps or stop
                )
                if stop:
                    logging.warning(
                        "stopped at step %d after SIGTERM; rerun the command to resume", step
                    )
                    break
            if not eval_metrics:  # nothing ran (already finished): still report
                eval_metrics = run_eval(state["params"])
        finally:
            train_iter.close()  # its Grain workers, even while a traceback holds this frame
            checkpointer.wait()
            checkpointer.close()
            progress.close()
            writer.close()
            preemption.restore()
    return eval_metrics


def _with_sharding(abstract, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
