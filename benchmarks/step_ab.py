"""Config variants of the paper-size training step, timed in alternation in one process.

    LD_PRELOAD=/lib/x86_64-linux-gnu/libtcmalloc.so.4 .venv/bin/python benchmarks/step_ab.py \
        --stage pretrain --cpu_devices 2 --set model.bf16_matmuls=True \
        --variant "" --variant "model.attention_dropout=0.1"

Why: this machine's speed drifts by up to 20% within an hour (BENCHMARKS.md), so two runs of
one command a few minutes apart can differ by more than the change being judged. Here every
variant is built and compiled once in the same process, then the steps alternate: round r runs
one step of each variant (in reverse order every other round), so each variant sees the same
machine, heap and thread pool, and a difference of 1-2% shows.

What is measured: the real jitted training step of configs/<stage>.py at paper size (as
`versus_torch.py` builds it: `build_trainer`'s mesh, shardings and donated state, on its
random batch), after --warmup untimed steps each; per variant the median, min and max wall
seconds of --steps steps and samples/s. Each --variant is a space-separated list of
`section.key=value` overrides applied on top of the shared --set ones ("" for none).
Per variant also its speed over the first variant's: the median over rounds of the first's
step time over its own in the same round. Run with tcmalloc preloaded, like the other CPU
figures. The last line is `second_over_first=<that median for the second variant>` (above 1:
the second is faster); `--variant "" --variant ""` shows the noise floor.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import versus_torch  # noqa: E402  (the shared config and batch helpers of the benchmarks)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=("pretrain", "align"), default="pretrain")
    p.add_argument("--variant", action="append", default=[], help='overrides, e.g. "a.b=1 c.d=2"')
    p.add_argument("--set", action="append", default=[], help="override for every variant")
    p.add_argument("--cpu_devices", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    if len(args.variant) < 2:
        p.error("give at least two --variant (an empty one is the config as it is)")
    if min(args.cpu_devices, args.batch, args.steps) < 1 or args.warmup < 0:
        p.error("--cpu_devices, --batch and --steps must be >= 1, --warmup >= 0")
    return args


def build_step(stage: str, overrides: list[str], args):
    """(compiled step, state, batch) for one variant, as versus_torch.py builds ours."""
    settings = versus_torch.parse_args(
        ["--which", stage, "--batch", str(args.batch)]
        + [a for item in overrides for a in ("--set", item)]
    )
    config = versus_torch.load_config(stage, settings)
    _, mesh, trainer, batch = versus_torch.build_jax_trainer(
        stage, config, settings.channels, settings.time_steps
    )
    state = trainer.init(batch)
    return versus_torch.compile_train_step(mesh, trainer, state, batch), state, batch


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from trace_jax import distributed

    distributed.split_cpu(args.cpu_devices)
    names = [v or "(as configured)" for v in args.variant]
    runs = []
    for variant in args.variant:
        compiled, state, batch = build_step(args.stage, args.set + variant.split(), args)
        runs.append({"compiled": compiled, "state": state, "batch": batch, "wall": []})

    def step(run) -> float:
        t0 = time.perf_counter()
        run["state"], metrics = run["compiled"](run["state"], run["batch"])
        jax.block_until_ready((run["state"], metrics))
        return time.perf_counter() - t0

    for run in runs:
        for _ in range(args.warmup):
            step(run)
    for r in range(args.steps):
        for run in runs if r % 2 == 0 else runs[::-1]:
            run["wall"].append(step(run))
            print(".", end="", flush=True)
    print()
    print(
        f"step_ab: {versus_torch.machine()}; {args.stage}, batch {args.batch}, "
        f"{args.cpu_devices} host devices, shared overrides {args.set or 'none'}"
    )
    first = runs[0]["wall"]
    ratios = []
    for name, run in zip(names, runs):
        wall = run["wall"]
        median = statistics.median(wall)
        # Each round's two steps ran seconds apart: their ratio is what drift leaves alone.
        ratios.append(statistics.median(a / b for a, b in zip(first, wall)))
        print(
            f"  {name:40s} step {median:.3f} s (min {min(wall):.3f}, max {max(wall):.3f},"
            f" n={len(wall)}) | {args.batch / median:.2f} samples/s | "
            f"speed over the first, median of rounds {ratios[-1]:.3f}"
        )
    print(f"second_over_first={ratios[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
