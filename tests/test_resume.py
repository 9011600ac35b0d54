"""Resuming a workdir: only a config that differs in how long or where the run goes on may
continue a checkpoint; any other change is refused, naming the keys, before anything is written."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO, TASKS, read_params, subprocess_env, tiny_config
from trace_jax.train.checkpoint import ABSENT, config_changes
from trace_jax.train.loop import ConfigChangedError, train_and_evaluate


def test_config_changes_names_what_differs_but_how_long_and_where_the_run_goes_on():
    saved = {
        "seed": 0,
        "train": {"steps": 6, "learning_rate": 1e-3, "log_every": 2},
        "mesh": {"data": -1, "fsdp": 1},
        "sharding": {"rules": [["embed", "fsdp"]]},
        "data": {"worker_count": -1, "text_cache_dir": "/a", "name": "synthetic"},
        "cpu_devices": 0,
        "model": {"d_model": 32, "gone": True},
    }
    current = {
        "seed": 0,
        "train": {"steps": 60, "learning_rate": 2e-3, "log_every": 1},
        "mesh": {"data": 2, "fsdp": 4},
        "sharding": {"rules": (("embed", None),)},
        "data": {"worker_count": 2, "text_cache_dir": "/b", "name": "weather_captioned"},
        "cpu_devices": 2,
        "model": {"d_model": 32, "new": 1},
    }
    assert config_changes(saved, current) == {
        "data.name": ("synthetic", "weather_captioned"),
        "model.gone": (True, ABSENT),
        "model.new": (ABSENT, 1),
        "train.learning_rate": (1e-3, 2e-3),
    }
    # Compared as saved, in JSON: a tuple is the list it was saved as.
    assert config_changes({"model": {"shape": [1, 2]}}, {"model": {"shape": (1, 2)}}) == {}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, text_cache_dir):
    """A finished tiny alignment run: (workdir, its config, its final metrics)."""
    workdir = tmp_path_factory.mktemp("finished")
    config = tiny_config("align", text_cache_dir, steps=2)
    return workdir, config, train_and_evaluate(config, workdir, TASKS["align"](config))


def workdir_files(workdir):
    return {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}


def test_a_changed_config_is_refused_naming_the_keys_and_writing_nothing(finished):
    workdir, config, _ = finished
    before = workdir_files(workdir)
    changed = tiny_config("align", config.data.text_cache_dir, steps=2, learning_rate=2e-3)
    changed.align.channel_weight = 0.0
    with pytest.raises(ConfigChangedError) as refused:
        train_and_evaluate(changed, workdir, TASKS["align"](changed))
    message = str(refused.value)
    assert "align.channel_weight: 1.0 -> 0.0" in message
    assert "train.learning_rate: 0.001 -> 0.002" in message
    assert "(step 2)" in message and str(workdir) in message
    assert workdir_files(workdir) == before


def test_more_steps_and_another_cadence_mesh_and_input_resume_the_run(finished, tmp_path):
    workdir, config, _ = finished
    extended = tiny_config(
        "align", config.data.text_cache_dir, steps=4, log_every=1, eval_every=4, keep_checkpoints=2
    )
    extended.mesh.data, extended.mesh.fsdp = 2, 4
    extended.data.worker_count = 0
    # Into a copy, so the finished run stays as it was for the other tests.
    copy = tmp_path / "extended"
    shutil.copytree(workdir, copy)
    train_and_evaluate(extended, copy, TASKS["align"](extended))
    steps = [json.loads(line)["step"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert steps[-3:] == [3, 4, 4]  # training logs of steps 3 and 4, then validation at 4
    assert read_params(copy, extended)[0] == 4


def test_allow_config_change_resumes_a_changed_config(finished):
    workdir, config, metrics = finished
    changed = tiny_config("align", config.data.text_cache_dir, steps=2, learning_rate=2e-3)
    # A finished run re-evaluates its last checkpoint: the learning rate changes nothing there.
    resumed = train_and_evaluate(
        changed, workdir, TASKS["align"](changed), allow_config_change=True
    )
    assert resumed == metrics


def test_the_command_line_refuses_a_changed_rerun_and_says_how_to_allow_it(finished):
    workdir, config, _ = finished
    command = [
        sys.executable,
        "-m",
        "trace_jax.main",
        "--config=configs/align.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.text_cache_dir={config.data.text_cache_dir}",
        "--config.train.steps=2",
        "--config.align.temperature=0.05",
    ]
    env = subprocess_env(None)
    refused = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert (
        "align.temperature: 0.07 -> 0.05" in refused.stderr
        and "--allow_config_change" in refused.stderr
    )
    allowed = subprocess.run(
        [*command, "--allow_config_change"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "final validation" in allowed.stdout


def test_a_forecasting_head_of_another_encoder_is_refused(text_cache_dir):
    """The forecasting suite keys workdirs by data set and model: a rerun with another
    --encoder_from must not restore the first encoder's head."""

    def config(model, encoder_from):
        config = tiny_config("forecast", text_cache_dir)
        config.forecast.model, config.forecast.encoder_from = model, encoder_from
        return config.to_dict()

    assert config_changes(config("trace", "runs/a"), config("trace", "runs/b")) == {
        "forecast.encoder_from": ("runs/a", "runs/b")
    }
