"""Test set-up: 8 fake CPU devices and the persistent compilation cache.

Both must be in place before JAX initialises its backend, so they are set at import time here.
"""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def aligned_workdir(tmp_path_factory):
    """A tiny alignment run on the synthetic set (2 steps): the trained model that the API,
    index, search, evaluation and downstream-head tests load. Read-only for them."""
    from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
    from trace_jax.train.align import AlignTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top

    workdir = tmp_path_factory.mktemp("aligned")
    config = tiny_config("align", tmp_path_factory.mktemp("text_cache"), steps=2)
    train_and_evaluate(config, workdir, AlignTask(config))
    return workdir
