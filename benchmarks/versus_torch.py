r"""Our training and inference steps against a tuned PyTorch model of the same architecture.

Run from the repository root (needs the `bench` extra: torch==2.13.0, the CPU build):

    .venv/bin/python benchmarks/versus_torch.py                   # paper size, all figures
    .venv/bin/python benchmarks/versus_torch.py --which pretrain --steps 5
    .venv/bin/python benchmarks/versus_torch.py --which pretrain --channels 112 --batch 16 \
        --attention_dropout 0 --steps 3                           # channel scaling
    ... --set model.remat=True --set model.scan_layers=True      # ours with its memory options

What is measured, at paper size (d=384, 6 heads, 6 layers, FFN 1536, T=186, P=6, C=7, the
level embedding on, float32, dropout 0.1, block_diagonal attention: configs/pretrain.py and
configs/align.py with no variant, the CIT table grown to C when C > 64):
  pretrain  one training step of masked-patch reconstruction (30% of patches, MSE on masked
            observed points) with AdamW, warmup+cosine and clipping, batch 64. Ours is our real
            step: PretrainTask's, built by trace_jax/train/loop.py's build_trainer (the
            trainer's mesh and shardings, AdamW, the state donated).
  align     one training step of the TRACE alignment loss (sample and channel InfoNCE, 32 hard
            negatives), batch 64: ours is AlignTask through the same functions.
  infer     series embeddings (AlignModel.embed_series: [CLS] and CIT outputs, projected and
            L2-normalised) in evaluation mode, batch 256: ours jitted, torch under
            torch.inference_mode().
The PyTorch side is benchmarks/torch_trace.py (its docstring says how it is tuned), by default
doing the same work as ours: block_diagonal attention per channel (`--torch_attention dense`:
one (L, L) mask instead, as the paper's public code and the issue's PyTorch bar) and the last
block for the loss's tokens only (`--torch_last_block all`: for every token). Before
timing, torch_trace.check() copies a tiny Flax model into the PyTorch one and compares outputs,
losses and gradients (the max difference is printed), so both sides compute the same function.
Inputs: standard normal series, all points observed, channel ids 0..C-1, random unit text
embeddings (384-d), identical on both sides.

Every figure runs in its own child process, ours and then torch's, one at a time, so that
neither sees the other's threads or heap and each peak RSS (the child's own VmHWM) belongs to
one implementation. Each child is pinned to the first --threads cores (XLA sizes its thread
pool from the affinity mask; torch.set_num_threads too), runs --warmup untimed steps after
compiling, then --steps timed steps, each of ours ended with jax.block_until_ready. Per line:
  step       median wall seconds per step (min, max);
  cpu        median CPU seconds per step (user + system, all threads): on a shared machine wall
             time swings with other jobs while CPU time mostly does not (uncontended,
             cpu ~ threads x wall);
  samples/s  batch / median wall time;
  compile    seconds to compile our step;
  peak RSS   the peak during the steps (VmHWM restarted once everything is built and compiled:
             state, batch and compiled code count, compilation's own peak does not), and in
             brackets the peak before them (imports, set-up, compilation);
  load       the 1-minute load average when the child ended.
Memory caveat: our step allocates its temporaries as one block per execution (3.8 GiB at batch
64, C=7); under tcmalloc the next step sometimes cannot reuse it and maps a second one, so our
peak RSS reads 4.1 or 8.2 GiB from run to run. Use --malloc glibc for memory figures: plain
glibc returns freed blocks to the kernel, so the peak is what is live (at C=112, batch 16, with
model.remat and model.scan_layers: 3.4 GiB; without them 12.6-14.5 GiB).

Process settings, set in the children's environment (they must precede process start) and
named in the header line:
  --malloc  glibc's malloc returns large blocks (tens of MB: every activation here) to the
            kernel on free and maps them again on the next step, so the kernel re-zeroes them
            page by page; this moved the PyTorch figures by 1.5-2x in the issue. `auto` (the
            default) preloads tcmalloc (LD_PRELOAD, for both implementations) when
            `ldconfig -p` lists it (Debian: `apt-get install libgoogle-perftools4`), else uses
            glibc with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge pages for
            malloc's mappings: fewer, larger faults); `tcmalloc`, `glibc-hugetlb` and `glibc`
            (plain) force one. `glibc-heap` is glibc with mmap off and no trimming
            (glibc.malloc.mmap_max=0, trim_threshold 64 GiB): freed blocks stay in its heap and
            are reused unfaulted, while the peak stays what is live (the C=112 memory figures).
            `--torch_malloc` gives torch's children another.
  --cpu_devices  our child splits the CPU into N JAX host devices (as config.cpu_devices
            does for a training run) and runs the trainer's step data-parallel
            over them. XLA:CPU runs a batched product (attention's (33 x 64) x (64 x 32) ones)
            on one thread; with one device per core each half of the batch runs on its own.
  --mkl_intel_path  torch's float32 matmuls are MKL's, and MKL runs its AVX2 kernels on AMD
            CPUs even when they have AVX-512 (Zen 4, Zen 5): `auto` (default) preloads a one-line
            library that makes MKL take its Intel path on AMD CPUs (about 2x on the encoder's
            matmuls and on torch's whole training step on this Zen 5 machine). Our matmuls
            (XLA's YNNPACK kernels) use AVX-512 either way.
  --omp_wait_policy  torch's OpenMP threads spin at every barrier by default; on a machine
            that other jobs share, a spinning thread holds the core that its partner needs to
            finish, and every parallel op waits for a scheduler tick (AdamW's fused step took
            660 ms instead of 6 ms at load 5 here). `passive` (default) makes waiting threads
            sleep; it costs little on an idle machine.

The last line is `jax_over_torch=<ratio>`: our samples/s over PyTorch's for the first of
pretrain, align, infer that both ran (with one side only, a line saying so instead); with
--rounds N, each figure runs ours then torch's N times in turn and the ratio is the median of
the N rounds' ratios (the machine here drifts by 20% within an hour: a pair run back to back
sees the same machine, separate runs may not).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from trace_jax.allocator import find_tcmalloc
from trace_jax.cpu_features import bf16_dot_instructions, cpu_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
GIB = 1024**3
TEXT_DIM = 384  # all-MiniLM-L6-v2, our text tower
FIGURES = ("pretrain", "align", "infer")
MALLOCS = ("auto", "tcmalloc", "glibc-hugetlb", "glibc", "glibc-heap")
RESULT = "RESULT "


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--which", default=",".join(FIGURES), help="comma list of " + "/".join(FIGURES)
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="batch for every figure (default 64, infer 256)"
    )
    parser.add_argument("--channels", type=int, default=7)
    parser.add_argument("--time_steps", type=int, default=186)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run ours and torch's children this many times in turn per figure; the ratio is "
        "the median of the rounds' ratios (each pair ran minutes apart: the machine's drift "
        "over a longer run cancels)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--cpu_devices",
        type=int,
        default=1,
        help="host devices our child splits the CPU into (config.cpu_devices, "
        "jax_num_cpu_devices); the step runs data-parallel over them",
    )
    parser.add_argument("--attention_dropout", type=float, default=None, help="default: config")
    parser.add_argument("--channel_bias", default=None, help="default: config (block_diagonal)")
    parser.add_argument(
        "--torch_attention",
        choices=("split", "dense"),
        default="split",
        help="PyTorch's block_diagonal layout: split (per channel, linear in C) or dense (one "
        "(L, L) mask, as the public code and the issue's bar)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config field for both sides, e.g. model.remat=True (a Python literal)",
    )
    parser.add_argument(
        "--torch_last_block",
        choices=("partial", "all"),
        default="partial",
        help="PyTorch's last block: for the tokens the loss reads only, as ours (partial), or "
        "for every token, as a plain port (all; the figures before session 6)",
    )
    parser.add_argument("--malloc", choices=MALLOCS, default="auto")
    parser.add_argument(
        "--torch_malloc", choices=MALLOCS, default=None, help="torch's, if not --malloc's"
    )
    parser.add_argument(
        "--mkl_intel_path",
        choices=("auto", "on", "off"),
        default="auto",
        help="force MKL's Intel code path for torch (auto: on AMD CPUs)",
    )
    parser.add_argument(
        "--omp_wait_policy",
        choices=("passive", "active", "default"),
        default="passive",
        help="OMP_WAIT_POLICY of the torch children",
    )
    parser.add_argument("--impls", default="jax,torch", help="comma list of jax/torch")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.which = [w.strip() for w in args.which.split(",") if w.strip()]
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if not set(args.which) <= set(FIGURES) or not args.which:
        parser.error(f"--which must name some of {FIGURES}")
    if not set(args.impls) <= {"jax", "torch"} or not args.impls:
        parser.error("--impls must name jax and/or torch")
    if (
        min(args.channels, args.time_steps, args.steps, args.threads, args.cpu_devices, args.rounds)
        < 1
        or args.warmup < 0
    ):
        parser.error(
            "--channels, --time_steps, --steps, --threads, --cpu_devices, --rounds must be >= 1"
        )
    return args


# ---- the configuration (built by the parent) and the inputs (built by each child) ----


def load_config(figure: str, args) -> dict:
    """The figure's config (configs/pretrain.py or align.py) at paper size with this run's
    overrides, as a plain dict."""
    stage = "pretrain" if figure == "pretrain" else "align"
    spec = importlib.util.spec_from_file_location(stage, REPO / "configs" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(getattr(args, "variant", ""))
    config.train.batch_size = batch_size(figure, args)
    config.model.num_channels = max(config.model.num_channels, args.channels)
    if args.attention_dropout is not None:
        config.model.attention_dropout = args.attention_dropout
    if args.channel_bias is not None:
        config.model.channel_bias = args.channel_bias
    for item in args.set:
        path, _, value = item.partition("=")
        section, _, key = path.partition(".")
        if key not in config.get(section, {}):
            raise SystemExit(f"--set {item}: no field {path!r} in the {stage} config")
        config[section][key] = ast.literal_eval(value)
    return config.to_dict()


def batch_size(figure: str, args) -> int:
    if args.batch is not None:
        return args.batch
    return 256 if figure == "infer" else 64


def make_batch(b: int, c: int, t: int, seed: int = 0) -> dict:
    """numpy arrays in the pipeline's batch layout (trace_jax/data/pipeline.py)."""
    rng = np.random.default_rng(seed)

    def unit(*shape):
        x = rng.standard_normal(shape + (TEXT_DIM,)).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    return {
        "series": rng.standard_normal((b, c, t)).astype(np.float32),
        "observed": np.ones((b, c, t), bool),
        "channel_ids": np.broadcast_to(np.arange(c, dtype=np.int32), (b, c)).copy(),
        "text_embedding": unit(b),
        "has_text": np.ones((b,), bool),
        "channel_text_embedding": unit(b, c),
        "channel_text_valid": np.ones((b, c), bool),
        "label": np.zeros((b,), np.int32),
        "index": np.arange(b, dtype=np.int64),
    }


def time_steps(run_step, warmup: int, steps: int) -> dict:
    """Wall and CPU seconds of each timed step, and peak RSS before and during the steps."""
    setup_peak = peak_rss_bytes()
    reset_peak_rss()
    for _ in range(warmup):
        run_step()
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        run_step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu, "setup_peak_rss": setup_peak, "peak_rss": peak_rss_bytes()}


def peak_rss_bytes() -> int:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    from the parent across fork and exec, so every child would report at least the parent's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def reset_peak_rss() -> None:
    """Restarts VmHWM from the current RSS, so the steps' peak excludes compilation's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ---- the children ----


def build_jax_trainer(figure: str, config: dict, channels: int, time_steps: int):
    """(task, mesh, trainer, batch on its devices) for `figure`'s config (a plain dict), as the
    training loop builds them. Split the CPU (`distributed.split_cpu`) before calling."""
    import jax
    import ml_collections

    from trace_jax.train import loop
    from trace_jax.train import sharding as shard_lib
    from trace_jax.train.align import AlignTask
    from trace_jax.train.pretrain import PretrainTask

    config = ml_collections.ConfigDict(config)
    task = (PretrainTask if figure == "pretrain" else AlignTask)(config)
    b = config.train.batch_size
    # The trainer's own mesh (config.mesh: every device on the data axis) and jitted step, so
    # --cpu_devices N runs the step data-parallel over N host devices as a user's run would.
    mesh = shard_lib.make_mesh(config.mesh)
    shard_lib.local_batch_size(b, mesh)
    example = make_batch(b, channels, time_steps)
    trainer = loop.build_trainer(config, task, mesh, example)
    return task, mesh, trainer, jax.device_put(example, trainer.batch_sharding)


def compile_train_step(mesh, trainer, state, batch):
    """The trainer's step compiled for `state` and `batch`."""
    import jax

    # Traced with the mesh set, as train_and_evaluate does: the sharding constraints inside
    # the model and the loss only apply under it.
    with jax.set_mesh(mesh):
        return trainer.step.lower(state, batch).compile()


def run_jax(figure: str, config: dict, args) -> dict:
    import jax

    from trace_jax import distributed, xla_options
    from trace_jax.model.heads import AlignModel

    distributed.split_cpu(args.cpu_devices)  # as trace_jax.main does with config.cpu_devices
    task, mesh, trainer, batch = build_jax_trainer(figure, config, args.channels, args.time_steps)
    if figure == "infer":
        params = jax.jit(task.init_params)(jax.random.key(config["seed"]), batch)  # no optimizer
        embed = jax.jit(
            lambda params, series, observed, ids: task.model.apply(
                {"params": params["model"]}, series, observed, ids, method=AlignModel.embed_series
            ),
            # The options trace_jax.load(...) embeds with.
            compiler_options=xla_options.encoder_forward(task.encoder_config),
        )
        inputs = (params, batch["series"], batch["observed"], batch["channel_ids"])
        t0 = time.perf_counter()
        compiled = embed.lower(*inputs).compile()

        def run_step():
            jax.block_until_ready(compiled(*inputs))

    else:
        state = trainer.init(batch)
        t0 = time.perf_counter()
        compiled = compile_train_step(mesh, trainer, state, batch)

        def run_step():
            nonlocal state
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))

    compile_s = time.perf_counter() - t0
    times = time_steps(run_step, args.warmup, args.steps)
    return {**times, "compile": compile_s, "batch": config["train"]["batch_size"]}


def run_torch(figure: str, config: dict, args) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch_trace as tt

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    # Subnormal weights or activations would drop to microcode on x86; XLA flushes them too.
    torch.set_flush_denormal(True)
    torch.manual_seed(config["seed"])
    cfg = tt.TorchTraceConfig.from_mapping(
        dict(
            config["model"],
            attention_layout=args.torch_attention,
            partial_last_block=args.torch_last_block == "partial",
        )
    )
    b = config["train"]["batch_size"]
    batch = {
        k: torch.from_numpy(v) for k, v in make_batch(b, args.channels, args.time_steps).items()
    }
    batch["channel_ids"] = batch["channel_ids"].long()
    if figure == "pretrain":
        model = tt.TorchPretrainModel(cfg, config["pretrain"]["mask_ratio"])
        loss_fn = model.loss
    else:
        align = config["align"]
        if align["learn_temperature"]:
            raise ValueError("the PyTorch baseline has a fixed temperature")
        model = tt.TorchAlignModel(cfg, TEXT_DIM)
        loss_fn = lambda batch: model.loss(
            batch, align["temperature"], align["channel_weight"], align["hard_negatives"]
        )
    if figure == "infer":
        model.eval()

        def run_step():
            with torch.inference_mode():
                model.embed_series(batch["series"], batch["observed"], batch["channel_ids"])

    else:
        model.train()
        optimizer, scheduler = tt.make_optimizer(model, config["train"])
        step = tt.make_train_step(
            model, optimizer, scheduler, config["train"]["grad_clip"], loss_fn
        )

        def run_step():
            step(batch)

    times = time_steps(run_step, args.warmup, args.steps)
    return {**times, "compile": None, "batch": b}


def child_main(args) -> int:
    impl, figure = args.child.split(":")
    config = json.loads(sys.stdin.read())
    result = (run_jax if impl == "jax" else run_torch)(figure, config, args)
    result["load"] = os.getloadavg()[0]
    print(RESULT + json.dumps(result), flush=True)
    return 0


# ---- the parent ----


def cpu_vendor() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    return ""


def build_mkl_shim(directory: str) -> str | None:
    """A library that tells MKL the CPU is Intel's; None without a C compiler.

    MKL picks its AVX-512 kernels only on Intel CPUs and runs AVX2 ones on AMD CPUs that have
    AVX-512 (Zen 4, Zen 5): 85-100 GFLOPS for the encoder's matmuls here instead of 150-250.
    Preloading this (MKL is linked into libtorch_cpu.so with default visibility, so the symbol
    interposes) is the usual fix on AMD machines.
    """
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = pathlib.Path(directory) / "mkl_intel_cpu.c"
    source.write_text("int mkl_serv_intel_cpu_true(void) { return 1; }\n")
    library = pathlib.Path(directory) / "libmkl_intel_cpu.so"
    built = subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=False
    )
    return str(library) if built.returncode == 0 else None


def malloc_settings(choice: str) -> tuple[dict, list[str], str]:
    """(environment variables, libraries to preload, description) for one --malloc choice."""
    tcmalloc = find_tcmalloc()
    if choice == "tcmalloc" and tcmalloc is None:
        sys.exit("--malloc tcmalloc: no libtcmalloc in `ldconfig -p`")
    if choice in ("auto", "tcmalloc") and tcmalloc is not None:
        # tcmalloc reports every allocation above 1 GiB on stderr; the C=112 runs make some.
        env = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(64 * GIB)}
        return env, [tcmalloc], f"tcmalloc (LD_PRELOAD={tcmalloc})"
    if choice == "glibc":
        return {}, [], "glibc malloc, default settings"
    if choice == "glibc-heap":
        tunables = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={64 * GIB}"
        return {"GLIBC_TUNABLES": tunables}, [], f"glibc malloc, {tunables}"
    return {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, [], "glibc malloc, hugetlb=1"


def child_envs(args, scratch: str) -> tuple[dict, str]:
    """Environments of our children and torch's ({impl: env}), and a description of them."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for key in ("LD_PRELOAD", "GLIBC_TUNABLES", "OMP_WAIT_POLICY"):
        env.pop(key, None)
    jax_vars, jax_preload, jax_note = malloc_settings(args.malloc)
    torch_vars, torch_preload, torch_note = malloc_settings(args.torch_malloc or args.malloc)
    notes = [jax_note if jax_note == torch_note else f"ours: {jax_note}; torch: {torch_note}"]
    jax_env = {**env, **jax_vars, "LD_PRELOAD": " ".join(jax_preload)}
    if args.cpu_devices > 1:
        notes.append(f"ours: {args.cpu_devices} host devices, data-parallel")

    want_shim = args.mkl_intel_path == "on" or (
        args.mkl_intel_path == "auto" and cpu_vendor() == "AuthenticAMD"
    )
    shim = build_mkl_shim(scratch) if want_shim else None
    if args.mkl_intel_path == "on" and shim is None:
        sys.exit("--mkl_intel_path on: no C compiler to build the shim")
    if shim is not None:
        torch_preload = [*torch_preload, shim]
        widest = "AVX-512" if "avx512f" in (cpu_flags() or ()) else "AVX2, no AVX-512 here"
        notes.append(f"torch: MKL's Intel code path forced ({widest})")
    torch_env = {**env, **torch_vars, "LD_PRELOAD": " ".join(torch_preload)}
    if args.omp_wait_policy != "default":
        torch_env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
        notes.append(f"torch: OMP_WAIT_POLICY={args.omp_wait_policy.upper()}")
    return {"jax": jax_env, "torch": torch_env}, "; ".join(notes)


def run_child(impl: str, figure: str, config: dict, argv: list[str], env: dict):
    """Runs one (implementation, figure) in a fresh process; its result dict or an error."""
    cmd = [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        *argv,
        "--child",
        f"{impl}:{figure}",
    ]
    proc = subprocess.run(
        cmd,
        input=json.dumps(config),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :]), None
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode}"
        if proc.returncode == -signal.SIGKILL:
            why += " (the kernel's out-of-memory killer, most likely)"
        return None, why
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return None, f"exit status {proc.returncode}: {tail[:300]}"


def describe(figure: str, impl: str, r: dict, channels: int) -> str:
    wall, cpu = statistics.median(r["wall"]), statistics.median(r["cpu"])
    compile_s = f" | compile {r['compile']:.1f} s" if r["compile"] is not None else ""
    return (
        f"{figure:8s} {impl:5s} batch {r['batch']} C={channels}: step {wall:.3f} s "
        f"(min {min(r['wall']):.3f}, max {max(r['wall']):.3f}, n={len(r['wall'])}), "
        f"cpu {cpu:.3f} s | {r['batch'] / wall:.2f} samples/s{compile_s} | peak RSS "
        f"{r['peak_rss'] / GIB:.2f} GiB in steps ({r['setup_peak_rss'] / GIB:.2f} before) | "
        f"load {r['load']:.2f}"
    )


def machine() -> str:
    """The CPU as /proc/cpuinfo names it, with its family, model and clock: machines sold under
    one name differ (an "AMD EPYC" here was Zen 5 in some sessions and Zen 4 at half the
    speed in another)."""
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            first_cpu = f.read().split("\n\n")[0].splitlines()
    except OSError:
        return f"{model}, {os.cpu_count()} cores"
    fields = {key.strip(): value.strip() for key, _, value in (x.partition(":") for x in first_cpu)}
    details = [f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"]
    if "cpu MHz" in fields:
        details.append(f"{float(fields['cpu MHz']):.0f} MHz")
    if "avx512_bf16" in fields.get("flags", "").split():
        details.append("avx512_bf16")
    return f"{fields.get('model name', model)} ({', '.join(details)}), {os.cpu_count()} cores"


def bf16_caveat() -> str | None:
    """A line for bfloat16 figures on a CPU without bfloat16 instructions: both sides then run
    fallbacks (ours widens to float32, PyTorch's bf16 products ran at 1-24 GFLOP/s on a Zen 3),
    and a ratio of fallbacks says nothing about the work (BENCHMARKS.md, session 17)."""
    if bf16_dot_instructions() is not False:
        return None
    return (
        "caution: no AVX512-BF16 or AMX-BF16 on this CPU, so both sides' bfloat16 products run "
        "fallbacks (PyTorch's far slower); compare float32 here"
    )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        cores = sorted(os.sched_getaffinity(0))[: args.threads]
        os.sched_setaffinity(0, cores)
        return child_main(args)
    with tempfile.TemporaryDirectory() as scratch:
        return compare(args, argv, scratch)


def compare(args, argv: list[str], scratch: str) -> int:
    """The parent: the equivalence check, then one child per (figure, implementation)."""
    import jax
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch_trace

    envs, settings = child_envs(args, scratch)
    configs = {figure: load_config(figure, args) for figure in args.which}
    model = next(iter(configs.values()))["model"]
    print(
        f"versus_torch: {machine()}; jax {jax.__version__}, torch {torch.__version__}; "
        f"{args.threads} threads; {settings}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    print(
        f"model d={model['d_model']} heads={model['num_heads']} layers={model['num_layers']} "
        f"mlp={model['mlp_dim']} P={model['patch_len']} channel_bias={model['channel_bias']} "
        f"level_embedding={model['level_embedding']} dropout={model['dropout']} "
        f"attention_dropout={model['attention_dropout']} "
        f"torch_attention={args.torch_attention} torch_last_block={args.torch_last_block} "
        f"remat={model.get('remat')} "
        f"scan_layers={model.get('scan_layers')}; T={args.time_steps} "
        f"C={args.channels}; {args.warmup} warm-up + {args.steps} timed steps",
        flush=True,
    )
    if model.get("bf16_matmuls") and (caveat := bf16_caveat()):
        print(caveat, flush=True)
    worst = torch_trace.check(
        modes=(model["channel_bias"],), layouts=(args.torch_attention,), log=lambda line: None
    )
    print(
        f"check: PyTorch model vs ours (tiny config; outputs, losses, gradients) max diff "
        f"{worst:.2e}",
        flush=True,
    )

    ratios = {}  # figure -> ours/torch samples/s of each round that timed both
    for figure in args.which:
        ratios[figure] = []
        for round_ in range(args.rounds):
            rates, cpu = {}, {}
            for impl in args.impls:
                result, error = run_child(impl, figure, configs[figure], argv, envs[impl])
                if error:
                    print(f"{figure:8s} {impl:5s} FAILED: {error}", flush=True)
                    continue
                rates[impl] = result["batch"] / statistics.median(result["wall"])
                cpu[impl] = statistics.median(result["cpu"])
                print(describe(figure, impl, result, args.channels), flush=True)
            if len(rates) == 2:
                ratios[figure].append(rates["jax"] / rates["torch"])
                print(
                    f"{figure:8s} ours/torch samples/s = {ratios[figure][-1]:.2f} (by CPU "
                    f"seconds per step: {cpu['torch'] / cpu['jax']:.2f})"
                    + (f"; round {round_ + 1} of {args.rounds}" if args.rounds > 1 else ""),
                    flush=True,
                )
        if len(ratios[figure]) > 1:
            print(
                f"{figure:8s} ours/torch over {len(ratios[figure])} rounds: median "
                f"{statistics.median(ratios[figure]):.2f} (each "
                f"{', '.join(f'{r:.2f}' for r in ratios[figure])})",
                flush=True,
            )

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    # The headline: the first figure (pretrain, align, infer in order) that both sides timed.
    timed = [f for f in FIGURES if ratios.get(f)]
    if not timed:
        print("jax_over_torch: no figure was timed on both sides", flush=True)
        return 1 if len(args.impls) == 2 else 0  # both asked for: one of them failed
    print(f"jax_over_torch={statistics.median(ratios[timed[0]]):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
