"""The hashed dropout mask: its rate, no structure along or across axes, key sensitivity,
gradient, and the same mask under sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trace_jax.model.dropout import Dropout, keep_mask


def _seed(i):
    return jax.random.bits(jax.random.key(i), (2,), jnp.uint32)


def _apply(x, rate, key=0, deterministic=False):
    return Dropout(rate).apply({}, x, deterministic, rngs={"dropout": jax.random.key(key)})


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_keep_fraction_and_scaling(rate):
    x = jnp.ones((256, 1000))
    y = np.asarray(_apply(x, rate))
    kept = y != 0
    n, p = kept.size, 1.0 - rate
    assert abs(kept.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[kept], 1.0 / p, rtol=1e-6)


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))


@pytest.mark.parametrize("shape", [(512, 384), (8, 7, 31, 384), (4096, 3)])
def test_mask_has_no_structure_along_or_across_axes(shape):
    m = np.asarray(keep_mask(_seed(3), shape, 0.5), np.float64).reshape(-1, shape[-1])
    bound = 5 / np.sqrt(m.size)
    assert abs(_corr(m[:, 1:], m[:, :-1])) < bound * 1.5  # neighbours along the last axis
    assert abs(_corr(m[1:], m[:-1])) < bound * 1.5  # the same column of neighbouring rows
    assert abs(_corr(m[1:, 1:], m[:-1, :-1])) < bound * 1.5  # diagonal neighbours
    # Per-column and per-row keep counts spread like a binomial's: a structured hash would
    # give some columns or rows systematically more (or exactly equal) counts.
    for counts, trials in ((m.sum(0), m.shape[0]), (m.sum(1), m.shape[1])):
        if counts.size < 50:
            continue
        chi2 = ((counts - trials / 2) ** 2 / (trials / 4)).sum()
        dof = counts.size
        assert abs(chi2 - dof) < 6 * np.sqrt(2 * dof), (chi2, dof)


def test_same_key_same_mask_other_keys_independent():
    shape, rate = (300, 500), 0.3
    a = np.asarray(keep_mask(_seed(0), shape, rate))
    np.testing.assert_array_equal(a, np.asarray(keep_mask(_seed(0), shape, rate)))
    p = 1 - rate
    expected = p * p + (1 - p) * (1 - p)
    sigma = np.sqrt(expected * (1 - expected) / a.size)
    seed = np.asarray(_seed(0))
    others = [
        _seed(1),
        seed ^ np.array([1, 0], np.uint32),
        seed ^ np.array([0, 1 << 31], np.uint32),
    ]
    for other in others:
        b = np.asarray(keep_mask(jnp.asarray(other), shape, rate))
        assert abs((a == b).mean() - expected) < 5 * sigma


def test_gradient_is_the_forward_mask_over_the_keep_probability():
    rate = 0.25
    x = jax.random.normal(jax.random.key(1), (64, 48))
    w = jax.random.normal(jax.random.key(2), (64, 48))
    y = _apply(x, rate, key=7)
    g = jax.grad(lambda x: (w * _apply(x, rate, key=7)).sum())(x)
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(
        np.asarray(g), np.where(kept, np.asarray(w) / (1 - rate), 0), rtol=1e-6
    )


def test_off_paths_and_edge_rates():
    x = jnp.arange(12.0).reshape(3, 4) + 1
    np.testing.assert_array_equal(_apply(x, 0.5, deterministic=True), x)
    np.testing.assert_array_equal(_apply(x, 0.0), x)
    np.testing.assert_array_equal(_apply(x, 1.0), jnp.zeros_like(x))
    assert _apply(jnp.ones(()), 0.5).shape == ()
    assert _apply(jnp.ones((5,), jnp.bfloat16), 0.5).dtype == jnp.bfloat16


def test_sharded_input_gets_the_unsharded_mask():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    x = jax.random.normal(jax.random.key(0), (16, 6, 40))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", None, "model")))
    f = jax.jit(lambda x: _apply(x, 0.4, key=5))
    np.testing.assert_array_equal(np.asarray(f(sharded)), np.asarray(f(x)))
