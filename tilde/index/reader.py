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
    HASH,
    MANIFEST,
    OFFSETS,
    TOKENIZER,
    TOKENS,
    WEIGHTS,
    IndexFormatError,
    Manifest,
    file_digest,
)
from tilde.index.keys import int_keys, str_keys

logger = logging.getLogger(__name__)

__all__ = ["TildeIndex"]


def _load(path: Path, dtype: npt.DTypeLike, shape: tuple[int, ...], mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing (the index is incomplete; rebuild it)")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError) as exc:
        # np.load of a truncated .npy raises "mmap length is greater than file size" and friends.
        raise IndexFormatError(f"{path}: damaged array file ({exc})") from exc
    expected = np.dtype(dtype)
    if arr.dtype != expected and not (expected.kind == "S" and arr.dtype.kind == "S"):
        raise IndexFormatError(f"{path}: dtype {arr.dtype}, manifest says {expected}")
    if arr.shape != shape:
        raise IndexFormatError(f"{path}: shape {arr.shape}, manifest says {shape}")
    return arr


def _partial_command(root: Path) -> str:
    """The command that left an unfinished build in ``root`` (recorded by the build job)."""
    try:
        name = (root / ".partial" / "command").read_text("utf-8").strip()
    except OSError:
        name = ""
    return name if name in ("tilde index", "tilde build") else "tilde index"


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
        """Open and validate an index directory. Nothing here reads the postings: the manifest's
        fields are range-checked, every file it lists is stat'ed against its recorded size, array
        shapes and dtypes are compared, and the per-passage arrays (O(N) in passages, 8 bytes
        each) are checked where damage would mislead: offsets span the postings and never
        decrease, the lookup array is strictly ascending, row orders lie inside the index.
        :meth:`verify` does the full scan (every posting, every digest)."""
        root = Path(path)
        if not root.is_dir():
            raise IndexFormatError(f"{root}: no such index directory")
        mpath = root / MANIFEST
        if not mpath.is_file():
            hint = ""
            if (root / ".partial").exists():
                command = _partial_command(root)
                hint = f" (an unfinished build: re-run the same `{command}` command to resume)"
            elif (root / "expanded.jsonl.partial").exists() or (root / "expanded.jsonl").exists():
                hint = " (an unfinished `tilde build`: re-run the same command to resume)"
            raise IndexFormatError(f"{root}: no {MANIFEST}; not a tilde index{hint}")
        try:
            text = mpath.read_text("utf-8")
        except UnicodeDecodeError as exc:
            raise IndexFormatError(f"{mpath}: manifest is not UTF-8 text ({exc})") from None
        m = Manifest.from_json(text, str(mpath))
        for rel, entry in (m.files or {}).items():
            fp = root / rel
            try:
                size = fp.stat().st_size
            except OSError:
                raise IndexFormatError(f"{fp}: missing (listed in {MANIFEST}); the index is incomplete or damaged") \
                    from None
            if size != entry["size"]:
                raise IndexFormatError(
                    f"{fp}: {size} bytes, {MANIFEST} says {entry['size']}; the file is damaged (truncated or replaced)"
                )
        n, p = m.num_passages, m.num_postings
        offsets = _load(root / OFFSETS, np.int64, (n + 1,), mmap)
        tokens = _load(root / TOKENS, m.token_dtype, (p,), mmap)
        weights = _load(root / WEIGHTS, m.weight_dtype, (p,), mmap)
        if offsets[0] != 0 or offsets[-1] != p:
            raise IndexFormatError(
                f"{root / OFFSETS}: offsets do not span the postings (0..{p}); the index is damaged"
            )
        if n > 1 and bool(np.any(offsets[1:] < offsets[:-1])):
            row = int(np.flatnonzero(offsets[1:] < offsets[:-1])[0])
            raise IndexFormatError(
                f"{root / OFFSETS}: offsets decrease at row {row} ({int(offsets[row])} > {int(offsets[row + 1])}); "
                f"the index is damaged"
            )
        if m.docid_kind == "range":
            return cls(root, m, offsets, tokens, weights, None, None, None)
        id_dtype = np.int64 if m.docid_kind == "int" else np.dtype("S1")
        docids = _load(root / DOCIDS, id_dtype, (n,), mmap)
        order = None
        sorted_ids = docids
        sorted_name = DOCIDS
        if not m.docids_sorted:
            sorted_ids = _load(root / DOCIDS_SORTED, docids.dtype, (n,), mmap)
            order = _load(root / DOCIDS_ORDER, np.int64, (n,), mmap)
            sorted_name = DOCIDS_SORTED
            if n and (int(order.min()) < 0 or int(order.max()) >= n):
                raise IndexFormatError(
                    f"{root / DOCIDS_ORDER}: row numbers outside 0..{n - 1}; the index is damaged"
                )
        if n > 1 and not bool(np.all(sorted_ids[1:] > sorted_ids[:-1])):
            raise IndexFormatError(
                f"{root / sorted_name}: docid lookup array is not strictly ascending; the index is damaged"
            )
        return cls(root, m, offsets, tokens, weights, docids, sorted_ids, order)

    def __len__(self) -> int:
        return self.manifest.num_passages

    @cached_property
    def weight_table(self) -> np.ndarray:
        """float32 value of every possible stored weight code: the kernel reads weights through
        it, so float16 and uint8 indexes share one scoring loop."""
        if self.manifest.weight_dtype == "float16":
            table = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
            # Stored weights are ReLU outputs: a negative or non-finite one is damage. Mapping those
            # codes to NaN lets the kernels notice them (a NaN sum) at no cost per posting.
            table[(table < 0) | ~np.isfinite(table)] = np.nan
            return table
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

    def verify(self, checksums: bool = True) -> list[str]:
        """Full O(N + P) scan (``tilde index verify``): every listed file's size and digest, then
        every invariant of every array and of the stored tokenizer. Raises
        :class:`IndexFormatError` naming the file at the first problem; returns notes (e.g. an
        index written before tilde recorded digests)."""
        notes: list[str] = []
        root, m = self.path, self.manifest
        if m.files is None:
            notes.append(f"{MANIFEST} lists no file digests (written by an older tilde): arrays checked, not digests")
        elif checksums:
            for rel, entry in m.files.items():
                fp = root / rel
                if not fp.is_file():
                    raise IndexFormatError(f"{fp}: missing (listed in {MANIFEST}); the index is incomplete or damaged")
                if fp.stat().st_size != entry["size"]:
                    raise IndexFormatError(f"{fp}: {fp.stat().st_size} bytes, {MANIFEST} says {entry['size']}")
                if file_digest(fp) != entry[HASH]:
                    raise IndexFormatError(
                        f"{fp}: contents differ from the {HASH} digest in {MANIFEST}; the file is damaged"
                    )
        off = np.asarray(self.offsets)
        p = m.num_postings
        if off.size and (off[0] != 0 or off[-1] != p or np.any(np.diff(off) < 0)):
            raise IndexFormatError(f"{root / OFFSETS}: offsets are not monotonic from 0 to {p}")
        self._verify_postings(off)
        n = len(self)
        if self.docids is not None:
            ids = np.asarray(self.docids)
            if ids.dtype.kind == "i" and n and int(ids.min()) < 0:
                raise IndexFormatError(f"{root / DOCIDS}: negative docid")
            if self.docids_order is None:
                if n > 1 and np.any(ids[1:] <= ids[:-1]):
                    raise IndexFormatError(f"{root / DOCIDS}: docids not strictly ascending (manifest says sorted)")
            else:
                order = np.asarray(self.docids_order)
                seen = np.zeros(n, dtype=np.bool_)
                if n and (int(order.min()) < 0 or int(order.max()) >= n):
                    raise IndexFormatError(f"{root / DOCIDS_ORDER}: row numbers outside 0..{n - 1}")
                seen[order] = True
                if not np.all(seen):
                    raise IndexFormatError(f"{root / DOCIDS_ORDER}: not a permutation of the rows")
                ds = np.asarray(self.docids_sorted)
                if n > 1 and np.any(ds[1:] <= ds[:-1]):
                    raise IndexFormatError(f"{root / DOCIDS_SORTED}: not strictly ascending")
                if not np.array_equal(ids[order], ds):
                    raise IndexFormatError(
                        f"{root / DOCIDS_SORTED}: disagrees with {DOCIDS} reordered by {DOCIDS_ORDER}"
                    )
        tok_path = root / TOKENIZER
        if tok_path.is_file():
            from tilde.text import TextProcessor

            try:
                text = TextProcessor.load(tok_path)
                vocab_size, vocab_sha = text.vocab_size, text.vocab_hash
            except Exception as exc:  # tokenizers raises its own exception type
                raise IndexFormatError(f"{tok_path}: not a loadable tokenizer ({exc})") from None
            self.check_tokenizer(vocab_sha, vocab_size, where=str(tok_path))
        else:
            notes.append(f"no {TOKENIZER} stored: queries need --tokenizer")
        return notes

    def _verify_postings(self, off: np.ndarray, block: int = 1 << 24) -> None:
        """Tokens strictly increasing within each row and below the vocabulary size, weights
        finite and >= 0: in blocks of whole rows (~16M postings), so that verifying an MS MARCO
        index needs a few hundred MB, not a copy of the postings."""
        root, vocab, n = self.path, self.manifest.vocab_size, len(self)
        f16 = self.weights.dtype == np.float16
        row = 0
        while row < n:
            end = int(np.searchsorted(off, off[row] + block, side="right")) - 1
            end = min(max(end, row + 1), n)
            lo, hi = int(off[row]), int(off[end])
            if hi > lo:
                t = np.asarray(self.tokens[lo:hi]).astype(np.int64)
                if int(t.max()) >= vocab:
                    at = self._row_of(lo + int(np.argmax(t >= vocab)))
                    raise IndexFormatError(
                        f"{root / TOKENS}: token id {int(t.max())} beyond the vocabulary ({vocab}), row {at}"
                    )
                bad = np.diff(t) <= 0
                starts = off[row + 1 : end] - lo
                bad[starts[(starts > 0) & (starts < t.size)] - 1] = False  # row boundaries may go down
                if np.any(bad):
                    at = self._row_of(lo + int(np.argmax(bad)) + 1)
                    raise IndexFormatError(f"{root / TOKENS}: token ids not strictly increasing within row {at}")
                if f16:
                    w = np.asarray(self.weights[lo:hi])
                    badw = ~np.isfinite(w) | (w < 0)
                    if np.any(badw):
                        at = self._row_of(lo + int(np.argmax(badw)))
                        raise IndexFormatError(f"{root / WEIGHTS}: negative or non-finite weight in row {at}")
            row = end

    def _row_of(self, posting: int) -> int:
        """The row whose postings range holds ``posting``."""
        return int(np.searchsorted(np.asarray(self.offsets), posting, side="right")) - 1

    def _safe_docid(self, row: int) -> str:
        try:
            return repr(self.docid(row))
        except (ValueError, IndexError):
            return "unreadable"

    def damage(self, rows: np.ndarray, what: str) -> IndexFormatError:
        """The error for a kernel that refused these candidate ``rows`` (``what``: its message):
        finds the first bad row and names the file that is damaged. Only runs after a refusal."""
        root, n, p = self.path, len(self), self.manifest.num_postings
        vocab = self.manifest.vocab_size
        table = self.weight_table
        hint = f"; the index is damaged (run `tilde index verify {root}`, then rebuild it)"
        for r in np.asarray(rows, dtype=np.int64).tolist():
            if r < 0:
                continue
            if r >= n:
                return IndexFormatError(f"{root / DOCIDS_ORDER}: docid lookup gave row {r}, outside 0..{n - 1}{hint}")
            lo, hi = int(self.offsets[r]), int(self.offsets[r + 1])
            if not 0 <= lo <= hi <= p:
                return IndexFormatError(f"{root / OFFSETS}: row {r} spans [{lo}, {hi}), outside 0..{p}{hint}")
            t = np.asarray(self.tokens[lo:hi]).astype(np.int64)
            if t.size and (int(t.max()) >= vocab or np.any(np.diff(t) <= 0)):
                return IndexFormatError(
                    f"{root / TOKENS}: row {r} (docid {self._safe_docid(r)}) holds token ids that are not strictly "
                    f"increasing or not below the vocabulary size {vocab}{hint}"
                )
            c = np.asarray(self.weight_codes[lo:hi]).astype(np.int64)
            if c.size and (int(c.max()) >= table.size or not np.all(np.isfinite(table[np.minimum(c, table.size - 1)]))):
                return IndexFormatError(
                    f"{root / WEIGHTS}: row {r} (docid {self._safe_docid(r)}) holds a negative or non-finite "
                    f"weight{hint}"
                )
        return IndexFormatError(f"{root}: {what}{hint}")
