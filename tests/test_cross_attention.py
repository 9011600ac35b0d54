"""The optional CIT <-> channel-text cross-attention of alignment."""

import jax
import jax.numpy as jnp
import numpy as np

from trace_jax.model.cross_attention import ChannelCrossAttention


def test_reads_only_valid_channels_of_its_own_sample():
    module = ChannelCrossAttention(num_heads=2, dropout_rate=0.0)
    x = jax.random.normal(jax.random.key(0), (3, 4, 8))
    context = jax.random.normal(jax.random.key(1), (3, 4, 8))
    valid = jnp.array([[True, True, False, True], [True] * 4, [False, True, False, False]])
    params = module.init(jax.random.key(2), x, context, valid)
    out = module.apply(params, x, context, valid)
    assert out.shape == x.shape and bool(jnp.isfinite(out).all())
    # Changing an invalid channel's context, or another sample's, leaves a sample's output alone.
    changed = context.at[0, 2].set(100.0).at[1].set(-5.0)
    out2 = module.apply(params, x, changed, valid)
    np.testing.assert_allclose(out2[0], out[0], atol=1e-6)
    np.testing.assert_allclose(out2[2], out[2], atol=1e-6)
    assert not np.allclose(out2[1], out[1])


def test_matches_a_numpy_softmax_attention():
    module = ChannelCrossAttention(num_heads=2, dropout_rate=0.0)
    x = jax.random.normal(jax.random.key(3), (1, 3, 4))
    context = jax.random.normal(jax.random.key(4), (1, 3, 4))
    valid = jnp.array([[True, False, True]])
    variables = module.init(jax.random.key(5), x, context, valid)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    xs, cs = np.asarray(x[0], np.float64), np.asarray(context[0], np.float64)
    dense = lambda name, a: a @ p[name]["kernel"] + p[name]["bias"]
    q, k, v = dense("query", xs), dense("key", cs), dense("value", cs)
    heads = []
    for h in range(2):
        sl = slice(2 * h, 2 * h + 2)
        s = q[:, sl] @ k[:, sl].T / np.sqrt(2)
        s = np.where(np.asarray(valid[0])[None], s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        heads.append((w / w.sum(-1, keepdims=True)) @ v[:, sl])
    y = xs + dense("out", np.concatenate(heads, -1))
    mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    expected = (y - mu) / np.sqrt(var + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
    np.testing.assert_allclose(module.apply(variables, x, context, valid)[0], expected, atol=1e-5)
