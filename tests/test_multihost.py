"""A real multi-process job: 2 processes x 4 CPU devices through launch/local.py."""

import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np

from tests.helpers import REPO, read_params, subprocess_env, tiny_config
from trace_jax.distributed import with_host_device_count


def losses(workdir):
    out = {}
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            out[record["step"]] = record["train/loss"]
    return out


def run(workdir, cache, processes, devices):
    main_args = [
        "--config=configs/align.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.text_cache_dir={cache}",
        "--config.train.steps=6",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=3",
        "--config.train.eval_every=6",
    ]
    if processes == 1:
        cmd = [sys.executable, "-m", "trace_jax.main", *main_args]
        result = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=subprocess_env(devices)
        )
    else:
        cmd = [
            sys.executable,
            "launch/local.py",
            f"--num_processes={processes}",
            f"--devices_per_process={devices}",
            "--",
            *main_args,
        ]
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_two_processes_train_checkpoint_restore_and_match_one_process(tmp_path, text_cache_dir):
    single = run(tmp_path / "single", text_cache_dir, 1, 8)
    assert "final validation" in single
    multi = tmp_path / "multi"
    out = run(multi, text_cache_dir, 2, 4)
    assert "[0] final validation" in out
    np.testing.assert_allclose(
        list(losses(multi).values()), list(losses(tmp_path / "single").values()), rtol=1e-5
    )
    config = tiny_config("align", text_cache_dir)
    _, whole = read_params(multi, config)
    # Restore: drop the final checkpoint and rerun; both processes resume at step 3.
    shutil.rmtree(multi / "checkpoints" / "6")
    (multi / "metrics.jsonl").unlink()
    run(multi, text_cache_dir, 2, 4)
    assert sorted(losses(multi)) == [4, 5, 6]
    step, resumed = read_params(multi, config)
    assert step == 6
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_child_processes_keep_the_callers_xla_flags_with_their_own_device_count():
    flags = "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=8 --xla_cpu_foo=1"
    assert with_host_device_count(flags, 4) == (
        "--xla_dump_to=/tmp/d --xla_cpu_foo=1 --xla_force_host_platform_device_count=4"
    )
    assert with_host_device_count(flags, None) == "--xla_dump_to=/tmp/d --xla_cpu_foo=1"
    assert with_host_device_count("", 2) == "--xla_force_host_platform_device_count=2"


def test_the_launcher_stops_the_others_as_soon_as_one_process_fails():
    spec = importlib.util.spec_from_file_location("local_launcher", REPO / "launch" / "local.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)

    def python(code):
        return subprocess.Popen([sys.executable, "-c", code])

    assert launcher.wait_for_all([python("pass"), python("import time; time.sleep(1)")]) == 0
    # Process 0 would run for ten minutes (as one blocked on its failed peer would, forever).
    blocked = python("import time; time.sleep(600)")
    failing = python("import sys, time; time.sleep(1); sys.exit(3)")
    start = time.monotonic()
    assert launcher.wait_for_all([blocked, failing], timeout=300) == 3
    assert time.monotonic() - start < 60
    assert blocked.poll() is not None, "process 0 was left running"
