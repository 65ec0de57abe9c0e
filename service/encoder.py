"""On-the-fly scoring of documents that carry text but are not in the index.

The text is encoded exactly as ``tilde index`` encodes a passage with no expansion
(``[CLS] ids [SEP]``, 192 tokens at most, stop/special ids dropped, max-pooled, float16), then
scored by the same kernel as indexed passages, so an on-the-fly score equals the score the
passage would get from an index built from the same text. torch is imported only here, and only
when a model is configured.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from tilde.index.reader import TildeIndex
from tilde.index.writer import pool_postings
from tilde.rank import prepare_query, score_rows
from tilde.rank.kernel import score_rows_dense
from tilde.text import TextProcessor

logger = logging.getLogger(__name__)

__all__ = ["ModelMismatchError", "TextEncoder"]

# float32 value of every float16 code: on-the-fly weights go through the kernel like index weights.
_F16_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


class ModelMismatchError(ValueError):
    """The configured model is not the one the index was built with (scores would not compare)."""


class TextEncoder:
    """A TILDEv2 model plus the index's tokenizer. Thread-safe (one encode at a time per process:
    a CPU forward pass already uses the cores it is given)."""

    def __init__(
        self, model: str, text: TextProcessor, index: TildeIndex, threads: int = 1, check: bool = True
    ) -> None:
        import torch

        from tilde.model import load_model, weights_hash

        torch.set_num_threads(threads)
        self.name = model
        self.text = text
        self.net: Any = load_model(model)
        self.sha256 = weights_hash(self.net)
        expected = index.manifest.model_sha256
        if check and self.sha256 != expected:
            raise ModelMismatchError(
                f"model {model!r} (weights sha256 {self.sha256[:12]}) is not the model the index {index.path} was "
                f"built with ({index.manifest.model!r}, sha256 {expected[:12]}): on-the-fly scores would not be "
                f"comparable with indexed ones. Serve the matching model, or disable the check (TILDE_CHECK_MODEL=0)."
            )
        self._cls, self._sep, self._pad = text.special_id("[CLS]"), text.special_id("[SEP]"), text.special_id("[PAD]")
        self._stop = np.zeros(text.vocab_size, dtype=np.bool_)
        self._stop[text.stop_ids] = True
        self._token_dtype = index.tokens.dtype
        self._lock = threading.Lock()

    def postings(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(sorted token ids, float16 weights) per text, as the index stores a passage."""
        from tilde.model import encode, passage_input_ids

        inputs = [passage_input_ids(self.text.token_ids(t).tolist(), self._cls, self._sep) for t in texts]
        with self._lock:
            weights = encode(self.net, inputs, pad_id=self._pad)
        return [pool_postings(np.asarray(ids), w, self._stop) for ids, w in zip(inputs, weights)]

    def score(
        self, query_ids: np.ndarray, texts: Sequence[str], expansion: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        """float64 scores of ``texts`` for the (stop-filtered) query ids, plus the weighted
        matches of feedback ``expansion`` tokens (ids, weights) when given."""
        posts = self.postings(texts)
        lengths = np.array([t.size for t, _ in posts], dtype=np.int64)
        offsets = np.zeros(len(posts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if posts:
            tokens = np.concatenate([t for t, _ in posts]).astype(self._token_dtype)
            codes = np.concatenate([w for _, w in posts]).view(np.uint16)
        else:
            tokens, codes = np.zeros(0, self._token_dtype), np.zeros(0, np.uint16)
        q, counts = prepare_query(query_ids)
        rows = np.arange(len(posts), dtype=np.int64)
        out = score_rows(offsets, tokens, codes, _F16_TABLE, rows, q, counts)
        if expansion is not None and expansion[0].size:
            out += score_rows_dense(
                offsets, tokens, codes, _F16_TABLE, rows, expansion[0], expansion[1], self.text.vocab_size
            )
        return out

    def warmup(self) -> None:
        self.score(np.zeros(0, dtype=np.int64), ["warmup"])
