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
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=timeout))
            if codes[-1] != 0:
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for t in relays:
            t.join(timeout=5)
    return next((c for c in codes if c != 0), 0) if len(codes) == num_processes else 1


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
