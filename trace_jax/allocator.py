"""Which malloc the process runs on, and where tcmalloc is, for the CPU launch hint.

Why: on the CPU a training step allocates its large activations anew every step. glibc's malloc
returns blocks of tens of MB to the system when they are freed and page-faults them in again on
the next step; tcmalloc keeps and reuses them. Preloaded (`LD_PRELOAD`), it made the :cpu
alignment job 1.15x and the paper-size bf16 training steps 1.2x faster on the project's 2-core
machine (BENCHMARKS.md, session 16). It has to be chosen before the process starts, so the
package can only find it and say so; `make run` preloads it. Not for a step that needs most of
the memory: tcmalloc keeps freed blocks, and at 112 channels it ran out where glibc did not.
"""

from __future__ import annotations

import pathlib
import subprocess

TCMALLOC_NAMES = ("libtcmalloc.so.4", "libtcmalloc_minimal.so.4")


def tcmalloc_in_ldconfig(listing: str) -> str | None:
    """The path of tcmalloc (the full library first, then the minimal one) in `ldconfig -p`'s
    output, or None."""
    for name in TCMALLOC_NAMES:
        for line in listing.splitlines():
            if line.strip().startswith(name + " ") and "=>" in line:
                return line.split("=>")[-1].strip()
    return None


def find_tcmalloc() -> str | None:
    """The installed tcmalloc's path (Debian/Ubuntu: libgoogle-perftools4), or None."""
    for ldconfig in ("ldconfig", "/sbin/ldconfig"):
        try:
            listing = subprocess.run(
                [ldconfig, "-p"], capture_output=True, text=True, check=False
            ).stdout
        except OSError:
            continue
        return tcmalloc_in_ldconfig(listing)
    return None


def tcmalloc_loaded(maps: str | None = None) -> bool | None:
    """Whether this process has tcmalloc mapped (from /proc/self/maps, or `maps`); None where
    that cannot be read (not Linux)."""
    if maps is None:
        try:
            maps = pathlib.Path("/proc/self/maps").read_text()
        except OSError:
            return None
    return "libtcmalloc" in maps


def cpu_launch_hint() -> str | None:
    """One line for a CPU run not on tcmalloc: how to run it on tcmalloc, or how to install it;
    None on tcmalloc or where that cannot be told."""
    if tcmalloc_loaded() is not False:
        return None
    path = find_tcmalloc()
    if path is None:
        return (
            "glibc's malloc: training steps run 1.15-1.2x faster on tcmalloc "
            "(Debian/Ubuntu: apt-get install libgoogle-perftools4, then `make run` preloads it)"
        )
    return f"glibc's malloc: training steps run 1.15-1.2x faster with LD_PRELOAD={path}"
