"""Opening an index: memory-mapped arrays, validated against the manifest, and docid lookup
by ``searchsorted`` (no per-passage Python objects, so opening MS MARCO takes milliseconds)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tilde.index.dense import DenseVectors
from tilde.index.format import (
    DOCIDS,
    DOCIDS_ORDER,
    DOCIDS_SORTED,
    MANIFEST,
    OFFSETS,
    TOKENIZER,
    TOKENS,
    WEIGHTS,
    IndexFormatError,
    Manifest,
)
from tilde.index.keys import int_keys, str_keys

logger = logging.getLogger(__name__)

__all__ = ["TildeIndex"]


def _load(path: Path, dtype: npt.DTypeLike, shape: tuple[int, ...], mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing (the index is incomplete; rebuild it)")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        # np.load of a truncated .npy raises "mmap length is greater than file size" and friends.
        raise IndexFormatError(f"{path}: damaged array file ({exc})") from exc
    expected = np.dtype(dtype)
    if arr.dtype != expected and not (expected.kind == "S" and arr.dtype.kind == "S"):
        raise IndexFormatError(f"{path}: dtype {arr.dtype}, manifest says {expected}")
    if arr.shape != shape:
        raise IndexFormatError(f"{path}: shape {arr.shape}, manifest says {shape}")
    return arr


@dataclass(frozen=True)
class TildeIndex:
    """A read-only, memory-mapped TILDEv2 index. Open with :meth:`open`."""

    path: Path
    manifest: Manifest
    offsets: np.ndarray
    tokens: np.ndarray
    weights: np.ndarray
    docids: np.ndarray | None  # None for docid_kind "range" (id == row)
    docids_sorted: np.ndarray | None
    docids_order: np.ndarray | None

    @classmethod
    def open(cls, path: str | os.PathLike[str], mmap: bool = True) -> TildeIndex:
        """Open and validate an index directory. Every check here is O(1) in the index size
        (shapes, dtypes, end offsets); :meth:`verify` does the full O(N) scan."""
        root = Path(path)
        if not root.is_dir():
            raise IndexFormatError(f"{root}: no such index directory")
        mpath = root / MANIFEST
        if not mpath.is_file():
            hint = " (an unfinished build: re-run `tilde index` to resume)" if (root / ".partial").exists() else ""
            raise IndexFormatError(f"{root}: no {MANIFEST}; not a tilde index{hint}")
        m = Manifest.from_json(mpath.read_text("utf-8"), str(mpath))
        n, p = m.num_passages, m.num_postings
        offsets = _load(root / OFFSETS, np.int64, (n + 1,), mmap)
        tokens = _load(root / TOKENS, m.token_dtype, (p,), mmap)
        weights = _load(root / WEIGHTS, m.weight_dtype, (p,), mmap)
        if offsets[0] != 0 or offsets[-1] != p:
            raise IndexFormatError(f"{root}: offsets do not span the postings (0..{p}); the index is damaged")
        if m.docid_kind == "range":
            return cls(root, m, offsets, tokens, weights, None, None, None)
        id_dtype = np.int64 if m.docid_kind == "int" else np.dtype("S1")
        docids = _load(root / DOCIDS, id_dtype, (n,), mmap)
        order = None
        sorted_ids = docids
        if not m.docids_sorted:
            sorted_ids = _load(root / DOCIDS_SORTED, docids.dtype, (n,), mmap)
            order = _load(root / DOCIDS_ORDER, np.int64, (n,), mmap)
        return cls(root, m, offsets, tokens, weights, docids, sorted_ids, order)

    def __len__(self) -> int:
        return self.manifest.num_passages

    @cached_property
    def weight_table(self) -> np.ndarray:
        """float32 value of every possible stored weight code: the kernel reads weights through
        it, so float16 and uint8 indexes share one scoring loop."""
        if self.manifest.weight_dtype == "float16":
            return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
        assert self.manifest.weight_scale is not None
        return (np.arange(256, dtype=np.float64) * self.manifest.weight_scale).astype(np.float32)

    @cached_property
    def weight_codes(self) -> np.ndarray:
        """The weights array viewed as unsigned integer codes (numba has no float16 loads)."""
        return self.weights.view(np.uint16) if self.weights.dtype == np.float16 else self.weights

    @cached_property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    @cached_property
    def dense(self) -> DenseVectors | None:
        """The dense part (tilde.index.dense), or None when the index has none. Opened on first
        use, so indexes without one, and modes that do not need it, pay nothing."""
        if self.manifest.dense is None:
            return None
        return DenseVectors.open(self.path, self.manifest.dense, len(self))

    def query_encoder_dir(self, kind: str) -> Path | None:
        """The folder of the index's ``kind`` ("mlm" or "dense") query encoder, or None."""
        enc = (self.manifest.query_encoders or {}).get(kind)
        if not enc:
            return None
        rel = Path(str(enc.get("path", "")))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise IndexFormatError(f"{self.path}: manifest query encoder path {str(rel)!r} must lie inside the index")
        return self.path / rel

    def to_keys(self, docids: Sequence[str | int]) -> tuple[np.ndarray, np.ndarray]:
        """Convert external ids to the index's key dtype. Returns (keys, convertible mask); an id
        that cannot be a key (e.g. "abc" in an integer-keyed index) is simply not convertible."""
        if self.manifest.docid_kind in ("int", "range"):
            return int_keys(docids)
        assert self.docids is not None
        return str_keys(docids, self.docids.dtype.itemsize)

    def lookup(self, docids: Sequence[str | int]) -> np.ndarray:
        """Rows of ``docids`` (int64), -1 for ids not in the index."""
        keys, ok = self.to_keys(docids)
        if self.docids_sorted is None:  # "range": the id is the row
            return np.where(ok & (keys >= 0) & (keys < len(self)), keys, -1).astype(np.int64)
        n = len(self.docids_sorted)
        pos = np.searchsorted(self.docids_sorted, keys)
        pos_c = np.minimum(pos, max(n - 1, 0))
        found = ok & (pos < n)
        if n:
            found &= self.docids_sorted[pos_c] == keys
        rows = pos_c if self.docids_order is None else self.docids_order[pos_c] if n else pos_c
        return np.where(found, rows, -1).astype(np.int64)

    def docid(self, row: int) -> str:
        if self.docids is None:
            if not 0 <= row < len(self):
                raise IndexError(row)
            return str(row)
        value = self.docids[row]
        return value.decode("utf-8") if isinstance(value, bytes) else str(int(value))

    def postings(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, float32 weights) of one row."""
        lo, hi = int(self.offsets[row]), int(self.offsets[row + 1])
        return self.tokens[lo:hi].astype(np.int64), self.weight_table[self.weight_codes[lo:hi]]

    def check_tokenizer(self, vocab_sha256: str, vocab_size: int, where: str = "tokenizer") -> None:
        if vocab_sha256 != self.manifest.vocab_sha256 or vocab_size != self.manifest.vocab_size:
            raise IndexFormatError(
                f"{where} does not match the index {self.path}: vocabulary of {vocab_size} entries "
                f"(sha256 {vocab_sha256[:12]}), the index was built with {self.manifest.vocab_size} "
                f"(sha256 {self.manifest.vocab_sha256[:12]}). Query ids would point at the wrong tokens."
            )

    def prefault(self) -> int:
        """Touch every page of the memory-mapped arrays once, so that queries do not pay for
        first-touch page faults (each costs about a microsecond; a fresh process re-ranking
        1,000 random candidates can hit a thousand of them). Reads at most one element per 4 KiB
        page; returns the number of pages touched. Optional: open() stays O(1)."""
        pages = 0
        for arr in (self.offsets, self.tokens, self.weights, self.docids, self.docids_sorted, self.docids_order):
            if arr is None or not isinstance(arr, np.memmap) or arr.size == 0:
                continue
            step = max(1, 4096 // arr.itemsize)
            touched = np.array(arr[::step])  # a copy: forces the reads (a view would not)
            pages += int(touched.size)
        return pages

    def verify(self) -> None:
        """Full O(N + P) consistency scan (``tilde index verify``)."""
        off = np.asarray(self.offsets)
        if np.any(np.diff(off) < 0):
            raise IndexFormatError(f"{self.path}: offsets are not monotonic")
        toks = np.asarray(self.tokens)
        if toks.size and int(toks.max()) >= self.manifest.vocab_size:
            raise IndexFormatError(f"{self.path}: token id beyond the vocabulary")
        step = np.diff(toks.astype(np.int64))
        starts = off[1:-1]
        bad = step <= 0
        bad[starts[(starts > 0) & (starts < toks.size)] - 1] = False  # row boundaries may go down
        if np.any(bad):
            raise IndexFormatError(f"{self.path}: tokens not strictly increasing within a row")
        if self.weights.dtype == np.float16:
            w = np.asarray(self.weights)
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise IndexFormatError(f"{self.path}: negative or non-finite weights")
        ds = np.asarray(self.docids_sorted) if self.docids_sorted is not None else np.zeros(0)
        if ds.size > 1 and np.any(ds[1:] <= ds[:-1]):
            raise IndexFormatError(f"{self.path}: docid lookup array is not strictly sorted")
