"""Losses against straightforward float64 numpy references and hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trace_jax.train import losses

# Jitted once per shape and option: much faster than eager op-by-op dispatch on CPU.
info_nce = jax.jit(losses.info_nce, static_argnames=("hard_negatives",))
sample_and_channel_loss = jax.jit(
    losses.sample_and_channel_loss, static_argnames=("hard_negatives",)
)
masked_reconstruction_loss = jax.jit(losses.masked_reconstruction_loss)
random_patch_mask = losses.random_patch_mask


def _normalise(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def reference_info_nce(s, t, temperature, valid=None, k=None, duplicate=None):
    """Loops over anchors; log-softmax over the positive and the kept negatives."""
    s, t = _normalise(s), _normalise(t)
    n = len(s)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    sim = s @ t.T

    def one_direction(sim):
        losses = []
        for i in range(n):
            if not valid[i]:
                continue
            negatives = [
                j
                for j in range(n)
                if j != i and valid[j] and (duplicate is None or not duplicate[i, j])
            ]
            if k is not None:
                negatives = sorted(negatives, key=lambda j: -sim[i, j])[:k]
            logits = sim[i, [i] + negatives] / temperature
            top = logits.max()
            losses.append(top + np.log(np.sum(np.exp(logits - top))) - logits[0])
        return np.mean(losses) if losses else 0.0

    return 0.5 * (one_direction(sim) + one_direction(sim.T))


def _embeddings(n, d, seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, d))
    t = s + 0.8 * rng.normal(size=(n, d))  # correlated, so the positives are not hopeless
    return s.astype(np.float32), t.astype(np.float32)


@pytest.mark.parametrize(
    "hard_negatives,k",
    [(None, None), ("all", None), (0, None), (3, 3), (1, 1), (9, None), (50, None)],
)
def test_info_nce_matches_reference(hard_negatives, k):
    s, t = _embeddings(10, 16, 0)
    loss, metrics = info_nce(
        jnp.asarray(s), jnp.asarray(t), temperature=0.07, hard_negatives=hard_negatives
    )
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(
        float(loss), reference_info_nce(s, t, 0.07, k=k), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(0.5 * (metrics["loss_s2t"] + metrics["loss_t2s"]), loss, rtol=1e-6)


@pytest.mark.parametrize("k", [None, 1, 2, 4, 7])
def test_info_nce_invalid_rows(k):
    s, t = _embeddings(8, 6, 1)
    valid = np.array([1, 0, 1, 1, 0, 1, 0, 1], bool)
    # Make the invalid rows the most similar to every anchor: they must still never be picked.
    t[1] = s[0] + s[2] + s[3]
    s[4] = t[5] + t[7]
    s[6] = t.sum(0)
    t[6] = s.sum(0)
    loss, metrics = info_nce(
        jnp.asarray(s), jnp.asarray(t), temperature=0.2, valid=jnp.asarray(valid), hard_negatives=k
    )
    np.testing.assert_allclose(
        float(loss), reference_info_nce(s, t, 0.2, valid, k), rtol=1e-5, atol=1e-5
    )
    assert float(metrics["n_valid"]) == 5
    # Changing invalid rows arbitrarily does not change anything.
    s2, t2 = s.copy(), t.copy()
    s2[~valid] = 100.0
    t2[~valid] = -3.0
    loss2, _ = info_nce(
        jnp.asarray(s2),
        jnp.asarray(t2),
        temperature=0.2,
        valid=jnp.asarray(valid),
        hard_negatives=k,
    )
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)


@pytest.mark.parametrize("k", [None, 2])
def test_info_nce_duplicates_are_no_negatives(k):
    s, t = _embeddings(10, 6, seed=4)
    rng = np.random.default_rng(5)
    duplicate = rng.random((10, 10)) < 0.3
    duplicate = duplicate | duplicate.T
    valid = rng.random(10) > 0.2
    loss, _ = info_nce(
        s, t, temperature=0.1, valid=valid, hard_negatives=k, duplicate=jnp.asarray(duplicate)
    )
    expected = reference_info_nce(s, t, 0.1, valid, k, duplicate)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)


def test_repeated_channel_texts_leave_a_perfect_model_at_zero_error():
    """Three channels sharing one text (Weather-Captioned's wind channels): counted as each
    other's negatives they tie with the positive, so even a perfect model has loss log 3 and
    half its anchors wrong; marked as duplicates, only the other roles are negatives."""
    roles = np.array([0, 1, 1, 1, 2, 3])
    text = np.eye(8, dtype=np.float32)[roles]
    tau = 0.5
    duplicate = losses.same_content(losses.content_keys(jnp.asarray(text))[:, None])
    np.testing.assert_array_equal(duplicate, roles[:, None] == roles[None, :])
    for k in (None, 1):
        _, paper = info_nce(text, text, temperature=tau, hard_negatives=k)
        assert float(paper["acc_s2t"]) == float(paper["acc_t2s"]) == 0.5
        loss, ours = info_nce(text, text, temperature=tau, hard_negatives=k, duplicate=duplicate)
        assert float(ours["acc_s2t"]) == float(ours["acc_t2s"]) == 1.0
        # Each anchor: its positive (cosine 1) against the other roles' texts (cosine 0), all
        # of them also with k=1 (tied with the hardest).
        others = np.array([5, 3, 3, 3, 5, 5])
        per_anchor = np.log(np.exp(1 / tau) + others) - 1 / tau
        np.testing.assert_allclose(float(loss), per_anchor.mean(), rtol=1e-5)


def test_content_keys_tell_equal_rows_from_different_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 384)).astype(np.float32)
    x[2] = x[0]
    x[3] = x[0]
    x[3, 100] = np.nextafter(x[3, 100], np.float32(np.inf))  # one bit apart
    same = np.asarray(losses.same_content(losses.content_keys(jnp.asarray(x))[:, None]))
    np.testing.assert_array_equal(same, [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])


def test_alignment_duplicate_keys_see_equal_captions_series_and_channel_texts():
    from trace_jax.train.align import duplicate_keys

    rng = np.random.default_rng(1)
    b, c, t, d = 4, 3, 12, 8
    series = rng.normal(size=(b, c, t)).astype(np.float32)
    observed = rng.random((b, c, t)) > 0.2
    series[1], observed[1] = series[0], observed[0]  # one window, two reports (Time-MMD)
    series[1][~observed[1]] = 123.0  # unobserved values are not part of the window
    text = rng.normal(size=(b, d)).astype(np.float32)
    text[3] = text[2]  # one caption on two windows
    channel_text = rng.normal(size=(b, c, d)).astype(np.float32)
    channel_text[:, 2] = channel_text[:, 1]  # two channels described by one sentence
    keys = duplicate_keys(
        {
            "series": series,
            "observed": observed,
            "text_embedding": text,
            "channel_text_embedding": channel_text,
        }
    )
    sample = np.asarray(losses.same_content(keys["sample_keys"]))
    expected = np.eye(b, dtype=bool)
    expected[0, 1] = expected[1, 0] = expected[2, 3] = expected[3, 2] = True
    np.testing.assert_array_equal(sample, expected)
    channel = np.asarray(losses.same_content(keys["channel_keys"].reshape(b * c, 1, 2)))
    assert channel.sum() == b * c + 2 * b and channel[1, 2] and channel[4, 5]


def test_info_nce_all_invalid_is_zero_and_finite():
    s, t = _embeddings(4, 3, 2)
    valid = jnp.zeros(4, bool)
    for k in (None, 2):
        fn = lambda a, b: info_nce(a, b, temperature=0.1, valid=valid, hard_negatives=k)[0]
        loss, grads = jax.value_and_grad(fn, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
        assert float(loss) == 0.0
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    # Zero (padding) rows stay finite too.
    loss, grads = jax.value_and_grad(
        lambda a: info_nce(
            a, jnp.asarray(t), temperature=0.1, valid=jnp.array([True, True, False, True])
        )[0]
    )(jnp.asarray(s).at[2].set(0.0))
    assert bool(jnp.isfinite(loss)) and bool(jnp.all(jnp.isfinite(grads)))


@pytest.mark.parametrize("k", [1, 3, 7, 20])
def test_kth_largest_matches_sort(k):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(6, 20)).astype(np.float32)
    scores[0] = -np.inf  # too few valid candidates: the k-th is -inf
    scores[1, :10] = -np.inf
    scores[2, ::2] = 0.25  # ties and a repeated value
    scores[3] = -scores[3] * 1e-30  # tiny values of both signs, -0.0 included
    scores[3, 0] = -0.0
    expected = -np.sort(-scores, axis=1)[:, k - 1]
    np.testing.assert_array_equal(
        jax.jit(losses.kth_largest, static_argnums=1)(scores, k), expected
    )


def test_hard_negatives_tied_with_the_kth_are_all_kept():
    # Texts 1 and 2 are the same vector, so for series 0 they are equally hard: K=1 keeps both,
    # whatever their order in the batch.
    s = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    t = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8], [-1.0, 0.0]], np.float32)
    sim = s @ t.T
    per_anchor, _ = losses._direction(  # pylint: disable=protected-access
        jnp.asarray(sim), jnp.asarray(sim), jnp.ones(4, bool), 1, None
    )
    expected = np.log(np.exp(sim[0, 0]) + 2 * np.exp(sim[0, 1])) - sim[0, 0]
    np.testing.assert_allclose(per_anchor[0], expected, rtol=1e-6)


def test_hard_negative_selection_picks_most_similar():
    # 2-d unit vectors at chosen angles: sim = cos(a_i - b_j); text 0 sits much closer to
    # series 1 than the other texts, etc., so K=1 must pick a specific negative per anchor.
    a = np.array([0.0, 0.5, 2.0, 3.5])
    b = np.array([0.1, 0.35, 2.3, 3.0])
    s = np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)
    t = np.stack([np.cos(b), np.sin(b)], 1).astype(np.float32)
    sim = np.cos(a[:, None] - b[None, :])
    tau = 0.5

    def pairwise(sim, pick):
        return np.mean(
            [np.log1p(np.exp((sim[i, pick(sim, i)] - sim[i, i]) / tau)) for i in range(4)]
        )

    def most(sim, i):
        return max((j for j in range(4) if j != i), key=lambda j: sim[i, j])

    def least(sim, i):
        return min((j for j in range(4) if j != i), key=lambda j: sim[i, j])

    expected = 0.5 * (pairwise(sim, most) + pairwise(sim.T, most))
    wrong = 0.5 * (pairwise(sim, least) + pairwise(sim.T, least))
    loss, _ = jax.jit(lambda x, y: info_nce(x, y, temperature=tau, hard_negatives=1))(s, t)
    full, _ = losses.info_nce(s, t, temperature=tau)  # eager path too
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert abs(expected - wrong) > 0.1 and abs(float(full) - expected) > 0.03


def test_info_nce_temperature_gradient_and_dtype():
    s, t = _embeddings(6, 8, 3)
    fn = jax.jit(
        lambda log_tau, a, b: info_nce(a, b, temperature=jnp.exp(log_tau), hard_negatives=2)[0]
    )
    log_tau = jnp.log(jnp.float32(0.07))
    g = jax.grad(fn)(log_tau, jnp.asarray(s), jnp.asarray(t))
    assert bool(jnp.isfinite(g)) and float(g) != 0.0
    eps = 1e-3
    numeric = (fn(log_tau + eps, s, t) - fn(log_tau - eps, s, t)) / (2 * eps)
    np.testing.assert_allclose(float(g), float(numeric), rtol=1e-2)
    # bfloat16 inputs: computed in float32 on the rounded values.
    sb, tb = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    loss, _ = info_nce(sb, tb, temperature=0.07)
    assert loss.dtype == jnp.float32
    ref = reference_info_nce(
        np.asarray(sb.astype(jnp.float32)), np.asarray(tb.astype(jnp.float32)), 0.07
    )
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5)


def test_info_nce_accuracy():
    e = np.eye(4, dtype=np.float32)
    _, m = info_nce(e, e, temperature=0.1)
    assert float(m["acc_s2t"]) == 1.0 and float(m["acc_t2s"]) == 1.0
    # Text 1 equals text 0: anchors 0 and 1 (s->t) tie -> wrong; t->s: text 1's best is series 0.
    t = e.copy()
    t[1] = e[0]
    _, m = info_nce(e, t, temperature=0.1)
    np.testing.assert_allclose(float(m["acc_s2t"]), 0.5)
    np.testing.assert_allclose(float(m["acc_t2s"]), 0.75)


def test_sample_and_channel_loss_pools_across_samples():
    # B=2 samples, C=2 channels, one-hot embeddings: sample sims = I (2x2), channel sims = I (4x4).
    # tau=1: sample loss = log(1 + 1/e); channel loss with pooling over all 4 (sample, channel)
    # rows = log(1 + 3/e) (it would be log(1 + 1/e) if negatives were the same sample's only).
    e4 = np.eye(4, dtype=np.float32)
    cls = e4[:2]
    text = e4[:2]
    cit = e4.reshape(2, 2, 4)
    ch_text = e4.reshape(2, 2, 4)
    kw = dict(temperature=1.0, channel_weight=0.5, hard_negatives=None)
    loss, m = sample_and_channel_loss(
        cls,
        text,
        cit,
        ch_text,
        has_text=np.ones(2, bool),
        channel_valid=np.ones((2, 2), bool),
        **kw,
    )
    e = math.e
    np.testing.assert_allclose(float(m["sample_loss"]), math.log(1 + 1 / e), rtol=1e-6)
    np.testing.assert_allclose(float(m["channel_loss"]), math.log(1 + 3 / e), rtol=1e-6)
    np.testing.assert_allclose(
        float(loss), math.log(1 + 1 / e) + 0.5 * math.log(1 + 3 / e), rtol=1e-6
    )
    # Channel (1, 1) missing: 3 rows left, each with 2 negatives.
    cv = np.array([[True, True], [True, False]])
    _, m = sample_and_channel_loss(
        cls, text, cit, ch_text, has_text=np.ones(2, bool), channel_valid=cv, **kw
    )
    np.testing.assert_allclose(float(m["channel_loss"]), math.log(1 + 2 / e), rtol=1e-6)
    # Sample 1 without text: sample level has one row, no negatives -> 0; its channels drop.
    loss, m = sample_and_channel_loss(
        cls,
        text,
        cit,
        ch_text,
        has_text=np.array([True, False]),
        channel_valid=np.ones((2, 2), bool),
        **kw,
    )
    np.testing.assert_allclose(float(m["sample_loss"]), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(m["channel_loss"]), math.log(1 + 1 / e), rtol=1e-6)
    np.testing.assert_allclose(float(loss), 0.5 * math.log(1 + 1 / e), rtol=1e-6)
    # Hard negatives K=1 on the pooled channel level: the three negatives of each anchor (from
    # both samples) tie at cosine 0 and ties with the K-th are kept -> log(1 + 3/e).
    kw["hard_negatives"] = 1
    _, m = sample_and_channel_loss(
        cls,
        text,
        cit,
        ch_text,
        has_text=np.ones(2, bool),
        channel_valid=np.ones((2, 2), bool),
        **kw,
    )
    np.testing.assert_allclose(float(m["channel_loss"]), math.log(1 + 3 / e), rtol=1e-6)


def test_sample_and_channel_loss_matches_two_info_nce():
    rng = np.random.default_rng(4)
    b, c, d = 3, 4, 8
    cls, text = rng.normal(size=(2, b, d)).astype(np.float32)
    cit, ch_text = rng.normal(size=(2, b, c, d)).astype(np.float32)
    has_text = np.array([True, True, False])
    cv = rng.random((b, c)) > 0.3
    loss, m = sample_and_channel_loss(
        cls,
        text,
        cit,
        ch_text,
        has_text=has_text,
        channel_valid=cv,
        temperature=0.07,
        channel_weight=1.0,
        hard_negatives=2,
    )
    ref_s = reference_info_nce(cls, text, 0.07, has_text, 2)
    ref_c = reference_info_nce(
        cit.reshape(-1, d), ch_text.reshape(-1, d), 0.07, (cv & has_text[:, None]).reshape(-1), 2
    )
    np.testing.assert_allclose(float(m["sample_loss"]), ref_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(m["channel_loss"]), ref_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), ref_s + ref_c, rtol=1e-5, atol=1e-6)


def test_masked_reconstruction_hand_value():
    pred = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    target = jnp.array([[[[0.0, 0.0], [1.0, 1.0]]]])
    observed = jnp.ones((1, 1, 2, 2), bool)
    masked = jnp.array([[[False, True]]])
    loss, m = masked_reconstruction_loss(pred, target, observed, masked)
    np.testing.assert_allclose(float(loss), (4.0 + 9.0) / 2)  # (3-1)^2, (4-1)^2
    assert float(m["n_masked_points"]) == 2
    loss, _ = masked_reconstruction_loss(pred, target, observed.at[0, 0, 1, 1].set(False), masked)
    np.testing.assert_allclose(float(loss), 4.0)
    loss, m = masked_reconstruction_loss(pred, target, observed, jnp.zeros((1, 1, 2), bool))
    assert float(loss) == 0.0 and float(m["n_masked_points"]) == 0


def test_masked_reconstruction_ignores_other_points():
    rng = np.random.default_rng(5)
    shape = (2, 3, 5, 4)
    pred = rng.normal(size=shape).astype(np.float32)
    target = rng.normal(size=shape).astype(np.float32)
    observed = rng.random(shape) > 0.3
    masked = rng.random(shape[:3]) > 0.5
    sel = observed & masked[..., None]
    loss, _ = masked_reconstruction_loss(pred, target, observed, masked)
    np.testing.assert_allclose(float(loss), np.mean((pred[sel] - target[sel]) ** 2), rtol=1e-6)
    pred2, target2 = pred.copy(), target.copy()
    pred2[~sel] = 1e3
    target2[~sel] = np.nan  # e.g. missing values
    fn = lambda p: masked_reconstruction_loss(p, jnp.asarray(target2), observed, masked)[0]
    loss2, grad = jax.value_and_grad(fn)(jnp.asarray(pred2))
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert bool(jnp.all(grad[~sel] == 0))


def test_random_patch_mask_counts_and_validity():
    rng = np.random.default_rng(6)
    valid = rng.random((4, 3, 10)) > 0.4
    valid[0, 0] = False
    valid[0, 1] = True
    valid[0, 2] = False
    valid[0, 2, 7] = True
    n_valid = valid.sum(-1)
    fn = jax.jit(random_patch_mask)
    for ratio in (0.0, 0.01, 0.25, 0.4, 0.5, 0.75, 1.0):
        mask = np.asarray(fn(jax.random.key(0), valid, ratio))
        assert mask.shape == valid.shape and mask.dtype == bool
        assert not np.any(mask & ~valid)
        expected = np.array([[round(ratio * np.float32(v)) for v in row] for row in n_valid])
        if ratio > 0:
            expected = np.where(n_valid > 0, np.maximum(expected, 1), 0)
        np.testing.assert_array_equal(mask.sum(-1), np.minimum(expected, n_valid))
    a = np.asarray(fn(jax.random.key(1), valid, 0.5))
    b = np.asarray(fn(jax.random.key(2), valid, 0.5))
    assert np.any(a != b)


def test_random_patch_mask_is_uniform():
    valid = np.array([[[True] * 6 + [False] * 2]])  # 6 valid of 8, mask 3 of them
    keys = jax.random.split(jax.random.key(7), 2000)
    masks = jax.jit(jax.vmap(lambda k: random_patch_mask(k, valid, 0.5)))(keys)
    freq = np.asarray(masks).mean(0)[0, 0]
    np.testing.assert_allclose(freq[:6], 0.5, atol=0.05)
    assert np.all(freq[6:] == 0)


@pytest.mark.parametrize("num_patches", [1, 5, 31, 32])
@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.3, 0.5, 0.75, 1.0])
def test_max_masked_patches_bounds_every_channel_and_is_reached(num_patches, ratio):
    """One channel for every count of valid patches: none masks more than the bound, and the
    bound is what some count masks (so it wastes nothing)."""
    valid = np.arange(num_patches)[None, :] < np.arange(num_patches + 1)[:, None]
    mask = np.asarray(random_patch_mask(jax.random.key(3), valid[None], ratio))[0]
    bound = losses.max_masked_patches(num_patches, ratio)
    assert mask.sum(-1).max() == bound


def test_masked_patch_indices_hold_every_masked_patch_once():
    rng = np.random.default_rng(8)
    masked = rng.random((3, 4, 31)) < 0.3
    count = int(masked.sum(-1).max())
    index = np.asarray(losses.masked_patch_indices(masked, count))
    assert index.shape == (3, 4, count) and index.dtype == np.int32
    for b in range(3):
        for c in range(4):
            assert len(set(index[b, c])) == count  # distinct
            k = masked[b, c].sum()
            np.testing.assert_array_equal(index[b, c, :k], np.flatnonzero(masked[b, c]))
