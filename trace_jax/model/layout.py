"""Where each token sits in the sequence [CLS; CIT_1; patches_1; ...; CIT_C; patches_C], and the
two arrays the encoder keeps that sequence in."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CHANNEL_BIAS_MODES = ("block_diagonal", "paper", "full")


def take_tokens(x: jax.Array, positions: jax.Array) -> jax.Array:
    """x (B, C, S, ...) at positions (B, C, Sq) along S: each channel's tokens at those
    positions, (B, C, Sq, ...)."""
    index = positions.reshape(positions.shape + (1,) * (x.ndim - 3))
    return jnp.take_along_axis(x, index, axis=2)


class Tokens(NamedTuple):
    """The token sequence as [CLS] and the channel tokens apart: cls (B, 1, ...) and channels
    (B, C, S, ...), S = a channel's CIT and its N patches.

    Block-diagonal attention reads each channel as one sequence, so keeping the channels in an
    array of their own makes that a free view; one (B, L, ...) array needs a slice, a reshape
    and a concatenation per attention, and pads in the backward pass (BENCHMARKS.md has what
    that cost and saved). Token-wise layers map over both arrays (`jax.tree.map`), so their
    weights and their outputs are those of the joined sequence.
    """

    cls: jax.Array
    channels: jax.Array

    def joined(self) -> jax.Array:
        """(B, L, ...) in the sequence order above."""
        b, c, s = self.channels.shape[:3]
        rest = self.channels.shape[3:]
        return jnp.concatenate([self.cls, self.channels.reshape(b, c * s, *rest)], axis=1)

    @classmethod
    def split(cls, joined: jax.Array, layout: "TokenLayout") -> "Tokens":
        """The inverse of `joined`."""
        b, _, *rest = joined.shape
        channels = joined[:, 1:].reshape(b, layout.num_channels, layout.channel_length, *rest)
        return cls(joined[:, :1], channels)


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    num_channels: int  # C in this batch (not the CIT table size)
    num_patches: int  # N

    @property
    def channel_length(self) -> int:
        """Tokens per channel: its CIT and its patches."""
        return self.num_patches + 1

    @property
    def length(self) -> int:
        return 1 + self.num_channels * self.channel_length

    @functools.cached_property
    def channel_positions(self) -> np.ndarray:
        """RoPE positions of one channel's tokens: its CIT 0, then its patches 1..N ([CLS] is at
        0 too, where the rotation is the identity)."""
        return np.arange(self.channel_length)

    @functools.cached_property
    def token_channel(self) -> np.ndarray:
        """Channel of each token; -1 for CLS."""
        per_token = np.repeat(np.arange(self.num_channels), self.channel_length)
        return np.concatenate([[-1], per_token])

    @functools.cached_property
    def is_cit(self) -> np.ndarray:
        return np.concatenate(
            [[False], np.tile(np.arange(self.channel_length) == 0, self.num_channels)]
        )

    def structural_mask(self, mode: str) -> np.ndarray:
        """(L, L) bool: which query may read which key before key padding (dense modes)."""
        same_channel = self.token_channel[:, None] == self.token_channel[None, :]
        if mode == "full":
            return np.ones((self.length, self.length), bool)
        if mode == "paper":
            return np.where(self.is_cit[:, None], same_channel, True)
        if mode == "block_diagonal":
            return np.where(self.token_channel[:, None] < 0, True, same_channel)
        raise ValueError(f"channel_bias must be one of {CHANNEL_BIAS_MODES}, got {mode!r}")

    @staticmethod
    def key_valid(channel_valid: jnp.ndarray, patch_valid: jnp.ndarray) -> Tokens:
        """Which tokens may be read, from channel_valid (B, C) and patch_valid (B, C, N): cls
        (B, 1) always, channels (B, C, S) a CIT where its channel has data, a patch where it does."""
        batch = channel_valid.shape[0]
        per_channel = jnp.concatenate([channel_valid[..., None], patch_valid], axis=-1)
        return Tokens(jnp.ones((batch, 1), bool), per_channel)
