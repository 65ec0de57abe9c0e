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

Speed (``benchmarks/encode_texts.py``; the README states the figures): the bi-encoder is the
larger model and runs on ONNX Runtime in float32 (exported from the same weights when the encoder
is loaded; vectors within 1e-6 of torch's, far inside the index's float16 codec), in batches of
``DENSE_BATCH`` texts sorted by length (large batches are slower on a CPU: their activations leave
the cache). The MLM stays on torch, float32, through the build's own function, so its float16
weights are the index's bit for bit; bfloat16 was measured faster but moves dense scores by
~2e-3 and would move the MLM's stored weights, so neither model uses it. Passages already encoded
are served from a bounded LRU cache (:class:`service.textcache.TextCache`).
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

from .chunking import Chunked, chunk_text
from .textcache import Encoded, TextCache

logger = logging.getLogger(__name__)

__all__ = ["DENSE_BATCH", "ModelMismatchError", "TextEncoder", "index_models"]

# Texts per bi-encoder forward pass: fastest on 1 core for 128-token passages (on ONNX Runtime,
# measured on the shared 2-core machine under load: 8: 23 texts/s, 16: 15, 100: 17; with torch
# 8: 17, 100: 9). benchmarks/encode_texts.py measures the result: about 50 texts/s unloaded.
DENSE_BATCH = 8


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
        dense_model: str | None = None, cache_size: int = 0, dense_onnx: bool = True,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.threads = threads
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
        m = index.manifest
        length = int((m.impact or {}).get("max_length", 128)) if self.impact else int(m.max_passage_tokens)
        # how the index padded the MLM input (indexes before "buckets" padded to max_length)
        self._padding = str((m.impact or {}).get("padding", "max_length"))
        self.window = length - 2  # word pieces of one passage: what a chunk holds
        dense_sha = "" if self.dense is None else str((m.dense or {}).get("model_sha256"))
        identity = "|".join(str(x) for x in (self.sha256, dense_sha, m.vocab_sha256, m.weighting, length,
                                             (m.impact or {}).get("top_k"), (m.dense or {}).get("max_length")))
        self.cache = TextCache(cache_size, identity)
        self._dense_session: Any = None
        if self.dense is not None and dense_onnx:
            self._dense_session = _dense_session(self.dense.module, threads)

    def chunk(self, text: str, max_tokens: int | None, max_chunks: int) -> Chunked:
        """``text`` cut into passages of at most :attr:`window` word pieces (:mod:`service.chunking`)."""
        encoding = self.text.tokenizer.encode(text, add_special_tokens=False)
        return chunk_text(text, encoding, self.window, max_chunks, max_tokens)

    def postings(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(sorted token ids, float16 weights) per text, as the index stores a passage."""
        ids = [self.text.token_ids(t).tolist() for t in texts]
        if self.impact:
            from tilde.index.impact import impact_postings

            # impact_postings groups the texts by padded width and bounds each forward pass itself
            with self._lock:
                return impact_postings(self.expander, ids, self._stop, self._padding)
        from tilde.model import encode, passage_input_ids

        inputs = [passage_input_ids(i, self._cls, self._sep) for i in ids]
        with self._lock:
            weights = encode(self.net, inputs, pad_id=self._pad)
        return [pool_postings(np.asarray(i), w, self._stop) for i, w in zip(inputs, weights)]

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """The bi-encoder's float32 passage vectors, rows in input order."""
        assert self.dense is not None
        with self._lock:
            if self._dense_session is None:
                return np.asarray(self.dense.encode(list(texts), batch_size=DENSE_BATCH))
            rows = self.dense.input_ids(texts)
            out = np.zeros((len(rows), self.dense.dim), dtype=np.float32)
            order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
            for start in range(0, len(order), DENSE_BATCH):
                idx = order[start : start + DENSE_BATCH]
                width = max(len(rows[i]) for i in idx)
                ids = np.full((len(idx), width), self.dense._pad, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for j, i in enumerate(idx):
                    ids[j, : len(rows[i])] = rows[i]
                    mask[j, : len(rows[i])] = 1
                out[idx] = self._dense_session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            return out

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        """The texts as the index would hold them (postings, and vectors when it has a dense part)."""
        return self.encode_cached(texts)[0]

    def encode_cached(self, texts: Sequence[str]) -> tuple[EncodedTexts, list[bool]]:
        """:meth:`encode`, through the cache; also says which texts were served from it."""
        keys = [self.cache.key(t) for t in texts] if self.cache.capacity else []
        found: list[Encoded | None] = [self.cache.get(k) for k in keys] if keys else [None] * len(texts)
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            fresh = [texts[i] for i in todo]
            posts = self.postings(fresh)
            vecs = self.vectors(fresh) if self.dense is not None else None
            for j, i in enumerate(todo):
                item = Encoded(posts[j][0], posts[j][1], None if vecs is None else vecs[j])
                found[i] = item
                if keys:
                    self.cache.put(keys[i], item)
        items = [f for f in found if f is not None]
        vectors = None
        if self.dense is not None:
            vectors = np.zeros((len(items), self.dense.dim), dtype=np.float32)
            for r, f in enumerate(items):
                vectors[r] = f.vector
        texts_out = EncodedTexts.from_postings([(f.tokens, f.weights) for f in items], vectors,
                                               token_dtype=self._token_dtype)
        todo_set = set(todo)
        return texts_out, [i not in todo_set for i in range(len(texts))]

    def warmup(self) -> None:
        self.encode(["warmup"])


def _dense_session(module: Any, threads: int) -> Any:
    """An ONNX Runtime session of the bi-encoder ``module`` (float32, exported in memory), or
    None (torch is used) when the export or ONNX Runtime is not available."""
    import tempfile

    try:
        import onnxruntime as ort

        from tilde.encoders.export import DEFAULT_OPSET, _export
        from tilde.encoders.query import session_options

        with tempfile.TemporaryDirectory(prefix="tilde-dense-") as tmp:
            path = Path(tmp) / "model.onnx"
            _export(module, path, DEFAULT_OPSET, "sentence_embedding")
            graph = path.read_bytes()
        return ort.InferenceSession(graph, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # an export or runtime problem costs speed, never the service
        logger.warning("bi-encoder on torch (ONNX export unavailable: %s: %s)", type(exc).__name__, exc)
        return None
