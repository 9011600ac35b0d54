"""The Flax encoder against the independent float64 numpy reference, and its input contract."""

import contextlib
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.numpy_reference import reference_forward
from trace_jax.model import EncoderConfig, TraceEncoder
from trace_jax.model.activations import gelu, layer_zero
from trace_jax.model.attention import (
    block_diagonal_attention,
    dense_attention,
    kernel_block_diagonal_attention,
)
from trace_jax.model.layout import TokenLayout, Tokens
from trace_jax.model.partitioning import logical_axes
from trace_jax.train import sharding as shard_lib

TINY = EncoderConfig(
    patch_len=4, d_model=32, num_heads=4, num_layers=2, mlp_dim=64, num_channels=8, dropout=0.0
)
FLOAT_OUTPUTS = (
    "cls",
    "channels",
    "tokens",
    "channel_pooled",
    "pooled",
    "revin_mean",
    "revin_std",
    "patches",
)
BOOL_OUTPUTS = ("patch_valid", "channel_valid", "patch_observed")


def random_params(model, series, seed):
    """Initialised params with every leaf redrawn at scale 0.2 (norm scales around 1).

    Flax's default init makes attention nearly uniform; larger weights make every mask and
    rotation matter to the output, so the comparison can actually catch mistakes. Only the
    parameters' shapes are taken from init (an eager init of the tiny encoder takes seconds).
    """
    params = jax.eval_shape(model.init, jax.random.key(seed), series)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    new = [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    params = jax.tree.unflatten(treedef, new)
    for name, block in params["params"].items():
        if name.startswith("block_"):
            for norm in ("attention_norm", "mlp_norm"):
                block[norm]["scale"] = 1.0 + block[norm]["scale"]
    return params


def awkward_inputs(b, c, t, seed):
    """Missing points, a whole channel unobserved, NaN and inf, a fully missing patch."""
    rng = np.random.default_rng(seed)
    series = (rng.normal(size=(b, c, t)) * 3 + 10).astype(np.float32)
    observed = rng.random((b, c, t)) > 0.2
    observed[0, -1] = False  # a channel with no observed point
    series[0, 0, 1] = np.nan
    series[-1, 0, 2] = np.inf
    series[-1, 0, 3] = -np.inf
    observed[-1, 0, :2] = True
    observed[-1, -1, -4:] = False  # the last patch of a channel entirely missing
    return series, observed


def assert_matches_reference(
    cfg, params, series, observed, channel_ids=None, mask_patches=None, tol=1e-5
):
    out = TraceEncoder(cfg).apply(params, series, observed, channel_ids, mask_patches)
    ref = reference_forward(
        params["params"],
        series,
        observed,
        channel_ids,
        mask_patches,
        patch_len=cfg.patch_len,
        num_heads=cfg.num_heads,
        channel_bias=cfg.channel_bias,
        rope_fraction=cfg.rope_fraction,
        rope_base=cfg.rope_base,
    )
    for key in FLOAT_OUTPUTS:
        err = np.max(np.abs(np.asarray(out[key], np.float64) - ref[key]))
        assert err <= tol, f"{key}: max abs difference {err:.3g} > {tol}"
    for key in BOOL_OUTPUTS:
        np.testing.assert_array_equal(np.asarray(out[key]), ref[key], err_msg=key)


@pytest.mark.parametrize("mode", ["block_diagonal", "paper", "full"])
@pytest.mark.parametrize("channels", [1, 3, 7])
def test_matches_numpy_reference(mode, channels):
    cfg = dataclasses.replace(TINY, channel_bias=mode)
    t = 18  # not a multiple of patch_len: two points of front padding
    series, observed = awkward_inputs(2, channels, t, seed=channels)
    params = random_params(TraceEncoder(cfg), series, seed=channels)
    assert_matches_reference(cfg, params, series, observed)


@pytest.mark.parametrize("mode", ["block_diagonal", "paper"])
def test_matches_reference_with_mask_tokens_channel_ids_full_rotation_and_levels(mode):
    cfg = dataclasses.replace(TINY, channel_bias=mode, rope_fraction=1.0, level_embedding=True)
    series, observed = awkward_inputs(3, 4, 16, seed=7)
    rng = np.random.default_rng(0)
    channel_ids = np.stack([rng.permutation(8)[:4] for _ in range(3)]).astype(np.int32)
    mask_patches = rng.random((3, 4, 4)) < 0.3
    params = random_params(TraceEncoder(cfg), series, seed=3)
    assert_matches_reference(cfg, params, series, observed, channel_ids, mask_patches)


@pytest.mark.parametrize("rotate_keys", [False, True])
def test_block_diagonal_fast_path_equals_dense_masked_path(rotate_keys):
    """With key_rope the fast path rotates the channel keys itself (head-major)."""
    from trace_jax.model.rope import apply_rope, rope_tables

    layout = TokenLayout(num_channels=5, num_patches=3)
    rng = np.random.default_rng(0)
    q, k, v = (
        jnp.asarray(rng.normal(size=(2, layout.length, 2, 8)), jnp.float32) for _ in range(3)
    )
    key_valid = jnp.asarray(rng.random((2, layout.length)) > 0.3).at[:, 0].set(True)
    identity = lambda p: p
    split = lambda x: Tokens.split(x, layout)
    rope = rope_tables(np.arange(layout.num_patches + 1), 4, 10000.0) if rotate_keys else None
    fast = block_diagonal_attention(
        split(q), split(k), split(v), split(key_valid), identity, key_rope=rope
    )
    if rotate_keys:
        k = split(k)
        k = k._replace(channels=apply_rope(k.channels, *rope)).joined()
    dense = dense_attention(q, k, v, key_valid, layout, "block_diagonal", identity)
    np.testing.assert_allclose(fast.joined(), dense, atol=1e-6, rtol=0)


def kernel_case(b=3, c=4, s=6, h=2, hd=16, rotate_keys=True, seed=1):
    """q, k, v (Tokens), key_valid, rope and weights for a loss of the attention's outputs: 6
    tokens a channel (padded to the kernel's 16), a channel with no valid key but each token
    itself, an invalid [CLS] key."""
    from trace_jax.model.rope import rope_tables

    rng = np.random.default_rng(seed)
    q, k, v = (
        Tokens(*(jnp.asarray(rng.normal(size=(b, *n, h, hd)), jnp.float32) for n in ((1,), (c, s))))
        for _ in range(3)
    )
    channels_valid = rng.random((b, c, s)) > 0.3
    channels_valid[0, 1] = False
    cls_valid = np.arange(b)[:, None] != 1
    key_valid = Tokens(jnp.asarray(cls_valid), jnp.asarray(channels_valid))
    rope = rope_tables(np.arange(s), 8, 10000.0) if rotate_keys else None
    weights = jax.tree.map(lambda t: jnp.asarray(rng.normal(size=t.shape), jnp.float32), q)
    return (q, k, v), key_valid, rope, weights


def weighted_sum_of(attention, weights):
    """A scalar of every output of `attention(q, k, v)`, for gradients."""
    return lambda *qkv: sum(
        jnp.sum(w * o) for w, o in zip(jax.tree.leaves(weights), jax.tree.leaves(attention(*qkv)))
    )


@contextlib.contextmanager
def trainer_mesh(axis_sizes):
    """The trainer's mesh of these axis sizes with its logical axis rules (batch over data x
    fsdp, heads over model), as train_and_evaluate traces the model."""
    mesh = shard_lib.make_mesh(axis_sizes)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shard_lib.DEFAULT_RULES):
        yield mesh


@pytest.mark.parametrize("rotate_keys", [False, True])
def test_kernel_block_diagonal_path_equals_batched_path(rotate_keys):
    """The GPU kernel's path, run in Pallas's interpreter: token-major keys rotated first, the
    mask, [CLS] by multiply-reduce, padding. Values and gradients of q, k, v equal the batched
    path's (kernel_case lists the awkward cases)."""
    qkv, key_valid, rope, weights = kernel_case(rotate_keys=rotate_keys)

    def batched(q, k, v):
        return block_diagonal_attention(q, k, v, key_valid, lambda p: p, key_rope=rope)

    def kernel(q, k, v):
        return kernel_block_diagonal_attention(q, k, v, key_valid, rope, interpret=True)

    for want, got in zip(jax.tree.leaves(batched(*qkv)), jax.tree.leaves(kernel(*qkv))):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    want = jax.grad(weighted_sum_of(batched, weights), argnums=(0, 1, 2))(*qkv)
    got = jax.grad(weighted_sum_of(kernel, weights), argnums=(0, 1, 2))(*qkv)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_axis", [2, 4])
def test_kernel_runs_on_each_devices_own_sequences_and_heads(model_axis):
    """Under the trainer's mesh and rules (batch over data x fsdp, heads over model) the kernel
    runs inside shard_map: values and gradients as on one device, and nothing is gathered (a
    pallas_call left to XLA's partitioner has its operands gathered whole onto every device).
    With 4 model devices for 2 heads, the heads stay whole on each device (still exact)."""
    qkv, key_valid, rope, weights = kernel_case(b=4, c=3, h=2)

    def kernel(q, k, v):
        return kernel_block_diagonal_attention(q, k, v, key_valid, rope, interpret=True)

    loss = weighted_sum_of(kernel, weights)
    want_out, want_grads = kernel(*qkv), jax.grad(loss, argnums=(0, 1, 2))(*qkv)
    heads = "model" if model_axis == 2 else None  # 2 heads

    with trainer_mesh({"data": 2, "fsdp": 4 // model_axis, "model": model_axis}) as mesh:

        def split(*names):  # batch over data x fsdp, heads over model where they divide
            return jax.sharding.NamedSharding(mesh, jax.P(shard_lib.BATCH_AXES, *names))

        tokens = Tokens(split(None, heads, None), split(None, None, heads, None))
        qkv = jax.device_put(qkv, (tokens,) * 3)
        forward = jax.jit(kernel).lower(*qkv).compile()
        backward = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*qkv).compile()
        got_out, got_grads = forward(*qkv), backward(*qkv)
    for program in (forward, backward):
        assert "all-gather" not in program.as_text()
    for want, got in zip(
        jax.tree.leaves((want_out, want_grads)), jax.tree.leaves((got_out, got_grads))
    ):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "change",
    [
        dict(attention_impl="flash"),
        dict(attention_impl="pallas"),  # float32
        dict(attention_impl="pallas", dtype="bfloat16", attention_dropout=0.1),
        dict(attention_impl="pallas", dtype="bfloat16", channel_bias="paper"),
        dict(attention_impl="pallas", dtype="bfloat16", num_heads=8),  # head dimension 4
    ],
)
def test_attention_impl_is_checked(change):
    with pytest.raises(ValueError, match="attention_impl"):
        dataclasses.replace(TINY, **change)


@pytest.mark.parametrize("mesh_axes", [None, {"data": 2, "fsdp": 2, "model": 2}])
def test_pallas_attention_lowers_to_triton_kernels_for_a_gpu(monkeypatch, mesh_axes):
    """The encoder's gradient with attention_impl='pallas', lowered for CUDA on this CPU: each
    block's forward and backward attention become one Triton kernel (Pallas's default GPU
    backend, Mosaic GPU, rejects these tiles; this is where that would show without a GPU).
    Under the trainer's mesh and rules each kernel sits in its own per-device computation."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cfg = dataclasses.replace(TINY, attention_impl="pallas", dtype="bfloat16", num_heads=2)
    series, observed = awkward_inputs(4, 3, 18, seed=0)
    params = jax.eval_shape(
        lambda: TraceEncoder(dataclasses.replace(cfg, attention_impl="xla")).init(
            jax.random.key(0), series, observed
        )
    )

    def loss(params):
        out = TraceEncoder(cfg).apply(params, series, observed)
        return jnp.sum(out["channels"].astype(jnp.float32) ** 2)

    with trainer_mesh(mesh_axes) if mesh_axes else contextlib.nullcontext():
        text = jax.jit(jax.grad(loss)).trace(params).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2 * cfg.num_layers
    assert text.count("sdy.manual_computation") == (2 * cfg.num_layers if mesh_axes else 0)


def test_pallas_attention_outside_a_gpu_says_so():
    cfg = dataclasses.replace(TINY, attention_impl="pallas", dtype="bfloat16", num_heads=2)
    series, observed = awkward_inputs(1, 2, 16, seed=0)
    with pytest.raises(ValueError, match="runs on a GPU"):
        TraceEncoder(cfg).init(jax.random.key(0), series, observed)


def test_block_diagonal_channels_do_not_see_each_other():
    cfg = dataclasses.replace(TINY, channel_bias="block_diagonal")
    series, observed = awkward_inputs(2, 3, 16, seed=1)
    params = random_params(TraceEncoder(cfg), series, seed=1)
    model = TraceEncoder(cfg)
    base = model.apply(params, series, observed)
    changed = series.copy()
    changed[:, 1] += np.linspace(0, 5, 16, dtype=np.float32)
    other = model.apply(params, changed, observed)
    np.testing.assert_array_equal(base["channels"][:, 0], other["channels"][:, 0])
    np.testing.assert_array_equal(base["tokens"][:, 2], other["tokens"][:, 2])
    assert np.abs(base["cls"] - other["cls"]).max() > 1e-4


@pytest.mark.parametrize(
    "pattern",
    [
        "all_missing",
        "huge",
        "tiny",
        "constant",
        "single_point",
        "all_nan",
        "all_inf",
        "mixed_huge",
    ],
)
def test_no_input_pattern_gives_nan(pattern):
    b, c, t = 2, 3, 12
    series = np.random.default_rng(0).normal(size=(b, c, t)).astype(np.float32)
    observed = np.ones((b, c, t), bool)
    if pattern == "all_missing":
        observed[:] = False
    elif pattern == "huge":
        series *= 1e38  # |normal| < 3.4 keeps it finite
    elif pattern == "tiny":
        series *= 1e-38
    elif pattern == "constant":
        series[:] = 1e25
    elif pattern == "single_point":
        observed[:] = False
        observed[:, :, 5] = True
    elif pattern == "all_nan":
        series[:] = np.nan
    elif pattern == "all_inf":
        series[:] = np.inf
    elif pattern == "mixed_huge":
        series[:, :, ::2] = 3e38
        series[:, :, 1::2] = -3e38
    model = TraceEncoder(dataclasses.replace(TINY, level_embedding=True))
    params = model.init(jax.random.key(0), series)
    out = model.apply(params, series, observed)
    for key, value in out.items():
        assert np.isfinite(np.asarray(value, np.float64)).all(), f"{pattern}: {key} not finite"

    def loss(p):
        return jnp.sum(model.apply(p, series, observed)["cls"] ** 2)

    grads = jax.grad(loss)(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads)), f"{pattern}: grads"


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda s, o: (s[0], None, None), "rank 3"),
        (lambda s, o: (s.astype(np.int32), None, None), "floating point"),
        (lambda s, o: (np.zeros((2, 9, 8), np.float32), None, None), "CIT table holds 8"),
        (lambda s, o: (s, o[:, :, :-1], None), "observed has shape"),
        (lambda s, o: (s, o.astype(np.float32), None), "observed must be bool"),
        (lambda s, o: (s, o, np.zeros((2, 4), np.int32)), "channel_ids must have shape"),
        (lambda s, o: (s, o, np.full((2, 3), 8, np.int32)), r"channel_ids must lie in \[0, 8\)"),
    ],
)
def test_bad_input_raises_clear_error(bad, message):
    series = np.zeros((2, 3, 8), np.float32)
    observed = np.ones((2, 3, 8), bool)
    model = TraceEncoder(TINY)
    params = model.init(jax.random.key(0), series)
    args = bad(series, observed)
    with pytest.raises(ValueError, match=message):
        model.apply(params, *args)


def test_bad_config_raises_clear_error():
    with pytest.raises(ValueError, match="channel_bias must be one of"):
        dataclasses.replace(TINY, channel_bias="diagonal")
    with pytest.raises(ValueError, match="not divisible"):
        dataclasses.replace(TINY, num_heads=5)
    with pytest.raises(ValueError, match=r"unknown encoder config keys \['d_modle'\]"):
        EncoderConfig.from_mapping({"d_modle": 8})


def test_bfloat16_compute_keeps_float32_params_and_is_close():
    series, observed = awkward_inputs(2, 3, 16, seed=2)
    cfg32 = TINY
    params = TraceEncoder(cfg32).init(jax.random.key(0), series)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    out32 = TraceEncoder(cfg32).apply(params, series, observed)["cls"]
    out16 = TraceEncoder(dataclasses.replace(cfg32, dtype="bfloat16")).apply(
        params, series, observed
    )["cls"]
    assert out16.dtype == jnp.float32
    assert np.abs(out32 - out16).max() < 0.1


@pytest.mark.parametrize("policy", ["full", "mlp", "norms"])
def test_remat_gives_the_same_outputs_and_gradients(policy):
    series, observed = awkward_inputs(2, 3, 16, seed=4)
    params = random_params(TraceEncoder(TINY), series, seed=4)

    def loss(p, cfg):
        out = TraceEncoder(cfg).apply(p, series, observed)
        return jnp.sum(out["cls"] ** 2) + jnp.sum(out["channels"] ** 2)

    plain = jax.value_and_grad(loss)(params, TINY)
    remat_cfg = dataclasses.replace(TINY, remat=True, remat_policy=policy)
    remat = jax.value_and_grad(loss)(params, remat_cfg)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_remat_policies_that_keep_more_recompute_fewer_matmuls_than_full():
    """'mlp' keeps fc1/fc2 outputs, 'norms' the LayerNorms' normalised outputs (so fc2's and the
    output projection's are never needed again): their backward programs hold fewer dots."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 24))
    cfg = EncoderConfig(d_model=32, num_heads=4, num_layers=2, mlp_dim=64, num_channels=8)
    params = TraceEncoder(cfg).init(jax.random.key(1), x)

    def dots(policy):
        model = TraceEncoder(dataclasses.replace(cfg, remat=True, remat_policy=policy))
        grad = jax.grad(lambda p: jnp.sum(model.apply(p, x)["cls"] ** 2))
        return str(jax.make_jaxpr(grad)(params)).count("dot_general")

    plain = TraceEncoder(cfg)
    no_remat = str(
        jax.make_jaxpr(jax.grad(lambda p: jnp.sum(plain.apply(p, x)["cls"] ** 2)))(params)
    ).count("dot_general")
    assert no_remat < dots("mlp") < dots("full")
    assert no_remat < dots("norms") < dots("full")


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="remat_policy"):
        EncoderConfig(remat_policy="everything")


def test_gelu_custom_gradient_matches_autodiff():
    x = jnp.linspace(-8.0, 8.0, 2001)
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=2e-6)
    ours = jax.grad(lambda v: jnp.sum(gelu(v) * jnp.cos(v)))(x)
    ref = jax.grad(lambda v: jnp.sum(jax.nn.gelu(v, approximate=False) * jnp.cos(v)))(x)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)


def test_gelu_with_a_layer_zero_is_bit_equal_and_leaves_the_bias_without_gradient():
    x = jax.random.normal(jax.random.key(1), (3, 5, 16)) * 4.0
    bias = jax.random.normal(jax.random.key(2), (16,)).at[0].set(-0.0)
    np.testing.assert_array_equal(gelu(x, layer_zero(bias)), gelu(x))
    loss = lambda v, b: jnp.sum(gelu(v, layer_zero(b)) * jnp.cos(v))
    gx, gb = jax.grad(loss, argnums=(0, 1))(x, bias)
    np.testing.assert_array_equal(gx, jax.grad(lambda v: jnp.sum(gelu(v) * jnp.cos(v)))(x))
    np.testing.assert_array_equal(gb, np.zeros(16))
    low = x.astype(jnp.bfloat16)
    assert gelu(low, layer_zero(bias)).dtype == jnp.bfloat16
    np.testing.assert_array_equal(gelu(low, layer_zero(bias)), gelu(low))


def test_scanned_layers_equal_unrolled_layers_forward_and_gradient():
    cfg = EncoderConfig(d_model=32, num_heads=4, num_layers=3, mlp_dim=64, num_channels=8)
    scanned_cfg = dataclasses.replace(cfg, scan_layers=True, remat=True)
    x = jax.random.normal(jax.random.key(0), (2, 3, 24))
    params = TraceEncoder(cfg).init(jax.random.key(1), x)["params"]
    blocks = [params[f"block_{i}"] for i in range(3)]
    stacked = {k: v for k, v in params.items() if not k.startswith("block_")}
    stacked["blocks"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}

    def loss(model, p):
        out = model.apply({"params": p}, x)
        return jnp.sum(out["cls"] ** 2) + jnp.sum(out["channels"] ** 2)

    a, ga = jax.value_and_grad(functools.partial(loss, TraceEncoder(cfg)))(params)
    b, gb = jax.value_and_grad(functools.partial(loss, TraceEncoder(scanned_cfg)))(stacked)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    # float32 rounding differs between the two programs: compare against the gradient's scale
    # (max |g| is about 50 here; the two differ by about 1e-5 on entries of 1e-4).
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ga))
    for i in range(3):
        for x1, x2 in zip(
            jax.tree.leaves(ga[f"block_{i}"]),
            jax.tree.leaves(jax.tree.map(lambda v: v[i], gb["blocks"]["block"])),
        ):
            np.testing.assert_allclose(x1, x2, rtol=1e-4, atol=2e-6 * scale)
    assert logical_axes("model/encoder/blocks/block/mlp/fc1/kernel", 3) == (None, "embed", "mlp")


@pytest.mark.parametrize("head_dim,rot_dims", [(16, 8), (16, 16), (12, 8), (8, 4), (10, 0)])
def test_rope_matches_rotate_half_reference(head_dim, rot_dims):
    from trace_jax.model.rope import apply_rope, rope_tables

    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, 3, head_dim)), np.float64)
    cos, sin = rope_tables(np.arange(5), rot_dims, 10000.0)
    half = rot_dims // 2
    a, b, rest = x[..., :half], x[..., half:rot_dims], x[..., rot_dims:]
    c, s = cos[:, None, :], sin[:, None, :]
    want = np.concatenate([a * c - b * s, b * c + a * s, rest], axis=-1)
    got = apply_rope(jnp.asarray(x, jnp.float32), cos, sin)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("per_token", [False, True])
def test_rope_gradient_is_the_inverse_rotation_and_equals_autodiff(per_token):
    """apply_rope's custom backward (rotation by -angle) against autodiff of the plain
    slice-and-concatenate formula, for shared tables and per-token (gathered) ones."""
    from trace_jax.model.rope import apply_rope, rope_tables

    x = jax.random.normal(jax.random.key(1), (2, 5, 3, 16))
    g = jax.random.normal(jax.random.key(2), x.shape)
    cos, sin = rope_tables(np.arange(7), 8, 10000.0)
    if per_token:
        picked = jnp.asarray([[0, 3, 6, 2, 1], [5, 5, 4, 0, 6]])
        cos, sin = jnp.asarray(cos)[picked], jnp.asarray(sin)[picked]  # (2, 5, 4)
    else:
        cos, sin = cos[:5], sin[:5]

    def plain(x):
        c, s = jnp.asarray(cos)[..., None, :], jnp.asarray(sin)[..., None, :]
        a, b, rest = x[..., :4], x[..., 4:8], x[..., 8:]
        return jnp.concatenate([a * c - b * s, b * c + a * s, rest], axis=-1)

    want = jax.vjp(plain, x)[1](g)[0]
    got = jax.vjp(lambda x: apply_rope(x, cos, sin), x)[1](g)[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)


@pytest.mark.parametrize("remat", [False, True])
def test_summary_only_gives_the_full_cls_and_cit_outputs_and_gradients(remat):
    """The last block computed for [CLS] and the CIT tokens only (what alignment and
    embed_series read) equals the full encoder's outputs and gradients."""
    cfg = dataclasses.replace(TINY, num_layers=3, level_embedding=True, remat=remat)
    series, observed = awkward_inputs(3, 5, 22, seed=6)
    params = random_params(TraceEncoder(cfg), series, seed=6)
    model = TraceEncoder(cfg)

    def loss(p, summary_only):
        out = model.apply(p, series, observed, summary_only=summary_only)
        return jnp.sum(out["cls"] ** 2) + jnp.sum(jnp.sin(out["channels"]))

    full = model.apply(params, series, observed)
    summary = model.apply(params, series, observed, summary_only=True)
    assert "tokens" not in summary and "pooled" not in summary
    for key in ("cls", "channels", "channel_valid", "patch_valid"):
        np.testing.assert_allclose(summary[key], full[key], rtol=0, atol=2e-6)
    g_full = jax.grad(loss)(params, False)
    g_summary = jax.grad(loss)(params, True)
    for a, b in zip(jax.tree.leaves(g_summary), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * np.abs(b).max())


def _some_patches(b, c, n, m, seed):
    """(B, C, M) distinct patch indices per channel, in random order."""
    rng = np.random.default_rng(seed)
    return np.stack([[rng.permutation(n)[:m] for _ in range(c)] for _ in range(b)]).astype(np.int32)


@pytest.mark.parametrize("remat", [False, True])
def test_query_patches_give_the_full_outputs_at_those_patches_and_gradients(remat):
    """The last block computed for [CLS], the CIT tokens and some patches (what masked
    reconstruction reads) equals the full encoder there, outputs and gradients."""
    cfg = dataclasses.replace(TINY, num_layers=3, level_embedding=True, remat=remat)
    series, observed = awkward_inputs(3, 5, 22, seed=8)
    params = random_params(TraceEncoder(cfg), series, seed=8)
    model = TraceEncoder(cfg)
    n = -(-22 // cfg.patch_len)
    query = jnp.asarray(_some_patches(3, 5, n, 3, seed=8))
    mask = np.zeros((3, 5, n), bool)
    mask[:, :, 1] = True

    def pick(x):
        return np.take_along_axis(np.asarray(x), np.asarray(query)[..., None], axis=2)

    def loss(p, partial):
        out = model.apply(p, series, observed, None, mask, query_patches=query if partial else None)
        tokens = (
            out["tokens"]
            if partial
            else jnp.take_along_axis(out["tokens"], query[..., None], axis=2)
        )
        return jnp.sum(out["cls"] ** 2) + jnp.sum(jnp.sin(tokens)) + jnp.sum(out["channels"])

    full = model.apply(params, series, observed, None, mask)
    part = model.apply(params, series, observed, None, mask, query_patches=query)
    assert "pooled" not in part and part["tokens"].shape == (3, 5, 3, cfg.d_model)
    for key in ("cls", "channels", "channel_valid", "patch_valid"):
        np.testing.assert_allclose(part[key], full[key], rtol=0, atol=2e-6)
    for key in ("tokens", "patches", "patch_observed"):
        np.testing.assert_allclose(part[key], pick(full[key]), rtol=0, atol=2e-6)
    g_full = jax.grad(loss)(params, False)
    g_part = jax.grad(loss)(params, True)
    for a, b in zip(jax.tree.leaves(g_part), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * np.abs(b).max())


@pytest.mark.parametrize("change", [{"scan_layers": True}, {"channel_bias": "paper"}])
def test_partial_outputs_are_picked_from_the_full_ones_where_the_shortcut_does_not_apply(
    change,
):
    cfg = dataclasses.replace(TINY, **change)
    series, observed = awkward_inputs(2, 3, 16, seed=7)
    params = random_params(TraceEncoder(cfg), series, seed=7)
    full = TraceEncoder(cfg).apply(params, series, observed)
    summary = TraceEncoder(cfg).apply(params, series, observed, summary_only=True)
    assert "tokens" not in summary
    query = jnp.asarray(_some_patches(2, 3, 4, 2, seed=7))
    part = TraceEncoder(cfg).apply(params, series, observed, query_patches=query)
    picked = np.take_along_axis(np.asarray(full["tokens"]), np.asarray(query)[..., None], axis=2)
    for out in (summary, part):
        np.testing.assert_array_equal(out["cls"], full["cls"])
        np.testing.assert_array_equal(out["channels"], full["channels"])
    np.testing.assert_array_equal(part["tokens"], picked)


def test_query_patches_are_checked():
    series, observed = awkward_inputs(2, 3, 16, seed=7)
    model = TraceEncoder(TINY)
    params = model.init(jax.random.key(0), series)
    with pytest.raises(ValueError, match="not both"):
        model.apply(params, series, summary_only=True, query_patches=jnp.zeros((2, 3, 1), int))
    with pytest.raises(ValueError, match=r"\(B, C, M\)"):
        model.apply(params, series, query_patches=jnp.zeros((2, 1), int))
    with pytest.raises(ValueError, match="integers"):
        model.apply(params, series, query_patches=jnp.zeros((2, 3, 1)))
