r"""Entry point for every stage: the same command on every host.

  python -m trace_jax.main --config=configs/align.py:cpu --workdir=runs/align
  python -m trace_jax.main --config=configs/pretrain.py:cpu --workdir=runs/pretrain

Overrides: --config.train.batch_size=64 (a mistyped key is refused, naming it). Rerunning the
same command resumes from the workdir's latest checkpoint. A rerun may change how long the run
trains (--config.train.steps), how often it logs, evaluates and saves, and where it runs (devices,
mesh, input workers, text cache); any other change to the saved config is refused, naming the
keys, unless --allow_config_change.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0 (multi-process without a cluster)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "With --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "With --coordinator_address.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume the workdir's checkpoint even though it was saved under another config.",
)


def parse_flags(argv):
    """absl flag parsing, with config override mistakes reported as one clear line."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        message = str(e).strip("'\"").replace("\\n", " ").replace('\\"', '"').replace("\\'", "'")
        sys.exit(f"error in the config or its overrides: {message}")
    except flags.Error as e:
        sys.exit(f"error: {e}")


class _QuietOrbax(logging.Filter):
    """Orbax logs every save at INFO; keep its warnings, drop the chatter."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def task_for(config):
    # Imported here so that jax.distributed.initialize runs before anything touches JAX.
    from trace_jax.train.align import AlignTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.pretrain import PretrainTask  # pylint: disable=g-import-not-at-top

    from trace_jax.train.classify import ClassifyTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.forecast import ForecastTask  # pylint: disable=g-import-not-at-top

    tasks = {
        "align": AlignTask,
        "pretrain": PretrainTask,
        "forecast": ForecastTask,
        "classify": ClassifyTask,
    }
    if config.stage not in tasks:
        raise ValueError(f"unknown stage {config.stage!r}; choose from {sorted(tasks)}")
    return tasks[config.stage](config)


def run_export(config, workdir: str) -> None:
    import pathlib  # pylint: disable=g-import-not-at-top

    import ml_collections  # pylint: disable=g-import-not-at-top

    from trace_jax.api import TraceModel  # pylint: disable=g-import-not-at-top
    from trace_jax.data.sources import load_sources  # pylint: disable=g-import-not-at-top
    from trace_jax.export import export_model  # pylint: disable=g-import-not-at-top

    model = TraceModel.from_workdir(workdir)
    channels, time_steps = config.export.channels, config.export.time_steps
    if not channels or not time_steps:
        run = model.run_config
        _, validation = load_sources(ml_collections.ConfigDict(run["data"]))
        c, t = validation[0]["series"].shape
        channels, time_steps = channels or c, time_steps or t
    output = config.export.output or str(pathlib.Path(workdir) / "export")
    export_model(
        model,
        output,
        channels=channels,
        time_steps=time_steps,
        platforms=tuple(config.export.platforms),
    )
    print(f"exported {model.source} to {output} (series: b x {channels} x {time_steps})")


def main(argv):
    del argv
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietOrbax())
    from trace_jax import distributed  # pylint: disable=g-import-not-at-top

    config = _CONFIG.value
    try:
        distributed.split_cpu(config.get("cpu_devices", 0))
    except ValueError as e:
        sys.exit(f"error: {e}")
    distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    import jax  # pylint: disable=g-import-not-at-top

    from trace_jax import allocator, cpu_features  # pylint: disable=g-import-not-at-top
    from trace_jax.train.loop import (  # pylint: disable=g-import-not-at-top
        ConfigChangedError,
        train_and_evaluate,
    )

    if config.stage == "export":
        if not _WORKDIR.value:
            sys.exit("error: --workdir (the alignment run to export) is required")
        run_export(config, _WORKDIR.value)
        return
    workdir = _WORKDIR.value or f"runs/{config.stage}"
    logging.info(
        "devices: %d (%s), processes: %d",
        jax.device_count(),
        jax.devices()[0].platform,
        jax.process_count(),
    )
    if jax.devices()[0].platform == "cpu":
        if hint := allocator.cpu_launch_hint():
            logging.info(hint)
        if config.model.bf16_matmuls and (hint := cpu_features.bf16_matmul_hint()):
            logging.warning(hint)
        if config.model.d_model >= 384:
            logging.warning(
                "paper-size model on CPU: expect slow steps; "
                "configs/<stage>.py:cpu is the CPU variant"
            )
    try:
        metrics = train_and_evaluate(
            config, workdir, task_for(config), allow_config_change=_ALLOW_CONFIG_CHANGE.value
        )
    except ConfigChangedError as e:
        sys.exit(f"error: {e} Or add --allow_config_change to resume it under the new values.")
    if jax.process_index() == 0:
        print("final validation: " + json.dumps({k: round(v, 4) for k, v in metrics.items()}))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
