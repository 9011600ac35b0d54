"""Telling whether the CPU multiplies bfloat16 in hardware (trace_jax/cpu_features.py)."""

from trace_jax import cpu_features

# Trimmed /proc/cpuinfo of the machines the benchmarks ran on, and of an ARM host.
ZEN3 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
flags\t\t: fpu vme sse2 avx fma avx2 sha_ni vaes
processor\t: 1
flags\t\t: fpu avx512_bf16
"""
ZEN4 = ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace("vaes\n", "vaes avx512f avx512_bf16\n")
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n"


def test_flags_are_the_first_processors_and_none_without_an_x86_flags_line():
    assert cpu_features.cpu_flags(ZEN3) == {
        "fpu",
        "vme",
        "sse2",
        "avx",
        "fma",
        "avx2",
        "sha_ni",
        "vaes",
    }
    assert "avx512_bf16" in cpu_features.cpu_flags(ZEN4)
    assert cpu_features.cpu_flags(ARM) is None


def test_bf16_hint_only_where_the_cpu_lacks_bfloat16_dot_instructions():
    assert "AVX512-BF16" in cpu_features.bf16_matmul_hint(cpu_features.cpu_flags(ZEN3))
    assert cpu_features.bf16_matmul_hint(cpu_features.cpu_flags(ZEN4)) is None
    assert cpu_features.bf16_matmul_hint(frozenset({"avx2", "amx_bf16"})) is None
    assert cpu_features.bf16_matmul_hint(frozenset()) is not None  # no flags at all: x86 without


def test_bf16_hint_is_silent_where_the_cpu_cannot_be_told(monkeypatch):
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: None)
    assert cpu_features.bf16_matmul_hint() is None
