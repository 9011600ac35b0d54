r"""Our encoder's architecture in PyTorch (CPU, float32, eager), for speed comparisons only.

  .venv/bin/python benchmarks/torch_trace.py --check     # equals the Flax model? (needs jax)

The same computation as trace_jax/model (docs/encoder_spec.md): RevIN over observed points,
front-padded patches, patch embedding, mask embedding, CIT (+ level embedding), [CLS], RoPE on
a leading fraction of each head's dims restarting in every channel, post-LN blocks with exact
GELU, the `block_diagonal`, `paper` and `full` attention structures; the pretraining head and
masked MSE, the alignment projections and the TRACE InfoNCE loss with hard negatives; AdamW
with warmup+cosine and global-norm clipping as trace_jax/train/state.py.

Written as a competent engineer would tune it for a small CPU, not as a port:
- the sequence lives as one (B*C*S + B, d) matrix, every channel's S = N+1 rows (CIT and
  patches) first and the B [CLS] rows last, so projections, LayerNorms and the MLP are single
  2-D matmuls and each channel's rows are a free (B*C, S, ...) view for attention;
- query, key and value come from one fused matmul; the key has no bias (as ours: softmax
  ignores it), so a zero buffer fills its slot in the fused bias;
- attention is F.scaled_dot_product_attention (the CPU flash kernel), with additive masks built
  once per forward and shared by the layers; block_diagonal runs B*C sequences of S tokens plus
  one [CLS] query per sample over all its keys, never an (L, L) mask (attention_layout "dense"
  builds that mask instead, to time the public code's quadratic layout);
- tensors are cut with split/unbind, never sliced (a slice's backward zero-fills a full-size
  gradient and adds into it); residual dropout is one uniform draw and one addcmul;
- AdamW is the fused CPU kernel, clipping uses foreach, gradients are set to None;
- with partial_last_block (versus_torch.py's default) the last block runs only for the tokens
  the loss reads, as ours does; the CIT and patch rows it keeps are picked with index_select.
Process-wide settings that must precede the interpreter (tcmalloc, MKL's AVX-512 path on AMD,
OMP_WAIT_POLICY) are set by benchmarks/versus_torch.py for its children; see its docstring.

Parameter names follow the Flax tree so that `load_flax_encoder` can copy an initialised Flax
encoder into this one; `check()` does that and compares outputs, losses and gradients.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-5
REVIN_EPS = 1e-5
# flax.linen.LayerNorm's default, used by the alignment model's text normalisation.
TEXT_NORM_EPS = 1e-6
LEVEL_SCALES = (0.1, 1.0, 10.0, 100.0, 1000.0)
CHANNEL_BIAS_MODES = ("block_diagonal", "paper", "full")
# How block_diagonal attention is laid out: "split" runs each channel's S tokens as a sequence
# of its own (linear in C); "dense" is one (L, L) additive mask over all C*S + 1 tokens, as the
# paper's public code builds its channel mask and as the 54 s PyTorch bar behaved
# (quadratic in C: out of memory with attention dropout at 112 channels).
ATTENTION_LAYOUTS = ("split", "dense")
# EncoderConfig fields that change how ours computes, not what: this model keeps activations.
IMPLEMENTATION_ONLY = ("remat", "remat_policy", "scan_layers", "attention_impl")


@dataclasses.dataclass(frozen=True)
class TorchTraceConfig:
    """The EncoderConfig fields that define the computation (same names and defaults)."""

    patch_len: int = 6
    d_model: int = 384
    num_heads: int = 6
    num_layers: int = 6
    mlp_dim: int = 1536
    num_channels: int = 64
    channel_bias: str = "block_diagonal"
    rope_fraction: float = 0.5
    rope_base: float = 10000.0
    dropout: float = 0.1
    attention_dropout: float = 0.0
    level_embedding: bool = False
    bf16_matmuls: bool = False
    attention_layout: str = "split"  # this model only: see ATTENTION_LAYOUTS
    # This model only: the last block runs for the tokens the loss reads (pretraining: CIT and
    # as many patches as the mask ratio can mask; alignment and embeddings: [CLS] and CIT), as
    # ours always does (TraceEncoder's query_patches / summary_only). Off: every token, as a
    # straightforward port would. Only the split layout shortcuts; dense computes all and picks.
    partial_last_block: bool = False

    def __post_init__(self):
        if self.channel_bias not in CHANNEL_BIAS_MODES:
            raise ValueError(f"channel_bias must be one of {CHANNEL_BIAS_MODES}")
        if self.attention_layout not in ATTENTION_LAYOUTS:
            raise ValueError(f"attention_layout must be one of {ATTENTION_LAYOUTS}")
        if self.d_model % self.num_heads:
            raise ValueError("d_model must be divisible by num_heads")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "TorchTraceConfig":
        """From an EncoderConfig-style mapping. Fields that only choose how ours runs the same
        function (remat, remat_policy, scan_layers, attention_impl) are dropped; any other
        field this class lacks is an error, so a new model option cannot be ignored silently."""
        m = dict(m)
        if m.pop("dtype", "float32") != "float32":
            raise ValueError("the PyTorch baseline runs float32 only")
        for name in IMPLEMENTATION_ONLY:
            m.pop(name, None)
        return cls(**m)


def rope_tables(length: int, head_dim: int, fraction: float, base: float):
    """cos/sin (length, rot/2) for positions 0..length-1, as trace_jax/model/rope.py."""
    rot = 2 * int(fraction * head_dim / 2)
    half = rot // 2
    inv_freq = base ** (-2.0 * np.arange(half) / max(rot, 1))
    angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
    return (
        torch.from_numpy(np.cos(angles).astype(np.float32)),
        torch.from_numpy(np.sin(angles).astype(np.float32)),
    )


def apply_rope(x, cos, sin):
    """Rotate-half RoPE of x (..., hd) on its leading 2*half dims; cos/sin broadcast to x."""
    half = cos.shape[-1]
    if half == 0:
        return x
    a, b, rest = x.split([half, half, x.shape[-1] - 2 * half], dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)


def linear(x, weight, bias, bf16: bool):
    """F.linear; with bf16 the operands are rounded to bfloat16 (oneDNN's AVX512-BF16 kernel)
    and the product is added to the bias in float32. Unlike ours the product itself comes back
    rounded to bfloat16: torch has no bfloat16 x bfloat16 -> float32 matmul."""
    if not bf16:
        return F.linear(x, weight, bias)
    return F.linear(x.bfloat16(), weight.bfloat16()).float() + bias


def residual_dropout(x, y, p: float, training: bool):
    """x + dropout(y): one uniform draw and one fused multiply-add instead of bernoulli_,
    div_, mul and add (the bernoulli draw alone costs twice a uniform one on CPU)."""
    if not training or p == 0.0:
        return x + y
    keep = torch.rand_like(y).ge_(p).mul_(1.0 / (1.0 - p))
    return torch.addcmul(x, y, keep)


def revin(series, observed):
    """Per (sample, channel) normalisation over observed points (spec section 1)."""
    obs = observed & torch.isfinite(series)
    x = torch.where(obs, series, 0.0)
    w = obs.to(x.dtype)
    n = w.sum(-1, keepdim=True).clamp_min(1.0)
    mean = x.sum(-1, keepdim=True) / n
    var = ((x - mean).square() * w).sum(-1, keepdim=True) / n
    std = torch.sqrt(var + REVIN_EPS)
    return torch.where(obs, (x - mean) / std, 0.0), obs, mean[..., 0], std[..., 0]


def patchify(values, observed, patch_len: int):
    """(B, C, T) -> (B, C, N, P), prepending unobserved zeros so the last patch ends at T."""
    t = values.shape[-1]
    pad = -(-t // patch_len) * patch_len - t
    if pad:
        values = F.pad(values, (pad, 0))
        observed = F.pad(observed, (pad, 0), value=False)
    shape = values.shape[:-1] + (-1, patch_len)
    return values.reshape(shape), observed.reshape(shape)


def level_features(mean, std):
    scales = torch.tensor(LEVEL_SCALES, dtype=mean.dtype)
    m = mean.clamp(-1e6, 1e6)[..., None] / scales
    log_std = torch.log(std.clamp(1e-3, 1e6))[..., None]
    return torch.cat([torch.sin(m), torch.cos(m), log_std], dim=-1)


def structural_mask(mode: str, channels: int, channel_length: int) -> torch.Tensor:
    """(L, L) bool in the spec's token order [CLS; CIT_1; patches_1; ...] (dense modes)."""
    token_channel = torch.cat(
        [torch.tensor([-1]), torch.arange(channels).repeat_interleave(channel_length)]
    )
    is_cit = torch.cat(
        [torch.tensor([False]), (torch.arange(channel_length) == 0).repeat(channels)]
    )
    same = token_channel[:, None] == token_channel[None, :]
    if mode == "full":
        return torch.ones_like(same)
    if mode == "paper":
        return torch.where(is_cit[:, None], same, True)
    return torch.where(token_channel[:, None] < 0, True, same)


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """Bool mask -> float mask for SDPA; every row allows itself, so no row is all -inf."""
    return torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))


@dataclasses.dataclass
class Geometry:
    """Per-forward constants shared by every layer: sizes, RoPE tables, attention masks."""

    batch: int
    channels: int
    channel_length: int  # S = N + 1
    heads: int
    head_dim: int
    cos: torch.Tensor  # (S, 1, 1, half): broadcast over (B*C, S, 2, H, half)
    sin: torch.Tensor
    channel_mask: torch.Tensor | None  # (B*C, 1, S, S) additive (block_diagonal)
    cls_mask: torch.Tensor | None  # (B, 1, 1, L) additive (block_diagonal)
    dense_mask: torch.Tensor | None  # (B, 1, L, L) additive (paper, full)

    @property
    def channel_rows(self) -> int:
        return self.batch * self.channels * self.channel_length


class Block(nn.Module):
    def __init__(self, cfg: TorchTraceConfig):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.qkv_weight = nn.Parameter(torch.empty(3 * d, d))
        self.query_bias = nn.Parameter(torch.zeros(d))
        self.value_bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("key_bias", torch.zeros(d), persistent=False)
        self.out = nn.Linear(d, d)
        self.attention_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(d, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, d)
        self.mlp_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        for i in range(3):
            nn.init.xavier_uniform_(self.qkv_weight[i * d : (i + 1) * d])

    def _attention(self, qkv, g: Geometry, query, query_rows):
        """qkv (M, 3d) -> attention outputs (M', d) in the same row order (channel rows, then
        [CLS] rows): all rows (M' = M), or the channel rows `query` selects (split layout;
        `query_rows` are their row numbers)."""
        b, c, s, h, hd = g.batch, g.channels, g.channel_length, g.heads, g.head_dim
        rows, d = g.channel_rows, h * hd
        channel, cls = qkv.split([rows, b])
        qk, v = channel.view(b * c, s, 3, h, hd).split([2, 1], dim=2)
        q, k = apply_rope(qk, g.cos, g.sin).unbind(2)  # (B*C, S, H, hd) each
        v = v.squeeze(2)
        channel_mask = g.channel_mask
        if query is not None:  # (B*C, Q) positions of each channel's kept queries
            q = q.reshape(rows, h, hd).index_select(0, query_rows).view(b * c, -1, h, hd)
            channel_mask = channel_mask.gather(2, query[:, None, :, None].expand(-1, 1, -1, s))
        cls_q, cls_k, cls_v = cls.view(b, 3, 1, h, hd).unbind(1)  # position 0: no rotation
        dropout_p = self.cfg.attention_dropout if self.training else 0.0

        def sample_major(x):  # (B*C, S, H, hd) -> (B, C*S, H, hd), a view
            return x.reshape(b, c * s, h, hd)

        if channel_mask is not None:
            channel_out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                attn_mask=channel_mask,
                dropout_p=dropout_p,
            )  # (B*C, H, S or Q, hd), laid out as (B*C, S or Q, H, hd)
            cls_out = F.scaled_dot_product_attention(
                cls_q.transpose(1, 2),
                torch.cat([cls_k, sample_major(k)], dim=1).transpose(1, 2),
                torch.cat([cls_v, sample_major(v)], dim=1).transpose(1, 2),
                attn_mask=g.cls_mask,
                dropout_p=dropout_p,
            )  # (B, H, 1, hd)
            return torch.cat(
                [channel_out.transpose(1, 2).reshape(-1, d), cls_out.reshape(b, d)], dim=0
            )

        def sequence(first, x):  # the spec's order [CLS; channel 1; ...] as (B, H, L, hd)
            return torch.cat([first, sample_major(x)], dim=1).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            sequence(cls_q, q),
            sequence(cls_k, k),
            sequence(cls_v, v),
            attn_mask=g.dense_mask,
            dropout_p=dropout_p,
        )
        cls_out, channel_out = out.transpose(1, 2).split([1, c * s], dim=1)  # (B, L, H, hd)
        return torch.cat([channel_out.reshape(rows, d), cls_out.reshape(b, d)], dim=0)

    def forward(self, x, g: Geometry, query=None):
        """query (B*C, Q): keep only those positions of each channel (and every [CLS] row) from
        attention on; the rows dropped are still keys and values."""
        p = self.cfg.dropout
        bias = torch.cat([self.query_bias, self.key_bias, self.value_bias])
        bf16 = self.cfg.bf16_matmuls
        qkv = linear(x, self.qkv_weight, bias, bf16)
        rows = None if query is None else _flat_rows(query, g.channel_length)
        attn = linear(self._attention(qkv, g, query, rows), self.out.weight, self.out.bias, bf16)
        if query is not None:
            channel, cls = x.split([g.channel_rows, g.batch])
            x = torch.cat([channel.index_select(0, rows), cls])
        x = self.attention_norm(residual_dropout(x, attn, p, self.training))
        hidden = F.gelu(linear(x, self.fc1.weight, self.fc1.bias, bf16))
        mlp = linear(hidden, self.fc2.weight, self.fc2.bias, bf16)
        return self.mlp_norm(residual_dropout(x, mlp, p, self.training))


def _flat_rows(query, channel_length: int):
    """(B*C, Q) positions within each channel -> row numbers in the (B*C*S, ...) channel rows."""
    start = torch.arange(query.shape[0])[:, None] * channel_length
    return (start + query).reshape(-1)


def _take_patches(x, query_patches):
    """x (B, C, N, ...) at (B, C, M) patch indices -> (B, C, M, ...)."""
    index = query_patches.view(query_patches.shape + (1,) * (x.dim() - 3))
    return x.gather(2, index.expand(query_patches.shape + x.shape[3:]))


def _masked_mean(x, valid, dim):
    w = valid.to(x.dtype)[..., None]
    return (x * w).sum(dim) / w.sum(dim).clamp_min(1.0)


class TorchTraceEncoder(nn.Module):
    """Series (B, C, T) -> the outputs of trace_jax TraceEncoder (spec section 6)."""

    def __init__(self, cfg: TorchTraceConfig):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.patch_len, d)
        self.mask_embedding = nn.Parameter(0.02 * torch.randn(d))
        self.cls_token = nn.Parameter(0.02 * torch.randn(d))
        self.channel_identity = nn.Embedding(cfg.num_channels, d)
        nn.init.normal_(self.channel_identity.weight, std=0.02)
        if cfg.level_embedding:
            self.level_embed = nn.Linear(2 * len(LEVEL_SCALES) + 1, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))

    def geometry(self, b, c, n, channel_valid, patch_valid) -> Geometry:
        cfg = self.cfg
        s = n + 1
        hd = cfg.d_model // cfg.num_heads
        cos, sin = rope_tables(s, hd, cfg.rope_fraction, cfg.rope_base)
        key_valid = torch.cat([channel_valid[..., None], patch_valid], dim=-1)  # (B, C, S)
        sequence_valid = torch.cat(
            [torch.ones(b, 1, dtype=torch.bool), key_valid.reshape(b, c * s)], dim=1
        )
        channel_mask = cls_mask = dense_mask = None
        if cfg.channel_bias == "block_diagonal" and cfg.attention_layout == "split":
            eye = torch.eye(s, dtype=torch.bool)
            channel_mask = additive(key_valid.reshape(b * c, 1, 1, s) | eye)
            cls_mask = additive(sequence_valid[:, None, None, :])
        else:
            eye = torch.eye(1 + c * s, dtype=torch.bool)
            allowed = structural_mask(cfg.channel_bias, c, s) & (sequence_valid[:, None] | eye)
            dense_mask = additive(allowed[:, None])
        return Geometry(
            b,
            c,
            s,
            cfg.num_heads,
            hd,
            cos[:, None, None],
            sin[:, None, None],
            channel_mask,
            cls_mask,
            dense_mask,
        )

    def forward(
        self, series, observed=None, channel_ids=None, mask_patches=None, query_patches=None
    ):
        """query_patches (B, C, M) long: 'tokens', 'patches' and 'patch_observed' at those
        patches only, no pooled outputs (M = 0: [CLS] and CIT only), as ours."""
        cfg = self.cfg
        b, c, _ = series.shape
        series = series.float()
        if observed is None:
            observed = torch.ones(series.shape, dtype=torch.bool)
        if channel_ids is None:
            channel_ids = torch.arange(c).expand(b, c)
        normalised, obs, mean, std = revin(series, observed)
        patches, patch_observed = patchify(normalised, obs, cfg.patch_len)
        patch_valid = patch_observed.any(-1)
        channel_valid = patch_valid.any(-1)
        n = patches.shape[2]

        tokens = self.patch_embed(patches)
        if mask_patches is not None:
            tokens = torch.where(mask_patches[..., None], self.mask_embedding, tokens)
        cit = self.channel_identity(channel_ids)
        if cfg.level_embedding:
            cit = cit + self.level_embed(level_features(mean, std))
        per_channel = torch.cat([cit[:, :, None], tokens], dim=2)  # (B, C, S, d)
        d = cfg.d_model
        x = torch.cat([per_channel.reshape(-1, d), self.cls_token.expand(b, d)], dim=0)

        g = self.geometry(b, c, n, channel_valid, patch_valid)
        query = None  # positions per channel: the CIT, then the query patches
        if query_patches is not None:
            query = torch.cat([torch.zeros(b, c, 1, dtype=torch.long), 1 + query_patches], -1)
        split = g.channel_mask is not None  # dense layouts compute every token, then pick
        last_query = query.view(b * c, -1) if split and query is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, g, last_query if i == len(self.blocks) - 1 else None)

        per_channel, cls = x.split([x.shape[0] - b, b])
        per_channel = per_channel.view(b, c, -1, d)
        if query is not None and not split:
            per_channel = _take_patches(per_channel, query)
        out_tokens = per_channel[:, :, 1:]
        common = {"cls": cls, "channels": per_channel[:, :, 0], "channel_valid": channel_valid}
        if query is not None:
            return dict(
                common,
                tokens=out_tokens,
                patches=_take_patches(patches, query_patches),
                patch_observed=_take_patches(patch_observed, query_patches),
            )
        return {
            **common,
            "tokens": out_tokens,
            "channel_pooled": _masked_mean(out_tokens, patch_valid, 2),
            "pooled": _masked_mean(
                out_tokens.reshape(b, c * n, d), patch_valid.reshape(b, c * n), 1
            ),
            "patch_valid": patch_valid,
            "revin_mean": mean,
            "revin_std": std,
            "patches": patches,
            "patch_observed": patch_observed,
        }


def random_patch_mask(patch_valid, ratio: float, generator=None):
    """round(ratio * n_valid) valid patches per (sample, channel), as losses.random_patch_mask."""
    scores = torch.rand(patch_valid.shape, generator=generator).masked_fill_(~patch_valid, 2.0)
    rank = scores.argsort(-1).argsort(-1)
    return patch_valid & (rank < _mask_count(patch_valid.sum(-1), ratio)[..., None])


def _mask_count(n_valid, ratio: float):
    """How many of n_valid valid patches random_patch_mask masks."""
    n_mask = torch.round(ratio * n_valid.float()).long()  # half-to-even, like ours
    if ratio > 0:
        n_mask = torch.where(n_valid > 0, n_mask.clamp_min(1), n_mask)
    return torch.minimum(n_mask, n_valid)


def patches_to_reconstruct(patch_masked, ratio: float):
    """(query, masked) as losses.patches_to_reconstruct: per channel the indices of its masked
    patches, then unmasked ones, up to the most that `ratio` can mask; which are masked."""
    count = int(_mask_count(torch.arange(patch_masked.shape[-1] + 1), ratio).max())
    query = (~patch_masked).to(torch.uint8).argsort(dim=-1, stable=True)[..., :count]
    return query, patch_masked.gather(-1, query)


def masked_reconstruction_loss(pred, target, point_observed, patch_masked):
    sel = point_observed & patch_masked[..., None]
    diff = torch.where(sel, pred - torch.where(sel, target, 0.0), 0.0)
    return diff.square().sum() / sel.sum().clamp_min(1).float()


class TorchPretrainModel(nn.Module):
    def __init__(self, cfg: TorchTraceConfig, mask_ratio: float = 0.3):
        super().__init__()
        self.encoder = TorchTraceEncoder(cfg)
        self.reconstruction = nn.Linear(cfg.d_model, cfg.patch_len)
        self.mask_ratio = mask_ratio

    def forward(self, series, observed, channel_ids, mask_patches, query_patches=None):
        out = self.encoder(series, observed, channel_ids, mask_patches, query_patches)
        out["reconstruction"] = self.reconstruction(out["tokens"])
        return out

    def loss(self, batch, mask_patches=None, generator=None):
        """The pretraining objective; draws the patch mask when none is given."""
        if mask_patches is None:
            obs = batch["observed"] & torch.isfinite(batch["series"])
            _, point_observed = patchify(batch["series"], obs, self.encoder.cfg.patch_len)
            mask_patches = random_patch_mask(point_observed.any(-1), self.mask_ratio, generator)
        query, scored = None, mask_patches
        if self.encoder.cfg.partial_last_block:
            query, scored = patches_to_reconstruct(mask_patches, self.mask_ratio)
        out = self(batch["series"], batch["observed"], batch["channel_ids"], mask_patches, query)
        return masked_reconstruction_loss(
            out["reconstruction"], out["patches"], out["patch_observed"], scored
        )


def l2_normalize(x, eps=1e-12):
    return x / torch.sqrt(x.square().sum(-1, keepdim=True).clamp_min(eps))


def _direction(logits, sim, valid, k):
    """Per-anchor InfoNCE with rows as anchors (losses._direction, loss only)."""
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    negative = valid[None, :] & ~eye
    if k is not None and k < n - 1:
        scores = sim.detach().masked_fill(~negative, float("-inf"))
        top_vals, top_idx = scores.topk(k, dim=1)
        picked = torch.zeros(n, n, dtype=torch.bool).scatter_(1, top_idx, top_vals.isfinite())
        negative = negative & picked
    keep = negative | eye
    lse = torch.logsumexp(logits.masked_fill(~keep, float("-inf")), dim=1)
    return lse - logits.diagonal()


def info_nce(series_emb, text_emb, temperature, valid, hard_negatives):
    s, t = l2_normalize(series_emb), l2_normalize(text_emb)
    sim = s @ t.T
    logits = sim / temperature
    denom = valid.sum().clamp_min(1).float()
    l_s2t = torch.where(valid, _direction(logits, sim, valid, hard_negatives), 0.0).sum()
    l_t2s = torch.where(valid, _direction(logits.T, sim.T, valid, hard_negatives), 0.0).sum()
    return 0.5 * (l_s2t + l_t2s) / denom


class TorchAlignModel(nn.Module):
    """trace_jax AlignModel: shared series projection for [CLS] and CITs, text projection+LN."""

    def __init__(self, cfg: TorchTraceConfig, text_dim: int = 384):
        super().__init__()
        d = cfg.d_model
        self.encoder = TorchTraceEncoder(cfg)
        self.series_proj = nn.Linear(d, d)
        self.text_proj = nn.Linear(text_dim, d)
        self.text_norm = nn.LayerNorm(d, eps=TEXT_NORM_EPS)

    def embed_series(self, series, observed=None, channel_ids=None):
        summary = None  # [CLS] and CIT are all this reads
        if self.encoder.cfg.partial_last_block:
            summary = torch.zeros(series.shape[:2] + (0,), dtype=torch.long)
        out = self.encoder(series, observed, channel_ids, query_patches=summary)
        return {
            "sample": l2_normalize(self.series_proj(out["cls"])),
            "channels": l2_normalize(self.series_proj(out["channels"])),
            "channel_valid": out["channel_valid"],
        }

    def embed_text(self, text_embedding):
        return l2_normalize(self.text_norm(self.text_proj(text_embedding)))

    def loss(self, batch, temperature=0.07, channel_weight=1.0, hard_negatives=32):
        """The TRACE loss, as losses.sample_and_channel_loss (hard_negatives 0/None: all)."""
        k = hard_negatives or None
        series = self.embed_series(batch["series"], batch["observed"], batch["channel_ids"])
        text = self.embed_text(batch["text_embedding"])
        channel_text = self.embed_text(batch["channel_text_embedding"])
        has_text = batch["has_text"]
        b, c, d = series["channels"].shape
        sample_loss = info_nce(series["sample"], text, temperature, has_text, k)
        ch_valid = series["channel_valid"] & batch["channel_text_valid"] & has_text[:, None]
        channel_loss = info_nce(
            series["channels"].reshape(b * c, d),
            channel_text.reshape(b * c, d),
            temperature,
            ch_valid.reshape(b * c),
            k,
        )
        return sample_loss + channel_weight * channel_loss


def make_optimizer(model: nn.Module, train: Mapping[str, Any]):
    """Fused AdamW, no decay on 1-D parameters, and optax's warmup+cosine schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": train["weight_decay"]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=train["learning_rate"], betas=(0.9, 0.999), eps=1e-8, fused=True
    )
    warmup = train["warmup_steps"]
    decay = max(train["steps"], warmup + 1) - warmup

    def factor(step):
        if step < warmup:
            return step / warmup
        cosine = 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / decay, 1.0)))
        return 0.01 + 0.99 * cosine

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_train_step(model: nn.Module, optimizer, scheduler, grad_clip: float, loss_fn):
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
        optimizer.step()
        scheduler.step()
        return loss.detach()

    return step


# ---- copying Flax parameters in, and the equivalence check ----


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, dtype=np.float32))


def _load_dense(module: nn.Linear, p):
    module.weight.copy_(_t(p["kernel"]).T)
    module.bias.copy_(_t(p["bias"]))


def _load_norm(module: nn.LayerNorm, p):
    module.weight.copy_(_t(p["scale"]))
    module.bias.copy_(_t(p["bias"]))


@torch.no_grad()
def load_flax_encoder(encoder: TorchTraceEncoder, p) -> None:
    """Copies a Flax TraceEncoder parameter tree (spec's names) into `encoder`."""
    _load_dense(encoder.patch_embed, p["patch_embed"])
    encoder.mask_embedding.copy_(_t(p["mask_embedding"]))
    encoder.cls_token.copy_(_t(p["cls_token"]))
    encoder.channel_identity.weight.copy_(_t(p["channel_identity"]["embedding"]))
    if encoder.cfg.level_embedding:
        _load_dense(encoder.level_embed, p["level_embed"])
    for i, block in enumerate(encoder.blocks):
        bp = p[f"block_{i}"]
        attn = bp["attention"]
        block.qkv_weight.copy_(
            torch.cat([_t(attn[n]["kernel"]).T for n in ("query", "key", "value")], dim=0)
        )
        block.query_bias.copy_(_t(attn["query"]["bias"]))
        block.value_bias.copy_(_t(attn["value"]["bias"]))
        _load_dense(block.out, attn["out"])
        _load_norm(block.attention_norm, bp["attention_norm"])
        _load_dense(block.fc1, bp["mlp"]["fc1"])
        _load_dense(block.fc2, bp["mlp"]["fc2"])
        _load_norm(block.mlp_norm, bp["mlp_norm"])


def _flax_grads_as_torch(encoder: TorchTraceEncoder, g) -> dict[str, np.ndarray]:
    """The Flax encoder gradient tree under this module's parameter names."""
    out = {
        "patch_embed.weight": np.asarray(g["patch_embed"]["kernel"]).T,
        "patch_embed.bias": g["patch_embed"]["bias"],
        "mask_embedding": g["mask_embedding"],
        "cls_token": g["cls_token"],
        "channel_identity.weight": g["channel_identity"]["embedding"],
    }
    if encoder.cfg.level_embedding:
        out["level_embed.weight"] = np.asarray(g["level_embed"]["kernel"]).T
        out["level_embed.bias"] = g["level_embed"]["bias"]
    for i in range(len(encoder.blocks)):
        bg, pre = g[f"block_{i}"], f"blocks.{i}."
        attn = bg["attention"]
        out[pre + "qkv_weight"] = np.concatenate(
            [np.asarray(attn[n]["kernel"]).T for n in ("query", "key", "value")]
        )
        out[pre + "query_bias"] = attn["query"]["bias"]
        out[pre + "value_bias"] = attn["value"]["bias"]
        for name, sub in (("out", attn["out"]), ("fc1", bg["mlp"]["fc1"])):
            out[pre + name + ".weight"] = np.asarray(sub["kernel"]).T
            out[pre + name + ".bias"] = sub["bias"]
        out[pre + "fc2.weight"] = np.asarray(bg["mlp"]["fc2"]["kernel"]).T
        out[pre + "fc2.bias"] = bg["mlp"]["fc2"]["bias"]
        for name in ("attention_norm", "mlp_norm"):
            out[pre + name + ".weight"] = bg[name]["scale"]
            out[pre + name + ".bias"] = bg[name]["bias"]
    return {k: np.asarray(v) for k, v in out.items()}


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def check(
    sizes: Mapping[str, Any] | None = None,
    modes=CHANNEL_BIAS_MODES,
    tolerance: float = 1e-5,
    log=print,
    layouts=ATTENTION_LAYOUTS,
) -> float:
    """Copies freshly initialised Flax models into these and compares, in evaluation mode:
    encoder outputs, the reconstruction, series embeddings, both losses and all gradients
    (relative to the largest gradient), in every channel-bias mode (block_diagonal in each of
    `layouts`), on inputs with missing
    points, NaN, a fully missing channel, T not a multiple of P, permuted channel ids and masked
    patches. Returns the largest difference; raises AssertionError above `tolerance`."""
    import jax
    import jax.numpy as jnp

    from trace_jax.model.encoder import EncoderConfig
    from trace_jax.model.heads import AlignModel, PretrainModel
    from trace_jax.train import losses

    sizes = dict(sizes or dict(d_model=32, num_heads=4, num_layers=2, mlp_dim=64))
    rng = np.random.default_rng(0)
    b, c, t, table, text_dim = 3, 4, 40, 8, 16
    # Levels near 1: the level embedding's sin(mean / 0.1) turns a 1-ulp difference in a
    # float32 mean (summation order) into 10 ulps of its argument; at levels near 10 that alone
    # reaches 1e-5 in the CIT, whichever implementation is the better one.
    series = (rng.standard_normal((b, c, t)) * 2 + 1).astype(np.float32)
    observed = rng.random((b, c, t)) > 0.2
    observed[1, 2] = False  # a channel with nothing observed
    series[0, 1, 5] = np.nan
    channel_ids = np.stack([rng.permutation(table)[:c] for _ in range(b)]).astype(np.int32)
    n = -(-t // 6)
    mask = rng.random((b, c, n)) < 0.3
    # At most as many per channel as a 0.3 ratio masks (the bound the partial last block keeps).
    mask &= np.cumsum(mask, -1) <= int(_mask_count(torch.arange(n + 1), 0.3).max())
    text = rng.standard_normal((b, text_dim)).astype(np.float32)
    channel_text = rng.standard_normal((b, c, text_dim)).astype(np.float32)
    has_text = np.array([True, True, False])
    channel_text_valid = rng.random((b, c)) > 0.2
    jbatch = dict(series=series, observed=observed, channel_ids=channel_ids)
    tbatch = {k: torch.from_numpy(v) for k, v in jbatch.items()}
    tbatch["channel_ids"] = tbatch["channel_ids"].long()
    worst = 0.0

    def record(name, diff):
        nonlocal worst
        worst = max(worst, diff)
        log(f"check {name}: max |diff| {diff:.2e}")

    runs = [
        (mode, layout)
        for mode in modes
        for layout in (layouts if mode == "block_diagonal" else ("dense",))
    ]
    for mode, layout in runs:
        fields = dict(
            sizes, num_channels=table, channel_bias=mode, level_embedding=True, dropout=0.0
        )
        jcfg = EncoderConfig(**fields)
        tcfg = TorchTraceConfig.from_mapping(
            dict(dataclasses.asdict(jcfg), attention_layout=layout)
        )
        if mode == "block_diagonal":
            mode = f"{mode} ({layout})"  # names the records
        # The PyTorch model as a port would run (every token through the last block) and with
        # the last block for the loss's tokens only, against the same Flax model.
        variants = [
            (dataclasses.replace(tcfg, partial_last_block=partial), name)
            for partial, name in ((False, mode), (True, f"{mode} partial"))
        ]

        # Pretraining model: outputs, masked MSE and gradients of every parameter.
        jmodel = PretrainModel(jcfg)
        jparams = jmodel.init(jax.random.key(1), series, observed, channel_ids, mask)["params"]

        def jloss(p, jmodel):
            out = jmodel.apply({"params": p}, series, observed, channel_ids, mask)
            loss, _ = losses.masked_reconstruction_loss(
                out["reconstruction"], out["patches"], out["patch_observed"], mask
            )
            return loss, out

        (jl, jout), jgrads = jax.value_and_grad(jloss, has_aux=True)(jparams, jmodel)
        for tcfg_p, name in variants:
            tmodel = TorchPretrainModel(tcfg_p).eval()
            load_flax_encoder(tmodel.encoder, jparams["encoder"])
            with torch.no_grad():
                _load_dense(tmodel.reconstruction, jparams["reconstruction"])
            tmask = torch.from_numpy(mask)
            tl = tmodel.loss(tbatch, tmask)
            tl.backward()
            with torch.no_grad():
                tout = tmodel(tbatch["series"], tbatch["observed"], tbatch["channel_ids"], tmask)
            for key in ("cls", "channels", "tokens", "pooled", "channel_pooled", "reconstruction"):
                record(f"{name} {key}", _max_diff(jout[key], tout[key]))
            record(f"{name} masked MSE", abs(float(jl) - tl.item()))
            expected = {
                "encoder." + k: v
                for k, v in _flax_grads_as_torch(tmodel.encoder, jgrads["encoder"]).items()
            }
            expected["reconstruction.weight"] = np.asarray(jgrads["reconstruction"]["kernel"]).T
            expected["reconstruction.bias"] = np.asarray(jgrads["reconstruction"]["bias"])
            got = {k: v.grad for k, v in tmodel.named_parameters()}
            if set(got) != set(expected):
                raise AssertionError(f"parameter names differ: {set(got) ^ set(expected)}")
            scale = max(float(np.abs(v).max()) for v in expected.values())
            record(
                f"{name} pretraining gradients / max|grad|",
                max(_max_diff(expected[k], got[k]) for k in expected) / scale,
            )

        # Alignment model: series embeddings, the TRACE loss with 2 hard negatives, gradients.
        jalign = AlignModel(jcfg)
        abatch = dict(
            jbatch,
            text_embedding=text,
            channel_text_embedding=channel_text,
            has_text=has_text,
            channel_text_valid=channel_text_valid,
        )
        aparams = jalign.init(jax.random.key(2), abatch)["params"]

        def aloss(p, jalign, abatch):
            out = jalign.apply({"params": p}, abatch)
            loss, _ = losses.sample_and_channel_loss(
                out["sample"],
                out["text"],
                out["channels"],
                out["channel_text"],
                has_text=jnp.asarray(has_text),
                channel_valid=out["channel_valid"] & channel_text_valid,
                temperature=0.07,
                channel_weight=1.0,
                hard_negatives=2,
            )
            return loss, out

        (jl, jout), jgrads = jax.value_and_grad(aloss, has_aux=True)(aparams, jalign, abatch)
        for tcfg_p, name in variants:
            talign = TorchAlignModel(tcfg_p, text_dim).eval()
            load_flax_encoder(talign.encoder, aparams["encoder"])
            with torch.no_grad():
                _load_dense(talign.series_proj, aparams["series_proj"])
                _load_dense(talign.text_proj, aparams["text_proj"])
                _load_norm(talign.text_norm, aparams["text_norm"])
            tabatch = dict(tbatch, **{k: torch.from_numpy(np.asarray(abatch[k])) for k in abatch})
            tabatch["channel_ids"] = tbatch["channel_ids"]
            tl = talign.loss(tabatch, hard_negatives=2)
            tl.backward()
            temb = talign.embed_series(tbatch["series"], tbatch["observed"], tbatch["channel_ids"])
            record(f"{name} sample embedding", _max_diff(jout["sample"], temb["sample"].detach()))
            record(
                f"{name} channel embeddings", _max_diff(jout["channels"], temb["channels"].detach())
            )
            record(f"{name} alignment loss", abs(float(jl) - tl.item()))
            expected = _flax_grads_as_torch(talign.encoder, jgrads["encoder"])
            got = {k: v.grad for k, v in talign.encoder.named_parameters()}
            scale = max(float(np.abs(v).max()) for v in expected.values())
            record(
                f"{name} alignment encoder gradients / max|grad|",
                max(_max_diff(expected[k], got[k]) for k in expected) / scale,
            )
    if not worst <= tolerance:
        raise AssertionError(f"PyTorch model differs from ours by {worst:.2e} > {tolerance:.0e}")
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the Flax model")
    parser.add_argument(
        "--paper_size", action="store_true", help="check at d=384, 6 heads, 6 layers"
    )
    args = parser.parse_args(argv)
    if not args.check:
        parser.error("nothing to do: pass --check (benchmarks/versus_torch.py times it)")
    sizes = dict(d_model=384, num_heads=6, num_layers=6, mlp_dim=1536) if args.paper_size else None
    torch.manual_seed(0)
    worst = check(sizes)
    print(f"torch_vs_flax_max_diff={worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
