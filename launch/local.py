r"""Runs N processes of the main command on this machine, as a multi-host job would.

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
      --config=configs/align.py:tiny --workdir=runs/multihost

Each process gets its own fake CPU devices and joins process 0's coordinator on 127.0.0.1:
the same code path as a TPU pod or a SLURM job, on one machine. Output lines are prefixed with
the process index; if one process fails, the others are stopped and the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

from trace_jax.distributed import with_host_device_count

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _relay(index: int, stream) -> None:
    for line in stream:
        sys.stdout.write(f"[{index}] {line}")
    sys.stdout.flush()


def wait_for_all(
    procs: list[subprocess.Popen], timeout: float | None = None, poll_every: float = 0.1
) -> int:
    """0 once every process has exited 0; as soon as one fails, kills the others and returns
    its exit code (the lowest index's, when several have failed by then).

    Polls them all rather than waiting on each in turn: a process blocked in a collective on a
    failed peer may never exit by itself. Raises subprocess.TimeoutExpired after `timeout`
    seconds; no process outlives this call.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = next(((i, c) for i, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is not None:
                print(
                    f"[launcher] process {failed[0]} exited with {failed[1]}; stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                return failed[1]
            if all(c == 0 for c in codes):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(procs[0].args, timeout)
            time.sleep(poll_every)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def launch(
    main_args: list[str], num_processes: int, devices_per_process: int, timeout: float | None = None
) -> int:
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": with_host_device_count(os.environ.get("XLA_FLAGS", ""), devices_per_process),
    }
    procs, relays = [], []
    for i in range(num_processes):
        cmd = [
            sys.executable,
            "-m",
            "trace_jax.main",
            *main_args,
            f"--coordinator_address={address}",
            f"--num_processes={num_processes}",
            f"--process_id={i}",
        ]
        p = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        procs.append(p)
        relays.append(threading.Thread(target=_relay, args=(i, p.stdout), daemon=True))
        relays[-1].start()
    try:
        return wait_for_all(procs, timeout)
    finally:
        for t in relays:
            t.join(timeout=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=4)
    parser.add_argument(
        "main_args", nargs=argparse.REMAINDER, help="arguments for trace_jax.main, after --"
    )
    args = parser.parse_args()
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
    return launch(main_args, args.num_processes, args.devices_per_process)


if __name__ == "__main__":
    sys.exit(main())
