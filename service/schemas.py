"""Request and response schemas: validation of decoded bodies into frozen records (422 on any
violation, naming the field), and rendering of ranked results straight from the score arrays.

Request (``POST /v1/rerank``), Cohere-compatible plus ``ids``::

    {"query": str, "ids": [docid, ...]}                       # fast path: index docids
    {"query": str, "documents": [str | {"id"?, "text"?, ...}], # Cohere: texts or objects
     "top_n"?: int >= 1, "return_documents"?: bool, "missing"?: "error"|"skip"|"zero", "model"?: str}

Response::

    {"id": request id, "results": [{"index", "id", "relevance_score", "document"?}],
     "meta": {"timing": {stage: ms}, "energy": {"joules", "method"}, "missing": [...], "encoded": [...]}}
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilde.rank import MISSING_POLICIES

from .errors import ApiError
from .wire import JSON, dumps, encode

__all__ = [
    "BatchRequest",
    "DocId",
    "Document",
    "Limits",
    "Ranked",
    "RerankRequest",
    "msgpack_array_header",
    "parse_batch",
    "check_finite",
    "parse_rerank",
    "render_results",
]

DocId = str | int

# Cohere request fields we accept and ignore: there is one model per service, and passages are
# truncated at 192 tokens as the index was built.
_IGNORED = frozenset({"model", "max_tokens_per_doc", "max_chunks_per_doc"})
_RERANK_FIELDS = frozenset({"query", "ids", "documents", "top_n", "return_documents", "missing", "mode"}) | _IGNORED
_BATCH_FIELDS = frozenset({"queries", "top_n", "return_documents", "missing", "mode"}) | _IGNORED
_ITEM_FIELDS = frozenset({"id", "query", "ids", "documents", "top_n"})


@dataclass(frozen=True)
class Limits:
    max_documents: int
    max_batch_queries: int
    max_text_chars: int
    max_query_chars: int


@dataclass(frozen=True, slots=True)
class Document:
    """One Cohere document: an index id, a text to encode on the fly, or both. ``echo`` is what
    ``return_documents`` sends back (the object as given, or ``{"text": s}`` for a string)."""

    id: DocId | None
    text: str | None
    echo: Mapping[str, Any]


@dataclass(frozen=True)
class RerankRequest:
    query: str
    ids: list[DocId] | None  # exactly one of ids / documents
    documents: list[Document] | None
    top_n: int | None = None
    return_documents: bool = False
    missing: str | None = None  # None: the service's policy
    id: DocId | None = None  # a batch item's own id, echoed back
    int_ids: bool = False  # every entry of ids is a Python int (enables the fixed-width msgpack records)
    mode: str | None = None  # scoring mode (tilde.rank.scoring); None: the service's

    def __len__(self) -> int:
        return len(self.ids) if self.ids is not None else len(self.documents or ())


@dataclass(frozen=True)
class BatchRequest:
    queries: list[RerankRequest]
    missing: str | None = None
    mode: str | None = None


@dataclass(frozen=True)
class Ranked:
    """One query's outcome: positions into its candidate list, best first, and their scores;
    ``missing``/``encoded`` are report entries ``{"index", "id", ...}``."""

    order: np.ndarray  # int64 positions
    scores: np.ndarray  # float64, same length
    missing: list[dict[str, Any]]
    encoded: list[dict[str, Any]]
    query_tokens: int
    feedback_terms: int = 0  # expansion tokens pseudo-relevance feedback added (0: off or none found)
    mode: str = "tokens"  # the scoring mode (tilde.rank.scoring)
    signals: tuple[str, ...] = ("tokens",)  # the signals that scored it


def _fail(message: str) -> ApiError:
    return ApiError(422, message, "invalid")


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_fields(body: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = [k for k in body if k not in allowed]
    if unknown:
        raise _fail(f"unknown field(s) in {where}: {', '.join(sorted(map(str, unknown))[:10])}")


def _text(value: str, where: str) -> str:
    """``value`` if it is valid Unicode text: JSON can carry lone UTF-16 surrogates ("\\ud800"),
    which no encoder (tokenizer, UTF-8, the index's key hash) accepts."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _fail(f"{where} contains a lone UTF-16 surrogate at character {exc.start}: send valid Unicode "
                        f"text") from None
    return value


def _texts(values: list[str], where: str) -> None:
    """:func:`_text` for a list of strings, in one C-level pass when all are valid."""
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        for i, v in enumerate(values):
            _text(v, f"{where}[{i}]")


def _query(body: Mapping[str, Any], limits: Limits, where: str) -> str:
    query = body.get("query")
    if not isinstance(query, str):
        raise _fail(f"{where}query must be a string, not {_type(query)}")
    _text(query, f"{where}query")
    if not query.strip():
        raise _fail(f"{where}query is empty")
    if len(query) > limits.max_query_chars:
        raise _fail(f"{where}query is {len(query)} characters long; the limit is {limits.max_query_chars}")
    return query


def _top_n(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise _fail(f"{where}top_n must be a positive integer or null, not {value!r}"[:200])
    return int(value)


def _bool(value: Any, name: str) -> bool:
    if value is None:
        return False
    if type(value) is not bool:
        raise _fail(f"{name} must be true or false, not {_type(value)}")
    return value


def _mode(value: Any) -> str | None:
    """A scoring mode name (checked against the index when the request is ranked)."""
    if value is None:
        return None
    if type(value) is not str or not 1 <= len(value) <= 200:
        raise _fail(f"mode must be tokens, mlm, dense, fused or fused:SIGNAL=WEIGHT,..., not {value!r}"[:200])
    return _text(value, "mode")


def _missing(value: Any) -> str | None:
    if value is None:
        return None
    if value not in MISSING_POLICIES:
        raise _fail(f"missing must be one of {', '.join(MISSING_POLICIES)}, not {value!r}"[:200])
    return str(value)


_INT64 = (-(2**63), 2**63 - 1)


def _docid(value: Any, where: str) -> DocId:
    if type(value) is str:
        return _text(value, where)
    if type(value) is int and _INT64[0] <= value <= _INT64[1]:
        return value  # type: ignore[no-any-return]
    raise _fail(f"{where} must be a string or a 64-bit integer, not {_type(value)}")


def _ids(value: Any, limits: Limits, where: str) -> tuple[list[DocId], bool]:
    """(ids, whether every id is an int)."""
    if type(value) is not list:
        raise _fail(f"{where}ids must be a list of docids, not {_type(value)}")
    if len(value) > limits.max_documents:
        raise _fail(f"{where}{len(value)} ids; the limit is {limits.max_documents} per query")
    # One C-level pass over the types instead of a Python loop: this is the hot path.
    kinds = set(map(type, value))
    if kinds == {int}:
        if max(value) <= _INT64[1] and min(value) >= _INT64[0]:
            return value, True
    elif kinds <= {str}:
        _texts(value, f"{where}ids")
        return value, False
    for i, v in enumerate(value):
        _docid(v, f"{where}ids[{i}]")
    return value, kinds == {int}


def _documents(value: Any, limits: Limits, where: str) -> list[Document]:
    if type(value) is not list:
        raise _fail(f"{where}documents must be a list, not {_type(value)}")
    if len(value) > limits.max_documents:
        raise _fail(f"{where}{len(value)} documents; the limit is {limits.max_documents} per query")
    docs = []
    for i, d in enumerate(value):
        if type(d) is str:
            text: Any = _text(d, f"{where}documents[{i}]")
            doc_id: DocId | None = None
            echo: Mapping[str, Any] = {"text": d}
        elif type(d) is dict:
            extra = [k for k in d if k != "id" and k != "text"]
            if extra:
                raise _fail(f"{where}documents[{i}] has unknown field(s) {sorted(map(str, extra))[:5]}; "
                            f"a document is {{\"id\"?, \"text\"?}}")
            doc_id = _docid(d["id"], f"{where}documents[{i}].id") if d.get("id") is not None else None
            text = d.get("text")
            if text is not None and type(text) is not str:
                raise _fail(f"{where}documents[{i}].text must be a string, not {_type(text)}")
            if text is not None:
                _text(text, f"{where}documents[{i}].text")
            if doc_id is None and text is None:
                raise _fail(f"{where}documents[{i}] needs an \"id\" (index docid) or a \"text\"")
            echo = d
        else:
            raise _fail(f"{where}documents[{i}] must be a string or an object, not {_type(d)}")
        if text is not None and len(text) > limits.max_text_chars:
            raise _fail(f"{where}documents[{i}].text is {len(text)} characters; the limit is {limits.max_text_chars}")
        docs.append(Document(doc_id, text, echo))
    return docs


def _candidates(
    body: Mapping[str, Any], limits: Limits, where: str
) -> tuple[list[DocId] | None, list[Document] | None, bool]:
    """(ids, documents, whether all ids are ints)."""
    has_ids, has_docs = body.get("ids") is not None, body.get("documents") is not None
    if has_ids == has_docs:
        raise _fail(f"{where}give exactly one of \"ids\" (index docids) or \"documents\"")
    if has_ids:
        ids, int_ids = _ids(body["ids"], limits, where)
        return ids, None, int_ids
    return None, _documents(body["documents"], limits, where), False


def _object(body: Any, where: str) -> Mapping[str, Any]:
    if type(body) is not dict:
        raise _fail(f"{where} must be an object, not {_type(body)}")
    return body


def parse_rerank(body: Any, limits: Limits) -> RerankRequest:
    body = _object(body, "request body")
    _check_fields(body, _RERANK_FIELDS, "request")
    query = _query(body, limits, "")
    ids, docs, int_ids = _candidates(body, limits, "")
    return RerankRequest(
        query=query,
        ids=ids,
        documents=docs,
        top_n=_top_n(body.get("top_n"), ""),
        return_documents=_bool(body.get("return_documents"), "return_documents"),
        missing=_missing(body.get("missing")),
        int_ids=int_ids,
        mode=_mode(body.get("mode")),
    )


@dataclass(frozen=True)
class SearchRequest:
    query: str
    k: int  # first-stage depth
    top_n: int | None = None
    mode: str | None = None


_SEARCH_FIELDS = frozenset({"query", "k", "top_n", "mode"})
DEFAULT_SEARCH_DEPTH = 1000


def parse_search(body: Any, limits: Limits) -> SearchRequest:
    body = _object(body, "request body")
    _check_fields(body, _SEARCH_FIELDS, "request")
    query = _query(body, limits, "")
    k = body.get("k", DEFAULT_SEARCH_DEPTH)
    if type(k) is not int or not 1 <= k <= limits.max_documents:
        raise _fail(f"k (first-stage depth) must be an integer in 1..{limits.max_documents}, not {k!r}")
    return SearchRequest(query=query, k=k, top_n=_top_n(body.get("top_n"), ""), mode=_mode(body.get("mode")))


def parse_batch(body: Any, limits: Limits) -> BatchRequest:
    body = _object(body, "request body")
    _check_fields(body, _BATCH_FIELDS, "request")
    queries = body.get("queries")
    if type(queries) is not list or not queries:
        raise _fail(f"queries must be a non-empty list of {{\"query\", \"ids\"|\"documents\"}} objects, "
                    f"not {_type(queries)}")
    if len(queries) > limits.max_batch_queries:
        raise _fail(f"{len(queries)} queries; the limit is {limits.max_batch_queries} per batch")
    top_n = _top_n(body.get("top_n"), "")
    return_documents = _bool(body.get("return_documents"), "return_documents")
    items = []
    for qi, item in enumerate(queries):
        where = f"queries[{qi}]."
        item = _object(item, f"queries[{qi}]")
        _check_fields(item, _ITEM_FIELDS, f"queries[{qi}]")
        ids, docs, int_ids = _candidates(item, limits, where)
        item_id = _docid(item["id"], f"{where}id") if item.get("id") is not None else None
        item_top = _top_n(item.get("top_n"), where)
        items.append(RerankRequest(_query(item, limits, where), ids, docs, item_top if item_top is not None else top_n,
                                   return_documents, None, item_id, int_ids))
    return BatchRequest(items, _missing(body.get("missing")), _mode(body.get("mode")))


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

_SIMPLE_ID = re.compile(r'^[^"\\\x00-\x1f\x7f-\U0010ffff]*$')  # printable ASCII without quote/backslash

# msgpack: {"index": uint32, "id": int64, "relevance_score": float64} as one fixed-size record;
# decoders accept the non-minimal int widths, and numpy builds all records in one go.
_MP_RECORD = np.dtype([
    ("head", "S8"), ("index", ">u4"),       # fixmap(3) fixstr "index" 0xce
    ("k_id", "S4"), ("id", ">i8"),           # fixstr "id" 0xd3
    ("k_score", "S17"), ("score", ">f8"),    # fixstr "relevance_score" 0xcb
])
_MP_HEAD = b"\x83\xa5index\xce"
_MP_ID = b"\xa2id\xd3"
_MP_SCORE = b"\xafrelevance_score\xcb"


def _json_ids(ids: Sequence[DocId | None]) -> list[str]:
    """JSON literal of each id: ints as digits, simple strings quoted, the rest via the encoder."""
    out = []
    for d in ids:
        if type(d) is int:
            out.append(str(d))
        elif d is None:
            out.append("null")
        elif _SIMPLE_ID.match(d):  # type: ignore[arg-type]
            out.append(f'"{d}"')
        else:
            out.append(dumps(d))
    return out


def msgpack_array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 65536:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def _msgpack_int_records(order: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> bytes:
    rec = np.empty(order.size, dtype=_MP_RECORD)
    rec["head"], rec["k_id"], rec["k_score"] = _MP_HEAD, _MP_ID, _MP_SCORE
    rec["index"], rec["id"], rec["score"] = order, ids, scores
    return msgpack_array_header(order.size) + rec.tobytes()


def check_finite(ranked: Ranked, ids: Sequence[DocId | None]) -> None:
    """NaN/inf is no JSON number (and no ranking): a damaged index. Such a score is never sent,
    in JSON or msgpack; the request is answered 500 ``non_finite_score`` naming the candidates."""
    finite = np.isfinite(ranked.scores)
    if not finite.all():
        bad = [ids[i] for i in ranked.order[~finite][:5].tolist()]
        raise ApiError(500, f"non-finite score for candidate(s) {bad}: the index holds non-finite weights "
                            f"(check it with tilde index verify)"[:300], "non_finite_score")


def render_results(
    fmt: str,
    ranked: Ranked,
    ids: Sequence[DocId | None],
    documents: Sequence[Document] | None,
    int_ids: bool = False,
) -> bytes:
    """The ``results`` array, already encoded, built from the score arrays.

    JSON: one format string per result over pre-encoded ids (no dict per result); the float
    reprs are most of its cost. msgpack with integer ids and no documents: one numpy record
    array, no Python object per result at all.
    """
    check_finite(ranked, ids)
    order_list = ranked.order.tolist()
    if fmt != JSON:
        if documents is None and int_ids:  # validated: every id is an int within int64
            id_arr = np.asarray(ids, dtype=np.int64)[ranked.order]
            return _msgpack_int_records(ranked.order, id_arr, ranked.scores)
        rows: list[dict[str, Any]] = [
            {"index": i, "id": ids[i], "relevance_score": s} for i, s in zip(order_list, ranked.scores.tolist())
        ]
        if documents is not None:
            for row in rows:
                row["document"] = documents[row["index"]].echo
        return encode(rows, fmt)
    scores = ranked.scores.tolist()
    # ints are their own JSON literal; strings may need escaping
    id_json = [ids[i] for i in order_list] if int_ids else _json_ids([ids[i] for i in order_list])
    if documents is None:
        parts = [
            f'{{"index":{i},"id":{d},"relevance_score":{s!r}}}' for i, d, s in zip(order_list, id_json, scores)
        ]
    else:
        parts = [
            f'{{"index":{i},"id":{d},"relevance_score":{s!r},"document":{dumps(documents[i].echo)}}}'
            for i, d, s in zip(order_list, id_json, scores)
        ]
    return ("[" + ",".join(parts) + "]").encode("utf-8")
