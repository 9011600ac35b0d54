"""Independent float64 numpy reference of the TRACE encoder forward pass.

Written directly from ``docs/encoder_spec.md`` and deliberately independent of
``trace_jax/model/``: nothing is imported from there.  Clarity over speed: the
attention mask is built as a dense (L, L) boolean matrix per sample for every
``channel_bias`` mode, and everything is computed in float64.
"""

from __future__ import annotations

import math

import numpy as np

try:  # exact erf for GELU
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - scipy is normally installed
    _erf = np.vectorize(math.erf, otypes=[np.float64])

LN_EPS = 1e-5
REVIN_EPS = 1e-5
CHANNEL_BIAS_MODES = ("full", "paper", "block_diagonal")


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    x = _f64(x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, scale, bias) -> np.ndarray:
    x = _f64(x)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # population variance
    return (x - mean) / np.sqrt(var + LN_EPS) * _f64(scale) + _f64(bias)


def dense(x: np.ndarray, p: dict) -> np.ndarray:
    """x @ kernel + bias; a layer without a bias (the attention key) has no "bias" entry."""
    out = _f64(x) @ _f64(p["kernel"])
    return out + _f64(p["bias"]) if "bias" in p else out


# --------------------------------------------------------------------------- #
# Section 1: observation mask and RevIN
# --------------------------------------------------------------------------- #
def revin(series: np.ndarray, observed: np.ndarray):
    """Returns (xn, obs, mean, std); mean/std have shape (B, C)."""
    series = _f64(series)
    obs = np.asarray(observed, dtype=bool) & np.isfinite(series)
    x = np.where(obs, series, 0.0)
    n = obs.sum(axis=-1).astype(np.float64)  # (B, C)
    denom = np.maximum(n, 1.0)
    mean = x.sum(axis=-1) / denom
    var = (((x - mean[..., None]) ** 2) * obs).sum(axis=-1) / denom
    std = np.sqrt(var + REVIN_EPS)
    xn = np.where(obs, (x - mean[..., None]) / std[..., None], 0.0)
    return xn, obs, mean, std


# --------------------------------------------------------------------------- #
# Section 2: patching (front padding when T % P != 0)
# --------------------------------------------------------------------------- #
def patchify(xn: np.ndarray, obs: np.ndarray, patch_len: int):
    B, C, T = xn.shape
    P = int(patch_len)
    N = -(-T // P)  # ceil(T / P)
    pad = N * P - T
    xn_p = np.zeros((B, C, N * P), dtype=np.float64)
    obs_p = np.zeros((B, C, N * P), dtype=bool)
    xn_p[:, :, pad:] = xn
    obs_p[:, :, pad:] = obs
    patches = xn_p.reshape(B, C, N, P)
    patch_obs = obs_p.reshape(B, C, N, P)
    patch_valid = patch_obs.any(axis=-1)
    channel_valid = patch_valid.any(axis=-1)
    return patches, patch_obs, patch_valid, channel_valid


# --------------------------------------------------------------------------- #
# Section 3/4: token layout and the dense attention mask
# --------------------------------------------------------------------------- #
def token_layout(C: int, N: int):
    """Per-token metadata for the sequence [CLS; CIT_1; p_1..p_N; ...; CIT_C; p_1..p_N].

    Returns (kind, channel, patch_index, position), each of length L = 1 + C*(N+1).
    kind: 0 = CLS, 1 = CIT, 2 = patch. channel / patch_index are -1 where not applicable.
    patch_index is 0-based; position is 0 for CLS and CIT and i (1-based) for patch i.
    """
    kind, channel, patch_index, position = [0], [-1], [-1], [0]
    for c in range(C):
        kind.append(1)
        channel.append(c)
        patch_index.append(-1)
        position.append(0)
        for i in range(N):
            kind.append(2)
            channel.append(c)
            patch_index.append(i)
            position.append(i + 1)
    return (
        np.array(kind),
        np.array(channel),
        np.array(patch_index),
        np.array(position, dtype=np.float64),
    )


def structural_mask(kind, channel, mode: str) -> np.ndarray:
    """(L, L) bool: structural[q, k] says whether query q may read key k."""
    L = len(kind)
    s = np.zeros((L, L), dtype=bool)
    for q in range(L):
        for k in range(L):
            if mode == "full":
                s[q, k] = True
            elif mode == "paper":
                if kind[q] == 1:  # CIT_c reads only tokens of channel c
                    s[q, k] = kind[k] != 0 and channel[k] == channel[q]
                else:  # CLS and patches read everything
                    s[q, k] = True
            elif mode == "block_diagonal":
                if kind[q] == 0:  # CLS reads everything
                    s[q, k] = True
                else:  # CIT_c and patches of c read only tokens of channel c
                    s[q, k] = kind[k] != 0 and channel[k] == channel[q]
            else:
                raise ValueError(f"unknown channel_bias mode {mode!r}")
    return s


def key_validity(kind, channel, patch_index, patch_valid_b, channel_valid_b) -> np.ndarray:
    L = len(kind)
    valid = np.zeros(L, dtype=bool)
    for t in range(L):
        if kind[t] == 0:
            valid[t] = True
        elif kind[t] == 1:
            valid[t] = bool(channel_valid_b[channel[t]])
        else:
            valid[t] = bool(patch_valid_b[channel[t], patch_index[t]])
    return valid


def allowed_mask(structural: np.ndarray, key_valid: np.ndarray) -> np.ndarray:
    """allowed = structural & (key_valid | q == k)."""
    L = structural.shape[0]
    return structural & (key_valid[None, :] | np.eye(L, dtype=bool))


# --------------------------------------------------------------------------- #
# Section 5: blocks
# --------------------------------------------------------------------------- #
def rope(
    x: np.ndarray, positions: np.ndarray, rope_fraction: float, rope_base: float
) -> np.ndarray:
    """x: (L, hd) one head of one sample; positions: (L,)."""
    hd = x.shape[-1]
    rot = 2 * int(math.floor(rope_fraction * hd / 2))
    if rot == 0:
        return x.copy()
    half = rot // 2
    i = np.arange(half, dtype=np.float64)
    inv_freq = float(rope_base) ** (-2.0 * i / rot)  # (half,)
    angle = positions[:, None] * inv_freq[None, :]  # (L, half)
    cos, sin = np.cos(angle), np.sin(angle)
    a = x[:, :half]
    b = x[:, half:rot]
    out = x.copy()
    out[:, :half] = a * cos - b * sin
    out[:, half:rot] = b * cos + a * sin
    return out


def attention(
    h: np.ndarray,
    p: dict,
    allowed: np.ndarray,
    positions: np.ndarray,
    num_heads: int,
    rope_fraction: float,
    rope_base: float,
) -> np.ndarray:
    """h: (L, d) one sample; allowed: (L, L)."""
    L, d = h.shape
    hd = d // num_heads
    q = dense(h, p["query"])
    k = dense(h, p["key"])
    v = dense(h, p["value"])
    heads = []
    for j in range(num_heads):
        cols = slice(j * hd, (j + 1) * hd)
        qj = rope(q[:, cols], positions, rope_fraction, rope_base)
        kj = rope(k[:, cols], positions, rope_fraction, rope_base)
        vj = v[:, cols]
        scores = qj @ kj.T / math.sqrt(hd)
        scores = np.where(allowed, scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        w = np.exp(scores)
        w = w / w.sum(axis=-1, keepdims=True)
        heads.append(w @ vj)
    o = np.concatenate(heads, axis=-1)
    return dense(o, p["out"])


def block(h: np.ndarray, p: dict, allowed, positions, num_heads, rope_fraction, rope_base):
    a = attention(h, p["attention"], allowed, positions, num_heads, rope_fraction, rope_base)
    h = layer_norm(h + a, p["attention_norm"]["scale"], p["attention_norm"]["bias"])
    m = dense(gelu_exact(dense(h, p["mlp"]["fc1"])), p["mlp"]["fc2"])
    h = layer_norm(h + m, p["mlp_norm"]["scale"], p["mlp_norm"]["bias"])
    return h


def _block_names(params: dict):
    names = [k for k in params if k.startswith("block_")]
    names.sort(key=lambda s: int(s[len("block_") :]))
    if [int(s[len("block_") :]) for s in names] != list(range(len(names))):
        raise ValueError(f"block keys are not block_0..block_{{n-1}}: {names}")
    return names


# --------------------------------------------------------------------------- #
# Full forward pass
# --------------------------------------------------------------------------- #
def reference_forward(
    params,
    series,
    observed=None,
    channel_ids=None,
    mask_patches=None,
    *,
    patch_len,
    num_heads,
    channel_bias,
    rope_fraction=0.5,
    rope_base=10000.0,
) -> dict:
    if channel_bias not in CHANNEL_BIAS_MODES:
        raise ValueError(f"unknown channel_bias mode {channel_bias!r}")
    series = _f64(series)
    B, C, T = series.shape
    if observed is None:
        observed = np.ones((B, C, T), dtype=bool)
    observed = np.asarray(observed, dtype=bool)
    if channel_ids is None:
        channel_ids = np.broadcast_to(np.arange(C), (B, C))
    channel_ids = np.asarray(channel_ids, dtype=np.int64)

    # 1. RevIN
    xn, obs, mean, std = revin(series, observed)
    # 2. Patching
    patches, patch_obs, patch_valid, channel_valid = patchify(xn, obs, patch_len)
    N = patches.shape[2]
    if mask_patches is None:
        mask_patches = np.zeros((B, C, N), dtype=bool)
    mask_patches = np.asarray(mask_patches, dtype=bool)

    # 3. Tokens
    d = _f64(params["cls_token"]).shape[0]
    e = patches @ _f64(params["patch_embed"]["kernel"]) + _f64(params["patch_embed"]["bias"])
    e = np.where(mask_patches[..., None], _f64(params["mask_embedding"]), e)  # (B, C, N, d)
    cit = _f64(params["channel_identity"]["embedding"])[channel_ids]  # (B, C, d)
    if "level_embed" in params:  # level_embedding: sinusoids of the mean, log of the std
        u = np.clip(mean, -1e6, 1e6)[..., None] / np.array([0.1, 1.0, 10.0, 100.0, 1000.0])
        log_std = np.log(np.clip(std, 1e-3, 1e6))[..., None]
        cit = cit + dense(
            np.concatenate([np.sin(u), np.cos(u), log_std], -1), params["level_embed"]
        )
    cls = _f64(params["cls_token"])

    kind, channel, patch_index, positions = token_layout(C, N)
    L = len(kind)
    assert L == 1 + C * (N + 1)
    structural = structural_mask(kind, channel, channel_bias)
    blocks = [params[name] for name in _block_names(params)]

    out_cls = np.zeros((B, d))
    out_channels = np.zeros((B, C, d))
    out_tokens = np.zeros((B, C, N, d))
    for b_i in range(B):
        h = np.zeros((L, d))
        for t in range(L):
            if kind[t] == 0:
                h[t] = cls
            elif kind[t] == 1:
                h[t] = cit[b_i, channel[t]]
            else:
                h[t] = e[b_i, channel[t], patch_index[t]]
        kv = key_validity(kind, channel, patch_index, patch_valid[b_i], channel_valid[b_i])
        allowed = allowed_mask(structural, kv)
        for p in blocks:
            h = block(h, p, allowed, positions, num_heads, rope_fraction, rope_base)
        for t in range(L):
            if kind[t] == 0:
                out_cls[b_i] = h[t]
            elif kind[t] == 1:
                out_channels[b_i, channel[t]] = h[t]
            else:
                out_tokens[b_i, channel[t], patch_index[t]] = h[t]

    # 6. Pooling over valid patches
    pv = patch_valid.astype(np.float64)[..., None]  # (B, C, N, 1)
    ch_count = pv.sum(axis=2)  # (B, C, 1)
    channel_pooled = (out_tokens * pv).sum(axis=2) / np.maximum(ch_count, 1.0)
    all_count = pv.sum(axis=(1, 2))  # (B, 1)
    pooled = (out_tokens * pv).sum(axis=(1, 2)) / np.maximum(all_count, 1.0)

    return {
        "cls": out_cls,
        "channels": out_channels,
        "tokens": out_tokens,
        "channel_pooled": channel_pooled,
        "pooled": pooled,
        "patch_valid": patch_valid,
        "channel_valid": channel_valid,
        "revin_mean": mean,
        "revin_std": std,
        "patches": patches,
        "patch_observed": patch_obs,
    }


# --------------------------------------------------------------------------- #
# Self-check
# --------------------------------------------------------------------------- #
def random_params(
    rng: np.random.Generator,
    *,
    d: int,
    num_layers: int,
    mlp_dim: int,
    patch_len: int,
    num_channels: int,
    scale: float = 0.3,
) -> dict:
    def w(*shape):
        return rng.normal(0.0, scale, size=shape)

    def lin(n_in, n_out):
        return {"kernel": w(n_in, n_out), "bias": w(n_out)}

    params = {
        "patch_embed": lin(patch_len, d),
        "mask_embedding": w(d),
        "cls_token": w(d),
        "channel_identity": {"embedding": w(num_channels, d)},
    }
    for i in range(num_layers):
        params[f"block_{i}"] = {
            "attention": {
                **{name: lin(d, d) for name in ("query", "value", "out")},
                "key": {"kernel": w(d, d)},
            },
            "attention_norm": {"scale": 1.0 + w(d), "bias": w(d)},
            "mlp": {"fc1": lin(d, mlp_dim), "fc2": lin(mlp_dim, d)},
            "mlp_norm": {"scale": 1.0 + w(d), "bias": w(d)},
        }
    return params


def _self_check() -> None:
    rng = np.random.default_rng(0)
    d, H, layers, mlp, P, K = 16, 2, 2, 32, 4, 8
    params = random_params(rng, d=d, num_layers=layers, mlp_dim=mlp, patch_len=P, num_channels=K)
    B, C, T = 2, 3, 14  # T not a multiple of P -> 2 padded steps at the front
    series = rng.normal(size=(B, C, T)) * 5.0 + 3.0
    observed = rng.random((B, C, T)) > 0.2
    series[0, 1, 7] = np.nan
    observed[0, 1, 7] = True  # NaN marked observed: must be treated as missing
    observed[1, 2, :] = False  # a fully missing channel
    observed[1, 0, -4:] = False  # a fully missing last patch
    channel_ids = np.array([[0, 1, 2], [5, 3, 7]])
    N = -(-T // P)
    mask_patches = rng.random((B, C, N)) < 0.3

    results = {}
    for mode in CHANNEL_BIAS_MODES:
        out = reference_forward(
            params,
            series,
            observed,
            channel_ids,
            mask_patches,
            patch_len=P,
            num_heads=H,
            channel_bias=mode,
        )
        results[mode] = out
        print(f"mode={mode}")
        for key, val in out.items():
            bad = bool(np.isnan(val).any()) if val.dtype.kind == "f" else False
            print(f"  {key:15s} shape={val.shape} dtype={val.dtype} nan={bad}")
            assert not bad, (mode, key)
        assert out["cls"].shape == (B, d)
        assert out["tokens"].shape == (B, C, N, d)
        assert out["patches"].shape == (B, C, N, P)
        assert not out["channel_valid"][1, 2]
        assert not out["patch_valid"][1, 0, -1]
        assert not out["patch_observed"][:, :, 0, :2].any()  # front padding
        assert np.allclose(out["channel_pooled"][1, 2], 0.0)
    # The modes must actually differ.
    assert not np.allclose(results["full"]["cls"], results["paper"]["cls"])
    assert not np.allclose(results["paper"]["tokens"], results["block_diagonal"]["tokens"])
    print("self-check OK: no NaN in any output, all three modes differ")


if __name__ == "__main__":
    _self_check()
