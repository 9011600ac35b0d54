"""Which XLA CPU fusion settings make the paper-size encoder fastest, per kind of program.

    .venv/bin/python benchmarks/xla_options.py                   # series embeddings, batch 256
    .venv/bin/python benchmarks/xla_options.py --stage pretrain  # the training step, batch 64
    .venv/bin/python benchmarks/xla_options.py --variant cpu     # the :cpu model size

Compiles the same jitted function once per candidate set of compiler options (passed to
`.compile(compiler_options=...)`, so one process compares them all) and times each: the
alignment model's series embeddings (`AlignModel.embed_series`, what `trace_jax.load(...)
.embed_series` runs) or the real pretraining / alignment step with AdamW. The candidates are
XLA's library fusions: YNNPACK (jax 0.10's default on the CPU), off, or restricted to some
fusion kinds, XNNPACK / oneDNN taking the dots, and XLA's own loops in 512-bit vectors.
`trace_jax/xla_options.py` holds the choice these measurements made; the last line is
`<stage>_chosen_over_default=<speed ratio>`.
Run with tcmalloc preloaded, like the other CPU figures (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import versus_torch  # noqa: E402  (the shared batch and config helpers of the benchmarks)

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_XNN = "xla_cpu_experimental_xnn_fusion_type"
_ONEDNN = "xla_cpu_experimental_onednn_fusion_type"
_DOT, _ELTWISE, _REDUCE = (f"LIBRARY_FUSION_TYPE_{k}" for k in ("DOT", "ELTWISE", "REDUCE"))

CANDIDATES = {
    "default": {},
    "ynn-off": {_YNN: ""},
    "ynn-dot": {_YNN: _DOT},
    "ynn-dot+reduce": {_YNN: f"{_DOT},{_REDUCE}"},
    "ynn-dot+eltwise": {_YNN: f"{_DOT},{_ELTWISE}"},
    "xnn-dot": {_YNN: "", _XNN: _DOT},  # YNNPACK off, XNNPACK takes the dots
    "onednn-dot": {_YNN: "", _ONEDNN: _DOT},  # YNNPACK off, oneDNN takes the dots
    # oneDNN's matmul rewritten in as custom calls (Intel's older path), YNNPACK off.
    "onednn-call": {
        _YNN: "",
        "xla_cpu_use_onednn": True,
        "xla_cpu_experimental_onednn_custom_call": True,
    },
    # XLA's own loops (the elementwise fusions) vectorised for 512-bit registers.
    "vector-512": {"xla_cpu_prefer_vector_width": 512},
    "ynn-off+vector-512": {_YNN: "", "xla_cpu_prefer_vector_width": 512},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=("infer", "pretrain", "align"), default="infer")
    p.add_argument("--batch", type=int, default=None, help="default: 256 infer, 64 training")
    p.add_argument("--variant", default="", help="config variant: '' paper size, cpu, tiny")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma list of names")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config field, e.g. model.bf16_matmuls=True (a Python literal)",
    )
    return p.parse_args(argv)


def build(stage: str, batch_size: int, variant: str = "", overrides=()):
    """(jitted function, its arguments, the encoder config) of the stage (config variant:
    '' = paper size) on random inputs."""
    from trace_jax.model.heads import AlignModel  # pylint: disable=g-import-not-at-top
    from trace_jax.train.align import AlignTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.pretrain import PretrainTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.state import (  # pylint: disable=g-import-not-at-top
        init_state,
        learning_rate_schedule,
        make_optimizer,
        make_train_step,
    )

    vt_args = argparse.Namespace(
        variant=variant,
        batch=batch_size,
        channels=7,
        attention_dropout=None,
        channel_bias=None,
        set=list(overrides),
    )
    config = ml_collections.ConfigDict(versus_torch.load_config(stage, vt_args))
    task = (PretrainTask if stage == "pretrain" else AlignTask)(config)
    batch = jax.device_put(versus_torch.make_batch(batch_size, 7, 186))
    if stage == "infer":
        params = jax.jit(task.init_params)(jax.random.key(config.seed), batch)["model"]
        embed = jax.jit(
            lambda p, s, o, c: task.model.apply(
                {"params": p}, s, o, c, method=AlignModel.embed_series
            )
        )
        inputs = (params, batch["series"], batch["observed"], batch["channel_ids"])
        return embed, inputs, task.encoder_config
    optimizer = make_optimizer(config.train)
    state = jax.jit(functools.partial(init_state, task, optimizer, config.seed))(batch)
    # Not donated: every candidate steps from the same state.
    step = jax.jit(make_train_step(task, optimizer, learning_rate_schedule(config.train)))
    return step, (state, batch), task.encoder_config


def main(argv=None) -> int:
    args = parse_args(argv)
    if jax.default_backend() != "cpu":
        print(f"backend {jax.default_backend()}: these are XLA CPU options; nothing to compare")
        return 0
    from trace_jax import xla_options  # pylint: disable=g-import-not-at-top

    batch_size = args.batch or (256 if args.stage == "infer" else 64)
    fn, inputs, encoder_config = build(args.stage, batch_size, args.variant, args.set)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; known: {list(CANDIDATES)}")
    chosen = xla_options.encoder_forward(encoder_config) if args.stage == "infer" else {}
    chosen_name = next((n for n, o in CANDIDATES.items() if o == chosen), None)
    if chosen_name not in names:
        names.append(chosen_name)
    if "default" not in names:
        names.insert(0, "default")
    size = f"variant {args.variant!r}" if args.variant else "paper size"
    print(f"{args.stage}, {size}, batch {batch_size}, 7 channels; jax {jax.__version__}")
    seconds, reference = {}, None
    for name in names:
        compiled = fn.lower(*inputs).compile(compiler_options=CANDIDATES[name])
        out = jax.block_until_ready(compiled(*inputs))  # warm-up
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*inputs))
            times.append(time.perf_counter() - t0)
        seconds[name] = statistics.median(times)
        leaves = np.concatenate(
            [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(out) if x.size]
        )
        reference = leaves if reference is None else reference
        diff = float(np.abs(leaves - reference).max())
        print(
            f"  {name:22s} {seconds[name]:7.3f} s  {batch_size / seconds[name]:7.2f} samples/s"
            f"  max |out - default's| {diff:.1e}",
            flush=True,
        )
    print(f"chosen for {args.stage}: {chosen_name!r} ({chosen or 'XLA defaults'})")
    print(f"{args.stage}_chosen_over_default={seconds['default'] / seconds[chosen_name]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
