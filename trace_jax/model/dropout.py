"""Inverted dropout whose keep mask is a counter-based hash, not a stream of threefry bits.

`flax.linen.Dropout` draws one threefry-2x32 word per element: 20 rounds of add/rotate/xor
whose intermediates XLA materialises, about 35 ms for one (64, 218, 384) activation on the
project's 2-core CPU, and the paper-size encoder drops out 12 such activations a step. Here
the call's key (flax's `make_rng`, one threefry fold-in) is itself the two 32-bit seed words: a
second threefry draw from it would add nothing random, only another rolled threefry loop to
compile (XLA:CPU compiles each as a while loop of ~100 kernels). Each element's bit comes from
hashing its index with them (the 'lowbias32' integer mixer, applied per row of the last axis
and again per element), which XLA fuses into the neighbouring elementwise work: about 1 ms
for the same activation (the GPU has not been measured yet). Counter-based, like PyTorch's
Philox masks on a GPU: the mask depends only on the key and the element's index, so a sharded
array gets the same mask as an unsharded one.

The keep probability is 1 - round(rate * 2^32) / 2^32 (exact to 2^-32). The backward pass
recomputes the mask from the two seed words instead of keeping a boolean array per call.
"""

from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = np.uint32(0x9E3779B9)  # odd, so multiplying by it is a bijection on uint32


def _mix(h):
    """lowbias32 (C. Wellons): a bijective uint32 finaliser with full avalanche."""
    h = (h ^ (h >> 16)) * np.uint32(0x7FEB352D)
    h = (h ^ (h >> 15)) * np.uint32(0x846CA68B)
    return h ^ (h >> 16)


def keep_mask(seed, shape: tuple[int, ...], rate: float):
    """Boolean mask of `shape`, True with probability 1 - rate, from two uint32 seed words.

    Rows (all axes but the last, flattened) are hashed with seed[0]; each element hashes its
    row's hash, its position along the last axis and seed[1]. No element count limit beyond
    fewer than 2^32 rows.
    """
    rows, cols = math.prod(shape[:-1]), (shape[-1] if shape else 1)
    if rows >= 2**32 or cols >= 2**32:
        raise ValueError(f"dropout over {shape}: more than 2^32 rows or columns")
    row = jax.lax.broadcasted_iota(jnp.uint32, (rows, 1), 0)
    col = jax.lax.broadcasted_iota(jnp.uint32, (1, cols), 1)
    row_hash = _mix(row ^ seed[0])
    bits = _mix((row_hash + col * _GOLDEN) ^ seed[1])
    threshold = np.uint32(min(round(rate * 2**32), 2**32 - 1))
    return (bits >= threshold).reshape(shape)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dropout(x, seed, rate: float):
    keep = keep_mask(seed, x.shape, rate)
    return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))


def _dropout_fwd(x, seed, rate):
    return _dropout(x, seed, rate), seed


def _dropout_bwd(rate, seed, grad):
    return _dropout(grad, seed, rate), None


_dropout.defvjp(_dropout_fwd, _dropout_bwd)


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout(rate)(x, deterministic)`, same 'dropout' RNG stream name."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        # The first two words whatever the PRNG implementation (threefry's key has exactly two).
        seed = jax.random.key_data(self.make_rng("dropout")).reshape(-1)[:2]
        return _dropout(x, seed, float(self.rate))
