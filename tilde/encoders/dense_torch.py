"""The passage side of the dense signal, offline (torch + transformers): the same input format,
pooling and normalisation as the exported ``dense`` ONNX encoder (:mod:`tilde.encoders.export`),
so a passage text and the same text encoded as a query get the same vector (to float tolerance).

Batches are formed from passages sorted by token count, so a batch pads to the length of
similar passages instead of the longest one in the collection; output rows keep input order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tilde.encoders.export import load_dense_model
from tilde.text import load_tokenizer

__all__ = ["DensePassageEncoder"]


class DensePassageEncoder:
    """``DensePassageEncoder(model_dir).encode(texts) -> float32 (n, dim)``.

    ``model_dir``: a sentence-transformers folder, a plain transformers folder or a hub id;
    ``max_length`` defaults to the folder's ``max_seq_length``. Passages longer than
    ``max_length`` tokens keep their first ``max_length - 2`` word pieces. An empty text is
    encoded as ``[CLS] [SEP]`` (a valid, if uninformative, vector), unlike queries, which refuse it."""

    def __init__(self, model_dir: str | os.PathLike[str], device: str = "cpu", max_length: int | None = None) -> None:
        module, spec, src = load_dense_model(model_dir, max_length)
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.spec = spec
        self.source = Path(src)
        self.max_length = spec.max_length
        self.tokenizer = load_tokenizer(spec.transformer_dir)
        cfg: Any = module.model.config
        self.dim = int(cfg.hidden_size)
        ids = [self.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
        if any(i is None for i in ids):
            raise ValueError(f"{spec.transformer_dir}: tokenizer lacks [CLS]/[SEP]/[PAD] (BERT WordPiece required)")
        self._cls, self._sep, self._pad = (int(i) for i in ids)  # type: ignore[arg-type]

    def input_ids(self, texts: Sequence[str]) -> list[list[int]]:
        keep = self.max_length - 2
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"passage text must be a string, not {type(t).__name__}")
        encoded = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [[self._cls, *e.ids[:keep], self._sep] for e in encoded]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """float32 ``(len(texts), dim)``, rows in input order."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of passage texts, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = self.input_ids(texts)
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(rows[i]) for i in idx)
            ids = torch.full((len(idx), width), self._pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(rows[i])] = torch.as_tensor(rows[i], dtype=torch.long)
                mask[j, : len(rows[i])] = 1
            vec = self.module(ids.to(self.device), mask.to(self.device))
            out[idx] = vec.float().cpu().numpy()
        return out
