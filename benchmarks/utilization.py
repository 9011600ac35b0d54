"""How much of the machine the paper-size training step uses: GFLOP/s against the best
`jnp.dot` rate of the step's own matmul shapes (CPU), or model FLOPs utilisation (GPU, bf16).

    .venv/bin/python benchmarks/utilization.py                    # alignment step, batch 64
    .venv/bin/python benchmarks/utilization.py --stage pretrain --batch 64
    .venv/bin/python benchmarks/utilization.py --dtype bfloat16 --batch 256 --profile_dir DIR

What is measured: the real jitted train step (configs/<stage>.py at paper size: T=186, P=6,
7 channels, d=384, 6 layers, FFN 1536; AdamW; built as trace_jax/train/loop.py does) on random
inputs, median wall time of --steps steps after --warmup, each ended with block_until_ready.
FLOPs are XLA's own count for the compiled step (`cost_analysis()["flops"]`: forward, backward
and optimizer, all ops), so the rate is what the hardware actually executed.
  CPU: the best of the step's three big matmul shapes ((B*L, d) x (d, d), (d, 4d), (4d, d)) run
       alone as jnp.dot in the same process is the attainable rate; the last line is
       `cpu_utilization=<achieved / best dot>`.
  GPU: MFU = achieved FLOP/s / the card's dense bf16 peak (PEAK_BF16 below, by device kind);
       the last line is `mfu=<ratio>`. --profile_dir writes a jax.profiler trace of 3 steps
       (TensorBoard's profile plugin or Perfetto), showing where the rest goes.
No GPU in this process: the script runs the CPU measurement and says so.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import versus_torch  # noqa: E402  (the shared batch and config helpers of the benchmarks)

# Dense bf16 peak FLOP/s (no sparsity) by substring of jax's device_kind.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=("align", "pretrain"), default="align")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=7)
    p.add_argument("--time_steps", type=int, default=186)
    p.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile_dir", default="")
    return p.parse_args(argv)


def timed(fn, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis["flops"])


def best_dot_rate(rows: int, d: int, mlp: int, dtype) -> tuple[float, str]:
    """FLOP/s of the fastest of the step's three big matmul shapes, run alone."""
    best, shape = 0.0, ""
    for k, n in ((d, d), (d, mlp), (mlp, d)):
        a = jnp.ones((rows, k), dtype)
        b = jnp.ones((k, n), dtype)
        dot = jax.jit(jnp.dot)
        seconds = timed(lambda: dot(a, b).block_until_ready(), 2, 5)
        rate = 2.0 * rows * k * n / seconds
        if rate > best:
            best, shape = rate, f"({rows}, {k}) x ({k}, {n})"
    return best, shape


def main(argv=None):
    import functools  # pylint: disable=g-import-not-at-top

    import ml_collections  # pylint: disable=g-import-not-at-top

    from trace_jax.train.align import AlignTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.pretrain import PretrainTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.state import (  # pylint: disable=g-import-not-at-top
        init_state,
        learning_rate_schedule,
        make_optimizer,
        make_train_step,
    )

    args = parse_args(argv)
    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    vt_args = argparse.Namespace(
        batch=args.batch,
        channels=args.channels,
        attention_dropout=None,
        channel_bias=None,
        set=[f"model.dtype='{dtype}'"],
    )
    config = ml_collections.ConfigDict(versus_torch.load_config(args.stage, vt_args))
    task = (AlignTask if args.stage == "align" else PretrainTask)(config)
    batch = jax.device_put(versus_torch.make_batch(args.batch, args.channels, args.time_steps))
    optimizer = make_optimizer(config.train)
    state = jax.jit(functools.partial(init_state, task, optimizer, config.seed))(batch)
    step = jax.jit(
        make_train_step(task, optimizer, learning_rate_schedule(config.train)), donate_argnums=0
    )
    compiled = step.lower(state, batch).compile()
    flops = step_flops(compiled)

    def run():
        nonlocal state
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))

    seconds = timed(run, args.warmup, args.steps)
    achieved = flops / seconds
    print(f"device: {device.device_kind} ({device.platform}), compute dtype {dtype}")
    print(
        f"{args.stage} step, batch {args.batch}, {args.channels} channels: {seconds:.3f} s, "
        f"{flops / 1e9:.1f} GFLOP (XLA count), {achieved / 1e9:.1f} GFLOP/s, "
        f"{args.batch / seconds:.2f} samples/s"
    )
    if args.profile_dir:
        jax.profiler.start_trace(args.profile_dir)
        for _ in range(3):
            run()
        jax.profiler.stop_trace()
        print(f"profile: {args.profile_dir}")
    if on_gpu:
        peak = next((v for k, v in PEAK_BF16.items() if k in device.device_kind), None)
        if peak is None:
            print(f"mfu=nan  (no bf16 peak known for {device.device_kind!r}; add it to PEAK_BF16)")
            return
        print(f"peak bf16 {peak / 1e12:.0f} TFLOP/s")
        print(f"mfu={achieved / peak:.3f}")
        return
    print("no GPU in this process: CPU utilisation instead of MFU")
    n_patches = -(-args.time_steps // config.model.patch_len)
    rows = args.batch * (1 + args.channels * (n_patches + 1))
    best, shape = best_dot_rate(rows, config.model.d_model, config.model.mlp_dim, jnp.dtype(dtype))
    print(f"best jnp.dot of the step's shapes: {best / 1e9:.1f} GFLOP/s at {shape}")
    print(f"cpu_utilization={achieved / best:.3f}")


if __name__ == "__main__":
    main()
