"""The embedded BM25 first stage: a bm25s index directory with a tilde manifest, memory-mapped.

Layout of an index directory::

    manifest.json           format, k1/b, length normalisation, analyzer settings, counts
    docids.npy              |S<w> [N]  external id of each row (UTF-8)
    terms.npy               |S<w> [V]  the vocabulary, sorted: a term's id is its position
    data.csc.index.npy      float32 [P]  precomputed BM25 weight of each (term, doc) posting
    indices.csc.index.npy   int32 [P]    doc row of each posting, ascending within a term
    indptr.csc.index.npy    int64 [V+1]  term t's postings are [indptr[t], indptr[t+1])
    params.index.json       bm25s' own parameters file
    texts.bin               (optional) every passage's text, UTF-8, back to back ...
    text_offsets.npy        ... int64 [N+1]: row i's text is bytes [off[i], off[i+1])
    docids_order.npy        ... int64 [N]: rows in docid order (looking texts up by docid)

The texts (manifest ``extra.texts``) let ``/v1/search`` return documents; they cost what the
collection's text costs on disk (memory-mapped, so nothing in RAM until read).

The ``*.index.*`` files are bm25s' eager-score format (``bm25s.BM25.load(dir, mmap=True,
load_vocab=False)`` opens the directory), and the weights are bm25s' ``method="lucene"``
weights -- tests pin both against bm25s itself. Two parts are not bm25s', for measured reasons:

* building: ``bm25s.BM25.index`` takes the corpus as Python lists of lists (tens of GB for MS
  MARCO's 8.8M passages); this builder keeps one flat int32 array of term ids and computes the
  same weights with vectorised numpy;
* querying: bm25s' numba kernels are compiled without numba's cache, ~12 s in every new process
  (measured here), which a CLI run or a service worker should not pay; :mod:`.kernel` is the same
  accumulation, cached. Terms live in a sorted ``terms.npy`` looked up with ``searchsorted``,
  which opens instantly where bm25s' multi-million-entry ``vocab.index.json`` takes seconds.

Weights follow Lucene's BM25: ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))`` times
``tf / (tf + k1 (1 - b + b dl / avgdl))``. With ``length_norm="lucene"`` (the default) document
lengths are rounded as Lucene stores them (``SmallFloat.intToByte4``: exact below 24, then 4
significant bits) and N/avgdl count only non-empty documents, as Lucene's statistics do, so
scores and rankings follow Anserini's; ``length_norm="exact"`` is bm25s' ``method="lucene"``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tilde import __version__
from tilde.first_stage.analyzer import Analyzer
from tilde.first_stage.kernel import accumulate, top_k
from tilde.io import FormatError, RunEntry, atomic_path, read_collection

logger = logging.getLogger(__name__)

__all__ = [
    "BM25_FORMAT",
    "BM25BuildSummary",
    "BM25Index",
    "BM25IndexError",
    "BM25Manifest",
    "build_bm25_index",
    "lucene_doc_length",
    "read_bm25_manifest",
]

BM25_FORMAT = "tilde-bm25"
BM25_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DOCIDS = "docids.npy"
TERMS = "terms.npy"
DATA = "data.csc.index.npy"
INDICES = "indices.csc.index.npy"
INDPTR = "indptr.csc.index.npy"
PARAMS = "params.index.json"
TEXTS = "texts.bin"
TEXT_OFFSETS = "text_offsets.npy"
DOCIDS_ORDER = "docids_order.npy"
LENGTH_NORMS = ("lucene", "exact")
# Pyserini's defaults; MS MARCO passage "tuned" values are k1=0.82, b=0.68.
DEFAULT_K1 = 0.9
DEFAULT_B = 0.4


class BM25IndexError(ValueError):
    """A BM25 index directory is missing, damaged, of another format, or cannot be built."""


@dataclass(frozen=True)
class BM25Manifest:
    num_docs: int
    num_terms: int
    num_postings: int
    avg_doc_len: float
    k1: float
    b: float
    length_norm: str  # "lucene" | "exact"
    analyzer: dict[str, Any]
    collection: dict[str, Any]
    tilde_version: str
    bm25s_version: str
    engine: str = "tilde-embedded"  # this module's builder and kernel ...
    layout: str = "bm25s-eager-csc"  # ... over bm25s' file layout and weights
    method: str = "lucene"
    format: str = BM25_FORMAT
    format_version: int = BM25_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def read_bm25_manifest(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw manifest of a first-stage index (embedded or Lucene), checked for its format name."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise BM25IndexError(f"{index_dir}: not a BM25 index (no {MANIFEST}; build one with `tilde bm25 index`)")
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise BM25IndexError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not str(data.get("format", "")).startswith("tilde-"):
        raise BM25IndexError(f"{path}: not a tilde first-stage index manifest")
    return data


def _manifest_from(data: dict[str, Any], where: str) -> BM25Manifest:
    if data.get("format") != BM25_FORMAT:
        raise BM25IndexError(f"{where}: format {data.get('format')!r} is not an embedded BM25 index")
    if data.get("format_version") != BM25_FORMAT_VERSION:
        raise BM25IndexError(
            f"{where}: BM25 index format version {data.get('format_version')!r}; this tilde reads "
            f"version {BM25_FORMAT_VERSION}. Rebuild it with `tilde bm25 index`."
        )
    try:
        return BM25Manifest(**data)
    except TypeError as exc:
        raise BM25IndexError(f"{where}: manifest does not fit this tilde version ({exc})") from exc


def lucene_doc_length(lengths: np.ndarray) -> np.ndarray:
    """Document lengths as Lucene's BM25 sees them: ``byte4ToInt(intToByte4(len))``.

    Lucene keeps one byte of norm per document: lengths below 24 exactly, larger ones with
    4 significant bits (e.g. 60..63 all read as 60). Vectorised port of ``SmallFloat``.
    """
    n = np.asarray(lengths, dtype=np.int64)
    free = 24  # NUM_FREE_VALUES = 255 - longToInt4(Integer.MAX_VALUE)
    out = n.copy()
    big = n >= free
    v = n[big] - free
    if v.size:
        bits = np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) + 1  # number of significant bits
        shift = np.maximum(bits - 4, 0)
        # For v < 8 (bits < 4) Lucene stores v itself; otherwise the top 4 bits.
        out[big] = free + ((v >> shift) << shift)
    return out


@dataclass(frozen=True)
class BM25BuildSummary:
    output: Path
    docs: int
    terms: int
    postings: int
    bytes_on_disk: int
    seconds: float

    def format(self) -> str:
        rate = self.docs / self.seconds if self.seconds > 0 else 0.0
        return (
            f"BM25 index of {self.docs} docs, {self.terms} terms, {self.postings} postings -> {self.output} "
            f"({self.bytes_on_disk / 1e6:.1f} MB, {self.seconds:.1f} s, {rate:.0f} docs/s)"
        )


def _bm25s_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bm25s")
    except PackageNotFoundError:
        return "not installed"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _as_bytes_array(values: Sequence[bytes]) -> np.ndarray:
    # S rather than U: U stores 4 bytes per character, S one per UTF-8 byte.
    width = max((len(v) for v in values), default=1) or 1
    return np.array(values, dtype=f"S{width}")


def bm25_weights(
    term_ids: np.ndarray,
    doc_lengths: np.ndarray,
    num_terms: int,
    k1: float,
    b: float,
    length_norm: str = "lucene",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSC arrays (data, indices, indptr) of BM25 weights from the flat term ids of every document.

    ``term_ids`` holds document 0's term ids, then document 1's, ... (``doc_lengths`` says how
    many each). Pure function of arrays; memory ~ 20 bytes per token at the peak.
    """
    if length_norm not in LENGTH_NORMS:
        raise ValueError(f"length_norm must be one of {LENGTH_NORMS}, not {length_norm!r}")
    n_docs = int(doc_lengths.size)
    lengths = doc_lengths.astype(np.int64)
    doc_of = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
    # One int64 key per (term, doc) occurrence: sorting groups a term's postings in doc order,
    # which is exactly CSC order, and run lengths are the term frequencies.
    keys, tf = np.unique(term_ids.astype(np.int64) * max(n_docs, 1) + doc_of, return_counts=True)
    del doc_of
    terms = keys // max(n_docs, 1)
    docs = (keys - terms * max(n_docs, 1)).astype(np.int32)
    del keys
    df = np.bincount(terms, minlength=num_terms)
    indptr = np.zeros(num_terms + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    if length_norm == "lucene":
        # Lucene's collection statistics count only documents that have the field, i.e. at least
        # one term after analysis; bm25s counts every document.
        n_stat = int(np.count_nonzero(lengths))
        dl = lucene_doc_length(lengths)
    else:
        n_stat = n_docs
        dl = lengths
    avgdl = float(lengths.sum()) / n_stat if n_stat else 1.0
    idf = np.log1p((n_stat - df + 0.5) / (df + 0.5))
    tf_f = tf.astype(np.float64)
    norm = k1 * ((1.0 - b) + b * dl.astype(np.float64) / avgdl)
    data = (idf[terms] * tf_f / (tf_f + norm[docs])).astype(np.float32)
    return data, docs, indptr


def build_bm25_index(
    collection: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    k1: float = DEFAULT_K1,
    b: float = DEFAULT_B,
    analyzer: Analyzer | None = None,
    length_norm: str = "lucene",
    fmt: str = "auto",
    overwrite: bool = False,
    log_every: int = 1_000_000,
    store_texts: bool = True,
) -> BM25BuildSummary:
    """Analyse ``collection`` (any format :func:`tilde.io.read_collection` reads, with text) and
    write a BM25 index directory to ``output``, atomically: a crash leaves no half index.
    ``store_texts`` keeps every passage's text in the index (:meth:`BM25Index.texts`)."""
    if not (k1 >= 0 and 0 <= b <= 1):
        raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    if length_norm not in LENGTH_NORMS:
        raise ValueError(f"length_norm must be one of {LENGTH_NORMS}, not {length_norm!r}")
    analyzer = analyzer or Analyzer()
    coll = Path(collection)
    out = Path(output)
    if out.exists() and not overwrite:
        raise BM25IndexError(f"{out} already exists; pass --overwrite to replace it")
    started = time.perf_counter()

    vocab: dict[str, int] = {}
    flat = array("i")
    lengths = array("q")
    docids: list[bytes] = []
    text_offsets = array("q", [0])
    # Texts stream to a hidden file beside the output (moved into the index at the end), so
    # that they never sit in memory; any failure removes it.
    texts_tmp = out.with_name(f".tmp-texts-{os.getpid()}-{time.monotonic_ns()}.{out.name}")
    texts_f = open(texts_tmp, "wb") if store_texts else None  # noqa: SIM115 (closed in finally)
    try:
        for row, p in enumerate(read_collection(coll, fmt)):
            if p.text is None:
                raise FormatError(
                    f"{coll}:{p.line}: BM25 needs passage text, but this collection holds token ids "
                    "(expansion output); index the original text collection"
                )
            ids = [vocab.setdefault(t, len(vocab)) for t in analyzer.terms(p.text)]
            flat.extend(ids)
            lengths.append(len(ids))
            docids.append(p.pid.encode("utf-8"))
            if texts_f is not None:
                encoded = p.text.encode("utf-8")
                texts_f.write(encoded)
                text_offsets.append(text_offsets[-1] + len(encoded))
            if log_every and (row + 1) % log_every == 0:
                logger.info("analysed %d docs, %d tokens, %d terms", row + 1, len(flat), len(vocab))
        if texts_f is not None:
            texts_f.close()
        summary = _write_bm25(coll, out, vocab, flat, lengths, docids, k1, b, analyzer, length_norm, started,
                              (texts_tmp, text_offsets) if store_texts else None)
    finally:
        if texts_f is not None:
            texts_f.close()
        texts_tmp.unlink(missing_ok=True)
    return summary


def _write_bm25(
    coll: Path, out: Path, vocab: dict[str, int], flat: array, lengths: array,  # type: ignore[type-arg]
    docids: list[bytes], k1: float, b: float, analyzer: Analyzer, length_norm: str, started: float,
    texts: tuple[Path, array] | None,  # type: ignore[type-arg]
) -> BM25BuildSummary:
    """Weights and files of an analysed collection (the second half of :func:`build_bm25_index`)."""
    if not docids:
        raise BM25IndexError(f"{coll}: the collection is empty")
    docid_arr = _as_bytes_array(docids)
    del docids
    uniq, counts = np.unique(docid_arr, return_counts=True)
    if uniq.size != docid_arr.size:
        dups = [d.decode() for d in uniq[counts > 1][:5].tolist()]
        raise BM25IndexError(f"{coll}: {int((counts > 1).sum())} docids occur more than once, e.g. {dups}")
    del uniq, counts

    # Renumber terms in sorted order so that a term's id is its position in terms.npy.
    term_list = sorted(vocab, key=lambda t: t.encode("utf-8"))
    remap = np.empty(len(vocab), dtype=np.int32)
    remap[np.fromiter((vocab[t] for t in term_list), dtype=np.int64, count=len(term_list))] = np.arange(
        len(term_list), dtype=np.int32
    )
    terms_arr = _as_bytes_array([t.encode("utf-8") for t in term_list])
    del vocab, term_list
    term_ids = remap[np.frombuffer(flat, dtype=np.int32)] if len(flat) else np.zeros(0, np.int32)
    del flat
    doc_lengths = np.frombuffer(lengths, dtype=np.int64) if len(lengths) else np.zeros(0, np.int64)
    data, indices, indptr = bm25_weights(term_ids, doc_lengths, int(terms_arr.size), k1, b, length_norm)
    del term_ids

    st = coll.stat()
    manifest = BM25Manifest(
        num_docs=int(docid_arr.size),
        num_terms=int(terms_arr.size),
        num_postings=int(data.size),
        avg_doc_len=float(doc_lengths.mean()),
        k1=float(k1),
        b=float(b),
        length_norm=length_norm,
        analyzer=analyzer.to_dict(),
        collection={"path": str(coll.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
        tilde_version=__version__,
        bm25s_version=_bm25s_version(),
        # In extra: an older tilde still opens the index (it ignores the texts).
        extra={"texts": {"file": TEXTS, "offsets": TEXT_OFFSETS, "order": DOCIDS_ORDER}} if texts else {},
    )
    params = {
        "k1": float(k1), "b": float(b), "delta": 0.5, "method": "lucene", "idf_method": "lucene",
        "dtype": "float32", "int_dtype": "int32", "num_docs": manifest.num_docs,
        "version": manifest.bm25s_version, "backend": "numba",
    }
    old: Path | None = None
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for name, arr in ((DOCIDS, docid_arr), (TERMS, terms_arr), (DATA, data), (INDICES, indices), (INDPTR, indptr)):
            np.save(tmp / name, arr, allow_pickle=False)
        if texts is not None:
            os.replace(texts[0], tmp / TEXTS)
            np.save(tmp / TEXT_OFFSETS, np.frombuffer(texts[1], dtype=np.int64), allow_pickle=False)
            np.save(tmp / DOCIDS_ORDER, np.argsort(docid_arr, kind="stable").astype(np.int64), allow_pickle=False)
        (tmp / PARAMS).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        # The manifest last: a directory without one is never taken for an index.
        (tmp / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        if out.exists():  # overwrite: move the old index aside only once the new one is complete
            old = out.with_name(f".old-{tmp.name}")
            os.replace(out, old)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    summary = BM25BuildSummary(out, manifest.num_docs, manifest.num_terms, manifest.num_postings,
                               _dir_bytes(out), time.perf_counter() - started)
    logger.info(summary.format())
    return summary


def _load_texts(path: Path, n: int, mode: Literal["r"] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        offsets = np.load(path / TEXT_OFFSETS, mmap_mode=mode, allow_pickle=False)
        order = np.load(path / DOCIDS_ORDER, mmap_mode=mode, allow_pickle=False)
        size = (path / TEXTS).stat().st_size
        data = np.memmap(path / TEXTS, dtype=np.uint8, mode="r") if size and mode else \
            np.fromfile(path / TEXTS, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise BM25IndexError(f"{path}: damaged BM25 texts ({exc})") from exc
    if (offsets.shape != (n + 1,) or offsets.dtype != np.int64 or order.shape != (n,) or order.dtype != np.int64
            or int(offsets[0]) != 0 or int(offsets[-1]) != size):
        raise BM25IndexError(f"{path}: texts do not match the manifest (damaged or mixed index)")
    return data, offsets, order


class BM25Index:
    """A memory-mapped embedded BM25 index.

    >>> bm25 = BM25Index.load("msmarco.bm25")
    >>> bm25.search("what is a tilde", k=1000)   # [RunEntry(docid, score), ...], best first
    """

    def __init__(
        self,
        path: Path,
        manifest: BM25Manifest,
        docids: np.ndarray,
        terms: np.ndarray,
        data: np.ndarray,
        indices: np.ndarray,
        indptr: np.ndarray,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.analyzer = Analyzer.from_dict(manifest.analyzer)
        self._docids = docids
        self._terms = terms
        self._csc = (data, indices, indptr)
        self._texts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (bytes, offsets, docid order)
        self._sorted_docids: np.ndarray | None = None

    @classmethod
    def load(cls, index_dir: str | os.PathLike[str], mmap: bool = True) -> BM25Index:
        """Open an index directory; arrays are memory-mapped (``mmap=False`` reads them into RAM)."""
        path = Path(index_dir)
        manifest = _manifest_from(read_bm25_manifest(path), str(path / MANIFEST))
        mode: Literal["r"] | None = "r" if mmap else None
        try:
            arrays = [np.load(path / name, mmap_mode=mode, allow_pickle=False)
                      for name in (DOCIDS, TERMS, DATA, INDICES, INDPTR)]
        except (OSError, ValueError) as exc:
            raise BM25IndexError(f"{path}: damaged BM25 index ({exc})") from exc
        docids, terms, data, indices, indptr = arrays
        n, v, p = manifest.num_docs, manifest.num_terms, manifest.num_postings
        if (docids.shape != (n,) or terms.shape != (v,) or indptr.shape != (v + 1,) or data.shape != (p,)
                or indices.shape != (p,) or data.dtype != np.float32 or indices.dtype != np.int32
                or indptr.dtype != np.int64 or (v and int(indptr[-1]) != p)):
            raise BM25IndexError(f"{path}: arrays do not match the manifest (damaged or mixed index)")
        index = cls(path, manifest, docids, terms, data, indices, indptr)
        if manifest.extra.get("texts"):
            index._texts = _load_texts(path, n, mode)
        return index

    def __len__(self) -> int:
        return self.manifest.num_docs

    @property
    def bytes_on_disk(self) -> int:
        return _dir_bytes(self.path)

    def warmup(self) -> None:
        """Load the compiled kernel (numba cache) and touch the arrays once."""
        if self.manifest.num_terms:
            self.search_ids(np.zeros(1, dtype=np.int64), 1)

    def term_ids(self, query: str) -> np.ndarray:
        """Vocabulary ids of the query's analysed terms (repeats kept; unknown terms dropped)."""
        terms = self.analyzer.terms(query)
        if not terms or self._terms.size == 0:
            return np.zeros(0, dtype=np.int64)
        encoded = [t.encode("utf-8") for t in terms]
        # A term longer than the array's width is truncated here, then rejected by the comparison.
        pos = np.searchsorted(self._terms, np.array(encoded, dtype=self._terms.dtype))
        pos = np.minimum(pos, self._terms.size - 1)
        return np.array([p for p, t in zip(pos.tolist(), encoded) if self._terms[p] == t], dtype=np.int64)

    def docid(self, row: int) -> str:
        return bytes(self._docids[row]).decode("utf-8")

    @property
    def has_texts(self) -> bool:
        """True when the index stores the passages' texts (built with ``store_texts``)."""
        return self._texts is not None

    def text(self, row: int) -> str:
        """The stored text of ``row``; :class:`BM25IndexError` when the index keeps no texts."""
        if self._texts is None:
            raise BM25IndexError(f"{self.path}: this BM25 index stores no texts (rebuild it with a current tilde)")
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} outside 0..{len(self) - 1}")
        data, offsets, _ = self._texts
        lo, hi = int(offsets[row]), int(offsets[row + 1])
        return bytes(data[lo:hi]).decode("utf-8")

    def rows(self, docids: Sequence[str]) -> np.ndarray:
        """Rows of ``docids`` (int64), -1 for ids not in the index (needs the stored docid order)."""
        if self._texts is None:
            raise BM25IndexError(f"{self.path}: this BM25 index stores no texts (rebuild it with a current tilde)")
        n = len(self)
        if not len(docids) or not n:
            return np.full(len(docids), -1, dtype=np.int64)
        if self._sorted_docids is None:  # once: the ids in sorted order (a few bytes a row)
            self._sorted_docids = np.asarray(self._docids[np.asarray(self._texts[2])])
        sorted_ids = self._sorted_docids
        encoded = [str(d).encode("utf-8") for d in docids]
        fits = np.array([len(e) <= sorted_ids.dtype.itemsize and not e.endswith(b"\x00") for e in encoded])
        keys = np.array(encoded, dtype=sorted_ids.dtype)  # too long ones are truncated, then refused by ``fits``
        pos = np.minimum(np.searchsorted(sorted_ids, keys), n - 1)
        hit = fits & (sorted_ids[pos] == keys)
        return np.where(hit, np.asarray(self._texts[2])[pos], -1).astype(np.int64)

    def texts(self, docids: Sequence[str]) -> list[str | None]:
        """The stored text of each of ``docids`` (None for an id not in the index), in order."""
        return [self.text(int(r)) if r >= 0 else None for r in self.rows(docids).tolist()]

    def search_ids(self, term_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of the top ``k`` documents for already analysed term ids."""
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        if term_ids.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        data, indices, indptr = self._csc
        rows, scores = accumulate(data, indices, indptr, term_ids, self.manifest.num_docs)
        return top_k(rows, scores, k)

    def _hits(self, term_ids: np.ndarray, k: int) -> list[RunEntry]:
        rows, scores = self.search_ids(term_ids, k)
        # One gather and one tolist: per-row indexing of a memmap costs ~1.5 us a row.
        names = self._docids[rows].tolist()
        return [RunEntry(d.decode("utf-8"), s) for d, s in zip(names, scores.tolist())]

    def search(self, query: str, k: int = 1000) -> list[RunEntry]:
        """The top ``k`` documents for ``query``, best first (ties: collection order);
        ``[]`` when no query term is in the index."""
        return self._hits(self.term_ids(query), k)

    def search_many(self, queries: Sequence[str], k: int = 1000, threads: int = 1) -> list[list[RunEntry]]:
        """:meth:`search` for many queries; with ``threads > 1`` the scoring runs in a thread pool
        (the kernel releases the GIL)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        ids = [self.term_ids(q) for q in queries]
        if threads <= 1 or len(queries) < 2:
            return [self._hits(q, k) for q in ids]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda q: self._hits(q, k), ids))

    def search_run(
        self, queries: Iterable[tuple[str, str]], k: int = 1000, threads: int = 1
    ) -> dict[str, list[RunEntry]]:
        """``{qid: hits}`` for ``(qid, text)`` pairs, in input order (queries without hits map to ``[]``)."""
        pairs = list(queries)
        results = self.search_many([text for _, text in pairs], k=k, threads=threads)
        return {qid: hits for (qid, _), hits in zip(pairs, results)}
