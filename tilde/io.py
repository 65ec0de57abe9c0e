"""Readers and writers for the IR files the pipeline consumes and produces.

Covered formats:

* collections: MS MARCO ``pid<TAB>text`` TSV, and JSONL in three flavours -- the expansion
  job's ``{"pid", "psg": [token ids]}``, Pyserini's ``{"id", "contents"}`` and BEIR's
  ``{"_id", "title", "text"}``;
* queries: ``qid<TAB>text`` TSV or JSONL (``qid``/``_id``/``id`` + ``query``/``text``);
* qrels: TREC ``qid iter docid rel``;
* runs: TREC ``qid Q0 docid rank score tag`` and MS MARCO ``qid<TAB>docid<TAB>rank``.

Conventions shared by every reader:

* a path ending in ``.gz`` is (de)compressed transparently;
* files are read as bytes and decoded as strict UTF-8 line by line, so that an invalid byte is
  reported with its line number instead of being silently replaced; a UTF-8 byte-order mark at
  the start of the file is ignored;
* blank lines (empty or ASCII whitespace only) are skipped, and a trailing ``\\r`` (Windows line
  ends) is stripped;
* every malformed input raises :class:`FormatError`, whose message starts with ``path:line:``
  and says what was expected.

Writers are atomic: they write a temporary file in the target's directory and ``os.replace`` it
onto the target, so a crash or an exception never leaves a truncated file behind, nor clobbers
an existing one.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

__all__ = [
    "FormatError",
    "Passage",
    "Query",
    "RunEntry",
    "atomic_path",
    "atomic_write_text",
    "collection_identity",
    "count_lines",
    "iter_jsonl",
    "open_text",
    "read_collection",
    "read_qrels",
    "read_queries",
    "read_run",
    "write_jsonl",
    "write_run",
]

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

_BOM = b"\xef\xbb\xbf"
# Compression level 6 is gzip's own CLI default: level 9 (Python's default) is several times
# slower to write for a size gain of a few percent on text.
_GZIP_LEVEL = 6
_COLLECTION_FORMATS = ("auto", "tsv", "jsonl")
_RUN_FORMATS = ("auto", "trec", "msmarco")


class FormatError(ValueError):
    """A malformed input file.

    ``FormatError("msg", path=p, line=n)`` renders as ``"p:n: msg"``; other modules may also
    raise it with a plain, already formatted message. ``path``, ``line`` and ``reason`` (the
    message without the location) are kept as attributes for callers that want them.
    """

    def __init__(self, message: str, *, path: StrPath | None = None, line: int | None = None):
        self.path: str | None = None if path is None else os.fspath(path)
        self.line = line
        self.reason = message
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            message = f"{where}: {message}"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Passage:
    """One collection entry. Exactly one of ``text`` / ``ids`` is set by :func:`read_collection`.

    ``pid`` is always a string, even for MS MARCO's numeric pids (conversion happens later).
    ``line`` is only provenance for error messages, so it takes no part in equality or hashing.
    """

    pid: str
    text: str | None = None
    ids: tuple[int, ...] | None = None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Query:
    qid: str
    text: str
    line: int = field(default=0, compare=False)  # 1-based line in the queries file (0: not from a file)


class RunEntry(NamedTuple):
    docid: str
    score: float


# --------------------------------------------------------------------------------------------
# opening and line iteration


class _OwningGzipFile(gzip.GzipFile):
    """A GzipFile wrapped around a file object that it also closes.

    Writing through ``fileobj`` (instead of ``gzip.open(path)``) lets us put ``mtime=0`` and an
    empty file name in the gzip header, so the same content always gives the same bytes -- the
    header would otherwise hold the time and the *temporary* name used by atomic writes.
    """

    def __init__(self, raw: IO[bytes], mode: str) -> None:
        super().__init__(filename="", mode=mode, compresslevel=_GZIP_LEVEL, fileobj=raw, mtime=0)
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def _is_gz(path: StrPath) -> bool:
    return os.fspath(path).endswith(".gz")


def open_text(
    path: StrPath,
    mode: str = "rt",
    *,
    encoding: str = "utf-8",
    errors: str = "strict",
    newline: str | None = None,
) -> IO[Any]:
    """``open`` that (de)compresses gzip when ``path`` ends in ``.gz``.

    Text modes (``"rt"``, ``"wt"``, ``"at"``, ``"xt"``, or without the ``t``) use ``encoding``;
    binary modes (``"rb"``, ``"wb"``, ...) return a byte stream. Written gzip files are
    reproducible (no time stamp or name in the header). Text written with ``newline=None``
    uses ``\\n`` on every platform, so outputs are byte-identical across systems.
    """
    binary = "b" in mode
    base = mode.replace("t", "").replace("b", "")
    if base not in ("r", "w", "a", "x"):
        raise ValueError(f"unsupported mode {mode!r}")
    writing = base != "r"
    if writing and newline is None:
        newline = "\n"
    if not _is_gz(path):
        if binary:
            return open(path, base + "b")
        return open(path, base, encoding=encoding, errors=errors, newline=newline)
    if writing:
        raw = open(path, base + "b")  # noqa: SIM115 - closed by the GzipFile
        stream = cast(IO[bytes], _OwningGzipFile(raw, base + "b"))
    else:
        stream = cast(IO[bytes], gzip.open(path, "rb"))  # noqa: SIM115 - caller closes
    if binary:
        return stream
    return io.TextIOWrapper(stream, encoding=encoding, errors=errors, newline=newline)


def _iter_lines(path: StrPath) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, decoded line)`` for every non-blank line.

    Decoding per line (rather than through a text wrapper) is what lets an invalid byte be
    reported with its line number.
    """
    with open_text(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            # bytes.isspace is False for b"", and iteration never yields b"" anyway, so this
            # is exactly "blank or ASCII whitespace only" -- the same test count_lines uses.
            if raw.isspace() or not raw:
                continue
            raw = raw.rstrip(b"\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise FormatError(
                    f"invalid UTF-8 at byte {e.start} of the line ({e.reason})",
                    path=path,
                    line=lineno,
                ) from None
            yield lineno, text


def _fields(n: int) -> str:
    return f"{n} field" if n == 1 else f"{n} fields"


def _first_line(path: StrPath) -> tuple[int, str] | None:
    """``(line number, text)`` of the first non-blank line, or None if there is none (sniffing)."""
    for lineno, text in _iter_lines(path):
        return lineno, text
    return None


def count_lines(path: StrPath) -> int:
    """Number of non-blank lines (the records a reader will yield, for progress bars).

    Reads bytes without decoding, so it is fast and never raises on bad UTF-8.
    """
    with open_text(path, "rb") as f:
        return sum(1 for raw in f if not raw.isspace())


def _load_json(path: StrPath, lineno: int, text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"invalid JSON ({e.msg} at column {e.colno})", path=path, line=lineno) from None
    if not isinstance(obj, dict):
        raise FormatError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
    return obj


def iter_jsonl(path: StrPath) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSONL file.

    Every line must hold a JSON object; anything else is a :class:`FormatError`.
    """
    for lineno, text in _iter_lines(path):
        yield lineno, _load_json(path, lineno, text)


def _as_id(value: Any, key: str, path: StrPath, lineno: int) -> str:
    """A JSON id (string or integer) as a non-empty string."""
    # bool is a subclass of int, and ``true`` is never a sensible id.
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        s = str(value)
        if s.strip():
            return s
        raise FormatError(f"empty {key!r}", path=path, line=lineno)
    raise FormatError(
        f"expected {key!r} to be a string or integer, got {type(value).__name__}",
        path=path,
        line=lineno,
    )


# --------------------------------------------------------------------------------------------
# collections


def read_collection(path: StrPath, fmt: str = "auto") -> Iterator[Passage]:
    """Stream the passages of a collection file, in file order.

    ``fmt`` is ``"tsv"``, ``"jsonl"`` or ``"auto"`` (the first non-blank line starting with ``{``
    means JSONL, anything else TSV).

    * TSV: ``pid<TAB>text``. The line is split on its *first* tab only, so a text containing
      tabs is kept whole (MS MARCO has none). An empty pid is an error; an empty text is not.
    * JSONL, one object per line, extra keys ignored, ids (string or integer) turned into str:
      ``{"pid", "psg": [int, ...]}`` (expansion-job output; ids must be non-negative ints)
      gives ``Passage.ids``; ``{"pid", "psg": str}``, ``{"id", "contents"}`` (Pyserini) and
      ``{"_id", "title"?, "text"}`` (BEIR; ``title + " " + text`` when the title is non-empty)
      give ``Passage.text``.

    Duplicate pids are *not* detected here (it would need memory proportional to the
    collection); the index builder reports them. Unknown ``fmt`` and a missing file raise at
    call time; format errors are raised lazily, while iterating.
    """
    if fmt not in _COLLECTION_FORMATS:
        raise ValueError(f"fmt must be one of {_COLLECTION_FORMATS}, got {fmt!r}")
    # Fail on a missing file now, not at the first next() somewhere far from the call.
    if not os.path.isfile(path):
        raise FileNotFoundError(f"collection file not found: {os.fspath(path)}")
    if fmt == "auto":
        first = _first_line(path)
        fmt = "jsonl" if first is not None and first[1].lstrip().startswith("{") else "tsv"
    return _read_collection_jsonl(path) if fmt == "jsonl" else _read_collection_tsv(path)


def _read_collection_tsv(path: StrPath) -> Iterator[Passage]:
    for lineno, text in _iter_lines(path):
        pid, sep, body = text.partition("\t")
        if not sep:
            raise FormatError("expected 'pid<TAB>text', got 1 field", path=path, line=lineno)
        pid = pid.strip()
        if not pid:
            raise FormatError("expected 'pid<TAB>text', got an empty pid", path=path, line=lineno)
        yield Passage(pid=pid, text=body, line=lineno)


_COLLECTION_JSON_SHAPES = (
    "{'pid', 'psg': [int, ...] | str}, {'id', 'contents'} (Pyserini) or {'_id', 'title'?, 'text'} (BEIR)"
)


def _read_collection_jsonl(path: StrPath) -> Iterator[Passage]:
    for lineno, obj in iter_jsonl(path):
        yield _passage_from_json(obj, path, lineno)


def _passage_from_json(obj: dict[str, Any], path: StrPath, lineno: int) -> Passage:
    if "pid" in obj and "psg" in obj:
        pid = _as_id(obj["pid"], "pid", path, lineno)
        psg = obj["psg"]
        if isinstance(psg, str):
            return Passage(pid=pid, text=psg, line=lineno)
        if not isinstance(psg, list):
            raise FormatError(
                f"expected 'psg' to be a list of token ids or a string, got {type(psg).__name__}",
                path=path,
                line=lineno,
            )
        # Fast path first: one C-level pass over a few hundred ints; only on failure do we
        # search for the offending element to name it.
        if not all(type(t) is int and t >= 0 for t in psg):
            i, bad = next((i, t) for i, t in enumerate(psg) if not (type(t) is int and t >= 0))
            raise FormatError(
                f"expected 'psg' token ids to be non-negative integers, got {bad!r} at index {i}",
                path=path,
                line=lineno,
            )
        return Passage(pid=pid, ids=tuple(psg), line=lineno)
    if "id" in obj and "contents" in obj:
        return Passage(
            pid=_as_id(obj["id"], "id", path, lineno),
            text=_json_str(obj, "contents", path, lineno),
            line=lineno,
        )
    if "_id" in obj and "text" in obj:
        pid = _as_id(obj["_id"], "_id", path, lineno)
        body = _json_str(obj, "text", path, lineno)
        title = obj.get("title")
        if title is not None and not isinstance(title, str):
            raise FormatError(
                f"expected 'title' to be a string, got {type(title).__name__}",
                path=path,
                line=lineno,
            )
        return Passage(pid=pid, text=f"{title} {body}" if title else body, line=lineno)
    raise FormatError(
        f"expected an object with keys {_COLLECTION_JSON_SHAPES}, got keys {sorted(obj)}",
        path=path,
        line=lineno,
    )


def _json_str(obj: dict[str, Any], key: str, path: StrPath, lineno: int) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise FormatError(f"expected {key!r} to be a string, got {type(value).__name__}", path=path, line=lineno)
    return value


# --------------------------------------------------------------------------------------------
# queries and qrels


def read_queries(path: StrPath) -> list[Query]:
    """Read queries in file order.

    TSV ``qid<TAB>text`` (split on the first tab; empty text allowed), or JSONL (sniffed by a
    first line starting with ``{``) with the id under ``qid``, ``_id`` or ``id`` and the text
    under ``query`` or ``text``. A repeated qid is a :class:`FormatError`: silently keeping
    one of two texts would change results without notice.
    """
    first = _first_line(path)
    jsonl = first is not None and first[1].lstrip().startswith("{")
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for lineno, text in _iter_lines(path):
        if jsonl:
            q = _query_from_json(_load_json(path, lineno, text), path, lineno)
        else:
            qid, sep, body = text.partition("\t")
            if not sep:
                raise FormatError("expected 'qid<TAB>text', got 1 field", path=path, line=lineno)
            qid = qid.strip()
            if not qid:
                raise FormatError("expected 'qid<TAB>text', got an empty qid", path=path, line=lineno)
            q = Query(qid=qid, text=body, line=lineno)
        if q.qid in seen:
            raise FormatError(f"duplicate qid {q.qid!r} (first on line {seen[q.qid]})", path=path, line=lineno)
        seen[q.qid] = lineno
        queries.append(q)
    return queries


def _query_from_json(obj: dict[str, Any], path: StrPath, lineno: int) -> Query:
    id_key = next((k for k in ("qid", "_id", "id") if k in obj), None)
    text_key = next((k for k in ("query", "text") if k in obj), None)
    if id_key is None or text_key is None:
        raise FormatError(
            "expected an object with an id key ('qid', '_id' or 'id') and a text key "
            f"('query' or 'text'), got keys {sorted(obj)}",
            path=path,
            line=lineno,
        )
    return Query(
        qid=_as_id(obj[id_key], id_key, path, lineno), text=_json_str(obj, text_key, path, lineno), line=lineno
    )


def read_qrels(path: StrPath) -> dict[str, dict[str, int]]:
    """Read TREC qrels ``qid iter docid rel`` (whitespace-separated, exactly 4 fields).

    Returns ``{qid: {docid: rel}}``, queries and documents in file order. ``rel`` must be an
    integer (negative grades are allowed, as in some TREC tracks). The same (qid, docid) judged
    twice is an error, since which grade wins would be arbitrary.
    """
    qrels: dict[str, dict[str, int]] = {}
    for lineno, text in _iter_lines(path):
        parts = text.split()
        if len(parts) != 4:
            raise FormatError(
                f"expected 'qid iter docid rel' (4 fields), got {_fields(len(parts))}",
                path=path,
                line=lineno,
            )
        qid, _, docid, rel_s = parts
        try:
            rel = int(rel_s)
        except ValueError:
            raise FormatError(f"expected an integer relevance, got {rel_s!r}", path=path, line=lineno) from None
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            raise FormatError(f"duplicate judgement for qid {qid!r}, docid {docid!r}", path=path, line=lineno)
        judged[docid] = rel
    return qrels


# --------------------------------------------------------------------------------------------
# runs


def read_run(path: StrPath, fmt: str = "auto") -> dict[str, list[RunEntry]]:
    """Read a ranked run: ``{qid: [RunEntry(docid, score), ...]}``, best first.

    * ``trec``: ``qid Q0 docid rank score tag`` (whitespace-separated, 6 fields; the Q0 and tag
      columns are not checked). Each query's list is sorted by score descending, then rank
      ascending, then file order.
    * ``msmarco``: ``qid<TAB>docid<TAB>rank`` (3 fields). Sorted by rank ascending (then file
      order); the score is ``-rank`` so that "higher score is better" still holds.
    * ``auto``: 6 fields on the first non-blank line means trec, 3 means msmarco.

    Queries come in order of first appearance. A docid repeated within a query, a non-integer
    rank and a non-numeric or non-finite score are :class:`FormatError`.
    """
    if fmt not in _RUN_FORMATS:
        raise ValueError(f"fmt must be one of {_RUN_FORMATS}, got {fmt!r}")
    if fmt == "auto":
        first = _first_line(path)
        if first is None:
            return {}
        lineno, text = first
        n = len(text.split())
        if n == 6:
            fmt = "trec"
        elif n == 3:
            fmt = "msmarco"
        else:
            raise FormatError(
                f"expected a TREC run 'qid Q0 docid rank score tag' (6 fields) or an MS MARCO run "
                f"'qid<TAB>docid<TAB>rank' (3 fields), got {_fields(n)}",
                path=path,
                line=lineno,
            )
    trec = fmt == "trec"
    n_fields = 6 if trec else 3
    expected = "'qid Q0 docid rank score tag' (6 fields)" if trec else "'qid<TAB>docid<TAB>rank' (3 fields)"

    # Per query: flat (primary key, rank, line, docid, score) tuples; the line number is unique,
    # so ties keep file order and docids are never compared. Flat tuples sorted without a key
    # function are markedly faster on multi-million-line runs.
    rows: dict[str, list[tuple[float, int, int, str, float]]] = {}
    seen: dict[str, dict[str, int]] = {}
    for lineno, text in _iter_lines(path):
        parts = text.split()
        if len(parts) != n_fields:
            raise FormatError(f"expected {expected}, got {_fields(len(parts))}", path=path, line=lineno)
        qid, docid, rank_s = (parts[0], parts[2], parts[3]) if trec else (parts[0], parts[1], parts[2])
        try:
            rank = int(rank_s)
        except ValueError:
            raise FormatError(f"expected an integer rank, got {rank_s!r}", path=path, line=lineno) from None
        if trec:
            try:
                score = float(parts[4])
            except ValueError:
                raise FormatError(f"expected a numeric score, got {parts[4]!r}", path=path, line=lineno) from None
            if not math.isfinite(score):
                raise FormatError(f"expected a finite score, got {parts[4]!r}", path=path, line=lineno)
        else:
            score = float(-rank)
        docs = seen.get(qid)
        if docs is None:
            docs = seen[qid] = {}
            rows[qid] = []
        elif docid in docs:
            raise FormatError(
                f"docid {docid!r} repeated for qid {qid!r} (first on line {docs[docid]})",
                path=path,
                line=lineno,
            )
        docs[docid] = lineno
        rows[qid].append((-score if trec else float(rank), rank, lineno, docid, score))
    return {qid: [RunEntry(r[3], r[4]) for r in sorted(entries)] for qid, entries in rows.items()}


def write_run(
    path: StrPath,
    run: Mapping[str, Sequence[tuple[str, float]]],
    fmt: str = "trec",
    tag: str = "tilde",
) -> None:
    """Write a run atomically; each query's rows must already be ranked, best first.

    * ``trec``: ``qid Q0 docid rank score tag``, rank from 1, score as ``repr(float(score))``
      -- the shortest string that round-trips exactly, so parity tests can compare scores
      bit for bit after a read.
    * ``msmarco``: ``qid<TAB>docid<TAB>rank``; scores are not written.

    Queries are written in the mapping's order. Ids or a tag containing whitespace, a repeated
    docid within a query and a non-finite score raise ``ValueError`` (before anything replaces
    ``path``), since the file would not read back.
    """
    if fmt not in ("trec", "msmarco"):
        raise ValueError(f"fmt must be 'trec' or 'msmarco', got {fmt!r}")
    if fmt == "trec":
        _check_token(tag, "tag")
    with atomic_path(path) as tmp, open_text(tmp, "wt") as f:
        for qid, rows in run.items():
            _check_token(qid, "qid")
            seen: set[str] = set()
            for rank, (docid, score) in enumerate(rows, start=1):
                _check_token(docid, "docid")
                if docid in seen:
                    raise ValueError(f"docid {docid!r} repeated for qid {qid!r}")
                seen.add(docid)
                if fmt == "trec":
                    s = float(score)
                    if not math.isfinite(s):
                        raise ValueError(f"non-finite score {s!r} for qid {qid!r}, docid {docid!r}")
                    f.write(f"{qid} Q0 {docid} {rank} {s!r} {tag}\n")
                else:
                    f.write(f"{qid}\t{docid}\t{rank}\n")


def _check_token(value: str, what: str) -> None:
    # A field with whitespace would shift the columns of a whitespace-separated file.
    # split() runs in C; a per-character check would dominate writing a large run.
    if not isinstance(value, str) or value.split() != [value]:
        raise ValueError(f"{what} must be a non-empty string without whitespace, got {value!r}")


# --------------------------------------------------------------------------------------------
# atomic writes


@contextlib.contextmanager
def atomic_path(path: StrPath, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, else it is removed.

    The temporary name is ``.tmp-<random>.<name of path>``: hidden, in the same directory (so
    ``os.replace`` is an atomic rename on the same file system) and ending with the target's
    full name, so that suffix-driven writers (``open_text`` and ``.gz``, ``numpy.save`` and
    ``.npy``) behave exactly as they would for ``path``. The file is not created here; the
    caller writes it (and gets normal, umask-based permissions). With ``fsync`` the data is
    flushed to disk before the rename, so a crash cannot leave an empty file under the final
    name. A directory written at the temporary path works too, if ``path`` does not exist yet.
    """
    target = Path(path)
    tmp = target.with_name(f".tmp-{uuid.uuid4().hex[:12]}.{target.name}")
    try:
        yield tmp
        if fsync and tmp.is_file():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        # BaseException: a KeyboardInterrupt mid-write must not leave temp files behind either.
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    logger.debug("wrote %s", target)


def collection_identity(path: StrPath) -> dict[str, Any]:
    """What a resumable job records about its input, to refuse resuming on a changed file."""
    p = Path(path)
    st = p.stat()
    return {"collection": str(p.resolve()), "collection_bytes": st.st_size, "collection_mtime_ns": st.st_mtime_ns}


def atomic_write_text(path: StrPath, text: str) -> None:
    """Write ``text`` (UTF-8, gzip if ``path`` ends in ``.gz``) to ``path`` atomically."""
    with atomic_path(path) as tmp, open_text(tmp, "wt") as f:
        f.write(text)


def write_jsonl(path: StrPath, records: Iterable[Mapping[str, Any]]) -> int:
    """Write one JSON object per line, atomically; returns the number of records written.

    Uses ``json.dumps`` defaults (``", "``/``": "`` separators, ASCII escapes), the same bytes
    the reference expansion script writes, except that NaN/Infinity raise ``ValueError``
    instead of producing invalid JSON.
    """
    n = 0
    with atomic_path(path) as tmp, open_text(tmp, "wt") as f:
        for rec in records:
            f.write(json.dumps(dict(rec), allow_nan=False))
            f.write("\n")
            n += 1
    return n
