"""Orbax checkpoints: train state, data-iterator state (one file per process) and config."""

from __future__ import annotations

import json
import pathlib

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Async saves every `every` steps, keeps the last `keep`, restores onto any mesh."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int, every: int):
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                save_interval_steps=every,
                enable_async_checkpointing=True,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, config: dict, *, force=False) -> bool:
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                config=ocp.args.JsonSave(config),
            ),
            force=force,
        )

    def restore(self, abstract_state, data_iterator=None, step: int | None = None):
        """Restores the state with the shardings carried by `abstract_state` (any mesh).

        The data iterator is restored in place when given; returns the state.
        """
        step = self.latest_step() if step is None else step
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def saved_config(self, step: int) -> dict:
        """The config saved with the checkpoint at `step`."""
        return _restore_config(self.manager, step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def saved_config(workdir: str | pathlib.Path, step: int | None = None) -> tuple[int, dict]:
    """(step, config dict) saved with a run's latest (or given) checkpoint."""
    checkpoints = pathlib.Path(workdir).absolute() / "checkpoints"
    manager = ocp.CheckpointManager(checkpoints)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {checkpoints}")
    config = _restore_config(manager, step)
    manager.close()
    return step, config


def _restore_config(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


# Config keys a resumed run may change: how long it trains (more steps extend it), how often it
# logs, evaluates and saves, and where it runs (host devices, mesh layout, input workers, the text
# cache's location). None changes what the run computes; any other change would continue one
# experiment under another's settings. A key ending in "." covers its whole section.
RESUMABLE_KEYS = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "data.worker_count",
    "data.text_cache_dir",
    "cpu_devices",
    "mesh.",
    "sharding.",
)


class Absent:
    """Stands for a key that one of two compared configs does not have."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = Absent()


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """Dotted key -> (saved value, current value) for every key outside RESUMABLE_KEYS whose
    value differs, ABSENT standing for a key one side lacks.

    `current` is compared as it would be saved, in JSON (tuples become lists).
    """
    saved, current = _flatten(saved), _flatten(json.loads(json.dumps(current)))
    changes = {}
    for key in sorted(saved.keys() | current.keys()):
        old, new = saved.get(key, ABSENT), current.get(key, ABSENT)
        resumable = any(key.startswith(r) if r.endswith(".") else key == r for r in RESUMABLE_KEYS)
        if old != new and not resumable:
            changes[key] = (old, new)
    return changes


def restore_params(workdir: str | pathlib.Path, abstract_params, step: int | None = None):
    """Parameters only, from another run's workdir (e.g. pretraining for alignment)."""
    manager = ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints")
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={"params": abstract_params},
                restore_args=jax.tree.map(
                    lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), {"params": abstract_params}
                ),
                partial_restore=True,
            )
        ),
    )
    manager.close()
    return restored["state"]["params"]
