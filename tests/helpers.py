"""Shared by the tests: tiny configs, reading parameters back from a workdir, child-process
environments, and where the real data sets are."""

import importlib.util
import os
import pathlib

import jax
import numpy as np

from trace_jax.distributed import with_host_device_count
from trace_jax.train import sharding as shard_lib
from trace_jax.train.align import AlignTask
from trace_jax.train.checkpoint import Checkpointer
from trace_jax.train.classify import ClassifyTask
from trace_jax.train.forecast import ForecastTask
from trace_jax.train.loop import build_trainer, example_batch, task_sources
from trace_jax.train.pretrain import PretrainTask

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TASKS = {
    "align": AlignTask,
    "pretrain": PretrainTask,
    "forecast": ForecastTask,
    "classify": ClassifyTask,
}


def subprocess_env(host_devices: int | None) -> dict[str, str]:
    """This process's environment for a child JAX process with `host_devices` fake CPU devices
    (None: JAX's default); the suite's other XLA flags and compilation cache carry over."""
    flags = with_host_device_count(os.environ.get("XLA_FLAGS", ""), host_devices)
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


def tiny_config(stage, text_cache_dir, **train):
    spec = importlib.util.spec_from_file_location(stage, REPO / "configs" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.data.text_cache_dir = str(text_cache_dir)
    config.train.update(train)
    return config


def read_params(workdir, config):
    """(latest step, numpy params) of a run, restored onto this process's first device.

    Goes through the trainer's own restore path, so it also works for checkpoints written by
    another mesh or another number of processes.
    """
    task = TASKS[config.stage](config)
    mesh = shard_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
    source, _ = task_sources(config, task)
    trainer = build_trainer(config, task, mesh, example_batch(source))
    checkpointer = Checkpointer(pathlib.Path(workdir) / "checkpoints", keep=100, every=1)
    step = checkpointer.latest_step()
    state = checkpointer.restore(trainer.abstract_state)
    checkpointer.close()
    return step, jax.tree.map(np.asarray, state["params"])


def missing_shared_data(path: pathlib.Path) -> bool:
    """True where the real data set at `path` (under ../shared/data) is absent and its tests
    may skip: a developer's machine without ../shared. CI always has it beside the clone, and
    `.ci/run` sets TRACE_JAX_REQUIRE_DATA=1: there its absence is an error, so the data tests
    cannot all skip while the run stays green."""
    if path.is_dir():
        return False
    if os.environ.get("TRACE_JAX_REQUIRE_DATA"):
        raise FileNotFoundError(f"{path} is missing: CI runs with ../shared/data beside the clone")
    return True
