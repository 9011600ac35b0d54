"""XLA compiler options for the series encoder's forward-only programs, per backend.

On the CPU, XLA (jax 0.10) hands dots and their neighbours to YNNPACK by default. For training
steps that is the fastest setting measured on the project's 2-core AMD EPYC (Zen 5): paper-size
pretraining 3.37 s a step against 3.74 s with YNNPACK's fusions off, and every other fusion set
tried was slower still. Forward-only programs go the other way: the paper-size series
embeddings at batch 256 take 3.67 s with them off against 4.27 s (+16% series/s), the `:cpu`
size's 0.349 s against 0.392 s (+12%), with outputs equal to 3e-7. Not a rule for every
forward pass: the MiniLM text tower measured 8% slower with them off (14.6k against 15.9k
tokens/s), so it keeps the defaults. `benchmarks/xla_options.py` reruns the encoder comparison.

With `model.bf16_matmuls` the defaults win again: the bfloat16 dots are YNNPACK's, and the
paper-size embeddings take 2.48 s with them against 2.98 s without (`xla_options.py --set
model.bf16_matmuls=True`).

Options apply per jitted function (`jax.jit(..., compiler_options=...)`), so one process trains
with the defaults and embeds (and evaluates) with these. Other backends get none.
"""

from __future__ import annotations

import jax

from trace_jax.model import EncoderConfig

_CPU_FORWARD = {"xla_cpu_experimental_ynn_fusion_type": ""}


def encoder_forward(config: EncoderConfig | None, backend: str | None = None) -> dict[str, str]:
    """Options for a jitted forward pass of the series encoder `config` (None: a program
    without one) on `backend` (default: jax's)."""
    if config is None or config.bf16_matmuls or (backend or jax.default_backend()) != "cpu":
        return {}
    return dict(_CPU_FORWARD)
