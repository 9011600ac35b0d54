"""Where each token sits in the sequence [CLS; CIT_1; patches_1; ...; CIT_C; patches_C]."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import jax.numpy as jnp

CHANNEL_BIAS_MODES = ("block_diagonal", "paper", "full")


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
    def positions(self) -> np.ndarray:
        """RoPE positions: CLS and CIT 0 (unrotated); patch i of every channel i (1-based)."""
        per_channel = np.arange(self.channel_length)
        return np.concatenate([[0], np.tile(per_channel, self.num_channels)])

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

    def key_valid(self, channel_valid: jnp.ndarray, patch_valid: jnp.ndarray) -> jnp.ndarray:
        """(B, L) bool from channel_valid (B, C) and patch_valid (B, C, N); CLS is always valid."""
        batch = channel_valid.shape[0]
        per_channel = jnp.concatenate([channel_valid[..., None], patch_valid], axis=-1)
        return jnp.concatenate(
            [jnp.ones((batch, 1), bool), per_channel.reshape(batch, -1)], axis=-1
        )
