"""Every request and response body, declared once as msgspec Structs: bodies are decoded and
validated in one pass (JSON or msgpack), ``/openapi.json`` is generated from the same types
(:mod:`service.openapi`), and ranked results are encoded straight from the score arrays.

Endpoints and their bodies (all over the same :class:`service.engine.Engine`):

* ``POST /v1/rerank`` — Cohere v1 and Jina (one shape), plus index ``ids``: :class:`RerankV1Request`
  → :class:`RerankResponse`.
* ``POST /v1/rerank/batch`` — many queries: :class:`BatchRerankRequest` → :class:`BatchRerankResponse`.
* ``POST /v2/rerank`` — Cohere v2: :class:`RerankV2Request` → :class:`RerankV2Response`.
* ``POST /rerank`` — text-embeddings-inference (``texts``): :class:`TeiRerankRequest` → a bare array of
  :class:`TeiRank`; Infinity (``documents``, same path): → :class:`InfinityRerankResponse`.
* ``POST /v1/search`` — BM25 + re-ranking: :class:`SearchRequest` → :class:`SearchResponse`.

What msgspec cannot express is checked right after decoding, with the same 422 shape naming the
field: limits from the config (documents per query, characters), exactly one of ids/documents,
64-bit ids, and lone UTF-16 surrogates (msgspec refuses them as malformed JSON; they are a 422).

Ids, one rule: an id comes back in the type it was sent in (``5`` stays ``5``, ``"5"`` stays
``"5"``), on every endpoint; ``/v1/search`` has no ids sent, and returns the index's docid type
(integers for an index of numeric docids, strings otherwise).
"""

from __future__ import annotations

import json
import operator
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import numpy as np

from .errors import ApiError
from .wire import JSON, MSGPACK

__all__ = [
    "SCHEMA_TYPES",
    "Batch",
    "BatchRerankRequest",
    "BatchRerankResponse",
    "DocId",
    "Document",
    "Limits",
    "Ranked",
    "RerankRequest",
    "RerankResponse",
    "RerankV1Request",
    "RerankV2Request",
    "RerankV2Response",
    "SearchRequest",
    "SearchResponse",
    "InfinityRerankResponse",
    "TeiRank",
    "TeiRerankRequest",
    "check_finite",
    "decode",
    "encode",
    "msgpack_array_header",
    "parse_batch",
    "parse_rerank",
    "parse_search",
    "parse_tei",
    "parse_v2",
    "render_results",
    "render_infinity",
    "render_search",
    "render_tei",
    "render_v2",
]

DocId = str | int
T = TypeVar("T")
# An id as sent: a string or a 64-bit integer (the wire type; Python code takes DocId)
WireId = str | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

# ---------------------------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------------------------

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
# "\S": a query of only spaces is refused like an empty one (the pattern is searched, not matched)
Query = Annotated[str, msgspec.Meta(min_length=1, pattern=r"\S", description="The search query (not blank)")]
Mode = Annotated[str, msgspec.Meta(
    min_length=1, max_length=200,
    description="Scoring mode: tokens, mlm, dense, fused, or fused:SIGNAL=WEIGHT,... (default: the service's "
                "--mode, else what the index recommends; see /info)")]
Missing = Annotated[Literal["error", "skip", "zero"], msgspec.Meta(
    description="Candidates neither in the index nor encodable: error (422), skip, or zero (last, score 0). "
                "Default: the service's --missing")]
ScoreKind = Annotated[Literal["raw", "calibrated"], msgspec.Meta(
    description="raw (default): the mode's own score; calibrated: a 0-1 logistic of it fitted on judged data "
                "(tilde.rank.calibration), 422 when the index has no calibration for the mode")]
TopN = Annotated[PositiveInt, msgspec.Meta(description="Return the best top_n; omitted or null: every candidate")]
MaxTokens = Annotated[PositiveInt, msgspec.Meta(
    description="A text encoded on the fly is truncated to this many tokens before it is cut into passages of "
                "the index's length (Cohere v2's meaning; default: no truncation but max_chunks_per_doc)")]
MaxChunks = Annotated[PositiveInt, msgspec.Meta(
    description="Chunks a long text is cut into before truncation; the best chunk scores (default: the service's)")]
DocIdSchema = {"anyOf": [{"type": "integer", "format": "int64"}, {"type": "string"}]}
DocumentObject = Annotated[dict[str, Any], msgspec.Meta(
    title="DocumentObject",
    description="An index docid (\"id\"), a text, or both, plus any other fields (echoed by return_documents). "
                "The id is looked up first; a text is encoded on the fly when the id is absent from the index and "
                "the service has a model. With rank_fields, the text scored is those fields as \"name: value\" "
                "lines, in the order given (Cohere's semi-structured documents).",
    extra_json_schema={"properties": {"id": DocIdSchema, "text": {"type": "string"}}})]


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A request body: unknown fields are refused (a typo is an error, not a silent default)."""


class RerankV1Request(_Body, kw_only=True, forbid_unknown_fields=True):
    """Cohere v1 and Jina ``/v1/rerank``, plus ``ids``: give exactly one of ids or documents."""

    query: Query
    ids: list[WireId] | None = msgspec.field(default=None)
    documents: list[str | DocumentObject] | None = None
    top_n: TopN | None = None
    return_documents: bool = False
    rank_fields: list[str] | None = None
    missing: Missing | None = None
    mode: Mode | None = None
    score: ScoreKind = "raw"
    model: str | None = None  # one model per service: accepted and ignored
    max_tokens_per_doc: MaxTokens | None = None
    max_chunks_per_doc: MaxChunks | None = None


class BatchQuery(_Body, kw_only=True, forbid_unknown_fields=True):
    id: WireId | None = None  # echoed back with its results
    query: Query
    ids: list[WireId] | None = None
    documents: list[str | DocumentObject] | None = None
    top_n: TopN | None = None


class BatchRerankRequest(_Body, kw_only=True, forbid_unknown_fields=True):
    queries: Annotated[list[BatchQuery], msgspec.Meta(min_length=1)]
    top_n: TopN | None = None
    return_documents: bool = False
    rank_fields: list[str] | None = None
    missing: Missing | None = None
    mode: Mode | None = None
    score: ScoreKind = "raw"
    model: str | None = None
    max_tokens_per_doc: MaxTokens | None = None
    max_chunks_per_doc: MaxChunks | None = None


class RerankV2Request(_Body, kw_only=True, forbid_unknown_fields=True):
    """Cohere v2 ``/v2/rerank``: texts only (each encoded on the fly; the service needs a model)."""

    model: str | None = None  # required by Cohere; accepted and ignored here
    query: Query
    documents: list[str]
    top_n: TopN | None = None
    max_tokens_per_doc: MaxTokens | None = None
    priority: int | None = None  # Cohere's scheduling hint: accepted and ignored
    missing: Missing | None = None
    mode: Mode | None = None
    score: ScoreKind = "raw"


class TeiRerankRequest(_Body, kw_only=True, forbid_unknown_fields=True):
    """``/rerank``: text-embeddings-inference (``texts`` → a bare array of :class:`TeiRank`) or
    Infinity (``documents`` → :class:`InfinityRerankResponse`); give exactly one. ``raw_scores``
    false (both servers' default) answers calibrated 0-1 scores where the index has a calibration
    for the mode, raw scores otherwise (the header ``X-Tilde-Score`` says which). ``truncate``:
    texts are always cut to the service's chunking, never refused for length; only right
    truncation exists."""

    query: Query
    texts: list[str] | None = None
    documents: list[str] | None = None
    top_n: TopN | None = None
    raw_scores: bool = False
    return_text: bool = False
    return_documents: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["right", "Right"] = "right"
    model: str | None = None  # Infinity's; accepted and ignored
    missing: Missing | None = None
    mode: Mode | None = None


class SearchRequest(_Body, kw_only=True, forbid_unknown_fields=True):
    query: Query
    k: Annotated[PositiveInt, msgspec.Meta(description="First-stage depth: BM25 candidates re-ranked")] = 1000
    top_n: TopN | None = None
    return_documents: bool = False
    mode: Mode | None = None
    score: ScoreKind = "raw"


# -- responses ---------------------------------------------------------------------------------


class Report(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    id: DocId | None
    reason: Literal["not_in_index", "no_model"] | None = None


class EncodedReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A document whose text was encoded on the fly, as the index's build encodes passages."""

    index: int
    id: DocId | None
    chunks: Annotated[int, msgspec.Meta(description="Passages the text was cut into (1: it fit one)")] = 1
    truncated: Annotated[bool, msgspec.Meta(
        description="Text beyond max_tokens_per_doc or max_chunks_per_doc chunks was not scored")] = False
    best_chunk: Annotated[int, msgspec.Meta(description="The chunk whose score the document got")] = 0
    tokens: Annotated[int, msgspec.Meta(description="Model input tokens its chunks cost (the budget's unit)")] = 0
    cached: Annotated[bool, msgspec.Meta(description="Every chunk came from the encode cache")] = False


class Energy(msgspec.Struct):
    joules: float
    method: str


class Meta(msgspec.Struct, kw_only=True):
    """Per-request facts besides the results (more keys may appear)."""

    timing: Annotated[dict[str, float], msgspec.Meta(
        description="Milliseconds per stage: parse, tokenize, lookup, score, encode, sort, serialize, total")]
    energy: Energy
    missing: list[Report] = []
    encoded: Annotated[list[EncodedReport], msgspec.Meta(
        description="Documents scored by encoding their text on the fly (chunked when long)")] = []
    query_tokens: int | None = None
    feedback_terms: Annotated[int, msgspec.Meta(
        description="Expansion tokens added by pseudo-relevance feedback (see /info)")] | None = None
    mode: Annotated[str, msgspec.Meta(description="The scoring mode that ranked the results")] | None = None
    signals: list[str] | None = None
    score: ScoreKind | None = None


# The per-candidate result Structs (1,000 per request at the default load) are untracked by the
# cyclic GC (gc=False): they hold numbers, strings and a copy of the client's document, so they
# can be in no cycle, and 1,000 tracked objects a request cost ~25 us to build and a gen-0
# collection every 700 allocations.


class RerankResult(msgspec.Struct, omit_defaults=True, gc=False):
    index: Annotated[int, msgspec.Meta(description="Position in the request's ids/documents")]
    id: Annotated[DocId | None, msgspec.Meta(description="The candidate's id, in the type it was sent in")]
    relevance_score: Annotated[float, msgspec.Meta(
        description="The mode's score (or, with score=calibrated, its 0-1 calibration)")]
    document: dict[str, Any] | None = None  # with return_documents: the document as sent


class RerankResponse(msgspec.Struct):
    id: str
    results: list[RerankResult]
    meta: Meta


class BatchItem(msgspec.Struct):
    index: int
    id: DocId | None
    results: list[RerankResult]
    missing: list[Report]
    encoded: list[EncodedReport]
    query_tokens: int
    feedback_terms: int


class BatchRerankResponse(msgspec.Struct):
    id: str
    results: list[BatchItem]
    meta: Meta


class RerankV2Result(msgspec.Struct, gc=False):
    index: int
    relevance_score: float


class RerankV2Response(msgspec.Struct):
    id: str
    results: list[RerankV2Result]
    meta: Meta


class TeiRank(msgspec.Struct, omit_defaults=True, gc=False):
    index: int
    score: float
    text: str | None = None


class InfinityResult(msgspec.Struct, gc=False):
    index: int
    relevance_score: float
    document: str | None = None  # with return_documents


class InfinityRerankResponse(msgspec.Struct, kw_only=True):
    object: Literal["rerank"] = "rerank"
    id: str
    model: str
    created: int
    results: list[InfinityResult]
    meta: Meta


class SearchResult(msgspec.Struct, omit_defaults=True, gc=False):
    index: Annotated[int, msgspec.Meta(description="Rank in the BM25 list (0-based)")]
    id: Annotated[DocId, msgspec.Meta(description="The index's docid type: an integer for numeric docids")]
    relevance_score: float
    first_stage_score: Annotated[float, msgspec.Meta(description="BM25 score")]
    document: dict[str, Any] | None = None  # with return_documents: {"text": ...}


class SearchResponse(msgspec.Struct):
    id: str
    results: list[SearchResult]
    meta: Meta


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorResponse(msgspec.Struct):
    error: ErrorDetail


class Status(msgspec.Struct):
    status: str


# Named in /openapi.json's components, in this order.
SCHEMA_TYPES: tuple[Any, ...] = (
    RerankV1Request, RerankResponse, BatchRerankRequest, BatchRerankResponse, RerankV2Request, RerankV2Response,
    TeiRerankRequest, list[TeiRank], InfinityRerankResponse, SearchRequest, SearchResponse, ErrorResponse, Status,
)

# ---------------------------------------------------------------------------------------------
# What the engine works on (independent of the wire shape)
# ---------------------------------------------------------------------------------------------


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
    max_tokens_per_doc: int | None = None  # chunking of texts encoded on the fly (None: the service's)
    max_chunks_per_doc: int | None = None
    score: str = "raw"  # "raw" | "calibrated"

    def __len__(self) -> int:
        return len(self.ids) if self.ids is not None else len(self.documents or ())


@dataclass(frozen=True)
class Batch:
    queries: list[RerankRequest]
    missing: str | None = None
    mode: str | None = None
    score: str = "raw"
    max_tokens_per_doc: int | None = None
    max_chunks_per_doc: int | None = None


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


# ---------------------------------------------------------------------------------------------
# Decoding: one pass through msgspec, errors as 422s naming the field
# ---------------------------------------------------------------------------------------------

_DECODERS: dict[tuple[Any, str], Any] = {}
_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "array": "a list", "object": "an object", "null": "null", "bytes": "bytes"}
# What a field must be when msgspec's own message cannot say it (enums, patterns)
_HINTS = {"missing": "one of error, skip, zero", "score": "raw or calibrated",
          "truncation_direction": "right (tilde truncates texts at their end only)"}
_AT = re.compile(r" - at `\$(.*)`$")


def _fail(message: str) -> ApiError:
    return ApiError(422, message, "invalid")


def _words(types: str) -> str:
    """msgspec's "`int | str`" as "an integer or a string"."""
    parts = [_TYPE_WORDS.get(t.strip(), t.strip()) for t in types.split("|")]
    return " or ".join(parts)


def explain(message: str) -> str:
    """A msgspec ValidationError message as one naming the field: "Expected `int` >= 1 - at
    `$.top_n`" becomes "top_n must be an integer >= 1"."""
    m = _AT.search(message)
    path = m.group(1).lstrip(".") if m else ""
    text = message[: m.start()] if m else message
    field = path or "request body"
    leaf = re.sub(r"\[\d+\]$", "", path.rpartition(".")[2])
    if (k := re.match(r"Object missing required field `(.+)`$", text)):
        return f"{path + '.' if path else ''}{k.group(1)} is required"
    if (k := re.match(r"Object contains unknown field `(.+)`$", text)):
        return f"unknown field {k.group(1)!r} in {path or 'the request'}; see /openapi.json for the fields"
    if leaf == "query" and "regex" in text or text.startswith("Expected `str` of length >= 1") and leaf == "query":
        return f"{field} is empty"
    if text.startswith("Invalid enum value") or (leaf in _HINTS and "regex" not in text):
        return f"{field} must be {_HINTS.get(leaf, 'one of the documented values')}, not {text.rpartition(' ')[2]}"
    if "9223372036854775807" in text or "-9223372036854775808" in text:
        return f"{field} must be a string or a 64-bit integer"
    if (k := re.match(r"Expected `([^`]+)`(.*?)(?:, got `([^`]+)`)?$", text)):
        got = f", not {k.group(3)}" if k.group(3) else ""
        return f"{field} must be {_words(k.group(1))}{k.group(2)}{got}"
    return f"{field}: {text}"


def _decoder(kind: Any, fmt: str) -> Any:
    dec = _DECODERS.get((kind, fmt))
    if dec is None:
        dec = msgspec.msgpack.Decoder(kind) if fmt == MSGPACK else msgspec.json.Decoder(kind)
        _DECODERS[(kind, fmt)] = dec
    return dec


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _lone_surrogate(obj: Any, path: str = "") -> tuple[str, int] | None:
    """(field path, character) of the first string with a lone UTF-16 surrogate in ``obj``."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as exc:
            return path or "request body", exc.start
        return None
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            if (hit := _lone_surrogate(v, f"{path}[{i}]")) is not None:
                return hit
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if (hit := _lone_surrogate(k, f"a field name in {path or 'the request'}")) is not None:
                return hit
            if (hit := _lone_surrogate(v, f"{path}.{k}" if path else str(k))) is not None:
                return hit
    return None


def decode(data: bytes, fmt: str, kind: type[T]) -> T:
    """``data`` (JSON or msgpack) decoded and validated as ``kind``: 400 when it is not JSON /
    msgpack at all, 422 naming the field when it is but does not fit."""
    if not data:
        raise ApiError(400, "empty request body: send a JSON or msgpack object", "malformed")
    try:
        return _decoder(kind, fmt).decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise _fail(explain(str(exc))) from None
    except RecursionError:
        raise ApiError(400, "malformed body: nested too deeply", "malformed") from None
    except msgspec.DecodeError as exc:
        if fmt == JSON:
            # msgspec refuses "\ud800" as malformed JSON; it is valid JSON carrying invalid text
            # (a 422). The standard parser says better what else is wrong ("NaN is not a JSON number").
            try:
                parsed = json.loads(data, parse_constant=_no_constant)
            except (ValueError, RecursionError) as std:
                raise ApiError(400, f"malformed JSON body ({std.__class__.__name__}: {std})", "malformed") from None
            hit = _lone_surrogate(parsed)
            if hit is not None:
                raise _fail(f"{hit[0]} contains a lone UTF-16 surrogate at character {hit[1]}: send valid "
                            f"Unicode text") from None
        name = "msgpack" if fmt == MSGPACK else "JSON"
        raise ApiError(400, f"malformed {name} body ({exc})", "malformed") from None


# -- checks msgspec cannot express ---------------------------------------------------------------

_INT64 = (-(2**63), 2**63 - 1)


def _query(query: str, limits: Limits, where: str) -> str:
    if len(query) > limits.max_query_chars:
        raise _fail(f"{where}query is {len(query)} characters long; the limit is {limits.max_query_chars}")
    return query


def _docid(value: Any, where: str) -> DocId:
    if type(value) is str or (type(value) is int and _INT64[0] <= value <= _INT64[1]):
        return value  # type: ignore[no-any-return]
    raise _fail(f"{where} must be a string or a 64-bit integer, not {_type(value)}")


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _ids(ids: list[DocId], limits: Limits, where: str) -> bool:
    """Whether every id is an int (msgspec already refused anything but strings and 64-bit ints)."""
    if len(ids) > limits.max_documents:
        raise _fail(f"{where}{len(ids)} ids; the limit is {limits.max_documents} per query")
    return set(map(type, ids)) == {int}  # one C-level pass: this is the hot path


MAX_DEPTH = 32  # nesting of a document's extra fields (they are echoed back: encoding recurses)


def _plain(doc: Mapping[str, Any], where: str) -> None:
    """A document's extra fields must be plain JSON data nested at most MAX_DEPTH deep: they may
    be echoed in JSON (msgpack can carry extension types and non-string keys), and encoding
    them recurses. Iterative, so that no depth is too deep to check."""
    stack: list[tuple[Any, str, int]] = [(doc, where, 0)]
    while stack:
        value, at, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _fail(f"{at} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, msgspec.msgpack.Ext):
            raise _fail(f"{at} is a msgpack extension type; send plain data")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise _fail(f"{at} has a key that is not a string ({_type(k)})")
                stack.append((v, f"{at}.{k}", depth + 1))
        elif isinstance(value, list):
            stack.extend((v, f"{at}[{i}]", depth + 1) for i, v in enumerate(value))


def _ranked_text(doc: Mapping[str, Any], rank_fields: list[str] | None, where: str) -> str | None:
    """The text a document object is scored by: ``text``, or with ``rank_fields`` those fields
    as "name: value" lines in the order given (Cohere's YAML-like rendering of semi-structured
    documents); fields a document lacks are left out."""
    if rank_fields is None:
        text = doc.get("text")
        if text is not None and type(text) is not str:
            raise _fail(f"{where}.text must be a string, not {_type(text)}")
        return text
    lines = []
    for name in rank_fields:
        value = doc.get(name)
        if value is None:
            continue
        if type(value) is bool or not isinstance(value, str | int | float):
            raise _fail(f"{where}.{name} (a rank field) must be a string or a number, not {_type(value)}")
        lines.append(f"{name}: {value}")
    return "\n".join(lines) if lines else None


def _documents(docs: list[Any], limits: Limits, where: str, rank_fields: list[str] | None,
               fmt: str) -> list[Document]:
    if len(docs) > limits.max_documents:
        raise _fail(f"{where}{len(docs)} documents; the limit is {limits.max_documents} per query")
    out = []
    for i, d in enumerate(docs):
        at = f"{where}documents[{i}]"
        if type(d) is str:
            text: str | None = d
            doc_id: DocId | None = None
            echo: Mapping[str, Any] = {"text": d}
        else:
            _plain(d, at)
            doc_id = _docid(d["id"], f"{at}.id") if d.get("id") is not None else None
            text = _ranked_text(d, rank_fields, at)
            if doc_id is None and text is None:
                fields = f"any of rank_fields {rank_fields}" if rank_fields is not None else "a \"text\""
                raise _fail(f"{at} needs an \"id\" (index docid) or {fields}")
            echo = d
        if text is not None and len(text) > limits.max_text_chars:
            raise _fail(f"{at}.text is {len(text)} characters; the limit is {limits.max_text_chars}")
        out.append(Document(doc_id, text, echo))
    return out


def _candidates(ids: list[DocId] | None, docs: list[Any] | None, limits: Limits, where: str,
                rank_fields: list[str] | None, fmt: str) -> tuple[list[DocId] | None, list[Document] | None, bool]:
    if (ids is None) == (docs is None):
        raise _fail(f"{where}give exactly one of \"ids\" (index docids) or \"documents\"")
    if ids is not None:
        return ids, None, _ids(ids, limits, where)
    assert docs is not None
    return None, _documents(docs, limits, where, rank_fields, fmt), False


def parse_rerank(data: bytes, fmt: str, limits: Limits) -> RerankRequest:
    body = decode(data, fmt, RerankV1Request)
    ids, docs, int_ids = _candidates(body.ids, body.documents, limits, "", body.rank_fields, fmt)
    return RerankRequest(
        query=_query(body.query, limits, ""), ids=ids, documents=docs, top_n=body.top_n,
        return_documents=body.return_documents, missing=body.missing, int_ids=int_ids, mode=body.mode,
        max_tokens_per_doc=body.max_tokens_per_doc, max_chunks_per_doc=body.max_chunks_per_doc, score=body.score,
    )


def parse_batch(data: bytes, fmt: str, limits: Limits) -> Batch:
    body = decode(data, fmt, BatchRerankRequest)
    if len(body.queries) > limits.max_batch_queries:
        raise _fail(f"{len(body.queries)} queries; the limit is {limits.max_batch_queries} per batch")
    items = []
    for qi, item in enumerate(body.queries):
        where = f"queries[{qi}]."
        ids, docs, int_ids = _candidates(item.ids, item.documents, limits, where, body.rank_fields, fmt)
        item_id = _docid(item.id, f"{where}id") if item.id is not None else None
        top_n = item.top_n if item.top_n is not None else body.top_n
        items.append(RerankRequest(_query(item.query, limits, where), ids, docs, top_n, body.return_documents,
                                   None, item_id, int_ids, score=body.score))
    return Batch(items, body.missing, body.mode, body.score, body.max_tokens_per_doc, body.max_chunks_per_doc)


def parse_v2(data: bytes, fmt: str, limits: Limits) -> RerankRequest:
    body = decode(data, fmt, RerankV2Request)
    docs = _documents(body.documents, limits, "", None, fmt)
    return RerankRequest(query=_query(body.query, limits, ""), ids=None, documents=docs, top_n=body.top_n,
                         missing=body.missing, mode=body.mode, max_tokens_per_doc=body.max_tokens_per_doc,
                         score=body.score)


def parse_tei(data: bytes, fmt: str, limits: Limits) -> tuple[RerankRequest, TeiRerankRequest]:
    body = decode(data, fmt, TeiRerankRequest)
    if (body.texts is None) == (body.documents is None):
        raise _fail('give exactly one of "texts" (text-embeddings-inference) or "documents" (Infinity)')
    docs = _documents(body.texts if body.texts is not None else body.documents or [], limits, "", None, fmt)
    req = RerankRequest(query=_query(body.query, limits, ""), ids=None, documents=docs, top_n=body.top_n,
                        missing=body.missing, mode=body.mode, score="raw" if body.raw_scores else "calibrated")
    return req, body


def parse_search(data: bytes, fmt: str, limits: Limits) -> SearchRequest:
    body = decode(data, fmt, SearchRequest)
    _query(body.query, limits, "")
    if body.k > limits.max_documents:
        raise _fail(f"k (first-stage depth) must be at most {limits.max_documents} (max_documents), not {body.k}")
    return body


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

_JSON_ENC = msgspec.json.Encoder()
_MSGPACK_ENC = msgspec.msgpack.Encoder()

# msgpack: {"index": uint32, "id": int64, "relevance_score": float64} as one fixed-size record;
# decoders accept the non-minimal int widths, and numpy builds all records in one go (measured
# ~3x faster than msgspec encoding the Structs, 45 vs 153 us for 1,000: benchmarks/service_codec.py).
_MP_RECORD = np.dtype([
    ("head", "S8"), ("index", ">u4"),       # fixmap(3) fixstr "index" 0xce
    ("k_id", "S4"), ("id", ">i8"),           # fixstr "id" 0xd3
    ("k_score", "S17"), ("score", ">f8"),    # fixstr "relevance_score" 0xcb
])
_MP_HEAD = b"\x83\xa5index\xce"
_MP_ID = b"\xa2id\xd3"
_MP_SCORE = b"\xafrelevance_score\xcb"


def encode(obj: Any, fmt: str) -> bytes:
    """``obj`` (Structs, dicts, lists, ``msgspec.Raw``) in ``fmt``; text that is not valid
    Unicode (a message quoting the client) goes out escaped."""
    if fmt == MSGPACK:
        return _MSGPACK_ENC.encode(obj)
    try:
        return _JSON_ENC.encode(obj)
    except UnicodeEncodeError:
        return json.dumps(msgspec.to_builtins(obj), ensure_ascii=True, separators=(",", ":")).encode("ascii")


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


def check_finite(ranked: Ranked, ids: Sequence[DocId | None] | None = None) -> None:
    """NaN/inf is no JSON number (and no ranking): a damaged index. Such a score is never sent,
    in JSON or msgpack; the request is answered 500 ``non_finite_score`` naming the candidates
    (by id, or by position for the texts-only endpoints)."""
    finite = np.isfinite(ranked.scores)
    if not finite.all():
        positions = ranked.order[~finite][:5].tolist()
        bad = [f"documents[{i}]" for i in positions] if ids is None else [ids[i] for i in positions]
        raise ApiError(500, f"non-finite score for candidate(s) {bad}: the index holds non-finite weights "
                            f"(check it with tilde index verify)"[:300], "non_finite_score")


def render_results(
    fmt: str,
    ranked: Ranked,
    ids: Sequence[DocId | None],
    documents: Sequence[Document] | None,
    int_ids: bool = False,
) -> bytes:
    """The ``results`` array of :class:`RerankResult`, already encoded, built from the score
    arrays: msgspec encodes the Structs (~4x faster than formatting JSON in Python); msgpack with
    integer ids and no documents is one numpy record array, no Python object per result."""
    check_finite(ranked, ids)
    if fmt != JSON and documents is None and int_ids:  # validated: every id is an int within int64
        id_arr = np.asarray(ids, dtype=np.int64)[ranked.order]
        return _msgpack_int_records(ranked.order, id_arr, ranked.scores)
    order, scores = ranked.order.tolist(), ranked.scores.tolist()
    if documents is None:  # map over the positional constructor: ~1.6x faster than a comprehension
        return encode(list(map(RerankResult, order, _pick(ids, order), scores)), fmt)
    echoes = [dict(d.echo) for d in _pick(documents, order)]
    return encode(list(map(RerankResult, order, _pick(ids, order), scores, echoes)), fmt)


def _pick(seq: Sequence[Any], order: list[int]) -> Sequence[Any]:
    """``[seq[i] for i in order]`` in one C call."""
    if len(order) < 2:
        return [seq[i] for i in order]
    return operator.itemgetter(*order)(seq)  # type: ignore[no-any-return]


def render_v2(fmt: str, ranked: Ranked) -> bytes:
    check_finite(ranked)
    return encode(list(map(RerankV2Result, ranked.order.tolist(), ranked.scores.tolist())), fmt)


def render_tei(fmt: str, ranked: Ranked, texts: Sequence[str] | None) -> bytes:
    """TEI's bare array, best first; ``texts``: with return_text."""
    check_finite(ranked)
    order, scores = ranked.order.tolist(), ranked.scores.tolist()
    if texts is None:
        return encode(list(map(TeiRank, order, scores)), fmt)
    return encode(list(map(TeiRank, order, scores, _pick(texts, order))), fmt)


def render_infinity(fmt: str, ranked: Ranked, texts: Sequence[str] | None) -> bytes:
    """Infinity's results, best first; ``texts``: with return_documents."""
    check_finite(ranked)
    order, scores = ranked.order.tolist(), ranked.scores.tolist()
    if texts is None:
        return encode(list(map(InfinityResult, order, scores)), fmt)
    return encode(list(map(InfinityResult, order, scores, _pick(texts, order))), fmt)


def render_search(fmt: str, ranked: Ranked, ids: Sequence[DocId], first_stage: Sequence[float],
                  texts: Sequence[str | None] | None) -> bytes:
    check_finite(ranked, ids)
    order, scores = ranked.order.tolist(), ranked.scores.tolist()
    picked = (_pick(ids, order), scores, _pick(first_stage, order))
    if texts is None:
        return encode(list(map(SearchResult, order, *picked)), fmt)
    return encode(list(map(SearchResult, order, *picked, [{"text": t} for t in _pick(texts, order)])), fmt)
