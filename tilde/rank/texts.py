"""Texts encoded on the fly, held like a tiny in-memory index so the same kernels score them.

A service re-ranks documents it was sent as text with the same arrays an index holds: CSR
postings (sorted token ids, float16 weights read through the float16 code table) and, for
dense scoring, the passage vectors. :meth:`Reranker.score` takes one of these beside the index
rows, so a text scores exactly as its indexed copy would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["F16_TABLE", "EncodedTexts"]

# float32 value of every float16 code: on-the-fly weights go through the kernel like index weights.
F16_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@dataclass(frozen=True)
class EncodedTexts:
    offsets: np.ndarray  # int64 [n + 1]
    tokens: np.ndarray  # token ids, sorted within each text
    codes: np.ndarray  # uint16 float16 codes
    dense: np.ndarray | None = None  # float32 [n, dim], before the index's quantisation

    @classmethod
    def from_postings(
        cls, postings: Sequence[tuple[np.ndarray, np.ndarray]], dense: np.ndarray | None = None,
        token_dtype: np.dtype | type = np.uint32,
    ) -> EncodedTexts:
        lengths = np.array([t.size for t, _ in postings], dtype=np.int64)
        offsets = np.zeros(len(postings) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if postings:
            tokens = np.concatenate([t for t, _ in postings]).astype(token_dtype)
            codes = np.concatenate([np.asarray(w, dtype=np.float16) for _, w in postings]).view(np.uint16)
        else:
            tokens, codes = np.zeros(0, token_dtype), np.zeros(0, np.uint16)
        if dense is not None and len(dense) != len(postings):
            raise ValueError(f"{len(dense)} dense vectors for {len(postings)} texts")
        return cls(offsets, tokens, codes, None if dense is None else np.asarray(dense, dtype=np.float32))

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(offsets, tokens, codes, table): the kernel arguments, as ``Reranker._arrays``."""
        return self.offsets, self.tokens, self.codes, F16_TABLE
