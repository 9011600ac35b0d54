"""Test set-up: 8 fake CPU devices, unoptimised machine code and the persistent compilation
cache.

All must be in place before JAX initialises its backend, so they are set at import time here,
in the environment, where the suite's child processes (trace_jax.main, launch/local.py) read
them too.

The suite compiles far more than it runs: each tiny training step takes 0.02 s and its
compilation 12 s, most of it LLVM optimising ~800 kernels. At LLVM -O0 the same compilation
takes 7 s, and the suite took about a fifth less time (BENCHMARKS.md, "Test-suite time").
What the tests check (outputs against references within tolerances, runs against each other
bit for bit) does not depend on how well XLA's kernels are optimised; the benchmarks and
`make run` use the default level.
"""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ["XLA_FLAGS"] = " ".join(
    (
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=8",
        "--xla_backend_optimization_level=0",
    )
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def text_cache_dir(tmp_path_factory):
    """One text-embedding cache for the session's tests on the synthetic set: its captions are
    embedded by the real text model once per test process (about 6 s), not once per test."""
    return str(tmp_path_factory.mktemp("text_cache"))


@pytest.fixture(scope="session")
def aligned_workdir(tmp_path_factory, text_cache_dir):
    """A tiny alignment run on the synthetic set (2 steps): the trained model that the API,
    index, search, evaluation and downstream-head tests load. Read-only for them."""
    from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
    from trace_jax.train.align import AlignTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top

    workdir = tmp_path_factory.mktemp("aligned")
    config = tiny_config("align", text_cache_dir, steps=2)
    train_and_evaluate(config, workdir, AlignTask(config))
    return workdir
