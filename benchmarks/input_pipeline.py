r"""Input pipeline throughput against the alignment step it feeds, on the same machine.

  .venv/bin/python benchmarks/input_pipeline.py                       # synthetic, align.py:cpu
  .venv/bin/python benchmarks/input_pipeline.py --data_name=weather_captioned --data_dir=DIR \
      [--worker_count N] [--batch 256] [--decoder tfds] [--steps 0]

Both figures use the CPU alignment config (or --batch) as the global batch and every local
device: the pipeline rate includes assembling global jax.Arrays; the step rate is the jitted,
sharded align step after compilation (--steps 0 skips it). --worker_count adds Grain worker
processes (config.data.worker_count); --decoder tfds reads a built set through TFDS's own data
source instead of trace_jax.data.record_source (the figure before it). The last line is
`pipeline_over_step=<ratio>`: how many times faster batches arrive than the step consumes them
(>1 means the step never waits for data), or `pipeline_samples_per_s=<rate>` with --steps 0.
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
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
    parser.add_argument("--worker_count", type=int, default=0)
    parser.add_argument("--decoder", choices=("record", "tfds"), default="record")
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags

    config = align_config(args.variant)
    config.data.name, config.data.data_dir = args.data_name, args.data_dir
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
    batches = pipeline.make_train_iterator(
        train_source,
        global_batch_size=config.train.batch_size,
        seed=0,
        sharding=trainer.batch_sharding,
        require_text=True,
        worker_count=args.worker_count,
    )
    for _ in range(1 + args.worker_count):  # start the Grain pipeline (and workers) first
        next(batches)
    pipeline_rate = rate(lambda: next(batches), args.batches)
    batch = next(batches)  # the step's input
    batches.close()
    print(
        f"devices: {jax.device_count()} {jax.devices()[0].platform}; data {args.data_name} "
        f"({'in memory' if args.data_name == 'synthetic' else args.decoder + ' decoder'}, "
        f"{args.worker_count} worker processes); global batch "
        f"{config.train.batch_size}; model d={config.model.d_model} "
        f"layers={config.model.num_layers}"
    )
    print(
        f"pipeline: {pipeline_rate:.1f} batches/s, "
        f"{pipeline_rate * config.train.batch_size:.0f} samples/s ({args.batches} batches)"
    )
    if not args.steps:
        print(f"pipeline_samples_per_s={pipeline_rate * config.train.batch_size:.0f}")
        return

    with jax.set_mesh(mesh):
        state = trainer.init(example)

        def one_step():
            nonlocal state
            state, metrics = trainer.step(state, batch)
            return metrics

        jax.block_until_ready(one_step())  # compile
        step_rate = rate(one_step, args.steps)

    print(f"align step: {step_rate:.2f} steps/s ({args.steps} steps)")
    print(f"pipeline_over_step={pipeline_rate / step_rate:.1f}")


if __name__ == "__main__":
    main()
