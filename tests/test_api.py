"""trace_jax.load on a workdir and on an export; the serialized embed_series; bad inputs;
models trained with the GPU-only Pallas attention, loaded and exported off a GPU."""

import dataclasses
import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trace_jax
from tests.helpers import read_params, tiny_config
from trace_jax import cpu_features
from trace_jax.data.sources import load_sources
from trace_jax.api import TraceModel
from trace_jax.export import export_model, load_embed_series
from trace_jax.model import EncoderConfig
from trace_jax.model.heads import AlignModel

# The smallest encoder 'pallas' accepts: bfloat16, head dimension 16.
PALLAS = EncoderConfig(
    patch_len=8,
    d_model=32,
    num_heads=2,
    num_layers=2,
    mlp_dim=64,
    num_channels=8,
    dtype="bfloat16",
    attention_impl="pallas",
)
XLA = dataclasses.replace(PALLAS, attention_impl="xla")


@pytest.fixture(scope="module")
def trained(aligned_workdir, text_cache_dir):
    """The shared tiny alignment workdir, its config and a few validation windows."""
    config = tiny_config("align", text_cache_dir, steps=2)
    _, validation = load_sources(config.data)
    windows = [validation[i] for i in range(5)]
    stack = lambda k: np.stack([w[k] for w in windows])
    return aligned_workdir, config, stack("series"), stack("observed"), stack("channel_ids")


def live_embeddings(workdir, config, series, observed, channel_ids, output="sample"):
    _, params = read_params(workdir, config)
    model = AlignModel(EncoderConfig.from_mapping(config.model.to_dict()))
    out = model.apply(
        {"params": params["model"]}, series, observed, channel_ids, method="embed_series"
    )
    return np.asarray(out[output])


def test_load_workdir_embeds_like_the_trained_model(trained):
    workdir, config, series, observed, channel_ids = trained
    model = trace_jax.load(workdir)
    model.batch_size = 2  # several batches, the last one padded
    got = model.embed_series(series, observed, channel_ids)
    np.testing.assert_allclose(
        got, live_embeddings(workdir, config, series, observed, channel_ids), atol=1e-5
    )
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_channel_embeddings_match_the_trained_model_and_flag_empty_channels(trained):
    workdir, config, series, observed, channel_ids = trained
    observed = observed.copy()
    observed[1, 0] = False  # window 1's first channel: nothing observed
    model = trace_jax.load(workdir)
    model.batch_size = 2
    channels, valid = model.embed_channels(series, observed, channel_ids)
    np.testing.assert_allclose(
        channels,
        live_embeddings(workdir, config, series, observed, channel_ids, output="channels"),
        atol=1e-5,
    )
    assert channels.shape == series.shape[:2] + (model.dim,)
    np.testing.assert_array_equal(valid, observed.any(-1))
    assert not valid[1, 0]
    np.testing.assert_allclose(np.linalg.norm(channels[valid], axis=-1), 1.0, rtol=1e-5)


def test_export_reloads_and_matches_the_live_model(trained, tmp_path):
    workdir, config, series, observed, channel_ids = trained
    live = live_embeddings(workdir, config, series, observed, channel_ids)
    model = trace_jax.load(workdir)
    export_model(
        model, tmp_path, channels=series.shape[1], time_steps=series.shape[2], platforms=("cpu",)
    )
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "weights.safetensors",
        "embed_series.jax_export",
    }
    reloaded = trace_jax.load(tmp_path)
    np.testing.assert_allclose(
        reloaded.embed_series(series, observed, channel_ids), live, atol=1e-5
    )
    serialized = load_embed_series(tmp_path)
    for n in (1, 5):  # the batch size is symbolic
        np.testing.assert_allclose(
            serialized(series[:n], observed[:n], channel_ids[:n]), live[:n], atol=1e-5
        )


def test_export_lowers_for_cpu_cuda_and_tpu(trained, tmp_path):
    workdir, _, series, _, _ = trained
    export_model(trace_jax.load(workdir), tmp_path, channels=series.shape[1], time_steps=96)
    exported = jax.export.deserialize(
        bytearray((tmp_path / "embed_series.jax_export").read_bytes())
    )
    assert exported.platforms == ("cpu", "cuda", "tpu")


def test_bad_inputs_get_clear_errors(trained, tmp_path):
    workdir, _, series, observed, _ = trained
    model = trace_jax.load(workdir)
    with pytest.raises(ValueError, match="no observed finite value"):
        model.embed_series(np.full(series.shape, np.nan, np.float32))
    with pytest.raises(ValueError, match="no observed finite value"):
        model.embed_series(series, np.zeros_like(observed))
    with pytest.raises(ValueError, match=r"\(N, C, T\)"):
        model.embed_series(series[0, 0])
    with pytest.raises(ValueError, match="empty"):
        model.embed_text(["rain", "  "])
    with pytest.raises(FileNotFoundError, match="neither an export"):
        trace_jax.load(tmp_path)


def test_channel_ids_are_checked_before_they_reach_the_encoder(trained):
    """Under jit an id past the CIT table would embed as zeros (one_hot) without a word."""
    workdir, config, series, observed, channel_ids = trained
    model = trace_jax.load(workdir)
    table = config.model.num_channels
    c = series.shape[1]
    for bad in (np.full(c, table), np.full(c, -1)):
        with pytest.raises(ValueError, match=rf"channel_ids must lie in \[0, {table}\)"):
            model.embed_series(series, observed, bad)
    with pytest.raises(ValueError, match="channel_ids must have shape"):
        model.embed_series(series, observed, channel_ids[:, :-1])
    with pytest.raises(ValueError, match="integers"):
        model.embed_series(series, observed, channel_ids.astype(np.float32))
    with pytest.raises(ValueError, match="the model knows"):
        model.embed_series(np.ones((2, table + 1, 16), np.float32))
    np.testing.assert_array_equal(  # one row of ids for every window
        model.embed_series(series, observed, channel_ids[0]),
        model.embed_series(series, observed, np.broadcast_to(channel_ids[0], channel_ids.shape)),
    )


def test_export_mode_of_the_main_command(trained, tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    workdir, config, series, observed, channel_ids = trained
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trace_jax.main",
            "--config=configs/export.py",
            f"--workdir={workdir}",
            f"--config.export.output={tmp_path / 'export'}",
            "--config.export.platforms=('cpu',)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"b x {series.shape[1]} x {series.shape[2]}" in out.stdout  # C, T of the run's data
    embed = load_embed_series(tmp_path / "export")
    np.testing.assert_allclose(
        embed(series, observed, channel_ids),
        live_embeddings(workdir, config, series, observed, channel_ids),
        atol=1e-5,
    )


@pytest.mark.filterwarnings("ignore:bf16_matmuls on a CPU without")  # on a CPU without them
def test_load_can_switch_the_matmul_precision(trained):
    workdir, config, series, observed, channel_ids = trained
    exact = trace_jax.load(workdir)
    rounded = trace_jax.load(workdir, bf16_matmuls=True)
    assert not exact.encoder_config.bf16_matmuls and rounded.encoder_config.bf16_matmuls
    a = exact.embed_series(series, observed, channel_ids)
    b = rounded.embed_series(series, observed, channel_ids)
    assert 0 < np.abs(a - b).max() < 0.05  # rounded, and still the same embedding
    np.testing.assert_allclose(np.sum(a * b, axis=1), 1.0, atol=1e-3)
    back = trace_jax.load(workdir, bf16_matmuls=False)
    np.testing.assert_array_equal(back.embed_series(series, observed, channel_ids), a)


def test_load_warns_of_bf16_matmuls_on_a_cpu_without_bfloat16_instructions(trained, monkeypatch):
    workdir = trained[0]
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.warns(UserWarning, match="AVX512-BF16"):
        trace_jax.load(workdir, bf16_matmuls=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace_jax.load(workdir)  # float32, as trained
        monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
        trace_jax.load(workdir, bf16_matmuls=True)


@pytest.fixture(scope="module")
def pallas_model():
    """A model as a GPU run with attention_impl='pallas' leaves it (weights at random)."""
    probe = {
        "series": jnp.zeros((1, 3, 32)),
        "observed": jnp.ones((1, 3, 32), bool),
        "channel_ids": jnp.zeros((1, 3), jnp.int32),
        "text_embedding": jnp.zeros((1, 384)),
        "channel_text_embedding": jnp.zeros((1, 3, 384)),
        "channel_text_valid": jnp.ones((1, 3), bool),
    }
    params = AlignModel(XLA).init(jax.random.key(0), probe)["params"]
    return TraceModel(PALLAS, params, source="a pallas run")


def pallas_inputs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 3, 32)).astype(np.float32), np.ones((4, 3, 32), bool)


def test_a_pallas_model_loads_with_xla_attention_off_a_gpu(pallas_model, tmp_path, caplog):
    pallas_model.save(tmp_path)
    with caplog.at_level(logging.INFO):
        model = trace_jax.load(tmp_path)
    assert model.encoder_config == XLA
    assert "attention_impl='pallas'" in caplog.text
    series, observed = pallas_inputs()
    reference = TraceModel(XLA, pallas_model.params).embed_series(series, observed)
    np.testing.assert_array_equal(model.embed_series(series, observed), reference)

    kept = trace_jax.load(tmp_path, attention_impl="pallas")  # asked for: as asked
    assert kept.encoder_config == PALLAS
    with pytest.raises(ValueError, match="runs on a GPU"):
        kept.embed_series(series, observed)
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        trace_jax.load(tmp_path, attention_impl="flash")


def test_a_pallas_model_exports_with_xla_attention(pallas_model, tmp_path):
    """For cuda too: jax.export refuses the Triton kernel (no compatibility guarantee)."""
    export_model(pallas_model, tmp_path, channels=3, time_steps=32)
    series, observed = pallas_inputs()
    reference = TraceModel(XLA, pallas_model.params).embed_series(series, observed)
    embed = load_embed_series(tmp_path)
    channel_ids = np.broadcast_to(np.arange(3, dtype=np.int32), (4, 3))
    np.testing.assert_allclose(embed(series, observed, channel_ids), reference, atol=1e-5)
