"""The text tower: all-MiniLM-L6-v2 in Flax against the sentence-transformers golden output."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from trace_jax.text import TextEncoder, embed_text
from trace_jax.text import embed as embed_mod
from trace_jax.text.minilm import MiniLM, MiniLMConfig
from trace_jax.text.weights import (
    PINNED_SHA256,
    _name_map,
    convert_hf_state_dict,
    default_weights_path,
    load_params,
)

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "golden" / "minilm_l6_v2"


@pytest.fixture(scope="module")
def golden():
    texts = json.loads((GOLDEN / "texts.json").read_text(encoding="utf-8"))
    ref = np.load(GOLDEN / "embeddings.npy")
    assert ref.shape == (len(texts), 384)
    return texts, ref


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.load()


@pytest.fixture(scope="module")
def golden_out(encoder, golden):
    return encoder.embed(golden[0])


def small_encoder(encoder, **kwargs):
    """A second encoder sharing the loaded weights, with its own jit and trace counter."""
    return TextEncoder(encoder.params, encoder.tokenizer, encoder.sha256, **kwargs)


def test_golden_embeddings(golden, golden_out):
    _, ref = golden
    assert golden_out.shape == (24, 384) and golden_out.dtype == np.float32
    diff = float(np.abs(golden_out - ref).max())
    print(f"golden max abs difference: {diff:.3e}")
    assert diff <= 2e-6  # 2e-7 to 4e-7 measured on Zen 5 and Zen 3
    np.testing.assert_allclose(np.linalg.norm(golden_out, axis=1), 1.0, atol=1e-5)


def test_model_id_and_dim(encoder):
    assert encoder.dim == 384
    assert encoder.model_id == f"all-MiniLM-L6-v2:{PINNED_SHA256[:12]}:len256"
    assert encoder.buckets == embed_mod.BUCKETS and encoder.buckets[-1] == 256
    assert embed_mod.length_buckets(100) == (16, 20, 24, 32, 40, 48, 56, 64, 72, 80, 96, 100)
    assert embed_mod.length_buckets(64, (64, 16, 32, 16)) == (16, 32, 64)


def test_dense_kernels_are_2d(encoder):
    leaves = jax.tree_util.tree_leaves_with_path(encoder.params)
    assert len(leaves) == 3 + 2 + 6 * 16
    for path, leaf in leaves:
        assert leaf.ndim <= 2, (jax.tree_util.keystr(path), leaf.shape)
        assert leaf.dtype == np.float32


def test_sha256_pin_refuses_corrupted_copy(tmp_path):
    bad = tmp_path / "model.safetensors"
    shutil.copyfile(default_weights_path(), bad)
    with open(bad, "r+b") as f:  # flip one byte in the tensor data
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_params(bad)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        TextEncoder.load(weights_path=bad)


def test_conversion_names_missing_and_unexpected_tensors():
    names = list(_name_map(MiniLMConfig()))
    assert len(names) == 3 + 2 + 6 * 16
    state = {k: np.zeros((1,), np.float32) for k in names}
    del state["encoder.layer.3.attention.self.key.weight"]
    state["encoder.layer.3.attention.self.rotary.weight"] = np.zeros((1,), np.float32)
    state["pooler.dense.weight"] = np.zeros((1,), np.float32)  # known and ignored
    with pytest.raises(ValueError) as err:
        convert_hf_state_dict(state)
    msg = str(err.value)
    assert "missing tensors: ['encoder.layer.3.attention.self.key.weight']" in msg
    assert "unexpected tensors: ['encoder.layer.3.attention.self.rotary.weight']" in msg
    assert "pooler" not in msg


@pytest.mark.parametrize(
    "kwargs", [dict(batch_size=4), dict(tokens_per_batch=96, buckets=(16, 32, 64, 128))]
)
def test_order_restored_with_small_batches(encoder, golden, golden_out, kwargs):
    texts, ref = golden
    small = small_encoder(encoder, **kwargs)
    perm = np.random.default_rng(0).permutation(len(texts))
    out = small.embed([texts[i] for i in perm])
    np.testing.assert_allclose(out, golden_out[perm], atol=1e-6, rtol=0)
    assert float(np.abs(out - ref[perm]).max()) <= 2e-6


def test_token_budget_rows_and_plan(encoder):
    small = small_encoder(encoder, tokens_per_batch=100, buckets=(16, 32, 64))
    assert [small.rows_for(b) for b in (16, 32, 64, 256)] == [6, 3, 1, 1]
    assert small_encoder(encoder, batch_size=5).rows_for(256) == 5
    lengths = [3, 40, 20, 10, 200, 15, 31, 2, 60, 16, 17]
    order, batches = small.plan(lengths)
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    assert batches[0][0] == 0 and batches[-1][1] == len(lengths)
    shapes = set()
    for (start, stop, length, rows), nxt in zip(batches, batches[1:] + [None]):
        assert 0 < stop - start <= rows == small.rows_for(length)
        assert all(lengths[i] <= length for i in order[start:stop])
        assert nxt is None or nxt[0] == stop
        shapes.add((rows, length))
    assert len(shapes) == len({length for _, _, length, _ in batches})  # one shape per bucket


def test_bucket_choice_weighs_padding_against_compiling(encoder):
    small = small_encoder(encoder, tokens_per_batch=64)
    # Thousands of texts per bucket: every bucket they need pays for its compilation.
    many = np.repeat([15, 19, 23, 30, 70], 2000)
    assert small.choose_buckets(many) == (16, 20, 24, 32, 72)
    # A handful of texts: one bucket for all beats compiling four.
    assert small.choose_buckets([15, 19, 23, 30]) == (32,)
    assert small.choose_buckets([]) == ()
    with pytest.raises(ValueError, match="exceed max_length"):
        small.choose_buckets([300])
    # Once a bucket is compiled, using it is free: short texts go back to it.
    short = [f"reading {i} is steady" for i in range(3)]  # < 16 tokens each
    small.embed(short)
    assert small.trace_count == 1
    assert small.choose_buckets([12, 14, 30]) == (16, 32)
    assert small.choose_buckets([12, 14]) == (16,)


@pytest.mark.parametrize("kwargs", [dict(batch_size=4), dict(tokens_per_batch=64)])
def test_buckets_compile_once_not_per_batch(encoder, kwargs):
    small = small_encoder(encoder, buckets=(16, 32, 64, 128), **kwargs)
    short = [f"reading {i} is steady" for i in range(11)]  # < 16 tokens each
    medium = ["the temperature rises sharply and then falls slowly over the whole week " * 2]
    assert 16 < len(small.tokenizer.encode(medium)[0][0]) <= 32

    small.embed(short[:5])  # 2 batches, bucket 16
    assert small.trace_count == 1
    small.embed(short)  # 3 batches, same bucket: no new trace
    assert small.trace_count == 1
    assert small._forward._cache_size() == 1

    small.embed(short[:6] + medium)  # buckets 32 and 16
    assert small.trace_count == 2
    small.embed(medium * 5 + short)  # 2-3 batches at 32, then 16: still nothing new
    assert small.trace_count == 2
    assert small._forward._cache_size() == 2
    small.embed(short * 40)  # many more batches, same shapes
    assert small.trace_count == 2


def test_tokenizer_truncates_at_256_and_does_not_pad(encoder, golden):
    tok = encoder.tokenizer
    long_text = " ".join(["trend"] * 1000)
    ids, types = tok.encode([long_text, "", "short"])
    assert len(ids[0]) == 256 and ids[0][0] == 101 and ids[0][-1] == 102
    assert ids[1].tolist() == [101, 102]  # "" is [CLS][SEP]
    assert len(ids[2]) == 3  # no built-in padding to 128
    assert all(len(x) <= 256 for x in tok.encode(golden[0])[0])
    assert max(len(x) for x in tok.encode(golden[0])[0]) == 256
    batch = tok(["a b c", ""], length=16)
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].sum(axis=1).tolist() == [5, 2]
    assert not batch["token_type_ids"].any()


def test_all_pad_row_is_finite(encoder):
    ids = np.zeros((2, 16), np.int32)
    mask = np.zeros((2, 16), np.int32)
    mask[0, :3] = 1
    ids[0, :3] = [101, 2000, 102]
    out = np.asarray(jax.jit(MiniLM(MiniLMConfig()).apply)(encoder.params, ids, mask, ids * 0))
    assert np.isfinite(out).all()
    assert np.allclose(out[1], 0.0)
    assert np.isclose(np.linalg.norm(out[0]), 1.0, atol=1e-5)


def test_bad_input_errors(encoder):
    with pytest.raises(ValueError, match="empty"):
        encoder.embed([])
    with pytest.raises(ValueError, match=r"texts\[1\] is int"):
        encoder.embed(["fine", 3, "also fine"])
    with pytest.raises(ValueError, match=r"texts\[0\] is NoneType"):
        encoder.embed([None])
    with pytest.raises(ValueError, match="single str"):
        encoder.embed("not a list")
    with pytest.raises(ValueError, match="empty"):
        embed_text([])  # fails before any default encoder is loaded
    with pytest.raises(ValueError, match="tokens_per_batch must be >= 1"):
        small_encoder(encoder, tokens_per_batch=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        small_encoder(encoder, batch_size=0)
    with pytest.raises(ValueError, match="buckets must be positive"):
        small_encoder(encoder, buckets=(0, 16))


def test_embed_text_and_progress_bar(encoder, golden_out, golden, monkeypatch, capsys):
    texts, _ = golden
    out = embed_text([texts[2], texts[5]], encoder=encoder)
    np.testing.assert_allclose(out, golden_out[[2, 5]], atol=1e-6, rtol=0)
    monkeypatch.setattr(embed_mod, "PROGRESS_MIN_TEXTS", 1)
    encoder.embed([texts[2], texts[5]], progress=True)
    assert "embedding texts" in capsys.readouterr().err
    encoder.embed([texts[2], texts[5]], progress=False)
    assert "embedding texts" not in capsys.readouterr().err
