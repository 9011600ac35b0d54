"""Every experiment config loads in each variant, builds its model, and rejects typos."""

import pathlib
import subprocess
import sys

import importlib.util

import pytest

from trace_jax.model import EncoderConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py"))


def load(name, arg):
    spec = importlib.util.spec_from_file_location(name[:-3], REPO / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "cpu", "tiny"])
def test_config_variants_build_a_valid_encoder(name, arg):
    config = load(name, arg)
    assert config.stage
    if config.stage == "export":  # exports take the model of the run they export
        assert set(config.export) >= {"output", "channels", "time_steps", "platforms"}
    else:
        EncoderConfig.from_mapping(config.model.to_dict())


def test_docstrings_hold_the_run_command():
    for name in CONFIGS:
        text = (REPO / "configs" / name).read_text()
        assert f"python -m trace_jax.main --config=configs/{name}" in text, name


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown config variant 'tyni'"):
        load("align.py", "tyni")


def test_override_typo_names_the_key():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trace_jax.main",
            "--config=configs/align.py:tiny",
            "--config.train.batch_sise=64",
            "--workdir=/nonexistent",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "batch_sise" in result.stderr
    assert "batch_size" in result.stderr  # the suggestion
