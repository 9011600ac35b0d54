"""How much of the machine the paper-size training step uses: GFLOP/s against the best
`jnp.dot` rate of the step's own matmul shapes (CPU), or model FLOPs utilisation (GPU, bf16).

    .venv/bin/python benchmarks/utilization.py                    # alignment step, batch 64
    .venv/bin/python benchmarks/utilization.py --stage pretrain --batch 64
    .venv/bin/python benchmarks/utilization.py --variant cpu --batch 64   # the :cpu model size
    .venv/bin/python benchmarks/utilization.py --dtype bfloat16 --batch 64,256,1024 --profile_dir DIR

What is measured: the real jitted train step (configs/<stage>.py at paper size: T=186, P=6,
7 channels, d=384, 6 layers, FFN 1536; AdamW; built as trace_jax/train/loop.py does) on random
inputs, median wall time of --steps steps after --warmup, each ended with block_until_ready.
Two FLOP counts: XLA's own for the compiled step (`cost_analysis()["flops"]`: forward, backward,
optimizer, every elementwise op) and the model's (`model_flops`: 3x the forward matmuls and
attention products, the usual MFU numerator; no recomputation, no elementwise work).
  CPU: the best of the step's three big matmul shapes ((B*L, d) x (d, d), (d, 4d), (4d, d)) run
       alone as jnp.dot in the same process, with the step's operand dtype (bfloat16 under
       model.bf16_matmuls), is the attainable rate; the last line is
       `cpu_utilization=<achieved / best dot>`.
  GPU: MFU = model FLOPs per second / the card's dense bf16 peak (PEAK_BF16 below, by device
       kind), also against a bf16 8192^3 jnp.dot measured in the same process; the last line is
       `mfu=<ratio>` of the largest batch. --profile_dir writes a jax.profiler trace of 3 steps of
       that batch (TensorBoard's profile plugin, or the Perfetto JSON that
       benchmarks/trace_summary.py sums by kernel), showing where the rest goes.
No GPU in this process: the script runs the CPU measurement and says so.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import versus_torch  # noqa: E402  (the shared batch and config helpers of the benchmarks)

# Dense bf16 peak FLOP/s (no sparsity) by substring of jax's device_kind.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=("align", "pretrain"), default="align")
    p.add_argument("--batch", default="64", help="batch size, or several: 64,256,1024")
    p.add_argument("--variant", default="", help="config variant: '' paper size, cpu, tiny")
    p.add_argument("--channels", type=int, default=7)
    p.add_argument("--time_steps", type=int, default=186)
    p.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile_dir", default="")
    p.add_argument(
        "--set", action="append", default=[], help="config override, e.g. model.remat=True"
    )
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


def model_flops(model, batch: int, channels: int, time_steps: int) -> float:
    """Training FLOPs of the encoder by formula: 3x (forward + backward) the matmuls and the
    attention products of the block-diagonal layout; [CLS] reads every token of its sample."""
    d, f, layers = model.d_model, model.mlp_dim, model.num_layers
    seq = -(-time_steps // model.patch_len) + 1  # a channel's CIT and patches
    tokens = batch * (channels * seq + 1)
    dense = 2 * tokens * (4 * d * d + 2 * d * f)  # q, k, v, out, fc1, fc2
    keys_read = batch * (channels * seq * seq + channels * seq + 1)
    attention = 2 * 2 * keys_read * d  # q.k and p.v
    embed = 2 * batch * channels * (seq - 1) * model.patch_len * d
    return 3.0 * (layers * (dense + attention) + embed)


def best_dot_rate(rows: int, d: int, mlp: int, dtype) -> tuple[float, str]:
    """FLOP/s of the fastest of the step's three big matmul shapes, run alone, with operands of
    `dtype` and float32 products (as `model.bf16_matmuls` runs them with bfloat16)."""
    best, shape = 0.0, ""
    for k, n in ((d, d), (d, mlp), (mlp, d)):
        # float32 products: XLA:CPU runs bfloat16 x bfloat16 -> float32 at the bfloat16 rate.
        rate = dot_rate(rows, k, n, dtype, out_dtype=jnp.float32)
        if rate > best:
            best, shape = rate, f"({rows}, {k}) x ({k}, {n})"
    return best, shape


def dot_rate(m: int, k: int, n: int, dtype, out_dtype=None) -> float:
    """FLOP/s of one jitted jnp.dot of these shapes on random data (zeros run faster), its
    product in `out_dtype` (None: the operands')."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (m, k), dtype)
    b = jax.random.normal(kb, (k, n), dtype)
    dot = jax.jit(functools.partial(jnp.dot, preferred_element_type=out_dtype))
    seconds = timed(lambda: dot(a, b).block_until_ready(), 3, 10)
    return 2.0 * m * k * n / seconds


def measure(args, batch_size: int, dtype: str, profile_dir: str = "") -> dict:
    """Compiles and times the real train step at one batch size."""
    import ml_collections  # pylint: disable=g-import-not-at-top

    from trace_jax.train.align import AlignTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.pretrain import PretrainTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.state import (  # pylint: disable=g-import-not-at-top
        init_state,
        learning_rate_schedule,
        make_optimizer,
        make_train_step,
    )

    vt_args = argparse.Namespace(
        variant=args.variant,
        batch=batch_size,
        channels=args.channels,
        attention_dropout=None,
        channel_bias=None,
        set=[f"model.dtype='{dtype}'", *args.set],
    )
    config = ml_collections.ConfigDict(versus_torch.load_config(args.stage, vt_args))
    task = (AlignTask if args.stage == "align" else PretrainTask)(config)
    batch = jax.device_put(versus_torch.make_batch(batch_size, args.channels, args.time_steps))
    optimizer = make_optimizer(config.train)
    state = jax.jit(functools.partial(init_state, task, optimizer, config.seed))(batch)
    step = jax.jit(
        make_train_step(task, optimizer, learning_rate_schedule(config.train)), donate_argnums=0
    )
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0

    def run():
        nonlocal state
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))

    seconds = timed(run, args.warmup, args.steps)
    if profile_dir:
        jax.profiler.start_trace(profile_dir, create_perfetto_trace=True)
        for _ in range(3):
            run()
        jax.profiler.stop_trace()
        print(f"profile: {profile_dir}")
    return {
        "config": config,
        "seconds": seconds,
        "compile_s": compile_s,
        "xla_flops": step_flops(compiled),
        "model_flops": model_flops(config.model, batch_size, args.channels, args.time_steps),
    }


def main(argv=None):
    args = parse_args(argv)
    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    batches = [int(b) for b in args.batch.split(",")]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, dtype {dtype}")
    peak = None
    if on_gpu:
        peak = next((v for k, v in PEAK_BF16.items() if k in device.device_kind), None)
        matmul = dot_rate(8192, 8192, 8192, jnp.bfloat16)
        print(
            f"bf16 8192^3 jnp.dot: {matmul / 1e12:.0f} TFLOP/s (datasheet peak "
            f"{(peak or float('nan')) / 1e12:.0f})"
        )
    results = []
    for i, b in enumerate(batches):
        last = i == len(batches) - 1
        r = measure(args, b, dtype, args.profile_dir if last else "")
        achieved, model_rate = r["xla_flops"] / r["seconds"], r["model_flops"] / r["seconds"]
        line = (
            f"{args.stage} step ({args.variant or 'paper'} size), batch {b}, {args.channels} "
            f"channels: {r['seconds'] * 1e3:.2f} ms "
            f"({b / r['seconds']:.0f} samples/s, compile {r['compile_s']:.1f} s); "
            f"XLA {r['xla_flops'] / 1e9:.1f} GFLOP -> {achieved / 1e12:.2f} TFLOP/s; "
            f"model {r['model_flops'] / 1e9:.1f} GFLOP -> {model_rate / 1e12:.2f} TFLOP/s"
        )
        if on_gpu and peak:
            line += f"; MFU {model_rate / peak:.3f} (of measured dot {model_rate / matmul:.3f})"
        print(line, flush=True)
        results.append((r, model_rate))
    r, model_rate = results[-1]
    if on_gpu:
        if peak is None:
            print(f"mfu=nan  (no bf16 peak known for {device.device_kind!r}; add it to PEAK_BF16)")
            return
        print(f"mfu={model_rate / peak:.3f}")
        return
    print("no GPU in this process: CPU utilisation instead of MFU")
    model = r["config"].model
    n_patches = -(-args.time_steps // model.patch_len)
    rows = batches[-1] * (1 + args.channels * (n_patches + 1))
    # The step's big products take bfloat16 operands with model.bf16_matmuls: measuring a
    # float32 dot there would put the bar at half the rate the step's kernels can reach.
    operands = jnp.dtype(jnp.bfloat16 if model.bf16_matmuls else dtype)
    best, shape = best_dot_rate(rows, model.d_model, model.mlp_dim, operands)
    # XLA's cost analysis counts a while loop's body once: with scanned layers its figure is
    # one layer's, so the model's count (no recomputation, no elementwise work) stands in.
    counted = "model" if model.scan_layers else "XLA"
    achieved = r["model_flops" if model.scan_layers else "xla_flops"] / r["seconds"]
    print(f"best jnp.dot of the step's shapes: {best / 1e9:.1f} GFLOP/s at {shape}, {operands}")
    print(f"{counted} FLOPs per second over the best dot:")
    print(f"cpu_utilization={achieved / best:.3f}")


if __name__ == "__main__":
    main()
