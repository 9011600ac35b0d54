r"""Input pipeline throughput against the alignment step it feeds, on the same machine.

  .venv/bin/python benchmarks/input_pipeline.py                       # synthetic, align.py:cpu
  .venv/bin/python benchmarks/input_pipeline.py --data_name=weather_captioned --data_dir=DIR

Both figures use the CPU alignment config's global batch and every local device: the pipeline
rate includes assembling global jax.Arrays; the step rate is the jitted, sharded align step
after compilation. The last line is `pipeline_over_step=<ratio>`: how many times faster batches
arrive than the step consumes them (>1 means the step never waits for data).
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

import jax

from trace_jax.data import pipeline
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
    args = parser.parse_args()

    config = align_config(args.variant)
    config.data.name, config.data.data_dir = args.data_name, args.data_dir
    task = AlignTask(config)
    train_source, _ = load_sources(config.data)
    mesh = shard_lib.make_mesh(config.mesh)
    example = example_batch(train_source)
    trainer = build_trainer(config, task, mesh, example)
    batches = pipeline.make_train_iterator(
        train_source,
        global_batch_size=config.train.batch_size,
        seed=0,
        sharding=trainer.batch_sharding,
        require_text=True,
    )
    next(batches)  # start the Grain pipeline before timing
    pipeline_rate = rate(lambda: next(batches), args.batches)

    with jax.set_mesh(mesh):
        state = trainer.init(example)
        batch = next(batches)

        def one_step():
            nonlocal state
            state, metrics = trainer.step(state, batch)
            return metrics

        jax.block_until_ready(one_step())  # compile
        step_rate = rate(one_step, args.steps)

    print(
        f"devices: {jax.device_count()} {jax.devices()[0].platform}; data {args.data_name}; "
        f"global batch {config.train.batch_size}; model d={config.model.d_model} "
        f"layers={config.model.num_layers}"
    )
    print(f"pipeline: {pipeline_rate:.1f} batches/s ({args.batches} batches)")
    print(f"align step: {step_rate:.2f} steps/s ({args.steps} steps)")
    print(f"pipeline_over_step={pipeline_rate / step_rate:.1f}")


if __name__ == "__main__":
    main()
