"""Where a profiled step's time goes: sums the ops of a jax.profiler Perfetto trace by name.

    .venv/bin/python benchmarks/trace_summary.py DIR [--top 25] [--process GPU] [--hlo FILE]

DIR is a --profile_dir of benchmarks/utilization.py (or any directory holding a
`perfetto_trace.json.gz` written by `jax.profiler.start_trace(..., create_perfetto_trace=True)`).
Only the processes whose name contains --process count: `GPU` keeps the device's streams (its
kernels), `CPU` the host's threads. Per op name: total time, share, calls. Ops are grouped by
their name with trailing digits dropped (`fusion.12` and `fusion.7` are one line), and also by
kind (matmul-like, fusion, copy/transpose, other). With --hlo (the step's optimized HLO text,
e.g. from XLA_FLAGS=--xla_dump_to), each fusion kernel is also charged to the model code it came
from: the `op_name` metadata of its HLO instruction, shortened to the layer and primitive
(`attention/dot_general`, `mlp_norm/reduce_sum`, `backward: mlp/gelu`...). The last line is
`busy=<share>`: device time covered by ops over the wall span of the trace on the busiest stream
(1 - idle).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re


def load_events(directory: str) -> tuple[list[dict], dict[int, str]]:
    paths = sorted(pathlib.Path(directory).rglob("perfetto_trace.json.gz"))
    if not paths:
        raise SystemExit(f"no perfetto_trace.json.gz under {directory}")
    with gzip.open(paths[-1]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    return events, processes


HLO_LINE = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]+)\"")


def hlo_sources(path: str) -> dict[str, str]:
    """Kernel name (an HLO instruction's name with '.' and '-' as '_') -> where it came from."""
    sources = {}
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        text = f.read()
    for line in text.splitlines():
        m = HLO_LINE.match(line)
        if m:
            sources[re.sub(r"[.\-]", "_", m.group(1))] = shorten(m.group(2))
    return sources


def shorten(op_name: str) -> str:
    """'jit(train_step)/transpose(jvp(AlignModel))/encoder/block_3/mlp/fc1/dot_general' ->
    'backward: mlp/fc1/dot_general'."""
    backward = "transpose(" in op_name
    parts = [p for p in op_name.split("/") if "(" not in p and not re.fullmatch(r"block_\d+", p)]
    parts = [p for p in parts if p not in ("encoder", "block", "blocks")]
    return ("backward: " if backward else "") + "/".join(parts[-3:])


def kind_of(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ("gemm", "dot", "matmul", "cublas", "cutlass", "xmma", "sm90", "ynn")):
        return "matmul"
    if any(k in low for k in ("copy", "transpose", "memcpy", "memset")):
        return "copy/transpose"
    if "fusion" in low or "loop_" in low or "input_" in low:
        return "fusion"
    return "other"


def summarise(events, processes, process: str, top: int, sources: dict[str, str]) -> float:
    keep = {pid for pid, name in processes.items() if process.lower() in name.lower()}
    ops = [
        e
        for e in events
        if e.get("ph") == "X" and e.get("pid") in keep and not e["name"].startswith(("$", "ThunkExecutor"))
    ]
    if not ops:
        raise SystemExit(f"no ops in processes matching {process!r}: {sorted(processes.values())}")
    by_name, calls, by_kind = collections.Counter(), collections.Counter(), collections.Counter()
    by_source = collections.Counter()
    per_stream = collections.defaultdict(list)
    for e in ops:
        name = re.sub(r"[._]\d+$", "", e["name"])
        by_name[name] += e["dur"]
        calls[name] += 1
        by_kind[kind_of(e["name"])] += e["dur"]
        source = sources.get(re.sub(r"[.\-]", "_", e["name"]))
        by_source[source or f"({kind_of(e['name'])}, no HLO source)"] += e["dur"]
        per_stream[(e["pid"], e["tid"])].append((e["ts"], e["dur"]))
    total = sum(by_name.values())
    print(f"{len(ops)} ops, {total / 1e3:.2f} ms summed, processes: "
          f"{sorted(processes[p] for p in keep)}")
    for kind, us in by_kind.most_common():
        print(f"  {kind:16s} {us / 1e3:10.2f} ms {us / total:6.1%}")
    print(f"top {top} by name:")
    for name, us in by_name.most_common(top):
        print(f"  {us / 1e3:10.2f} ms {us / total:6.1%} {calls[name]:6d}x  {name[:90]}")
    if sources:
        print(f"top {top} by source:")
        for source, us in by_source.most_common(top):
            print(f"  {us / 1e3:10.2f} ms {us / total:6.1%}  {source[:100]}")
    busiest = max(per_stream.values(), key=lambda spans: sum(d for _, d in spans))
    start = min(t for t, _ in busiest)
    end = max(t + d for t, d in busiest)
    return sum(d for _, d in busiest) / (end - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("directory")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--process", default="GPU")
    p.add_argument("--hlo", default="", help="the profiled step's optimized HLO text")
    args = p.parse_args(argv)
    events, processes = load_events(args.directory)
    sources = hlo_sources(args.hlo) if args.hlo else {}
    busy = summarise(events, processes, args.process, args.top, sources)
    print(f"busy={busy:.3f}")


if __name__ == "__main__":
    main()
