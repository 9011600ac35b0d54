"""Whether the host CPU multiplies bfloat16 in hardware, for the bf16 launch hint.

Why: `model.bf16_matmuls` (and `trace_jax.load(..., bf16_matmuls=True)`) pays off only where
the cores have bfloat16 dot-product instructions (x86: AVX512-BF16 on AMD Zen 4/5 and Intel
Cooper Lake onwards, AMX-BF16 on Sapphire Rapids onwards). There the block's products run at
about twice the float32 rate. Elsewhere XLA's kernels widen the operands to float32 first: on
an AVX2-only Zen 3 the block's bf16 products ran at 83-104 GFLOP/s against float32's 101-162,
and the paper-size pretraining step took 9.71 s against 7.31 s in float32 (BENCHMARKS.md,
session 17).
"""

from __future__ import annotations

import pathlib

# The x86 /proc/cpuinfo flags that give XLA:CPU's kernels bfloat16 dot products.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The first processor's x86 feature flags from /proc/cpuinfo (or `cpuinfo`); None where
    there are none to read (not Linux, or not x86: ARM lists "Features" instead)."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def bf16_dot_instructions(flags: frozenset[str] | None = None) -> bool | None:
    """Whether the x86 CPU (`flags`, default this one's) has bfloat16 dot instructions; None
    where that cannot be told."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    return any(flag in flags for flag in X86_BF16_FLAGS)


def bf16_matmul_hint(flags: frozenset[str] | None = None) -> str | None:
    """One line for a CPU run with bfloat16 matmuls on an x86 CPU without bfloat16 dot
    instructions; None where it has them or where that cannot be told."""
    if bf16_dot_instructions(flags) is not False:
        return None
    return (
        "bf16_matmuls on a CPU without AVX512-BF16 or AMX-BF16: XLA widens the operands to "
        "float32 in its kernels, so these matmuls run slower than float32 ones; turn it off"
    )
