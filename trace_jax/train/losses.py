"""Training losses for TRACE: bidirectional InfoNCE (sample and channel level, optional
in-batch hard negatives), masked-patch reconstruction, and random patch masking.

Everything here is pure JAX and jit-friendly; options that change array shapes
(`hard_negatives`) must be static Python values.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trace_jax.model.heads import l2_normalize
from trace_jax.model.patching import patchify

HardNegatives = Union[None, str, int]


def _parse_hard_negatives(hard_negatives: HardNegatives) -> Optional[int]:
    """None / "all" / 0 -> None (every in-batch negative); positive int K -> K."""
    if hard_negatives is None:
        return None
    if isinstance(hard_negatives, str):
        if hard_negatives.strip().lower() == "all":
            return None
        try:
            hard_negatives = int(hard_negatives)
        except ValueError:
            raise ValueError(
                f"hard_negatives must be None, 'all' or an int, got {hard_negatives!r}"
            )
    if isinstance(hard_negatives, bool) or int(hard_negatives) != hard_negatives:
        raise ValueError(f"hard_negatives must be None, 'all' or an int, got {hard_negatives!r}")
    k = int(hard_negatives)
    if k < 0:
        raise ValueError(f"hard_negatives must be >= 0, got {k}")
    return None if k == 0 else k


def _order_key(x: jnp.ndarray) -> jnp.ndarray:
    """float32 -> uint32 whose unsigned order is the float order (-inf lowest; NaN unused)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    negative = bits >> 31 == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def kth_largest(scores: jnp.ndarray, k: int) -> jnp.ndarray:
    """(n, m) float32 -> (n,): each row's k-th largest value, exactly.

    Built bit by bit from the top (32 passes of compare-and-count over the rows) instead of a
    sort: `lax.top_k` on a GPU sorts every row (a segmented radix sort of B*C x B*C scores for
    the channel loss took 15% of an H200 step), and turning its indices into a mask needs a
    scatter. A row keeps every candidate >= this value, so candidates tied with the k-th
    are all kept, whatever their order in the batch.
    """
    keys = _order_key(scores)

    def next_bit(i, threshold):
        candidate = threshold | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        enough = jnp.sum(keys >= candidate[:, None], axis=1) >= k
        return jnp.where(enough, candidate, threshold)

    threshold = jax.lax.fori_loop(0, 32, next_bit, jnp.zeros(scores.shape[:1], jnp.uint32))
    bits = jnp.where(threshold >> 31 == 1, threshold & jnp.uint32(0x7FFFFFFF), ~threshold)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _direction(
    logits: jnp.ndarray,
    sim: jnp.ndarray,
    valid: jnp.ndarray,
    k: Optional[int],
    duplicate: Optional[jnp.ndarray],
) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Per-anchor InfoNCE and top-1 correctness with rows as anchors, columns as candidates.

    Returns (per_anchor_loss (n,), correct (n,) bool); both are meaningless for invalid anchors
    (callers mask them out) but always finite.
    """
    n = logits.shape[0]
    eye = jnp.eye(n, dtype=bool)
    negative = valid[None, :] & ~eye  # candidate j is a usable negative for anchor i
    if duplicate is not None:
        negative = negative & ~duplicate
    if k is not None and k < n - 1:
        # Hard negatives: the K most similar valid cross-modal candidates other than the positive
        # (with fewer than K valid ones the threshold is -inf and all of them stay).
        scores = jax.lax.stop_gradient(jnp.where(negative, sim, -jnp.inf))
        negative = negative & (scores >= kth_largest(scores, k)[:, None])
    keep = negative | eye  # the positive is always in the denominator
    lse = jax.nn.logsumexp(logits, axis=1, where=keep)
    positive = jnp.diagonal(logits)
    per_anchor = lse - positive
    best_negative = jnp.max(jnp.where(negative, logits, -jnp.inf), axis=1)
    correct = positive > best_negative  # ties count as wrong
    return per_anchor, correct


def info_nce(
    series_emb: jnp.ndarray,
    text_emb: jnp.ndarray,
    *,
    temperature: Any,
    valid: Optional[jnp.ndarray] = None,
    hard_negatives: HardNegatives = None,
    duplicate: Optional[jnp.ndarray] = None,
) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    """Bidirectional InfoNCE; row i of `series_emb` and of `text_emb` form a positive pair.

    Both (n, d) inputs are L2-normalised here (a no-op for already normalised inputs), and all
    arithmetic is float32 whatever the input dtype. logits = cosine / temperature; temperature
    may be a traced scalar (learnable).

    valid: optional (n,) bool. Invalid rows are neither anchors nor negatives; losses and
    accuracies average over valid anchors only (0 when there are none).
    hard_negatives: None, "all" or 0 keep every in-batch negative; an int K keeps, per anchor
    and per direction, only the K valid negatives of highest cosine similarity (the positive
    always stays in the softmax). With fewer than K valid negatives, all of them are kept;
    negatives tied with the K-th are all kept. The selection is not differentiated through.
    duplicate: optional (n, n) bool, symmetric: pair j repeats pair i (the same text or the same
    series) and is no negative of it in either direction. Without it, a batch holding one text
    twice asks each copy to rank its own series above the other's, which no model can do.

    Returns (loss, metrics) with loss = 0.5 * (L_s->t + L_t->s) and metrics loss_s2t,
    loss_t2s, acc_s2t, acc_t2s (positive strictly above every kept-or-not valid negative)
    and n_valid.
    """
    if series_emb.ndim != 2 or series_emb.shape != text_emb.shape:
        raise ValueError(
            f"expected two (n, d) arrays of equal shape, got {series_emb.shape} "
            f"and {text_emb.shape}"
        )
    n = series_emb.shape[0]
    k = _parse_hard_negatives(hard_negatives)
    s = l2_normalize(series_emb.astype(jnp.float32))
    t = l2_normalize(text_emb.astype(jnp.float32))
    if valid is None:
        valid = jnp.ones((n,), bool)
    else:
        valid = jnp.asarray(valid).astype(bool).reshape(n)
    sim = jnp.matmul(s, t.T, precision=jax.lax.Precision.HIGHEST)  # (n_series, n_text)
    logits = sim / jnp.asarray(temperature, jnp.float32)

    if duplicate is not None:
        duplicate = jnp.asarray(duplicate).astype(bool).reshape(n, n)
    loss_s2t, correct_s2t = _direction(logits, sim, valid, k, duplicate)
    loss_t2s, correct_t2s = _direction(
        logits.T, sim.T, valid, k, None if duplicate is None else duplicate.T
    )

    count = jnp.sum(valid.astype(jnp.float32))
    denom = jnp.maximum(count, 1.0)

    def mean_valid(x):
        return jnp.sum(jnp.where(valid, x.astype(jnp.float32), 0.0)) / denom

    l_s2t = mean_valid(loss_s2t)
    l_t2s = mean_valid(loss_t2s)
    loss = 0.5 * (l_s2t + l_t2s)
    metrics = {
        "loss_s2t": l_s2t,
        "loss_t2s": l_t2s,
        "acc_s2t": mean_valid(correct_s2t),
        "acc_t2s": mean_valid(correct_t2s),
        "n_valid": count,
    }
    return loss, metrics


def content_keys(x: jnp.ndarray) -> jnp.ndarray:
    """(..., d) float -> (..., 2) uint32: two hashes of each row's bits. Equal rows get equal
    keys; two different rows share both with a probability of order 2^-60. Exact where a float
    projection is not: a random projection of different rows can round to the same value."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    d = x.shape[-1]
    # Fixed odd multipliers (uint32 arithmetic wraps: a multiply-add hash mod 2^32).
    multipliers = np.random.default_rng(0x7ACE).integers(0, 2**31, (2, d), np.uint32) * 2 + 1
    return jnp.stack([jnp.sum(bits * m, axis=-1, dtype=jnp.uint32) for m in multipliers], -1)


def same_content(keys: jnp.ndarray) -> jnp.ndarray:
    """(n, G, 2) keys of G inputs per row -> (n, n) bool: rows equal in at least one input."""
    return jnp.any(jnp.all(keys[:, None] == keys[None, :], axis=-1), axis=-1)


def sample_and_channel_loss(
    cls_emb: jnp.ndarray,
    text_emb: jnp.ndarray,
    cit_emb: jnp.ndarray,
    channel_text_emb: jnp.ndarray,
    *,
    has_text: jnp.ndarray,
    channel_valid: jnp.ndarray,
    temperature: Any,
    channel_weight: Any,
    hard_negatives: HardNegatives = None,
    sample_keys: Optional[jnp.ndarray] = None,
    channel_keys: Optional[jnp.ndarray] = None,
) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    """TRACE alignment loss
    L = 0.5 (L_s->t + L_t->s) + channel_weight * 0.5 (L^ch_s->t + L^ch_t->s).

    cls_emb, text_emb: (B, d) sample embeddings and sample-text embeddings.
    cit_emb, channel_text_emb: (B, C, d) channel-identity-token embeddings and channel texts.
    has_text: (B,) bool, the sample has a caption; channel_valid: (B, C) bool, the channel is
    present and has its own text. The channel level flattens to B*C rows, so a channel's
    negatives are the other channels of the same sample and every channel of the other samples;
    its valid rows are channel_valid & has_text[:, None]. The same `hard_negatives` applies to
    both levels. sample_keys (B, G, 2) and channel_keys (B, C, G, 2): optional `content_keys` of
    G inputs of each pair (its text, its series); pairs equal in any of them are no negatives of
    each other (`info_nce`'s `duplicate`). Without them every other pair is a negative, as in
    the paper.
    """
    b, c = channel_valid.shape
    if (
        cls_emb.shape[0] != b
        or cit_emb.shape[:2] != (b, c)
        or channel_text_emb.shape != cit_emb.shape
    ):
        raise ValueError(
            f"inconsistent shapes: cls {cls_emb.shape}, text {text_emb.shape}, "
            f"cit {cit_emb.shape}, channel text {channel_text_emb.shape}, "
            f"channel_valid {channel_valid.shape}"
        )
    has_text = jnp.asarray(has_text).astype(bool)
    same = lambda keys: None if keys is None else same_content(keys.reshape(-1, *keys.shape[-2:]))
    sample_loss, sm = info_nce(
        cls_emb,
        text_emb,
        temperature=temperature,
        valid=has_text,
        hard_negatives=hard_negatives,
        duplicate=same(sample_keys),
    )
    ch_valid = (jnp.asarray(channel_valid).astype(bool) & has_text[:, None]).reshape(b * c)
    d = cit_emb.shape[-1]
    channel_loss, cm = info_nce(
        cit_emb.reshape(b * c, d),
        channel_text_emb.reshape(b * c, d),
        temperature=temperature,
        valid=ch_valid,
        hard_negatives=hard_negatives,
        duplicate=same(channel_keys),
    )
    loss = sample_loss + jnp.asarray(channel_weight, jnp.float32) * channel_loss
    metrics = {
        "loss": loss,
        "sample_loss": sample_loss,
        "channel_loss": channel_loss,
        "sample_acc_s2t": sm["acc_s2t"],
        "sample_acc_t2s": sm["acc_t2s"],
        "channel_acc_s2t": cm["acc_s2t"],
        "channel_acc_t2s": cm["acc_t2s"],
        "n_sample_pairs": sm["n_valid"],
        "n_channel_pairs": cm["n_valid"],
    }
    return loss, metrics


def labelled_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Mean softmax cross-entropy over the examples with a label (>= 0); 0 when none has one."""
    labelled = labels >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(labelled, labels, 0))
    return jnp.sum(jnp.where(labelled, ce, 0.0)) / jnp.maximum(labelled.sum(), 1)


def masked_reconstruction_loss(
    pred: jnp.ndarray, target: jnp.ndarray, point_observed: jnp.ndarray, patch_masked: jnp.ndarray
) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    """Mean squared error over points that are observed and lie in a masked patch.

    pred, target, point_observed: (B, C, N, P); patch_masked: (B, C, N). Other points do not
    affect the loss or its gradient (even NaN targets there). 0 when no point is selected.
    """
    if pred.shape != target.shape or point_observed.shape != pred.shape:
        raise ValueError(
            f"pred {pred.shape}, target {target.shape} and point_observed "
            f"{point_observed.shape} must match"
        )
    if patch_masked.shape != pred.shape[:-1]:
        raise ValueError(f"patch_masked {patch_masked.shape} must be {pred.shape[:-1]}")
    sel = (
        jnp.asarray(point_observed).astype(bool) & jnp.asarray(patch_masked).astype(bool)[..., None]
    )
    pred = pred.astype(jnp.float32)
    # Zero unselected entries before squaring so NaN/inf there cannot leak into gradients.
    diff = jnp.where(sel, pred - jnp.where(sel, target.astype(jnp.float32), 0.0), 0.0)
    count = jnp.sum(sel.astype(jnp.float32))
    loss = jnp.sum(diff * diff) / jnp.maximum(count, 1.0)
    return loss, {"recon_loss": loss, "n_masked_points": count}


def random_patch_mask(rng: jax.Array, patch_valid: jnp.ndarray, ratio: Any) -> jnp.ndarray:
    """(B, C, N) bool: per (sample, channel), round(ratio * n_valid) valid patches chosen
    uniformly at random without replacement (at least one when ratio > 0 and any patch is
    valid; at most all valid ones). Invalid patches are never masked. `round` is
    half-to-even, like Python's. `ratio` may be traced.
    """
    patch_valid = jnp.asarray(patch_valid).astype(bool)
    scores = jax.random.uniform(rng, patch_valid.shape)
    scores = jnp.where(patch_valid, scores, 2.0)  # invalid patches rank after every valid one
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)  # random permutation of valid ones
    n_valid = jnp.sum(patch_valid, axis=-1, dtype=jnp.int32)
    ratio = jnp.asarray(ratio, jnp.float32)
    n_mask = jnp.round(ratio * n_valid.astype(jnp.float32)).astype(jnp.int32)
    n_mask = jnp.where((ratio > 0) & (n_valid > 0), jnp.maximum(n_mask, 1), n_mask)
    n_mask = jnp.clip(n_mask, 0, n_valid)
    return patch_valid & (rank < n_mask[..., None])


def max_masked_patches(num_patches: int, ratio: float) -> int:
    """The most patches `random_patch_mask` masks in one channel of `num_patches`, over every
    count of valid patches (the same float32 arithmetic): a static bound for gathering them."""
    n_valid = np.arange(num_patches + 1)
    n_mask = np.round(np.float32(ratio) * n_valid.astype(np.float32)).astype(np.int64)
    n_mask = np.where((ratio > 0) & (n_valid > 0), np.maximum(n_mask, 1), n_mask)
    return int(np.clip(n_mask, 0, n_valid).max())


def masked_patch_indices(patch_masked: jnp.ndarray, count: int) -> jnp.ndarray:
    """(B, C, count) int32: per channel the indices of its masked patches in order, then of
    unmasked ones; every masked patch is among them when count >= the channel's masked count."""
    order = jnp.argsort(~jnp.asarray(patch_masked).astype(bool), axis=-1, stable=True)
    return order[..., :count].astype(jnp.int32)


def patches_to_reconstruct(patch_masked: jnp.ndarray, ratio: float):
    """(query, masked): the (B, C, M) patch indices a reconstruction loss must see, M the
    static bound of max_masked_patches, and which of them are masked (the loss's mask)."""
    count = max_masked_patches(patch_masked.shape[-1], ratio)
    query = masked_patch_indices(patch_masked, count)
    return query, jnp.take_along_axis(jnp.asarray(patch_masked), query, axis=-1)


def random_series_patch_mask(
    rng: jax.Array, series: jnp.ndarray, observed: jnp.ndarray, patch_len: int, ratio: Any
) -> jnp.ndarray:
    """random_patch_mask over the patches of (B, C, T) `series` holding an observed finite point."""
    observed = jnp.asarray(observed).astype(bool) & jnp.isfinite(series)
    _, point_observed = patchify(series, observed, patch_len)
    return random_patch_mask(rng, point_observed.any(-1), ratio)


def reconstruction_mask(rng: jax.Array, batch: dict, patch_len: int, ratio: float):
    """(mask, query, query_masked) of a masked-reconstruction step: the random patch mask of the
    batch's series, then the patches the loss reads (patches_to_reconstruct): the encoder's last
    block and the head need run only for those, not for every patch."""
    mask = random_series_patch_mask(rng, batch["series"], batch["observed"], patch_len, ratio)
    return (mask, *patches_to_reconstruct(mask, ratio))
