"""Query encoders on ONNX Runtime: numpy, tokenizers and onnxruntime only (no torch, no
transformers), for folders written by :mod:`tilde.encoders.export`.

``MlmQueryEncoder.load(dir).encode(text) -> (token_ids int32, weights float32)``: the SPLADE
query vector's non-zero entries, sorted by id. ``DenseQueryEncoder.load(dir).encode(text) ->
float32 (dim,)``: the bi-encoder's pooled (normalised) vector. Both tokenize as the export
defines (:mod:`tilde.encoders.spec`): ``[CLS] + word pieces + [SEP]``, and a query longer than
``max_length`` tokens (64 for splade-tiny, 256 for all-MiniLM-L6-v2) keeps its first
``max_length - 2`` word pieces, exactly as the SPLADE teacher and sentence-transformers truncate.

Sessions run sequentially on ``threads`` intra-op threads (default 1: a query is a few
milliseconds of small matrix products, and a serving process runs one encoder per worker), with
ONNX Runtime's full graph optimisations applied at session creation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from tilde.encoders.spec import EncoderConfig, sha256_file

__all__ = ["DenseQueryEncoder", "MlmQueryEncoder", "QueryEncoder", "session_options"]


def session_options(threads: int) -> ort.SessionOptions:
    """ONNX Runtime options for a small encoder run one input at a time: ``threads`` intra-op
    threads, sequential execution, every graph optimisation, warnings off."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


class QueryEncoder:
    """Shared loading, tokenisation and session handling; use a subclass's ``load``."""

    KIND = ""

    def __init__(self, path: Path, config: EncoderConfig, tokenizer: Tokenizer, session: ort.InferenceSession) -> None:
        self.path, self.config, self.tokenizer, self.session = path, config, tokenizer, session
        self._output = session.get_outputs()[0].name
        self._cls, self._sep, self._pad = config.cls_id, config.sep_id, config.pad_id
        self._keep = config.max_length - 2

    @classmethod
    def load(cls, path: str | os.PathLike[str], threads: int = 1, verify: bool = False) -> Any:
        """Open an exported encoder folder. FileNotFoundError for a missing folder or file,
        ValueError for a damaged one or one of the wrong kind (each naming the path).
        ``verify`` also checks every file's sha256 against ``encoder.json`` (sizes are always checked)."""
        folder = Path(path)
        config = EncoderConfig.read(folder)
        if config.kind != cls.KIND:
            raise ValueError(f"{folder / 'encoder.json'}: a {config.kind!r} encoder, not {cls.KIND!r}")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        for name in ("model.onnx", "tokenizer.json"):
            file = folder / name
            if not file.is_file():
                raise FileNotFoundError(f"{file}: not found; re-export the encoder")
            want = config.files.get(name, {})
            if "bytes" in want and file.stat().st_size != want["bytes"]:
                raise ValueError(f"{file}: {file.stat().st_size} bytes, encoder.json says {want['bytes']} (damaged)")
            if verify and "sha256" in want and sha256_file(file) != want["sha256"]:
                raise ValueError(f"{file}: sha256 differs from encoder.json (damaged)")
        try:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception on parse errors
            raise ValueError(f"{folder / 'tokenizer.json'}: unreadable tokenizer ({exc})") from exc
        tokenizer.no_truncation()
        tokenizer.no_padding()
        opts = session_options(threads)
        try:
            session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ValueError(f"{folder / 'model.onnx'}: ONNX Runtime cannot load it ({exc})") from exc
        out = session.get_outputs()[0].shape
        if len(out) != 2 or (isinstance(out[1], int) and out[1] != config.dim):
            raise ValueError(f"{folder / 'model.onnx'}: output shape {out} does not match dim {config.dim}")
        return cls(folder, config, tokenizer, session)

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @property
    def dim(self) -> int:
        return self.config.dim

    def input_ids(self, text: str) -> list[int]:
        """``[CLS] + word pieces[: max_length - 2] + [SEP]`` (ValueError for an empty query)."""
        if not isinstance(text, str):
            raise TypeError(f"query must be a string, not {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            raise ValueError("empty query: it has no tokens to encode")
        return [self._cls, *ids[: self._keep], self._sep]

    def _run_one(self, text: str) -> np.ndarray:
        ids = np.array([self.input_ids(text)], dtype=np.int64)
        return self.session.run([self._output], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]

    def _run_batch(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a sequence of queries, not one string")
        return self._run_ids([self.input_ids(t) for t in texts])

    def _run_ids(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return self.session.run([self._output], {"input_ids": ids, "attention_mask": mask})[0]


class MlmQueryEncoder(QueryEncoder):
    """The SPLADE query side of an ``mlm`` encoder folder (splade-tiny by default)."""

    KIND = "mlm"

    @classmethod
    def load(cls, path: str | os.PathLike[str], threads: int = 1, verify: bool = False) -> MlmQueryEncoder:
        enc: MlmQueryEncoder = super().load(path, threads, verify)
        return enc

    @staticmethod
    def _sparse(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nz = np.flatnonzero(vec > 0)
        return nz.astype(np.int32), vec[nz].astype(np.float32, copy=False)

    def encode_vector(self, text: str) -> np.ndarray:
        """The full float32 vocabulary vector (zeros included)."""
        return self._run_one(text)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(token ids int32, weights float32): the non-zero entries, sorted by id."""
        return self._sparse(self._run_one(text))

    def encode_batch(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self._sparse(v) for v in self._run_batch(texts)]


class DenseQueryEncoder(QueryEncoder):
    """The query side of a ``dense`` encoder folder (all-MiniLM-L6-v2 by default)."""

    KIND = "dense"

    @classmethod
    def load(cls, path: str | os.PathLike[str], threads: int = 1, verify: bool = False) -> DenseQueryEncoder:
        enc: DenseQueryEncoder = super().load(path, threads, verify)
        return enc

    def encode(self, text: str) -> np.ndarray:
        """float32 (dim,)."""
        return np.ascontiguousarray(self._run_one(text), dtype=np.float32)

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), dim)."""
        return np.ascontiguousarray(self._run_batch(texts), dtype=np.float32)

    def encode_passages(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """float32 (len(texts), dim) for passages through the same graph as queries (for a build
        or for texts a service encodes on the fly): batches of passages sorted by length, rows
        in input order; an empty text is ``[CLS] [SEP]``, as in
        :class:`tilde.encoders.dense_torch.DensePassageEncoder`, whose vectors these equal to
        float tolerance."""
        if isinstance(texts, str):
            raise TypeError("encode_passages takes a sequence of passage texts, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"passage text must be a string, not {type(t).__name__}")
        encoded = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        rows = [[self._cls, *e.ids[: self._keep], self._sep] for e in encoded]
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._run_ids([rows[i] for i in idx])
        return out
