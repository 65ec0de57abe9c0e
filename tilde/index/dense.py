"""The optional dense part of an index: one bi-encoder vector per row, stored as a faiss index.

``dense.faiss`` is a plain ``faiss.IndexScalarQuantizer`` (inner product), row-aligned with the
postings, so any faiss tool can read it (and search it exhaustively). The re-ranker never needs
faiss at query time: the quantised codes are the last ``rows x code_size`` bytes of the file, so
:class:`DenseVectors` memory-maps them with numpy (O(1) open; ``faiss.read_index`` with
``IO_FLAG_MMAP`` took 1.7 s on a 1M x 384 index here) and scores candidates with one gather and
one matrix-vector product. The writer checks that byte layout against faiss itself.

Codecs (the manifest's ``dense.codec``):

- ``fp16``: the vectors in float16 (2 bytes a dimension);
- ``sq8``: faiss' 8-bit uniform scalar quantiser, per-dimension ranges trained on the vectors
  (1 byte a dimension), decoded as ``x = vmin + (code + 0.5) / 255 * vdiff``.

Scores are float32 dot products of the decoded vectors, row by row, computed by a compiled loop
over the mapped codes (no gathered copy).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

__all__ = ["DENSE_CODECS", "DENSE_FILE", "DenseVectors", "dot_rows", "write_dense"]

DENSE_FILE = "dense.faiss"
DENSE_CODECS = ("fp16", "sq8")


# float32 value of every float16 code (numba has no float16 loads; the postings kernel does the same).
_F16_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _scores_fp16(codes: np.ndarray, rows: np.ndarray, table: np.ndarray, q: np.ndarray, out: np.ndarray) -> None:
    """out[i] = sum_j f16(codes[rows[i], j]) * q[j], in float32, left to right: straight from the
    mapped codes (no gathered copy), and each row's sum depends on that row alone, so a text
    scored on the fly gets bit for bit the score of its indexed copy. Rows outside the array
    score 0."""
    n, dim = codes.shape
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0 or r >= n:
            out[i] = 0.0
            continue
        s = np.float32(0.0)
        for j in range(dim):
            s += table[codes[r, j]] * q[j]
        out[i] = s


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _scores_sq8(codes: np.ndarray, rows: np.ndarray, vmin: np.ndarray, vdiff: np.ndarray, q: np.ndarray,
                out: np.ndarray) -> None:
    """The same for 8-bit codes, decoded as faiss does: vmin + (code + 0.5) / 255 * vdiff."""
    n, dim = codes.shape
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0 or r >= n:
            out[i] = 0.0
            continue
        s = np.float32(0.0)
        for j in range(dim):
            x = vmin[j] + (np.float32(codes[r, j]) + np.float32(0.5)) / np.float32(255.0) * vdiff[j]
            s += x * q[j]
        out[i] = s


def dot_rows(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """float64 ``vectors @ query`` in float32, row by row (a plain reference for tests)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    return (v * np.asarray(query, dtype=np.float32)).sum(axis=1, dtype=np.float32).astype(np.float64)


def write_dense(path: str | os.PathLike[str], vectors: np.ndarray, codec: str = "fp16") -> dict[str, Any]:
    """Write ``vectors`` [rows, dim] as a faiss scalar-quantiser index at ``path`` (the caller
    renames it into place) and return what the manifest records about it."""
    import faiss  # offline only: the reader below needs numpy alone

    if codec not in DENSE_CODECS:
        raise ValueError(f"dense codec must be one of {DENSE_CODECS}, not {codec!r}")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"dense vectors must be [rows, dim], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("dense vectors hold non-finite values")
    rows, dim = x.shape
    qtype = faiss.ScalarQuantizer.QT_fp16 if codec == "fp16" else faiss.ScalarQuantizer.QT_8bit
    index = faiss.IndexScalarQuantizer(dim, qtype, faiss.METRIC_INNER_PRODUCT)
    if rows:
        index.train(x)
        index.add(x)
    faiss.write_index(index, str(path))
    code_size = int(index.code_size)
    offset = Path(path).stat().st_size - rows * code_size
    meta: dict[str, Any] = {"file": DENSE_FILE, "dim": dim, "rows": rows, "codec": codec,
                            "code_size": code_size, "codes_offset": offset, "metric": "inner_product"}
    if codec == "sq8":
        trained = faiss.vector_to_array(index.sq.trained).astype(np.float64)
        meta["vmin"] = trained[:dim].tolist()
        meta["vdiff"] = trained[dim:].tolist()
    # The reader maps the codes by offset: check that they really are the file's last bytes.
    if rows:
        on_disk = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(rows, code_size))
        in_faiss = faiss.vector_to_array(index.codes).reshape(rows, code_size)
        if not np.array_equal(on_disk, in_faiss):  # pragma: no cover - a faiss format change
            raise RuntimeError(f"{path}: faiss stored the codes in an unexpected layout")
        del on_disk
    return meta


@dataclass(frozen=True)
class DenseVectors:
    """Memory-mapped dense codes of an index (see the module docstring)."""

    path: Path
    codec: str
    dim: int
    codes: np.ndarray  # [rows, code_size] uint8 (fp16: viewed as float16 when scoring)
    vmin: np.ndarray | None
    vdiff: np.ndarray | None

    @classmethod
    def open(cls, root: Path, meta: Mapping[str, Any], rows: int) -> DenseVectors:
        from tilde.index.format import IndexFormatError

        path = Path(root) / str(meta.get("file", DENSE_FILE))
        codec, dim = meta.get("codec"), meta.get("dim")
        if codec not in DENSE_CODECS or not isinstance(dim, int) or dim < 1:
            raise IndexFormatError(f"{root}: manifest dense part is malformed ({dict(meta)})")
        code_size = dim * 2 if codec == "fp16" else dim
        offset = meta.get("codes_offset")
        if meta.get("code_size") != code_size or meta.get("rows") != rows or not isinstance(offset, int):
            raise IndexFormatError(f"{root}: manifest dense part does not fit the index ({rows} rows, {codec})")
        if not path.is_file():
            raise IndexFormatError(f"{path}: missing (the dense part of the index)")
        if path.stat().st_size != offset + rows * code_size or offset < 0:
            raise IndexFormatError(f"{path}: {path.stat().st_size} bytes, manifest says {offset + rows * code_size}")
        codes = (np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(rows, code_size)) if rows
                 else np.zeros((0, code_size), np.uint8))
        vmin = vdiff = None
        if codec == "sq8":
            vmin = np.asarray(meta.get("vmin", []), dtype=np.float32)
            vdiff = np.asarray(meta.get("vdiff", []), dtype=np.float32)
            if vmin.shape != (dim,) or vdiff.shape != (dim,) or not (np.all(np.isfinite(vmin))
                                                                     and np.all(np.isfinite(vdiff))):
                raise IndexFormatError(f"{root}: manifest dense sq8 ranges are malformed")
        return cls(path, codec, dim, codes, vmin, vdiff)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def scores(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Inner products of ``query`` [dim] with the stored vectors of ``rows`` (row -1 scores 0.0)."""
        return self._score_codes(self.codes, np.asarray(rows, dtype=np.int64), self._query(query))

    def score_vectors(self, vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Scores of vectors that are not in the index (texts encoded on the fly), stored and
        scored exactly as the index would: quantised with this codec, then the same kernel."""
        codes = self.encode(vectors)
        return self._score_codes(codes, np.arange(codes.shape[0], dtype=np.int64), self._query(query))

    def _score_codes(self, codes: np.ndarray, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        out = np.zeros(rows.size, dtype=np.float64)
        if rows.size == 0 or codes.shape[0] == 0:
            return out
        if self.codec == "fp16":
            _scores_fp16(codes.view(np.uint16), rows, _F16_TABLE, q, out)
        else:
            assert self.vmin is not None and self.vdiff is not None
            _scores_sq8(codes, rows, self.vmin, self.vdiff, q, out)
        return out

    def _query(self, query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, dtype=np.float32)
        if q.shape != (self.dim,):
            raise ValueError(f"dense query has shape {q.shape}, the index stores {self.dim}-dim vectors")
        return q

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Decoded float32 vectors of ``rows``."""
        return self.decode(self.codes[np.asarray(rows, dtype=np.int64)])

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self.codec == "fp16":
            return np.ascontiguousarray(codes).view(np.float16).astype(np.float32)
        assert self.vmin is not None and self.vdiff is not None
        return self.vmin + (codes.astype(np.float32) + np.float32(0.5)) / np.float32(255.0) * self.vdiff

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes of float32 ``vectors`` [n, dim], as the index's writer (faiss' scalar quantiser)
        encodes them: by faiss itself when it is installed (its float16 rounding differs from
        numpy's in about 0.6% of values), else by the same formulas in numpy."""
        x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        faiss: Any
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is not None:
            qt = faiss.ScalarQuantizer.QT_fp16 if self.codec == "fp16" else faiss.ScalarQuantizer.QT_8bit
            sq = faiss.IndexScalarQuantizer(self.dim, qt, faiss.METRIC_INNER_PRODUCT)
            if self.codec == "sq8":
                assert self.vmin is not None and self.vdiff is not None
                faiss.copy_array_to_vector(np.concatenate([self.vmin, self.vdiff]).astype(np.float32), sq.sq.trained)
            sq.is_trained = True
            return np.asarray(sq.sa_encode(x), dtype=np.uint8).reshape(x.shape[0], -1)
        if self.codec == "fp16":
            return x.astype(np.float16).view(np.uint8).reshape(x.shape[0], -1)
        assert self.vmin is not None and self.vdiff is not None
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = np.clip((x - self.vmin) / self.vdiff, np.float32(0.0), np.float32(1.0))
        xi = np.nan_to_num(xi, nan=0.0)  # a dimension with vdiff 0 (constant in training)
        return (np.float32(255.0) * xi).astype(np.uint8)

    def quantized(self, vectors: np.ndarray) -> np.ndarray:
        """``decode(encode(vectors))``: what the index would hold for these vectors."""
        return self.decode(self.encode(vectors))

    def prefault(self) -> int:
        if not isinstance(self.codes, np.memmap) or self.codes.size == 0:
            return 0
        flat = self.codes.reshape(-1)
        return int(np.array(flat[::4096]).size)
