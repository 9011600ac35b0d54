"""The shared loop end to end on tiny configs: training, sharding equivalence, exact resume."""

import dataclasses
import json
import multiprocessing
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags

from tests.helpers import REPO, TASKS, read_params, subprocess_env, tiny_config
from tests.test_encoder import TINY, awkward_inputs
from trace_jax.data import pipeline
from trace_jax.data.sources import load_sources
from trace_jax.model.partitioning import logical_axes
from trace_jax.train import sharding as shard_lib
from trace_jax.train.align import AlignTask
from trace_jax.train.checkpoint import Checkpointer
from trace_jax.train.loop import initial_state, build_trainer, example_batch, train_and_evaluate
from trace_jax.model.heads import AlignModel
from trace_jax.train.losses import masked_reconstruction_loss, patches_to_reconstruct
from trace_jax.forecast.models import ClassifierModel
from trace_jax.train.state import head_and_last_blocks, make_optimizer


@pytest.mark.parametrize("stage", ["align", "pretrain"])
def test_tiny_run_trains_evaluates_and_checkpoints(stage, tmp_path, text_cache_dir):
    config = tiny_config(stage, text_cache_dir)
    if stage == "align":  # long enough to show that it learns
        config.train.update(steps=150, log_every=25, warmup_steps=20)
    metrics = train_and_evaluate(config, tmp_path, TASKS[stage](config))
    if stage == "align":
        for key in ("t2s_hit@1", "t2s_hit@10", "t2s_mrr", "s2t_hit@1", "s2t_hit@10", "s2t_mrr"):
            assert 0.0 <= metrics[key] <= 1.0
    else:
        assert np.isfinite(metrics["masked_mse"]) and metrics["masked_mse"] > 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert any('"train/loss"' in line for line in lines)
    assert any('"validation/' in line for line in lines)
    assert any(p.name.startswith("events") for p in (tmp_path / "tensorboard").iterdir())
    step, params = read_params(tmp_path, config)
    assert step == config.train.steps
    if stage == "align":
        # Learning, not just running: the loss falls, the batch's pairs are found well above
        # chance (1 in 16), and the encoder itself moved (not only the projection heads).
        train = [json.loads(line) for line in lines if '"train/loss"' in line]
        assert train[-1]["train/loss"] < 0.6 * train[0]["train/loss"]
        assert train[-1]["train/sample_acc_t2s"] > 3 / config.train.batch_size
        initial = initial_params(config, TASKS[stage](config))["model"]["encoder"]
        for name in ("block_0", "patch_embed"):
            # Relative change; absolute for leaves initialised at zero (biases).
            moved = [
                np.abs(a - b).max() / (np.abs(b).max() or 1.0)
                for a, b in zip(
                    jax.tree.leaves(params["model"]["encoder"][name]),
                    jax.tree.leaves(initial[name]),
                )
            ]
            assert min(moved) > 1e-3, name
    # Rerunning a finished run resumes at the end, trains nothing and reports the same metrics.
    assert train_and_evaluate(config, tmp_path, TASKS[stage](config)) == metrics


def initial_params(config, task):
    """The parameters a run of `config` starts from, as numpy arrays."""
    mesh = shard_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
    example = example_batch(load_sources(config.data)[0])
    with jax.set_mesh(mesh):
        state = build_trainer(config, task, mesh, example).init(example)
    return jax.tree.map(np.asarray, state["params"])


def three_steps(config, task, devices, mesh_axes):
    mesh = shard_lib.make_mesh(mesh_axes, devices=devices)
    train_source, _ = load_sources(config.data)
    example = example_batch(train_source)
    trainer = build_trainer(config, task, mesh, example)
    batches = pipeline.make_train_iterator(
        train_source,
        global_batch_size=config.train.batch_size,
        seed=0,
        sharding=trainer.batch_sharding,
        require_text=task.requires_text,
    )
    with jax.set_mesh(mesh):
        state = trainer.init(example)
        losses = []
        for _ in range(3):
            state, metrics = trainer.step(state, next(batches))
            losses.append(float(metrics["loss"]))
    return np.array(losses), jax.tree.map(np.asarray, state["params"])


@pytest.mark.parametrize("stage", ["align", "pretrain"])
def test_sharded_steps_match_one_device(stage, text_cache_dir):
    config = tiny_config(stage, text_cache_dir)
    config.sharding.min_sharded_size = 0  # split even the tiny model's parameters
    task = TASKS[stage](config)
    ref_losses, ref_params = three_steps(config, task, jax.devices()[:1], {"data": 1})
    for axes in ({"data": 8}, {"data": 2, "fsdp": 4}, {"data": 2, "fsdp": 2, "model": 2}):
        losses, params = three_steps(config, task, jax.devices(), axes)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=str(axes))
        # Relative difference of the whole parameter vector. Per leaf it is meaningless for
        # biases whose exact gradient is ~0 (e.g. the key bias: softmax ignores a per-query
        # constant): Adam scales their rounding noise up to learning-rate-sized steps.
        diff = np.sqrt(
            sum(
                np.sum((a - b) ** 2)
                for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params))
            )
        )
        norm = np.sqrt(sum(np.sum(b**2) for b in jax.tree.leaves(ref_params)))
        assert diff / norm <= 1e-5, (axes, diff / norm)


def test_logical_axis_rules_lay_out_parameters_and_adam_moments(text_cache_dir):
    config = tiny_config("align", text_cache_dir)
    config.model.update(d_model=128, mlp_dim=256)
    task = AlignTask(config)
    mesh = shard_lib.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    train_source, _ = load_sources(config.data)
    trainer = build_trainer(config, task, mesh, example_batch(train_source))
    state = trainer.abstract_state
    block = state["params"]["model"]["encoder"]["block_0"]
    P = jax.sharding.PartitionSpec
    assert block["mlp"]["fc1"]["kernel"].sharding.spec == P("fsdp", "model")
    assert block["mlp"]["fc2"]["kernel"].sharding.spec == P("model", "fsdp")
    assert block["attention"]["query"]["kernel"].sharding.spec == P("fsdp", "model")
    assert block["attention"]["out"]["kernel"].sharding.spec == P("model", "fsdp")
    assert block["mlp_norm"]["scale"].sharding.spec == P()  # small: replicated
    adam = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(state["opt_state"])
        if "block_0" in jax.tree_util.keystr(path)
        and "fc1" in jax.tree_util.keystr(path)
        and "kernel" in jax.tree_util.keystr(path)
    ]
    assert len(adam) == 2 and all(m.sharding.spec == P("fsdp", "model") for m in adam)
    # A rule set that maps embed nowhere leaves the FSDP axis unused.
    config.sharding.rules = (("batch", ("data", "fsdp")), ("mlp", "model"))
    trainer = build_trainer(config, task, mesh, example_batch(train_source))
    fc1 = trainer.abstract_state["params"]["model"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == P(None, "model")


def test_unnamed_matrix_parameters_are_refused():
    with pytest.raises(ValueError, match="no logical axes"):
        logical_axes("model/encoder/new_layer/kernel", 2)
    assert logical_axes("model/encoder/new_layer/bias", 1) == (None,)


def tuned_layer_updates(scan_layers, num_layers=3, tune_last_blocks=1):
    """Two optimizer steps of light tuning on a classifier: {layer or part: sorted list of each
    parameter's max |change|}."""
    cfg = dataclasses.replace(TINY, num_layers=num_layers, scan_layers=scan_layers)
    model = ClassifierModel(cfg, num_classes=3)
    series, observed = awkward_inputs(2, 3, 16, seed=0)
    batch = {"series": series, "observed": observed, "channel_ids": np.zeros((2, 3), np.int32)}
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch)["params"]
    params = {"model": jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)}
    train = tiny_config("classify", "unused").train
    optimizer = make_optimizer(
        train, lambda p: head_and_last_blocks(p, num_layers, tune_last_blocks)
    )
    opt_state, new = optimizer.init(params), params
    for _ in range(2):  # the first step's learning rate is warmup's 0
        grads = jax.tree.map(jnp.ones_like, new)
        updates, opt_state = optimizer.update(grads, opt_state, new)
        new = optax.apply_updates(new, updates)
    change = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)), new, params)
    encoder = change["model"].pop("encoder")
    per_leaf = lambda tree, take=lambda x: x: sorted(
        float(take(x).max()) for x in jax.tree.leaves(tree)
    )
    out = {"head": per_leaf(change["model"])}
    for i in range(num_layers):
        out[f"block_{i}"] = (
            per_leaf(encoder["blocks"], lambda x: x[i])
            if scan_layers
            else per_leaf(encoder[f"block_{i}"])
        )
    encoder.pop("blocks", None)
    for i in range(num_layers):
        encoder.pop(f"block_{i}", None)
    out["rest of the encoder"] = per_leaf(encoder)
    return out


def test_light_tuning_trains_only_the_last_blocks_scanned_or_not():
    """tune_last_blocks must also work on stacked (model.scan_layers) blocks, where a leaf
    holds every layer: the frozen layers stay put (no update, no weight decay) and the tuned
    one moves exactly as it does with one leaf per block (same clipping norm, and weight decay
    on the same parameters: matrices, not biases or norm scales)."""
    looped, scanned = tuned_layer_updates(False), tuned_layer_updates(True)
    for change in (looped, scanned):
        assert min(change["head"]) > 0 and min(change["block_2"]) > 0
        for frozen in ("block_0", "block_1", "rest of the encoder"):
            assert max(change[frozen]) == 0, frozen
    for part in ("head", "block_2"):
        np.testing.assert_allclose(scanned[part], looped[part], rtol=1e-6)
    # Weight decay adds lr * wd * 1 to the updates of matrices only.
    assert len(set(looped["block_2"])) == 2


def main_command(workdir, text_cache_dir, steps):
    return [
        sys.executable,
        "-m",
        "trace_jax.main",
        "--config=configs/align.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.text_cache_dir={text_cache_dir}",
        f"--config.train.steps={steps}",
        "--config.train.checkpoint_every=4",
        "--config.train.eval_every=1000",
        "--config.train.log_every=1000",
    ]


def wait_for_checkpoint(workdir, step, proc, timeout=300):
    target = pathlib.Path(workdir) / "checkpoints" / str(step)
    deadline = time.time() + timeout
    while not target.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def test_sigkill_then_rerun_ends_bitwise_equal(tmp_path, text_cache_dir):
    steps = 40
    env = subprocess_env(2)
    subprocess.run(
        main_command(tmp_path / "whole", text_cache_dir, steps),
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        main_command(killed, text_cache_dir, steps),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(killed, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    config = tiny_config("align", text_cache_dir)
    stopped_at, _ = read_params(killed, config)
    assert stopped_at < steps, "the run finished before it could be killed"
    subprocess.run(
        main_command(killed, text_cache_dir, steps),
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    step_a, whole = read_params(tmp_path / "whole", config)
    step_b, resumed = read_params(killed, config)
    assert step_a == step_b == steps
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_sigterm_leaves_a_complete_checkpoint(tmp_path, text_cache_dir):
    env = subprocess_env(2)
    proc = subprocess.Popen(
        main_command(tmp_path, text_cache_dir, 400),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(tmp_path, 4, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    step, params = read_params(tmp_path, tiny_config("align", text_cache_dir))
    assert 4 <= step < 400
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_cpu_devices_splits_the_host_into_that_many_devices(tmp_path, text_cache_dir):
    env = subprocess_env(None)

    def run(n):
        command = [*main_command(tmp_path / str(n), text_cache_dir, 2), f"--config.cpu_devices={n}"]
        return subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, check=False
        )

    refused = run(3)  # the tiny config's batch of 16 does not split over 3 devices
    assert refused.returncode != 0
    assert "batch_size 16 is not divisible by the 3 devices" in refused.stderr
    negative = run(-1)
    assert negative.returncode != 0 and "cpu_devices must be >= 0" in negative.stderr
    finished = run(4)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "final validation" in finished.stdout


def test_alignment_starts_from_a_pretraining_checkpoint(tmp_path, text_cache_dir):
    pretrain = tiny_config("pretrain", text_cache_dir)
    train_and_evaluate(pretrain, tmp_path / "pretrain", TASKS["pretrain"](pretrain))
    _, pretrained = read_params(tmp_path / "pretrain", pretrain)

    config = tiny_config("align", text_cache_dir)
    config.align.init_from = str(tmp_path / "pretrain")
    config.align.reconstruction_weight = 0.5  # so the reconstruction head is taken over too
    task = AlignTask(config)
    source, _ = load_sources(config.data)
    example = example_batch(source)
    trainer = build_trainer(config, task, shard_lib.make_mesh(config.mesh), example)
    checkpointer = Checkpointer(tmp_path / "align", keep=1, every=1)
    with jax.set_mesh(trainer.mesh):
        state = initial_state(task, trainer, example, checkpointer, train_iter=None)
    checkpointer.close()
    for name in ("encoder", "reconstruction"):
        started = jax.tree.map(np.asarray, state["params"]["model"][name])
        for a, b in zip(jax.tree.leaves(started), jax.tree.leaves(pretrained["model"][name])):
            np.testing.assert_array_equal(a, b)


def test_alignment_with_cross_attention_reconstruction_and_learned_temperature(
    tmp_path, text_cache_dir
):
    config = tiny_config("align", text_cache_dir, steps=3, log_every=1)
    config.align.cross_attention_heads = 2
    config.align.reconstruction_weight = 0.5
    config.align.learn_temperature = True
    metrics = train_and_evaluate(config, tmp_path, AlignTask(config))
    assert 0.0 <= metrics["t2s_mrr"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert len(train) == 3
    # The temperature trains (the first step's learning rate is warmup's 0) and is checkpointed.
    assert train[0]["train/temperature"] == pytest.approx(config.align.temperature)
    assert train[-1]["train/temperature"] != pytest.approx(config.align.temperature, rel=1e-6)
    for r in train:
        assert 0 < r["train/recon_loss"] < 100 and r["train/n_masked_points"] > 0
        expected = r["train/sample_loss"] + r["train/channel_loss"] + 0.5 * r["train/recon_loss"]
        np.testing.assert_allclose(r["train/loss"], expected, rtol=1e-5)
    _, params = read_params(tmp_path, config)
    assert "cross_attention" in params["model"] and "reconstruction" in params["model"]
    assert np.exp(params["log_temperature"]) != pytest.approx(train[-1]["train/temperature"])


def test_pretraining_with_the_auxiliary_class_term(tmp_path, text_cache_dir):
    config = tiny_config("pretrain", text_cache_dir, steps=2, log_every=1)
    config.pretrain.num_classes = 3  # the synthetic set's labels
    train_and_evaluate(config, tmp_path, TASKS["pretrain"](config))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    label_losses = [r["train/label_loss"] for r in records if "train/label_loss" in r]
    assert len(label_losses) == 2 and all(0 < v < 10 for v in label_losses)
    assert all(r["train/loss"] > r["train/label_loss"] for r in records if "train/loss" in r)


def test_grain_worker_processes_feed_the_same_run_and_stop_with_it(tmp_path, text_cache_dir):
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # Grain multiprocessing reads absl flags
    losses = {}
    for workers in (0, 1):
        config = tiny_config("pretrain", text_cache_dir, steps=2, log_every=1)
        config.data.worker_count = workers
        train_and_evaluate(config, tmp_path / str(workers), TASKS["pretrain"](config))
        lines = (tmp_path / str(workers) / "metrics.jsonl").read_text().splitlines()
        losses[workers] = [r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r]
        assert not multiprocessing.active_children()
    assert len(losses[1]) == 2 and losses[1] == losses[0]


def test_pretraining_loss_on_the_masked_patches_alone_equals_the_full_models(tmp_path):
    """The step runs the last block and the head for the masked patches only; its loss and
    gradients equal those of the encoder run for every patch."""
    config = tiny_config("pretrain", tmp_path)
    config.model.dropout = 0.0  # the two paths draw dropout masks of different shapes
    config.pretrain.num_classes = 0
    task = TASKS["pretrain"](config)
    series, observed = awkward_inputs(4, 3, 30, seed=9)
    batch = {
        "series": jnp.asarray(series),
        "observed": jnp.asarray(observed),
        "channel_ids": jnp.broadcast_to(jnp.arange(3, dtype=jnp.int32), (4, 3)),
    }
    params = task.init_params(jax.random.key(0), batch)
    rng = jax.random.key(5)

    def full_loss(params):
        mask_rng, dropout_rng = jax.random.split(rng)
        mask = task._mask(mask_rng, batch)
        out = task._apply(params, batch, mask, deterministic=False, rngs={"dropout": dropout_rng})
        return masked_reconstruction_loss(
            out["reconstruction"], out["patches"], out["patch_observed"], mask
        )

    (loss, metrics), grads = jax.value_and_grad(lambda p: task.loss(p, batch, rng), has_aux=True)(
        params
    )
    (want, want_metrics), want_grads = jax.value_and_grad(full_loss, has_aux=True)(params)
    assert metrics["n_masked_points"] == want_metrics["n_masked_points"] > 0
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * np.abs(b).max())


def test_alignment_reconstruction_at_the_query_patches_equals_the_full_models():
    """With a reconstruction term, the alignment model reconstructs only the query patches:
    the same values there, and the same embeddings."""
    cfg = dataclasses.replace(TINY, num_layers=2)
    series, observed = awkward_inputs(2, 3, 20, seed=10)
    batch = {
        "series": jnp.asarray(series),
        "observed": jnp.asarray(observed),
        "channel_ids": jnp.broadcast_to(jnp.arange(3, dtype=jnp.int32), (2, 3)),
        "text_embedding": jnp.ones((2, 384)),
        "channel_text_embedding": jnp.ones((2, 3, 384)),
        "channel_text_valid": jnp.ones((2, 3), bool),
    }
    model = AlignModel(cfg, reconstruct=True)
    params = model.init(jax.random.key(0), batch)
    mask = np.zeros((2, 3, 5), bool)
    mask[:, :, 2] = True
    query, query_masked = patches_to_reconstruct(mask, 0.3)
    assert (np.asarray(query_masked).sum(-1) == 1).all()  # the one masked patch, and a pad
    full = model.apply(params, batch, mask)
    part = model.apply(params, batch, mask, query_patches=query)
    pick = lambda x: np.take_along_axis(np.asarray(x), np.asarray(query)[..., None], axis=2)
    for key in ("reconstruction", "patches", "patch_observed"):
        np.testing.assert_allclose(part[key], pick(full[key]), rtol=0, atol=2e-6)
    for key in ("sample", "channels", "text", "channel_text"):
        np.testing.assert_allclose(part[key], full[key], rtol=0, atol=2e-6)
