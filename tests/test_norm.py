"""The LayerNorm that keeps its normalised output: values and gradients against flax's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.numpy_reference import layer_norm as reference_layer_norm
from trace_jax.model.norm import LayerNorm, normalise


def _inputs(seed, shape=(3, 7, 48)):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    # Rows with a large mean and a small spread: where E[x^2] - E[x]^2 cancels.
    x = jax.random.normal(k1, shape) * jnp.linspace(0.1, 3.0, shape[-2])[:, None] + 20.0
    params = {
        "params": {
            "scale": 1.0 + 0.3 * jax.random.normal(k2, shape[-1:]),
            "bias": 0.3 * jax.random.normal(k3, shape[-1:]),
        }
    }
    return x, params


def test_values_match_float64_at_least_as_well_as_flax_and_parameters_match_nn_layer_norm():
    x, params = _inputs(0)
    assert jax.tree.structure(LayerNorm().init(jax.random.key(0), x)) == jax.tree.structure(
        nn.LayerNorm().init(jax.random.key(0), x)
    )
    expected = reference_layer_norm(x, **params["params"])
    ours_error = np.abs(LayerNorm().apply(params, x) - expected).max()
    flax_error = np.abs(nn.LayerNorm().apply(params, x) - expected).max()
    # float32's mean of values near 20 is off by about ulp(20) = 2e-6, over a std of 0.1.
    assert ours_error < 1e-4
    assert ours_error <= flax_error


def _plain_layer_norm(v, scale, bias, eps=1e-5):
    centred = v - v.mean(-1, keepdims=True)
    return centred * jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + eps) * scale + bias


def test_gradients_match_float64_autodiff_of_the_formula():
    x, params = _inputs(1)
    weights = jax.random.normal(jax.random.key(5), x.shape)
    ours = jax.grad(
        lambda p, v: jnp.sum(jnp.tanh(LayerNorm().apply(p, v)) * weights), argnums=(0, 1)
    )(params, x)
    with jax.enable_x64(True):
        as64 = lambda t: jnp.asarray(np.asarray(t, np.float64))
        p64, x64, w64 = jax.tree.map(as64, params), as64(x), as64(weights)
        loss = lambda p, v: jnp.sum(jnp.tanh(_plain_layer_norm(v, **p["params"])) * w64)
        expected = jax.grad(loss, argnums=(0, 1))(p64, x64)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())


def test_gradient_matches_finite_differences_in_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(2), (4, 16), jnp.float64) * 2.0 + 1.0
        w = jax.random.normal(jax.random.key(3), (4, 16), jnp.float64)
        f = lambda v: jnp.sum(jnp.sin(normalise(v, 1e-5)) * w)
        direction = jax.random.normal(jax.random.key(4), x.shape, jnp.float64)
        step = 1e-6
        numeric = (f(x + step * direction) - f(x - step * direction)) / (2 * step)
        analytic = jnp.vdot(jax.grad(f)(x), direction)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_output_has_the_compute_dtype_and_statistics_are_float32(dtype):
    x, params = _inputs(6)
    out = LayerNorm(dtype=dtype).apply(params, x.astype(dtype))
    assert out.dtype == dtype
    # Statistics of a bfloat16 input in float32: the result is the float32 one, rounded once.
    exact = LayerNorm().apply(params, x.astype(dtype).astype(jnp.float32))
    np.testing.assert_array_equal(out, exact.astype(dtype))
