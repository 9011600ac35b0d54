"""bfloat16-operand matmuls: values and gradients against float64 products of the rounded
operands, and the encoder's wiring of them (model.bf16_matmuls)."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_encoder import TINY, awkward_inputs, random_params
from trace_jax import xla_options
from trace_jax.model import EncoderConfig, TraceEncoder
from trace_jax.model.matmul import bf16_dot_general, bf16_matmul


def _rounded(x):
    """x rounded to bfloat16, as float64."""
    return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def _operands(shape_x=(3, 5, 96), n=40, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, shape_x), jax.random.normal(kw, (shape_x[-1], n))


def test_product_is_the_float64_product_of_the_rounded_operands():
    x, w = _operands()
    y = bf16_matmul(x, w)
    assert y.dtype == jnp.float32 and y.shape == (3, 5, 40)
    expected = _rounded(x) @ _rounded(w)
    # Accumulated in float32: only float32 rounding of 96-term sums, far below bfloat16's 2^-8.
    np.testing.assert_allclose(np.asarray(y), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert np.abs(np.asarray(y) - np.asarray(x) @ np.asarray(w)).max() > 1e-3  # it did round


def test_gradients_are_float64_products_of_rounded_operands_and_cotangent():
    x, w = _operands(seed=1)
    g = jax.random.normal(jax.random.key(2), (3, 5, 40))
    _, vjp = jax.vjp(bf16_matmul, x, w)
    dx, dw = vjp(g)
    assert dx.dtype == dw.dtype == jnp.float32
    assert dx.shape == x.shape and dw.shape == w.shape
    expected_dx = _rounded(g) @ _rounded(w).T
    expected_dw = np.einsum("abk,abn->kn", _rounded(x), _rounded(g))
    for got, want in ((dx, expected_dx), (dw, expected_dw)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5 * np.abs(want).max())
    # The weight gradient keeps float32 precision (JAX's own transpose would round it to bf16).
    assert np.abs(np.asarray(dw) - _rounded(dw)).max() > 0


def test_bfloat16_inputs_come_back_bfloat16():
    x, w = _operands(seed=3)
    y = bf16_matmul(x.astype(jnp.bfloat16), w)
    assert y.dtype == jnp.bfloat16
    dx, dw = jax.grad(lambda x, w: jnp.sum(bf16_matmul(x, w).astype(jnp.float32)), (0, 1))(
        x.astype(jnp.bfloat16), w
    )
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32


def test_dense_with_bf16_dot_general_keeps_params_and_only_takes_dense_products():
    x = jax.random.normal(jax.random.key(4), (4, 16))
    plain, rounded = nn.Dense(8), nn.Dense(8, dot_general=bf16_dot_general)
    params = plain.init(jax.random.key(5), x)
    assert jax.tree.structure(params) == jax.tree.structure(rounded.init(jax.random.key(5), x))
    np.testing.assert_allclose(rounded.apply(params, x), plain.apply(params, x), rtol=0, atol=3e-2)
    with pytest.raises(NotImplementedError, match="nn.Dense's products only"):
        bf16_dot_general(x, x, (((0,), (0,)), ((), ())))


def _dots(jaxpr):
    """(lhs dtype, rhs dtype, out dtype) of every dot_general, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(tuple(str(v.aval.dtype) for v in (*eqn.invars, *eqn.outvars)))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _dots(sub)
    return found


@pytest.mark.parametrize("remat", [False, True])
def test_encoder_runs_every_block_matmul_in_bfloat16_forward_and_backward(remat):
    series, observed = awkward_inputs(2, 3, 16, seed=6)
    params = random_params(TraceEncoder(TINY), series, seed=6)
    cfg = dataclasses.replace(TINY, bf16_matmuls=True, remat=remat)

    def loss(p):
        out = TraceEncoder(cfg).apply(p, series, observed)
        return jnp.sum(out["cls"] ** 2) + jnp.sum(out["tokens"] ** 2)

    dots = _dots(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    rounded = [d for d in dots if d == ("bfloat16", "bfloat16", "float32")]
    # Per layer: query/key/value, attention output, fc1 and fc2, each for [CLS] and for the
    # channel tokens, once forward and twice backward (input and weight gradients); remat
    # reruns the forward ones.
    assert len(rounded) == 4 * 2 * (4 if remat else 3) * TINY.num_layers
    # Mixed products would be JAX's transpose rules running at the float32 rate.
    assert not [d for d in dots if d[0] != d[1]]


def test_encoder_with_bf16_matmuls_is_close_to_float32():
    series, observed = awkward_inputs(2, 3, 16, seed=7)
    params = random_params(TraceEncoder(TINY), series, seed=7)
    exact = TraceEncoder(TINY).apply(params, series, observed)
    rounded = TraceEncoder(dataclasses.replace(TINY, bf16_matmuls=True)).apply(
        params, series, observed
    )
    for key in ("cls", "channels", "tokens"):
        assert rounded[key].dtype == jnp.float32
        scale = np.abs(np.asarray(exact[key])).max()
        err = np.abs(np.asarray(rounded[key]) - np.asarray(exact[key])).max()
        assert 0 < err < 0.05 * scale, (key, err, scale)


def test_cpu_forward_options_keep_ynnpack_for_bf16_matmuls():
    """YNNPACK runs the bfloat16 dots; the float32 forward pass is faster without its fusions."""
    f32, bf16 = TINY, dataclasses.replace(TINY, bf16_matmuls=True)
    assert xla_options.encoder_forward(f32, "cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert xla_options.encoder_forward(bf16, "cpu") == {}
    assert xla_options.encoder_forward(None, "cpu") == {}
    assert xla_options.encoder_forward(f32, "gpu") == {}


def _paper_size_bf16_from_shapes(batch: int):
    """(config, model, parameter shapes, series shape) of the paper-size encoder with bf16
    matmuls, 7 channels, T=186; skips off the CPU, whose program structure the tests read."""
    if jax.default_backend() != "cpu":
        pytest.skip("XLA:CPU program structure")
    cfg = EncoderConfig(bf16_matmuls=True, num_channels=8)
    series = jax.ShapeDtypeStruct((batch, 7, 186), jnp.float32)
    model = TraceEncoder(cfg)
    params = jax.eval_shape(lambda s: model.init(jax.random.key(0), s), series)
    return cfg, model, params, series


def test_cpu_embeddings_read_no_materialised_gelu_constants():
    """On XLA:CPU the paper-size bf16 forward fuses each MLP into one YNNPACK call; with GELU's
    constants shared across layers XLA wrote them out as three (tokens, mlp_dim) float32 arrays
    and every layer's fusion read them (activations.layer_zero). Compiled only, from shapes."""
    cfg, model, params, series = _paper_size_bf16_from_shapes(batch=64)
    forward = jax.jit(lambda p, s: model.apply(p, s, summary_only=True))
    hlo = forward.lower(params, series).compile(xla_options.encoder_forward(cfg)).as_text()
    assert "ynn_fusion" in hlo
    assert not re.findall(rf"%wrapped_broadcast\S* = f32\[[0-9,]*,{cfg.mlp_dim}\]", hlo)


@pytest.fixture(scope="module")
def paper_size_bf16_gradient():
    """(config, series shape, optimized HLO) of the gradient of the paper-size bf16 encoder's
    summary outputs (what alignment trains) at batch 8 on XLA:CPU, compiled once for the tests
    that read its structure. Compiled only, from shapes."""
    cfg, model, params, series = _paper_size_bf16_from_shapes(batch=8)

    def loss(p, s):
        out = model.apply(p, s, summary_only=True)
        return jnp.sum(out["cls"] ** 2) + jnp.sum(out["channels"] ** 2)

    return cfg, series.shape, jax.jit(jax.grad(loss)).lower(params, series).compile().as_text()


def test_cpu_training_step_writes_the_qkv_gradient_once_and_pads_nothing(paper_size_bf16_gradient):
    """The paper-size bf16 backward on XLA:CPU: the stacked (3d) query/key/value gradient is
    written once, in bfloat16, for its product (biases added per part, so no float32 copy for a
    (3d) bias reduction), and RoPE's backward is a rotation, not zero-padded slices (rope.py).
    With [CLS] folded into the channels' products, 7% of the alignment step. Compiled only,
    from shapes."""
    cfg, (b, c, t), hlo = paper_size_bf16_gradient
    entry = hlo[hlo.index("\nENTRY") :]  # the scheduled kernels, not their fused insides
    backward = [line for line in entry.splitlines() if "transpose(jvp(" in line]
    s = t // cfg.patch_len + 1  # a channel's CIT and patches
    tokens = rf"{b},{c},{s}|{b * c * s}"
    heads, head_dim = cfg.num_heads, cfg.d_model // cfg.num_heads
    qkv = rf"\[(?:{tokens}),(?:{3 * cfg.d_model}|3,{heads},{head_dim})\]"
    stacked = [line for line in backward if re.search(rf"= \w+{qkv}", line)]
    assert stacked and all(re.search(rf"= bf16{qkv}", line) for line in stacked), stacked
    # RoPE's would be zero-padded (B, C, S, H, hd) arrays.
    rope_pads = rf"= f32\[\d+,\d+,\d+,{heads},{head_dim}\]\S* pad\(.*transpose\(jvp"
    assert not re.findall(rope_pads, hlo)


def _product_operand_dtypes(hlo: str, op_name: str) -> list[tuple[str, str]]:
    """The operand dtypes of every product in an optimized HLO text whose op_name metadata
    matches the regex `op_name` (fused products included)."""
    dtypes = dict(re.findall(r"%(\S+) = (\w+)\[", hlo))
    product = re.compile(rf" dot\(%(\S+), %(\S+)\).*op_name=\"{op_name}\"")
    found = [m.groups() for m in map(product.search, hlo.splitlines()) if m]
    return [(dtypes[a], dtypes[b]) for a, b in found]


def test_cpu_training_step_runs_every_block_product_on_bfloat16_operands(paper_size_bf16_gradient):
    """The jaxpr's products are bfloat16 (test above), but XLA may still run one in float32: a
    transpose feeding a product is folded into it as a transposed operand, which YNNPACK does
    not take in bfloat16, and XLA then converts both operands back to float32 (half the rate;
    BENCHMARKS.md, session 16). The compiled program shows it."""
    # The check sees such a product where XLA makes one: transposed operands, rounded.
    w, x = (
        jax.ShapeDtypeStruct((384, 1536), jnp.float32),
        jax.ShapeDtypeStruct((64, 384), jnp.float32),
    )
    bf16 = jnp.bfloat16
    transposed = jax.jit(lambda w, x: jnp.matmul(w.T.astype(bf16), x.T.astype(bf16)))
    hlo = transposed.lower(w, x).compile().as_text()
    assert _product_operand_dtypes(hlo, r"[^\"]*dot_general") == [("f32", "f32")]

    cfg, _, hlo = paper_size_bf16_gradient
    dense = r"[^\"]*block_\d+/(?:attention(?:/out)?|mlp/fc[12])/dot_general"
    operands = _product_operand_dtypes(hlo, dense)
    # Query/key/value, attention output, fc1 and fc2, for [CLS] and the channel tokens, forward
    # and both gradients, per layer.
    assert len(operands) == 4 * 2 * 3 * cfg.num_layers
    assert set(operands) == {("bf16", "bf16")}, operands
