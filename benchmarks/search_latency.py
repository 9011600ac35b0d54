"""Exact top-k search latency: trace_jax.retrieval.topk against faiss-cpu IndexFlatIP.

Run from the repository root (faiss-cpu comes with the `bench` extra):

    .venv/bin/python benchmarks/search_latency.py
    .venv/bin/python benchmarks/search_latency.py --sizes 200000 --repeats 3 --block-rows 8192
    taskset -c 1 .venv/bin/python benchmarks/search_latency.py --threads 1     # one core each

What is measured: top-`--k` (10) of `--queries` (1,000) queries over banks of `--sizes`
(200,000 and 1,000,000) vectors of dimension 384, float32, standard normal then L2-normalised,
seed 0. The smaller bank is the first rows of the larger one; the queries are the same for every
bank and both libraries. faiss runs on `--threads` OpenMP threads (default: all cores); XLA sizes
its CPU thread pool to the cores the process may use, so pin the process (`taskset`) to give
both fewer. On a loaded machine faiss's OpenMP threads wait for each other (its wall and CPU
time both grow several-fold at a load average of 5 on 2 cores) while XLA's degrade gently: there,
compare single-core runs, or CPU times.

Per bank size, one line per library:
  setup      faiss: `IndexFlatIP.add`; ours: `put_bank`, the one-time copy of the bank onto the
             devices (searches then move only the queries);
  first      the first search, untimed in the median: for ours it includes compiling the search
             step, so compile is about first - median;
  median     the median wall-clock seconds of `--repeats` searches after it (min, max);
  cpu        the median CPU seconds (user + system, all threads) of this process per search: on
             a shared machine wall time swings with other jobs' load while CPU time mostly does
             not, so compare both;
  load       the 1-minute load average when the line was printed;
and for ours `ours/faiss`, its median wall time over faiss's and then the same of CPU times,
and the agreement with faiss: `ids` is the fraction of (query, rank) slots holding the same id,
`sets` the mean fraction of each query's top-k ids that faiss also returns. They differ from 1
only where two items' scores tie to within float32 rounding, which the two libraries round
differently.

The last line is `ours_over_faiss_<size>=<ratio>`: our median seconds over faiss's at the largest
size (`ours_over_faiss_1m` by default); lower is better.
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import jax
import numpy as np

from trace_jax.retrieval.topk import put_bank, search


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed(fn, repeats: int) -> tuple[float, list[float], list[float], object]:
    """(first call's seconds, later calls' wall seconds, their CPU seconds, last result)."""
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return first, wall, cpu, result


def line(name: str, size: int, setup: float, first: float, wall: list, cpu: list, extra="") -> str:
    return (
        f"{name:5s} n={size:>9,d} setup={setup:6.2f}s first={first:6.2f}s "
        f"median={np.median(wall):6.3f}s ({min(wall):.3f}, {max(wall):.3f}) "
        f"cpu={np.median(cpu):6.2f}s load={os.getloadavg()[0]:.2f}{extra}"
    )


def short(n: int) -> str:
    return (
        f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)
    )


def run_faiss(bank: np.ndarray, queries: np.ndarray, args) -> tuple[float, float, np.ndarray]:
    """Prints faiss's line; returns its median wall and CPU seconds and its ids."""
    start = time.perf_counter()
    index = faiss.IndexFlatIP(args.dim)
    index.add(bank)
    setup = time.perf_counter() - start
    first, wall, cpu, (_, ids) = timed(lambda: index.search(queries, args.k), args.repeats)
    print(line("faiss", len(bank), setup, first, wall, cpu), flush=True)
    return float(np.median(wall)), float(np.median(cpu)), ids


def run_ours(bank, queries, faiss_ids, faiss_seconds, faiss_cpu, args) -> float:
    """Prints our line with the agreement with faiss; returns our median over faiss's."""
    start = time.perf_counter()
    device_bank = put_bank(bank, block_rows=args.block_rows)
    jax.block_until_ready(device_bank.blocks)
    setup = time.perf_counter() - start
    first, wall, cpu, (_, ids) = timed(
        lambda: search(
            device_bank, queries, args.k, query_block=args.query_block, group=args.group
        ),
        args.repeats,
    )
    same_slot = (ids == faiss_ids).mean()
    same_set = np.mean([len(np.intersect1d(a, b)) for a, b in zip(ids, faiss_ids)]) / args.k
    ratio = np.median(wall) / faiss_seconds
    cpu_ratio = np.median(cpu) / faiss_cpu
    extra = f" ids={same_slot:.4f} sets={same_set:.4f} ours/faiss={ratio:.2f} cpu {cpu_ratio:.2f}"
    print(line("ours", len(bank), setup, first, wall, cpu, extra), flush=True)
    return float(ratio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--block-rows", type=int, default=4096)
    parser.add_argument("--query-block", type=int, default=1024)
    parser.add_argument("--group", type=int, default=16)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    queries = unit_rows(rng, args.queries, args.dim)
    full = unit_rows(rng, sizes[-1], args.dim)
    print(
        f"queries={args.queries} dim={args.dim} k={args.k} threads={args.threads} "
        f"devices={jax.devices()} block_rows={args.block_rows} query_block={args.query_block} "
        f"group={args.group} faiss={faiss.__version__} jax={jax.__version__}",
        flush=True,
    )
    ratio = None
    for size in sizes:
        faiss_seconds, faiss_cpu, faiss_ids = run_faiss(full[:size], queries, args)
        ratio = run_ours(full[:size], queries, faiss_ids, faiss_seconds, faiss_cpu, args)
    print(f"ours_over_faiss_{short(sizes[-1])}={ratio:.3f}")


if __name__ == "__main__":
    main()
