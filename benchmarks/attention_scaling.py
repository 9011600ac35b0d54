"""How the encoder's training step scales with the number of channels, per channel-bias mode.

Run from the repository root:

    .venv/bin/python benchmarks/attention_scaling.py
    .venv/bin/python benchmarks/attention_scaling.py --modes block_diagonal --channels 7,28 \
        --repeats 5 --batch 8

What is measured: one jitted forward+backward step of the paper-size encoder (T=186, patch 6 so
N=31 patches per channel, d=384, 6 heads, 6 layers, FFN 1536, float32, CPU) with dropout on
(`deterministic=False`, `--dropout`, attention dropout 0.0 as in the default config). The loss is
mean(cls**2) + mean(channels**2), so gradients reach every token, and gradients are taken with
respect to all parameters. The CIT table has 128 rows so that C=112 fits. One compiled function
per (mode, C): its compile time is reported, it is run once untimed (warm-up), then the median
of `--repeats` steps is timed, each ended with `jax.block_until_ready`.

One line per (mode, C):
  compile    seconds to trace, lower and compile the value_and_grad step;
  step       median wall-clock seconds of one step (min, max of the timed steps);
  cpu        median CPU seconds (user + system, all threads) the process spent in one step:
             on a shared machine wall time swings with other jobs' load while CPU time mostly
             does not, so compare the two (uncontended, cpu ~ cores x step);
  samples/s  batch / step;
  load       the 1-minute load average when the configuration finished;
  vs C=7     this step time over the step time at the smallest C of the mode (7 by default),
             and the same ratio of CPU times;
  max RSS    the process's peak resident memory so far (getrusage: monotone, so it is the
             largest of all configurations run up to this one, not this one's own peak), and its
             growth since the benchmark started;
  est / xla  the estimated peak memory used for the skip decision, and XLA's own buffer total
             (arguments + outputs + temporaries) of the compiled step.

The sequence has L = 1 + C*(N+1) tokens (225 at C=7, 3585 at C=112). `paper` builds a dense
(B, heads, L, L) score tensor in every layer, so its attention memory and time grow as C**2;
`block_diagonal` attends within each channel's N+1 tokens plus one [CLS] row, so it grows
linearly in C, like the projections and the MLP. A configuration whose estimated peak exceeds
the memory budget (by default MemAvailable plus this process's own RSS, less 1.5 GiB)
is skipped with the reason printed instead of being run: before compiling when even the low
end of the estimate (it runs 0-15% above XLA's figures) exceeds it, after compiling when XLA's
exact buffer total does. At C=112 `paper` has 4.6 GiB of float32 scores per layer, and
the backward pass keeps each layer's scores and softmax: about 90 GiB in all, far beyond a
24 GiB machine, while `block_diagonal` at C=112 needs about 20 GiB (it fits, only just).

The last line printed is `block_diagonal_c112_over_c7=<ratio>`: the block_diagonal step time at
C=112 over that at C=7 (nan if either was not measured).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from trace_jax.model.encoder import EncoderConfig, TraceEncoder
from trace_jax.model.layout import CHANNEL_BIAS_MODES, TokenLayout

GIB = 1024**3
TIME_STEPS = 186
CIT_TABLE = 128
FLOAT32_BYTES = 4
HEADROOM_GIB = 1.5
ESTIMATE_MARGIN = 1.15  # the estimate runs 0-15% above XLA's totals


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes", default="block_diagonal,paper", help="comma list of channel_bias modes"
    )
    parser.add_argument("--channels", default="7,28,112", help="comma list of channel counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="residual dropout rate (attention dropout stays 0.0)",
    )
    parser.add_argument(
        "--remat",
        action="store_true",
        help="recompute each block in the backward pass (EncoderConfig.remat)",
    )
    parser.add_argument(
        "--scan",
        action="store_true",
        help="run the blocks as one nn.scan (EncoderConfig.scan_layers); with --remat this "
        "is what bounds memory on XLA:CPU",
    )
    parser.add_argument(
        "--memory-budget-gib",
        type=float,
        default=None,
        help="skip configurations estimated above this; default MemAvailable "
        "plus this process's RSS, less 1.5 GiB, when each one starts",
    )
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in args.modes:
        if mode not in CHANNEL_BIAS_MODES:
            parser.error(f"unknown mode {mode!r}; choose from {CHANNEL_BIAS_MODES}")
    try:
        args.channels = sorted({int(c) for c in args.channels.split(",") if c.strip()})
    except ValueError:
        parser.error(f"--channels must be a comma list of integers, got {args.channels!r}")
    if not args.channels or min(args.channels) < 1 or max(args.channels) > CIT_TABLE:
        parser.error(f"channel counts must lie in [1, {CIT_TABLE}]")
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be >= 1")
    return args


def make_config(
    mode: str, dropout: float, remat: bool = False, scan: bool = False
) -> EncoderConfig:
    return EncoderConfig(
        patch_len=6,
        d_model=384,
        num_heads=6,
        num_layers=6,
        mlp_dim=1536,
        num_channels=CIT_TABLE,
        channel_bias=mode,
        dropout=dropout,
        attention_dropout=0.0,
        dtype="float32",
        remat=remat,
        scan_layers=scan,
    )


def max_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def estimate_peak_bytes(cfg: EncoderConfig, channels: int, batch: int, param_count: int):
    """A rough upper estimate of the step's peak memory, and a note on its largest term.

    Calibrated against XLA's own buffer totals on CPU (0-15% above them for both modes at
    C=7, 28 and 112):
    per layer and token the step holds about 20 d-wide and 5 mlp-wide float32 values; per layer
    two score-sized float32 tensors (scores and softmax) and the boolean mask; on top come about
    three score-sized temporaries live at once in the backward pass, and parameters plus
    gradients.
    """
    n = -(-TIME_STEPS // cfg.patch_len)
    layout = TokenLayout(channels, n)
    length, seg = layout.length, layout.channel_length
    tokens = batch * length
    activations = cfg.num_layers * tokens * (20 * cfg.d_model + 5 * cfg.mlp_dim) * FLOAT32_BYTES
    if cfg.channel_bias == "block_diagonal":
        score_entries = batch * cfg.num_heads * (channels * seg * seg + length)
        mask_bytes = batch * channels * seg * seg
        what = f"per-channel scores (B, C, heads, {seg}, {seg})"
    else:
        score_entries = batch * cfg.num_heads * length * length
        mask_bytes = batch * length * length
        what = f"dense scores (B, heads, L, L) with L={length}"
    score_bytes = score_entries * FLOAT32_BYTES
    attention = cfg.num_layers * (2 * score_bytes + mask_bytes) + 3 * score_bytes
    params = 2 * param_count * FLOAT32_BYTES
    total = activations + attention + params
    note = (
        f"{what}: {score_bytes / GIB:.2f} GiB per layer; "
        f"activations {activations / GIB:.1f} GiB"
    )
    return total, note


def make_step(model: TraceEncoder):
    def loss_fn(params, series, observed, key):
        out = model.apply(params, series, observed, deterministic=False, rngs={"dropout": key})
        return jnp.mean(jnp.square(out["cls"])) + jnp.mean(jnp.square(out["channels"]))

    return jax.jit(jax.value_and_grad(loss_fn))


def xla_bytes(compiled):
    """Arguments + outputs + temporaries of the compiled step per XLA, or None if unknown."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend / version reports it
        return None
    if stats is None:
        return None
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return total if stats.temp_size_in_bytes > 0 else None


def run_config(mode, channels, args, params, param_count, rss_start):
    """Times one (mode, C); returns (median step seconds or None, line to print)."""
    cfg = make_config(mode, args.dropout, args.remat, args.scan)
    label = f"{mode:>14s} C={channels:<4d}"
    estimate, note = estimate_peak_bytes(cfg, channels, args.batch, param_count)
    # Memory this process already holds (freed buffers kept by the allocator) is reusable;
    # the headroom covers the runtime's own use (~0.8 GiB over XLA's total at C=112).
    budget = (
        args.memory_budget_gib * GIB
        if args.memory_budget_gib is not None
        else available_bytes() + current_rss_bytes() - HEADROOM_GIB * GIB
    )
    # Before compiling, skip only what cannot fit even at the estimate's low end; XLA's exact
    # total decides the close cases once compiled.
    if estimate / ESTIMATE_MARGIN > budget:
        return (
            None,
            None,
            (
                f"{label} SKIPPED: estimated peak {estimate / GIB:.1f} GiB "
                f"(at least {estimate / ESTIMATE_MARGIN / GIB:.1f}) > budget "
                f"{budget / GIB:.1f} GiB ({note})"
            ),
        )

    rng = np.random.default_rng(channels)
    series = jnp.asarray(rng.standard_normal((args.batch, channels, TIME_STEPS)), jnp.float32)
    observed = jnp.ones(series.shape, bool)
    base_key = jax.random.key(channels)
    keys = [jax.random.fold_in(base_key, i) for i in range(args.repeats + 1)]

    print(
        f"[{mode} C={channels}] compiling (estimated peak {estimate / GIB:.1f} GiB)...",
        file=sys.stderr,
        flush=True,
    )
    step = make_step(TraceEncoder(cfg))
    t0 = time.perf_counter()
    compiled = step.lower(params, series, observed, keys[0]).compile()
    compile_s = time.perf_counter() - t0
    measured = xla_bytes(compiled)
    if measured is not None and measured > budget:
        return (
            None,
            None,
            (
                f"{label} SKIPPED after compiling ({compile_s:.1f} s): XLA buffers "
                f"{measured / GIB:.1f} GiB > budget {budget / GIB:.1f} GiB ({note})"
            ),
        )

    try:
        jax.block_until_ready(compiled(params, series, observed, keys[0]))  # warm-up
        times, cpu_times = [], []
        for key in keys[1:]:
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled(params, series, observed, key))
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    except Exception as err:  # e.g. RESOURCE_EXHAUSTED from the allocator
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, None, f"{label} SKIPPED: the step failed: {first[:200]}"
    finally:
        del compiled
        gc.collect()

    median, cpu_median = statistics.median(times), statistics.median(cpu_times)
    rss = max_rss_bytes()
    xla = f"{measured / GIB:.2f} GiB" if measured is not None else "n/a"
    line = (
        f"{label} compile {compile_s:5.1f} s | step {median:7.3f} s "
        f"(min {min(times):.3f}, max {max(times):.3f}, n={len(times)}), "
        f"cpu {cpu_median:7.3f} s | {args.batch / median:6.2f} samples/s | "
        f"load {os.getloadavg()[0]:.2f} | max RSS so far {rss / GIB:.2f} GiB "
        f"(+{(rss - rss_start) / GIB:.2f} GiB) | est {estimate / GIB:.2f} GiB, xla {xla}"
    )
    return median, cpu_median, line


def main(argv=None) -> int:
    args = parse_args(argv)
    rss_start = max_rss_bytes()
    n = -(-TIME_STEPS // 6)
    print(
        f"attention scaling: T={TIME_STEPS} N={n} d=384 heads=6 layers=6 mlp=1536 "
        f"batch={args.batch} dropout={args.dropout} repeats={args.repeats} "
        f"float32 on {jax.devices()[0].platform} ({os.cpu_count()} cores); "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"MemAvailable {available_bytes() / GIB:.1f} GiB",
        flush=True,
    )

    # Parameters depend on neither C (the CIT table is fixed at 128) nor the mode: init once,
    # on a small input, so no dense mask is ever built eagerly.
    init_cfg = make_config("block_diagonal", args.dropout, args.remat, args.scan)
    params = TraceEncoder(init_cfg).init(jax.random.key(0), jnp.zeros((1, 1, TIME_STEPS)))
    param_count = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"parameters: {param_count:,}", flush=True)

    results = {}
    for mode in args.modes:
        base = None
        for channels in args.channels:
            median, cpu, line = run_config(mode, channels, args, params, param_count, rss_start)
            results[(mode, channels)] = median
            if median is not None:
                if base is None:
                    base = (channels, median, cpu)
                line += f" | vs C={base[0]}: {median / base[1]:.2f}x " f"(cpu {cpu / base[2]:.2f}x)"
            print(line, flush=True)
            jax.clear_caches()
            gc.collect()

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    small, large = results.get(("block_diagonal", 7)), results.get(("block_diagonal", 112))
    ratio = large / small if small and large else float("nan")
    print(f"block_diagonal_c112_over_c7={ratio:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
