"""Model sizes shared by the experiment configs in configs/ (ml_collections)."""

from __future__ import annotations

import ml_collections

from trace_jax.model import EncoderConfig
from trace_jax.train import sharding

# paper: 6 layers, d=384, 6 heads, FFN 4d (~10.7M parameters) for accelerators.
# cpu: small enough to train on a 2-core CPU in minutes. tiny: tests (compiles in seconds).
ENCODER_SIZES = {
    "paper": dict(d_model=384, num_heads=6, num_layers=6, mlp_dim=1536),
    "cpu": dict(d_model=128, num_heads=4, num_layers=3, mlp_dim=512),
    "tiny": dict(d_model=32, num_heads=4, num_layers=2, mlp_dim=64),
}


def encoder(size: str, **overrides) -> ml_collections.ConfigDict:
    """An encoder config section: every EncoderConfig field, at one of ENCODER_SIZES."""
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(ENCODER_SIZES)}")
    fields = vars(EncoderConfig(**ENCODER_SIZES[size], **overrides))
    return ml_collections.ConfigDict(dict(fields))


def parse_arg(arg: str | None, allowed: tuple[str, ...]) -> str:
    """The variant named after ':' in --config=configs/x.py:<variant>; '' is the default."""
    arg = arg or ""
    if arg not in allowed:
        raise ValueError(f"unknown config variant {arg!r}; choose from {allowed}")
    return arg


def base_config(stage: str, arg: str | None) -> ml_collections.ConfigDict:
    """Sections every training config shares: model, data, train, mesh.

    Variants: '' paper size for accelerators, 'cpu' a 2-core CPU in minutes, 'tiny' tests.
    """
    variant = parse_arg(arg, ("", "cpu", "tiny"))
    pick = lambda paper, cpu, tiny: {"": paper, "cpu": cpu, "tiny": tiny}[variant]
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.seed = 0
    # level_embedding is our addition (off in the paper): on Weather-Captioned it lifts
    # text->series hit@10 from 13% to 58% (README), since captions state absolute levels.
    c.model = encoder(pick("paper", "cpu", "tiny"), num_channels=64, level_embedding=True)

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic"  # or weather_captioned, time_mmd (built TFDS data sets)
    c.data.data_dir = ""  # where `python -m trace_jax.data.build` put the data set
    c.data.builder_config = ""  # TFDS builder config name ('' = the builder's default)
    c.data.train_split = "train"
    c.data.validation_split = "validation"
    c.data.num_synthetic_train = pick(20000, 4000, 64)
    c.data.num_synthetic_validation = pick(1000, 500, 32)
    # Grain worker processes decoding batches; -1: none on a CPU, half the cores (at most 8)
    # beside an accelerator (trace_jax.data.pipeline.resolve_worker_count).
    c.data.worker_count = -1
    c.data.text_cache_dir = ""  # '' = ~/.cache/trace_jax (or $TRACE_JAX_CACHE)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = pick(256, 64, 16)
    c.train.steps = pick(20000, 1500, 6)
    c.train.learning_rate = pick(1e-4, 5e-4, 1e-3)
    c.train.warmup_steps = pick(1000, 100, 2)
    c.train.weight_decay = 0.05
    c.train.grad_clip = 5.0
    c.train.log_every = pick(100, 50, 2)
    c.train.eval_every = pick(2000, 500, 3)
    c.train.checkpoint_every = pick(2000, 500, 3)
    c.train.keep_checkpoints = 3

    # Host devices JAX splits the CPU into (jax_num_cpu_devices; 0: its default, one, or
    # XLA_FLAGS' --xla_force_host_platform_device_count); the mesh's batch axes span them.
    # XLA:CPU runs a batched product (attention's per-channel ones) on one thread, so with
    # one device per core both cores work through them: 1.16-1.31x on the paper-size bf16
    # pretraining step on 2 cores, no change at the :cpu size (BENCHMARKS.md). Accelerators
    # ignore it.
    c.cpu_devices = 0

    # Mesh axis sizes (-1: all remaining devices). The batch splits over data x fsdp;
    # parameters over fsdp (their embed dimension) and model (FFN hidden width, heads).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    c.sharding = ml_collections.ConfigDict()
    # Logical axis name -> mesh axes, for parameters (trace_jax/model/partitioning.py) and
    # activation constraints alike; a name without a rule is never split.
    c.sharding.rules = sharding.DEFAULT_RULES
    c.sharding.min_sharded_size = sharding.MIN_SHARDED_SIZE  # smaller parameters replicate
    return c
