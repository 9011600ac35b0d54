r"""Input pipeline throughput against the alignment step it feeds, on the same machine.

  .venv/bin/python benchmarks/input_pipeline.py                       # synthetic, align.py:cpu
  .venv/bin/python benchmarks/input_pipeline.py --data_name=weather_captioned --data_dir=DIR \
      [--worker_count 0,2] [--batch 256] [--decoder tfds] [--steps 0] [--split validation]

Both figures use the CPU alignment config (or --batch) as the global batch and every local
device: the pipeline rate includes assembling global jax.Arrays; the step rate is the jitted,
sharded align step after compilation (--steps 0 skips it). --worker_count adds Grain worker
processes (config.data.worker_count; a list measures each in turn); --decoder tfds reads a built
set through TFDS's own data source instead of trace_jax.data.record_source (the figure before
it). The last line is `pipeline_over_step=<ratio>` for the last worker count: how many times
faster batches arrive than the step consumes them (>1 means the step never waits for data), or
`pipeline_samples_per_s=<rate>` with --steps 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

import jax
from absl import flags

from trace_jax.data import pipeline, registry
from trace_jax.data.sources import load_sources
from trace_jax.train import sharding as shard_lib
from trace_jax.train.align import AlignTask
from trace_jax.train.loop import build_trainer, example_batch

REPO = pathlib.Path(__file__).resolve().parents[1]


def align_config(variant: str):
    spec = importlib.util.spec_from_file_location("align", REPO / "configs" / "align.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def rate(fn, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        out = fn()
    jax.block_until_ready(out)
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="cpu")
    parser.add_argument("--data_name", default="synthetic")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--split", default="", help="split to read (default: the config's train)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
    parser.add_argument("--worker_count", default="0", help="comma list, one figure each")
    parser.add_argument("--decoder", choices=("record", "tfds"), default="record")
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags
    worker_counts = [int(w) for w in args.worker_count.split(",")]

    config = align_config(args.variant)
    config.data.name, config.data.data_dir = args.data_name, args.data_dir
    if args.split:  # both, so that a copy holding this split alone is enough
        config.data.train_split = config.data.validation_split = args.split
    config.train.batch_size = args.batch or config.train.batch_size
    task = AlignTask(config)
    train_source, _ = load_sources(config.data)
    if args.decoder == "tfds":
        if args.data_name == "synthetic":
            parser.error("--decoder tfds needs a built data set (--data_name, --data_dir)")
        builder = registry.builder_class(args.data_name)(data_dir=args.data_dir)
        train_source = builder.as_data_source(split=config.data.train_split)
    mesh = shard_lib.make_mesh(config.mesh)
    example = example_batch(train_source)
    trainer = build_trainer(config, task, mesh, example)
    decoder = "in memory" if args.data_name == "synthetic" else f"{args.decoder} decoder"
    print(
        f"devices: {jax.device_count()} {jax.devices()[0].platform}; data {args.data_name} "
        f"({decoder}); global batch {config.train.batch_size}; model d={config.model.d_model} "
        f"layers={config.model.num_layers}"
    )
    samples_per_s = {}
    for workers in worker_counts:
        batches = pipeline.make_train_iterator(
            train_source,
            global_batch_size=config.train.batch_size,
            seed=0,
            sharding=trainer.batch_sharding,
            require_text=True,
            worker_count=workers,
        )
        for _ in range(1 + workers):  # start the Grain pipeline (and workers) first
            next(batches)
        pipeline_rate = rate(lambda: next(batches), args.batches)
        batch = next(batches)  # the step's input
        batches.close()
        samples_per_s[workers] = pipeline_rate * config.train.batch_size
        print(
            f"pipeline, {workers} worker processes: {pipeline_rate:.1f} batches/s, "
            f"{samples_per_s[workers]:.0f} samples/s ({args.batches} batches)"
        )
    if not args.steps:
        print(f"pipeline_samples_per_s={samples_per_s[worker_counts[-1]]:.0f}")
        return

    with jax.set_mesh(mesh):
        state = trainer.init(example)

        def one_step():
            nonlocal state
            state, metrics = trainer.step(state, batch)
            return metrics

        jax.block_until_ready(one_step())  # compile
        step_rate = rate(one_step, args.steps)

    step_samples_per_s = step_rate * config.train.batch_size
    print(
        f"align step: {step_rate:.2f} steps/s, {step_samples_per_s:.0f} samples/s ({args.steps} steps)"
    )
    for workers, rate_ in samples_per_s.items():
        print(f"{workers} worker processes: pipeline / step {rate_ / step_samples_per_s:.2f}")
    print(f"pipeline_over_step={samples_per_s[worker_counts[-1]] / step_samples_per_s:.1f}")


if __name__ == "__main__":
    main()
