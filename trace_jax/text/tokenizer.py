"""WordPiece tokenizer for all-MiniLM-L6-v2 (the package's ``tokenizer.json``).

The shipped ``tokenizer.json`` hard-codes truncation and padding at 128 tokens. The
sentence-transformers reference truncates at 256 (special tokens included) and pads per
batch, so truncation is reset to ``max_length`` and the built-in padding is disabled:
callers (``TextEncoder``) pad to their own length buckets.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np

TOKENIZER_FILE = "tokenizer.json"


class MiniLMTokenizer:
    def __init__(self, path: str | os.PathLike | None = None, max_length: int = 256):
        from tokenizers import Tokenizer

        if path is None:
            from trace_jax.text.weights import model_dir

            path = model_dir() / TOKENIZER_FILE
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if not 2 <= int(max_length) <= 512:
            raise ValueError(f"max_length must be in [2, 512], got {max_length}")
        self.path = path
        self.max_length = int(max_length)
        tok = Tokenizer.from_file(str(path))
        tok.enable_truncation(max_length=self.max_length)  # counts [CLS]/[SEP]
        tok.no_padding()
        self._tok = tok
        self.pad_id = 0
        self.pad_type_id = 0

    def encode(self, texts: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Unpadded token ids and type ids, one int32 array per text (at most max_length)."""
        # sentence-transformers strips surrounding whitespace before tokenising.
        encs = self._tok.encode_batch([t.strip() for t in texts], add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int32) for e in encs]
        types = [np.asarray(e.type_ids, dtype=np.int32) for e in encs]
        return ids, types

    def pad(
        self,
        ids: Sequence[np.ndarray],
        types: Sequence[np.ndarray] | None = None,
        length: int | None = None,
        rows: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Right-pad to (rows, length); extra rows are all padding (mask 0)."""
        n = len(ids)
        length = max((len(x) for x in ids), default=0) if length is None else int(length)
        rows = n if rows is None else int(rows)
        if rows < n:
            raise ValueError(f"rows={rows} is smaller than the number of sequences {n}")
        out_ids = np.full((rows, length), self.pad_id, dtype=np.int32)
        out_types = np.full((rows, length), self.pad_type_id, dtype=np.int32)
        mask = np.zeros((rows, length), dtype=np.int32)
        for i, x in enumerate(ids):
            if len(x) > length:
                raise ValueError(f"sequence {i} has {len(x)} tokens, more than length={length}")
            out_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
            if types is not None:
                out_types[i, : len(x)] = types[i]
        return {"input_ids": out_ids, "attention_mask": mask, "token_type_ids": out_types}

    def __call__(self, texts: Sequence[str], length: int | None = None) -> dict[str, np.ndarray]:
        """Tokenise and pad to ``length`` (default: the longest). Returns int32 numpy arrays
        ``input_ids``, ``attention_mask``, ``token_type_ids`` of shape (len(texts), length)."""
        ids, types = self.encode(texts)
        return self.pad(ids, types, length=length)
