"""The learned weights as an in-process first stage: an inverted index of a TILDEv2/impact index.

A tilde index stores postings per passage (``offsets``/``tokens``/``weights``: row -> tokens),
which is what re-ranking needs. Retrieval needs the transpose, token -> rows; this module builds
it with a counting sort (one pass over the postings, rows ascending within a token) and searches
it with the same accumulate/top-k kernels as the embedded BM25 engine, without Anserini's JVM.

Layout of ``<index>/inverted/`` (written by ``tilde build``, or :func:`write_inverted_index`)::

    manifest.json    format, counts, the digests of the index arrays it was built from, its own files
    indptr.npy       int64 [V+1]   token t's postings are [indptr[t], indptr[t+1])
    rows.npy         int32 [P']    passage row of each posting, ascending within a token
    codes.npy        uint16|uint8 [P']   the index's own weight codes (float16 bits, or uint8)

Keeping the index's codes (not float32 weights) makes it 6 bytes a posting, and the scores the
re-ranker's: the query side is tokenizer-only (WordPiece ids, stop ids dropped, repeats kept, as
TILDEv2 and OpenSearch's neural-sparse "doc-only" mode), and a passage scores the float64 sum
of its weights for the query tokens, exactly the ``tokens``-mode TILDEv2 score. With
``quantization=F`` the weights are ``round(F * weight)`` first, as ``tilde export anserini``
writes them, so the scores are the Lucene impact index's integers. Postings of weight 0 are left
out (they add nothing to a score). When no current ``inverted/`` is stored, :meth:`ImpactIndex.load`
inverts the postings in memory (12 s for the 110M postings of 1M passages on 2 shared cores,
measured in ``benchmarks/first_stage_impact.py``; opening a stored one takes 0.3 s).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from tilde import __version__
from tilde.first_stage.kernel import accumulate_codes, top_k
from tilde.index.format import HASH, IndexFormatError, file_digest
from tilde.index.reader import TildeIndex
from tilde.io import RunEntry, atomic_path

logger = logging.getLogger(__name__)

__all__ = ["INVERTED_DIR", "ImpactIndex", "InvertedArrays", "invert_postings", "write_inverted_index"]

INVERTED_DIR = "inverted"
INVERTED_FORMAT = "tilde-inverted"
INVERTED_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDPTR, ROWS, CODES = "indptr.npy", "rows.npy", "codes.npy"
_SOURCE_FILES = ("offsets.npy", "tokens.npy", "weights.npy")


@dataclass(frozen=True)
class InvertedArrays:
    indptr: np.ndarray  # int64 [V+1]
    rows: np.ndarray  # int32 [P']
    codes: np.ndarray  # the index's weight codes [P']

    @property
    def num_postings(self) -> int:
        return int(self.rows.size)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _invert(offsets: np.ndarray, tokens: np.ndarray, codes: np.ndarray, keep: np.ndarray,
            vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Counting sort of the forward postings by token; ``keep[code]`` says which postings stay.
    Returns (indptr, rows, codes, status): status -1 for a token id beyond the vocabulary or a
    code beyond ``keep`` (damage), else 0."""
    n_rows = offsets.shape[0] - 1
    n_codes = keep.shape[0]
    counts = np.zeros(vocab_size + 1, dtype=np.int64)
    for j in range(tokens.shape[0]):
        t = tokens[j]
        c = codes[j]
        if t >= vocab_size or c >= n_codes:
            return counts, np.zeros(0, np.int32), codes[:0].copy(), -1
        if keep[c]:
            counts[t + 1] += 1
    indptr = np.cumsum(counts)
    cursor = indptr[:-1].copy()
    out_rows = np.empty(indptr[-1], dtype=np.int32)
    out_codes = np.empty(indptr[-1], dtype=codes.dtype)
    for r in range(n_rows):
        for j in range(offsets[r], offsets[r + 1]):
            c = codes[j]
            if keep[c]:
                t = tokens[j]
                pos = cursor[t]
                out_rows[pos] = r
                out_codes[pos] = c
                cursor[t] = pos + 1
    return indptr, out_rows, out_codes, 0


def invert_postings(index: TildeIndex) -> InvertedArrays:
    """The token -> rows transpose of ``index``'s postings (weight-0 postings left out)."""
    if len(index) >= 2**31:
        raise IndexFormatError(f"{index.path}: {len(index)} passages; the inverted index holds int32 rows")
    table = index.weight_table
    bad = ~np.isfinite(table) | (table < 0)
    keep = (table > 0) & ~bad
    codes = np.asarray(index.weight_codes)
    if index.manifest.weight_dtype == "float16" and codes.size:
        # A damaged weight (negative or non-finite) is refused, as the re-ranking kernel refuses it.
        if bool(np.any(bad[codes])):
            raise IndexFormatError(f"{index.path / 'weights.npy'}: negative or non-finite weights; the index is "
                                   f"damaged (run `tilde index verify {index.path}`)")
    indptr, rows, out_codes, status = _invert(np.asarray(index.offsets), np.asarray(index.tokens), codes,
                                              keep, int(index.manifest.vocab_size))
    if status != 0:
        raise IndexFormatError(f"{index.path / 'tokens.npy'}: token ids beyond the vocabulary "
                               f"({index.manifest.vocab_size}); the index is damaged")
    return InvertedArrays(indptr, rows, out_codes)


def _source_identity(index: TildeIndex) -> dict[str, Any]:
    """What the inverted index was derived from: the index arrays' digests (from its manifest),
    else (an index without recorded digests) their sizes and modification times."""
    m = index.manifest
    ident: dict[str, Any] = {"num_passages": m.num_passages, "num_postings": m.num_postings,
                             "weight_dtype": m.weight_dtype, "weight_scale": m.weight_scale}
    for name in _SOURCE_FILES:
        entry = (m.files or {}).get(name)
        if entry is not None:
            ident[name] = entry[HASH]
        else:
            st = (index.path / name).stat()
            ident[name] = f"size={st.st_size},mtime_ns={st.st_mtime_ns}"
    return ident


def write_inverted_index(index: TildeIndex | str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                         ) -> tuple[Path, float]:
    """Invert ``index`` into ``output`` (default ``<index>/inverted``), atomically: the directory
    appears complete or not at all, and replaces an older one only once written. Returns
    (path, seconds)."""
    idx = index if isinstance(index, TildeIndex) else TildeIndex.open(index)
    out = Path(output) if output is not None else idx.path / INVERTED_DIR
    t0 = time.perf_counter()
    arrays = invert_postings(idx)
    old: Path | None = None
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for name, arr in ((INDPTR, arrays.indptr), (ROWS, arrays.rows), (CODES, arrays.codes)):
            np.save(tmp / name, arr, allow_pickle=False)
        manifest = {
            "format": INVERTED_FORMAT, "format_version": INVERTED_FORMAT_VERSION, "tilde_version": __version__,
            "num_docs": len(idx), "num_terms": int(arrays.indptr.size - 1), "num_postings": arrays.num_postings,
            "codes_dtype": str(arrays.codes.dtype), "source": _source_identity(idx),
            "files": {name: {"size": (tmp / name).stat().st_size, HASH: file_digest(tmp / name)}
                      for name in (INDPTR, ROWS, CODES)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".old-{tmp.name}")
            os.replace(out, old)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    seconds = time.perf_counter() - t0
    logger.info("inverted %s: %d postings in %.2f s", out, arrays.num_postings, seconds)
    return out, seconds


def read_inverted_index(folder: str | os.PathLike[str], index: TildeIndex, mmap: bool = True,
                        checksums: bool = False) -> InvertedArrays:
    """Open a stored inverted index of ``index``; :class:`IndexFormatError` when it is missing,
    damaged, or was built from other postings than ``index`` holds now (a rebuilt index)."""
    path = Path(folder)
    try:
        data = json.loads((path / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path}: no readable inverted-index manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != INVERTED_FORMAT \
            or data.get("format_version") != INVERTED_FORMAT_VERSION:
        raise IndexFormatError(f"{path}: not a tilde inverted index of format version {INVERTED_FORMAT_VERSION}")
    if data.get("source") != _source_identity(index):
        raise IndexFormatError(f"{path}: built from other postings than {index.path} holds now (stale)")
    files = data.get("files") or {}
    for name in (INDPTR, ROWS, CODES):
        entry = files.get(name) or {}
        fp = path / name
        if not fp.is_file() or fp.stat().st_size != entry.get("size"):
            raise IndexFormatError(f"{fp}: missing or not the size its manifest records (damaged)")
        if checksums and file_digest(fp) != entry.get(HASH):
            raise IndexFormatError(f"{fp}: contents differ from the {HASH} digest in its manifest (damaged)")
    mode: Any = "r" if mmap else None
    try:
        indptr, rows, codes = (np.load(path / n, mmap_mode=mode, allow_pickle=False) for n in (INDPTR, ROWS, CODES))
    except (OSError, ValueError, EOFError) as exc:
        raise IndexFormatError(f"{path}: damaged inverted index ({exc})") from None
    v, p = int(index.manifest.vocab_size), int(data.get("num_postings", -1))
    if (indptr.shape != (v + 1,) or indptr.dtype != np.int64 or rows.shape != (p,) or rows.dtype != np.int32
            or codes.shape != (p,) or codes.dtype != index.weight_codes.dtype or int(indptr[0]) != 0
            or int(indptr[-1]) != p):
        raise IndexFormatError(f"{path}: arrays do not match its manifest or the index (damaged)")
    return InvertedArrays(indptr, rows, codes)


class ImpactIndex:
    """In-process impact search over a tilde index (its stored weights as a first stage).

    >>> impact = ImpactIndex.load("msmarco.index")
    >>> impact.search("what is a tilde", k=1000)   # [RunEntry(docid, score), ...], best first
    """

    engine = "impact"

    def __init__(self, index: TildeIndex, arrays: InvertedArrays, text: Any = None,
                 quantization: float | None = None, stored: bool = False) -> None:
        self.index = index
        self.path = index.path
        self.arrays = arrays
        self.stored = stored  # True: read from <index>/inverted, False: inverted in memory
        self.quantization = quantization
        if text is None:
            from tilde.text import TextProcessor

            if not index.tokenizer_path.is_file():
                raise IndexFormatError(f"{index.path}: no tokenizer.json stored; pass the query tokenizer (text=)")
            text = TextProcessor.load(index.tokenizer_path)
            index.check_tokenizer(text.vocab_hash, text.vocab_size)
        self.text = text
        table = index.weight_table.astype(np.float64)
        if quantization is not None:
            from tilde.export.quantize import quantize

            # The export's integers: round(factor * weight); those rounding to 0 are not exported.
            table = quantize(np.nan_to_num(table, nan=0.0), quantization).astype(np.float64)
        self.table = table

    @classmethod
    def load(cls, index: TildeIndex | str | os.PathLike[str], *, text: Any = None,
             quantization: float | None = None, use_stored: bool = True) -> ImpactIndex:
        """Open ``index`` (a directory or an open :class:`TildeIndex`) for impact search: its
        ``inverted/`` when stored and current, else the postings inverted in memory."""
        idx = index if isinstance(index, TildeIndex) else TildeIndex.open(index)
        folder = idx.path / INVERTED_DIR
        if use_stored and (folder / MANIFEST).is_file():
            try:
                return cls(idx, read_inverted_index(folder, idx), text, quantization, stored=True)
            except IndexFormatError as exc:
                logger.warning("%s; inverting the postings in memory instead", exc)
        t0 = time.perf_counter()
        arrays = invert_postings(idx)
        logger.info("inverted %s in memory: %d postings in %.2f s", idx.path, arrays.num_postings,
                    time.perf_counter() - t0)
        return cls(idx, arrays, text, quantization)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def bytes_in_memory(self) -> int:
        a = self.arrays
        return int(a.indptr.nbytes + a.rows.nbytes + a.codes.nbytes)

    def warmup(self) -> None:
        """Load the compiled kernel (numba cache) once."""
        self.search_ids(np.zeros(1, dtype=np.int64), 1)

    def term_ids(self, query: str) -> np.ndarray:
        """The re-ranker's query ids: WordPiece, stop ids dropped, repeats kept."""
        return np.asarray(self.text.query_ids(query), dtype=np.int64)

    def search_ids(self, term_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of the top ``k`` passages (float64 scores; ties: lower row first)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        ids = np.asarray(term_ids, dtype=np.int64)
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        a = self.arrays
        try:
            rows, scores = accumulate_codes(a.codes, self.table, a.rows, a.indptr, ids, len(self.index))
        except ValueError as exc:
            raise IndexFormatError(f"{self.path / INVERTED_DIR}: {exc}; the inverted index is damaged (delete it: "
                                   f"it is rebuilt in memory, or by `tilde build`)") from None
        return top_k(rows, scores, k)

    def docids(self, rows: np.ndarray) -> list[str]:
        """External ids of ``rows`` (one gather, not one memmap read per row)."""
        ids = self.index.docids
        if ids is None:
            return [str(r) for r in np.asarray(rows).tolist()]
        picked = ids[np.asarray(rows, dtype=np.int64)].tolist()
        if ids.dtype.kind == "S":
            return [b.decode("utf-8") for b in picked]
        return [str(v) for v in picked]

    def _hits(self, term_ids: np.ndarray, k: int) -> list[RunEntry]:
        rows, scores = self.search_ids(term_ids, k)
        return [RunEntry(d, s) for d, s in zip(self.docids(rows), scores.tolist())]

    def search(self, query: str, k: int = 1000) -> list[RunEntry]:
        """The top ``k`` passages for ``query``, best first; ``[]`` when no query token is left
        (only stop words) or none is in any passage."""
        return self._hits(self.term_ids(query), k)

    def search_many(self, queries: Sequence[str], k: int = 1000, threads: int = 1) -> list[list[RunEntry]]:
        """:meth:`search` for many queries; ``threads > 1`` scores in a thread pool (the kernel
        releases the GIL)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        ids = [self.term_ids(q) for q in queries]
        if threads <= 1 or len(queries) < 2:
            return [self._hits(q, k) for q in ids]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda q: self._hits(q, k), ids))

    def search_run(self, queries: Iterable[tuple[str, str]], k: int = 1000,
                   threads: int = 1) -> dict[str, list[RunEntry]]:
        """``{qid: hits}`` for ``(qid, text)`` pairs, in input order."""
        pairs = list(queries)
        results = self.search_many([t for _, t in pairs], k=k, threads=threads)
        return {qid: hits for (qid, _), hits in zip(pairs, results)}
