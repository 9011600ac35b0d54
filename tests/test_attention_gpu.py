"""The Pallas attention kernel on a GPU against the batched XLA path (skipped without a GPU).

On the device machine: `JAX_PLATFORMS= python3 -m pytest -q -s tests/test_attention_gpu.py`
(benchmarks/gpu_check.sh runs it). bfloat16 rounds differently in the two paths, so each is
compared with the float32 batched path (paper size, initial weights): the kernel path's error
must be no larger than the batched bfloat16 path's, give or take a quarter.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_encoder import awkward_inputs
from trace_jax.model import EncoderConfig, TraceEncoder

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")

PAPER = EncoderConfig(dropout=0.0, level_embedding=True)


def outputs_and_grads(cfg, params, series, observed):
    """The [CLS] embedding and the parameter gradients of a fixed projection of the [CLS] and
    channel embeddings."""

    def loss(params):
        out = TraceEncoder(cfg).apply(params, series, observed)
        cls, channels = (out[k].astype(jnp.float32) for k in ("cls", "channels"))
        w_cls, w_channels = (
            jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate((cls, channels))
        )
        return jnp.sum(w_cls * cls) + jnp.sum(w_channels * channels), cls

    (_, cls), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return cls, grads


def relative_error(got, want):
    """||got - want|| / ||want|| over every leaf."""
    got, want = (
        np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
        for t in (got, want)
    )
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_pallas_path_matches_the_batched_path_in_bfloat16():
    series, observed = awkward_inputs(16, 7, 186, seed=0)
    params = TraceEncoder(PAPER).init(jax.random.key(0), series, observed)
    with jax.default_matmul_precision("float32"):  # not TF32
        exact = outputs_and_grads(PAPER, params, series, observed)
    bf16 = dataclasses.replace(PAPER, dtype="bfloat16")
    batched = outputs_and_grads(bf16, params, series, observed)
    kernel = outputs_and_grads(
        dataclasses.replace(bf16, attention_impl="pallas"), params, series, observed
    )
    for name, i in (("[CLS] embedding", 0), ("parameter gradients", 1)):
        batched_err = relative_error(batched[i], exact[i])
        kernel_err = relative_error(kernel[i], exact[i])
        print(
            f"{name}: relative error vs float32, batched bf16 {batched_err:.4f}, "
            f"Pallas bf16 {kernel_err:.4f}"
        )
        assert kernel_err <= 1.25 * batched_err + 1e-3, name
