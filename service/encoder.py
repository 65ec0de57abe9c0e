"""On-the-fly encoding of documents that carry text but are not in the index.

A text is encoded exactly as the offline build encodes a passage, by the same code:

- a TILDEv2 index: ``[CLS] ids [SEP]`` (192 tokens at most, no expansion), stop/special ids
  dropped, max-pooled, float16 (``tilde.index.build``);
- an impact index: the index's MLM expands and weighs the text in one pass
  (:func:`tilde.index.impact.impact_postings`, same top-k and max length), and its bi-encoder
  gives the passage vector (:class:`tilde.encoders.dense_torch.DensePassageEncoder`), which the
  scorer quantises with the index's codec;

then :meth:`tilde.rank.Reranker.score` scores them with the same kernels as indexed passages, so
an on-the-fly score equals the score the passage would get from an index built from the same
text. torch is imported only here, and only when a model is configured.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tilde.index.reader import TildeIndex
from tilde.index.writer import pool_postings
from tilde.rank.texts import EncodedTexts
from tilde.text import TextProcessor

logger = logging.getLogger(__name__)

__all__ = ["ModelMismatchError", "TextEncoder", "index_models"]


class ModelMismatchError(ValueError):
    """The configured model is not the one the index was built with (scores would not compare)."""


def _mismatch(model: str, sha: str, index: TildeIndex, expected: str, what: str) -> ModelMismatchError:
    return ModelMismatchError(
        f"{what} {model!r} (weights sha256 {sha[:12]}) is not the one the index {index.path} was built with "
        f"(sha256 {expected[:12]}): on-the-fly scores would not be comparable with indexed ones. Serve the "
        f"matching model, or disable the check (TILDE_CHECK_MODEL=0)."
    )


def index_models(index: TildeIndex) -> tuple[str | None, str | None]:
    """(MLM, bi-encoder) an impact index was built with, as local paths found on this machine:
    the recorded path when it still holds the same weights, else an embedded alias (splade-tiny,
    all-MiniLM-L6-v2) with those weights; None where neither is found."""
    from tilde.encoders.spec import weights_sha256

    m = index.manifest
    found: list[str | None] = []
    for part, alias in ((m.impact, "splade-tiny"), (m.dense, "all-minilm-l6-v2")):
        if not part:
            found.append(None)
            continue
        candidates = [str(part.get("model", ""))]
        try:
            from tilde.models import bundled_path

            candidates.append(bundled_path(alias))
        except FileNotFoundError:
            pass
        hit = None
        for c in candidates:
            if c and Path(c).is_dir():
                if alias == "splade-tiny":
                    hit = c if _mlm_sha(c) == part.get("model_sha256") else None
                else:
                    hit = c if weights_sha256(Path(c)) == part.get("model_sha256") else None
            if hit:
                break
        found.append(hit)
    return found[0], found[1]


def _mlm_sha(path: str) -> str | None:
    import json

    from tilde.model import weights_hash

    cfg = Path(path) / "config.json"
    if not cfg.is_file() or "BertForMaskedLM" not in (json.loads(cfg.read_text("utf-8")).get("architectures") or []):
        return None
    from transformers import BertForMaskedLM

    return weights_hash(BertForMaskedLM.from_pretrained(path))


class TextEncoder:
    """The index's encoder(s) plus its tokenizer. Thread-safe (one encode at a time per process:
    a CPU forward pass already uses the cores it is given)."""

    def __init__(
        self, model: str, text: TextProcessor, index: TildeIndex, threads: int = 1, check: bool = True,
        dense_model: str | None = None,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.name = model
        self.text = text
        self.index = index
        self.impact = index.manifest.weighting == "impact"
        self._lock = threading.Lock()
        self._token_dtype = index.tokens.dtype
        self._stop = np.zeros(text.vocab_size, dtype=np.bool_)
        self._stop[text.stop_ids] = True
        self.dense: Any = None
        if self.impact:
            from tilde.expand.loading import load_expander

            imp = dict(index.manifest.impact or {})
            self.expander: Any = load_expander(model, "mlm", top_k=int(imp.get("top_k", 200)),
                                               max_length=int(imp.get("max_length", 128)))
            self.sha256 = self.expander.settings.model_sha256
            if check and self.sha256 != imp.get("model_sha256"):
                raise _mismatch(model, self.sha256, index, str(imp.get("model_sha256")), "model")
            if index.manifest.dense is not None:
                if dense_model is None:
                    raise ModelMismatchError(
                        f"the index {index.path} has dense vectors, so texts need its bi-encoder "
                        f"({index.manifest.dense.get('model')}), which was not found: pass it with --dense-model")
                from tilde.encoders.dense_torch import DensePassageEncoder
                from tilde.encoders.spec import weights_sha256

                dense = index.manifest.dense
                self.dense = DensePassageEncoder(dense_model, max_length=dense.get("max_length"))
                sha = weights_sha256(Path(self.dense.spec.transformer_dir))
                if check and sha != dense.get("model_sha256"):
                    raise _mismatch(dense_model, sha, index, str(dense.get("model_sha256")), "bi-encoder")
        else:
            from tilde.model import load_model, weights_hash

            self.net: Any = load_model(model)
            self.sha256 = weights_hash(self.net)
            if check and self.sha256 != index.manifest.model_sha256:
                raise _mismatch(model, self.sha256, index, index.manifest.model_sha256, "model")
        self._cls, self._sep, self._pad = text.special_id("[CLS]"), text.special_id("[SEP]"), text.special_id("[PAD]")

    def postings(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(sorted token ids, float16 weights) per text, as the index stores a passage."""
        ids = [self.text.token_ids(t).tolist() for t in texts]
        if self.impact:
            from tilde.index.impact import impact_postings

            with self._lock:
                return impact_postings(self.expander, ids, self._stop)
        from tilde.model import encode, passage_input_ids

        inputs = [passage_input_ids(i, self._cls, self._sep) for i in ids]
        with self._lock:
            weights = encode(self.net, inputs, pad_id=self._pad)
        return [pool_postings(np.asarray(i), w, self._stop) for i, w in zip(inputs, weights)]

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        """The texts as the index would hold them (postings, and vectors when it has a dense part)."""
        posts = self.postings(texts)
        vectors = None
        if self.dense is not None:
            with self._lock:
                vectors = self.dense.encode(list(texts), batch_size=max(1, len(texts)))
        return EncodedTexts.from_postings(posts, vectors, token_dtype=self._token_dtype)

    def warmup(self) -> None:
        self.encode(["warmup"])
