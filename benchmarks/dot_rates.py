"""The training step's matmuls alone: XLA:CPU's kernels against PyTorch's, on this machine.

    .venv/bin/python benchmarks/dot_rates.py                  # paper size, batch 64, 7 channels
    .venv/bin/python benchmarks/dot_rates.py --rows 57344     # batch 16, 112 channels

Why: on the CPU four fifths of our training step is matmuls (BENCHMARKS.md), so the rate of
each library's kernels on the machine's cores bounds what `versus_torch.py` can show, and that
rate depends on the microarchitecture: this separates "our step wastes time" from "our kernels
are slower here".

What is measured: for each of the block's four weights (query/key/value (d, 3d), attention
output (d, d), fc1 (d, 4d), fc2 (4d, d)) the three products of a training step over --rows
tokens: forward x W, input gradient g W^T, and weight gradient x^T g. Ours as XLA runs them in
the step (jitted `dot_general`s, float32 products; the weight gradient's x^T written out first,
as XLA does in the step, its copy not timed); PyTorch's as its autograd runs `F.linear` (a
transposed view where it needs one). Two precisions: float32, and bfloat16 operands
(`model.bf16_matmuls`; ours accumulate to float32, PyTorch's return bfloat16, as
torch_trace.py's `linear`). Each side runs in its own child process with the settings of
versus_torch.py (the same cores, tcmalloc, MKL's AVX-512 path for PyTorch); each product is
the fastest of --repeats calls: the rate the kernel attains, which a busy or shared machine
can only lower (medians here swung by 2x between runs). Per line GFLOP/s of both; then each
side's total seconds for one layer's set of products. The last line is `jax_over_torch_bf16_dots=<PyTorch's total
seconds / ours>` for the bfloat16 set (above 1: our kernels are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import versus_torch  # the child-process settings of the PyTorch comparison

PRECISIONS = ("float32", "bfloat16")
PASSES = ("forward", "input grad", "weight grad")


def weights(d: int, mlp: int) -> dict[str, tuple[int, int]]:
    return {"qkv": (d, 3 * d), "out": (d, d), "fc1": (d, mlp), "fc2": (mlp, d)}


def best_seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` calls after two untimed ones (versus_torch's timing loop)."""
    return min(versus_torch.time_steps(fn, warmup=2, steps=repeats)["wall"])


def jax_rates(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    def product(a, b, contract):
        return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)

    # (lhs shape, rhs shape, contracting dims) per pass for a (k, n) weight over m rows.
    def operands(m, k, n):
        return {
            "forward": ((m, k), (k, n), ((1,), (0,))),
            "input grad": ((m, n), (k, n), ((1,), (1,))),
            "weight grad": ((k, m), (m, n), ((1,), (0,))),
        }

    rng = np.random.default_rng(0)
    seconds = {}
    for precision in PRECISIONS:
        for name, (k, n) in weights(args.d_model, args.mlp_dim).items():
            for pass_, (sa, sb, contract) in operands(args.rows, k, n).items():
                a = jnp.asarray(rng.standard_normal(sa, np.float32), precision)
                b = jnp.asarray(rng.standard_normal(sb, np.float32), precision)
                fn = jax.jit(lambda a, b, c=contract: product(a, b, c))
                seconds[f"{precision} {name} {pass_}"] = best_seconds(
                    lambda fn=fn, a=a, b=b: fn(a, b).block_until_ready(), args.repeats
                )
    return seconds


def torch_rates(args) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    seconds = {}
    with torch.no_grad():
        for precision in PRECISIONS:
            dtype = getattr(torch, precision)
            for name, (k, n) in weights(args.d_model, args.mlp_dim).items():
                x = torch.randn(args.rows, k, dtype=dtype)
                g = torch.randn(args.rows, n, dtype=dtype)
                w = torch.randn(n, k, dtype=dtype)  # nn.Linear's (out, in) layout
                passes = {
                    "forward": lambda x=x, w=w: F.linear(x, w),
                    "input grad": lambda g=g, w=w: g.mm(w),
                    "weight grad": lambda g=g, x=x: g.t().mm(x),
                }
                for pass_, fn in passes.items():
                    seconds[f"{precision} {name} {pass_}"] = best_seconds(fn, args.repeats)
    return seconds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--rows", type=int, default=64 * 7 * 32, help="tokens (default: batch 64 x 7 x 32)"
    )
    p.add_argument("--d_model", type=int, default=384)
    p.add_argument("--mlp_dim", type=int, default=1536)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--child", choices=("jax", "torch"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.rows, args.d_model, args.mlp_dim, args.repeats, args.threads) < 1:
        p.error("--rows, --d_model, --mlp_dim, --repeats and --threads must be >= 1")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
        seconds = (jax_rates if args.child == "jax" else torch_rates)(args)
        print(versus_torch.RESULT + json.dumps(seconds), flush=True)
        return 0
    # versus_torch's settings for both children (its defaults: tcmalloc, MKL's Intel path).
    settings = versus_torch.parse_args([])
    with tempfile.TemporaryDirectory() as scratch:
        envs, note = versus_torch.child_envs(settings, scratch)
        print(f"dot_rates: {versus_torch.machine()}; {note}; rows {args.rows}")
        if caveat := versus_torch.bf16_caveat():
            print(caveat)
        results = {}
        for impl in ("jax", "torch"):
            cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), *argv, "--child", impl]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=envs[impl], check=False)
            lines = [x for x in proc.stdout.splitlines() if x.startswith(versus_torch.RESULT)]
            if not lines:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{impl}: exit status {proc.returncode}: {tail[:300]}")
                return 1
            results[impl] = json.loads(lines[-1][len(versus_torch.RESULT) :])
    ours, theirs = results["jax"], results["torch"]
    totals = {}
    for precision in PRECISIONS:
        print(f"{precision:9s} {'product':26s} {'ours GFLOP/s':>13s} {'PyTorch':>9s}")
        for name, (k, n) in weights(args.d_model, args.mlp_dim).items():
            flops = 2.0 * args.rows * k * n
            for pass_ in PASSES:
                key = f"{precision} {name} {pass_}"
                print(
                    f"{'':9s} {name + ' ' + pass_:26s} {flops / ours[key] / 1e9:13.0f} "
                    f"{flops / theirs[key] / 1e9:9.0f}"
                )
        totals[precision] = [
            sum(s for key, s in side.items() if key.startswith(precision + " "))
            for side in (ours, theirs)
        ]
        mine, torch_s = totals[precision]
        print(
            f"{precision}: one layer's products take {mine * 1e3:.1f} ms (ours) against "
            f"{torch_s * 1e3:.1f} ms (PyTorch)"
        )
    mine, torch_s = totals["bfloat16"]
    print(f"jax_over_torch_f32_dots={totals['float32'][1] / totals['float32'][0]:.2f}")
    print(f"jax_over_torch_bf16_dots={torch_s / mine:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
