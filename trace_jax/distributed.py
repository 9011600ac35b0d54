"""Multi-host start-up: `jax.distributed.initialize` only on a cluster or with a coordinator."""

from __future__ import annotations

import logging
import os
import re

import jax

# Environment variables that mean "this process is one of several that JAX can discover".
CLUSTER_MARKERS = {
    "TPU pod": ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"),
    "SLURM": ("SLURM_JOB_ID",),
    "GKE / JobSet": ("JOBSET_NAME",),
    "Open MPI": ("OMPI_COMM_WORLD_SIZE",),
}


def detected_cluster() -> str | None:
    for name, variables in CLUSTER_MARKERS.items():
        if any(v in os.environ for v in variables):
            if name == "SLURM" and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
                continue  # a single-task SLURM job is one process: nothing to join
            if name == "TPU pod" and "," not in os.environ.get("TPU_WORKER_HOSTNAMES", ","):
                continue  # a single-host TPU VM
            return name
    return None


def maybe_initialize(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
    """Must run before any JAX computation; does nothing on a single machine."""
    if coordinator_address:
        logging.info(
            "joining %s as process %d of %d", coordinator_address, process_id, num_processes
        )
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    elif (cluster := detected_cluster()) is not None:
        logging.info("%s detected: jax.distributed.initialize()", cluster)
        jax.distributed.initialize()


def split_cpu(num_devices: int) -> None:
    """Makes JAX's CPU backend `num_devices` host devices (0: leave its default). Must run
    before any JAX computation, like `maybe_initialize`."""
    if num_devices < 0:
        raise ValueError(f"cpu_devices must be >= 0 (0: JAX's default), got {num_devices}")
    if num_devices:
        jax.config.update("jax_num_cpu_devices", num_devices)


_HOST_DEVICE_COUNT = re.compile(r"\s*--xla_force_host_platform_device_count=\S*")


def with_host_device_count(xla_flags: str, num_devices: int | None) -> str:
    """`xla_flags` with its host device count set to `num_devices` (None: removed), every other
    flag kept: a child process started with them keeps the caller's XLA settings."""
    flags = _HOST_DEVICE_COUNT.sub("", xla_flags).strip()
    if num_devices is None:
        return flags
    return f"{flags} --xla_force_host_platform_device_count={num_devices}".strip()
