"""The Flask app: ``create_app(config)`` loads one index + tokenizer (and optionally a model) and
serves the re-ranking API. Handlers are a few lines each: decode, validate (``schemas``), rank
(``engine``), render. Every request gets an ``X-Request-Id`` and a ``Server-Timing`` header; every
error, including 404/405/413 and unexpected exceptions, is ``{"error": {"code", "message"}}``.

A POST to a scoring endpoint skips Flask's dispatch: the WSGI wrapper (``_Instrumented``) hands it
straight to the endpoint's function with a ``Request`` of its own, through the same authentication
and error handlers (tests/test_service_fastpath.py holds the two paths to the same answers). Every
other request, including another method on those paths (405), goes through Flask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec
import numpy as np
from flask import Flask, Request, Response, request
from werkzeug.exceptions import HTTPException

from tilde.rank.calibration import calibrated_scores, calibration_for

from . import schemas, wire
from .config import ServiceConfig, from_env
from .engine import EncodeBudget, StageClock
from .errors import STATUS_CODES, ApiError, ReadTimeout
from .limits import Deadline, Gate, check_budget
from .openapi import openapi_spec
from .schemas import Document, Ranked, RerankRequest
from .state import ServiceState

logger = logging.getLogger(__name__)

__all__ = ["create_app", "get_state"]

ENDPOINTS = frozenset({"/v1/rerank", "/v1/rerank/batch", "/v2/rerank", "/rerank", "/v1/search", "/health", "/ready",
                       "/info", "/metrics", "/openapi.json"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
OPEN_ENDPOINTS = frozenset({"/health", "/ready"})  # answered without an API key (probes)
_EXT = "tilde"


def get_state(app: Flask) -> ServiceState:
    return app.extensions[_EXT]  # type: ignore[no-any-return]


class _Instrumented:
    """WSGI wrapper: request id, request duration and status metrics, a ``Server-Timing`` total
    for responses that have none, and a last-resort JSON 500 should the app itself raise."""

    def __init__(self, wsgi: Callable[..., Iterable[bytes]], state: ServiceState,
                 posts: Mapping[str, Callable[[dict[str, Any]], Response]] | None = None) -> None:
        self.wsgi = wsgi
        self.metrics = state.metrics
        # POST path -> a function answering it without Flask's routing and request context (see
        # create_app's ``serve``): the same checks and errors, ~45 us less per request.
        self.posts = posts or {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        t0 = time.perf_counter()
        rid = environ.get("HTTP_X_REQUEST_ID", "")
        if not _REQUEST_ID.match(rid):
            rid = uuid.uuid4().hex
        environ["tilde.request_id"] = rid
        path = environ.get("PATH_INFO", "")
        endpoint = path if path in ENDPOINTS else "other"
        method = environ.get("REQUEST_METHOD", "")

        def instrumented_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seconds = time.perf_counter() - t0
            headers.append(("X-Request-Id", rid))
            if not any(k == "Server-Timing" for k, _ in headers):
                headers.append(("Server-Timing", f"total;dur={seconds * 1e3:.3f}"))
            self.metrics.observe_request(endpoint, method, status[:3], seconds)
            return start_response(status, headers, exc_info)

        try:
            post = self.posts.get(path) if method == "POST" else None
            if post is not None:
                return post(environ)(environ, instrumented_start_response)
            return self.wsgi(environ, instrumented_start_response)
        except Exception:  # Flask handles errors itself; this only guards against a broken app
            logger.exception("unhandled error in request %s", rid)
            body = wire.encode(ApiError(500, f"internal error (request id {rid})").body(), wire.JSON)
            instrumented_start_response("500 INTERNAL SERVER ERROR",
                                        [("Content-Type", wire.JSON), ("Content-Length", str(len(body)))],
                                        None)
            return [body]


def _formats(r: Request) -> tuple[str, str]:
    """(request body format, response format); an unsupported request type is a 415."""
    mimetype = r.mimetype
    out = wire.response_format(r.headers.get("Accept"), mimetype)
    return wire.request_format(mimetype), out


def _reply(obj: Any, fmt: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(wire.encode(obj, fmt), status=status, headers=headers, content_type=fmt)


def _meta(clock: StageClock, method: str, ranked: Ranked | None = None,
          calibration: Mapping[str, float] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "timing": {k: round(v, 4) for k, v in clock.timing.items()},
        "energy": {"joules": clock.joules, "method": method},
        "score": "raw" if calibration is None else "calibrated",
    }
    if ranked is not None:
        meta["missing"] = ranked.missing
        meta["encoded"] = ranked.encoded
        meta["query_tokens"] = ranked.query_tokens
        meta["feedback_terms"] = ranked.feedback_terms
        meta["mode"] = ranked.mode
        meta["signals"] = list(ranked.signals)
    return meta


def _calibration(reranker: Any, mode: str | None, score: str, strict: bool = True) -> Mapping[str, float] | None:
    """The index's logistic for scores made in ``mode`` when ``score`` is "calibrated" (None for
    raw scores). The index has none for the mode: a 422 (``strict``), else None (raw scores)."""
    if score == "raw":
        return None
    try:
        used = reranker.scoring if mode is None else reranker._scoring(mode)
    except ValueError as exc:  # a malformed mode
        raise ApiError(422, str(exc), "invalid") from None
    params: Mapping[str, float] | None = calibration_for(reranker.recommended, used)
    if params is None and strict:
        raise ApiError(422, f"calibration not available for this index and mode {used}: its manifest has no "
                            f"scoring.calibration for it (fit one with python -m eval.calibrate), or send "
                            f"\"score\": \"raw\"", "calibration_unavailable")
    return params


def _calibrated(ranked: Ranked, params: Mapping[str, float]) -> Ranked:
    """``ranked`` with its scores mapped to 0-1 (a monotonic map: the order stands). Candidates
    appended under the "zero" policy keep 0.0, the floor of the scale."""
    scores = calibrated_scores(ranked.scores, params)
    if ranked.missing:
        scores[np.isin(ranked.order, [m["index"] for m in ranked.missing])] = 0.0
    return dataclasses.replace(ranked, scores=scores)


def _index_ids(docids: list[str], kind: str) -> list[Any]:
    """First-stage docids (strings) in the index's docid type: integers for an index of numeric
    docids ("int", "range"), as /v1/rerank answers ids sent as integers."""
    if kind in ("int", "range"):
        try:
            return [int(d) for d in docids]
        except ValueError:
            pass
    return docids


def _passage_texts(state: ServiceState, docids: list[str]) -> list[str | None]:
    """The passage texts behind ``return_documents`` on /v1/search: from the BM25 index that
    stores them (``state.text_store``, or the BM25 first stage itself when it ``has_texts``;
    ``texts(docids)``, None for an id it lacks). None stores them: a 422 saying so, never an
    invented text."""
    store = getattr(state, "text_store", None)
    if store is None and getattr(state.bm25, "has_texts", False):
        store = state.bm25
    if store is None:
        raise ApiError(422, "return_documents: this server's BM25 index stores no passage texts, so /v1/search "
                            "cannot return them (rebuild it with a tilde that keeps texts); send return_documents "
                            "false and look the ids up in your collection", "texts_unavailable")
    return list(store.texts(docids))


def _echo(req: RerankRequest) -> list[Document] | None:
    if not req.return_documents:
        return None
    if req.documents is not None:
        return req.documents
    return [Document(d, None, {"id": d}) for d in req.ids or ()]


def _candidate_ids(req: RerankRequest) -> list[Any]:
    return req.ids if req.ids is not None else [d.id for d in req.documents or ()]


def create_app(config: ServiceConfig | None = None, *, load_encoder: bool = True) -> Flask:
    """A Flask app serving ``config.index``. ``config`` defaults to ``TILDE_*`` env vars.

    With ``config.eager`` (default) the index is opened here; otherwise ``/ready`` answers 503
    until ``get_state(app).load()`` is called. ``load_encoder=False`` defers loading the model
    (a gunicorn master that forks workers calls ``load()`` again in each worker)."""
    config = config if config is not None else from_env(ServiceConfig)
    state = ServiceState(config)
    if config.eager:
        state.load(encoder=load_encoder)
    app = Flask(__name__, root_path=os.path.dirname(os.path.abspath(__file__)))
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    # "/v1//rerank" is a 404 like any unknown path, not an HTML 308 redirect to "/v1/rerank"
    app.url_map.merge_slashes = False
    app.extensions[_EXT] = state
    limits = schemas.Limits(config.max_documents, config.max_batch_queries, config.max_text_chars,
                            config.max_query_chars)
    method = state.recorder.method
    gate = Gate(config.concurrency, config.max_queue)
    state.gate = gate
    # Only digests are kept; comparing digests makes the comparison constant-time in the key
    # length too. Keys never appear in a log line, a message or /info.
    key_digests = [hashlib.sha256(k.encode()).digest() for k in config.keys()]
    challenge = {"WWW-Authenticate": 'Bearer realm="tilde"'}

    @app.before_request
    def authenticate_flask() -> None:
        authenticate(request)

    def authenticate(r: Request) -> None:
        if not key_digests or r.path in OPEN_ENDPOINTS:
            return
        scheme, _, token = r.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "an API key is required: send the header Authorization: Bearer <key>",
                           "unauthorized", challenge)
        given = hashlib.sha256(token.encode("latin-1", "replace")).digest()
        ok = False
        for digest in key_digests:  # every key is compared, match or not
            ok |= hmac.compare_digest(given, digest)
        if not ok:
            raise ApiError(401, "invalid API key", "unauthorized", challenge)

    def engine() -> Any:
        if state.engine is None or not state.ready:
            raise ApiError(503, "the index is not loaded yet; poll /ready", "not_ready")
        return state.engine

    def read_body(r: Request) -> bytes:
        """The request body, at most max_body_bytes (413), also when it comes chunked; a client
        that does not send it within the server's body timeout gets a 408."""
        limit = config.max_body_bytes
        length = r.content_length
        too_large = ApiError(413, f"request body larger than {limit} bytes (max_body_bytes)", "too_large")
        if length is not None and length > limit:
            raise too_large
        try:
            if length is not None or not r.environ.get("wsgi.input_terminated"):
                return r.get_data(cache=False)
            stream, size = r.environ["wsgi.input"], 0
            chunks: list[bytes] = []
            while True:  # chunked: no Content-Length to check up front
                chunk = stream.read(min(1 << 20, limit + 1 - size))
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise too_large
        except ReadTimeout as exc:
            raise ApiError(408, str(exc) or "request body not received in time", "request_timeout") from None

    def work(r: Request, handler: Callable[[Any, str, str, bytes, Deadline, str], Response]) -> Response:
        """Every scoring endpoint: the engine, formats, body, deadline and a scoring slot."""
        eng = engine()
        fmt_in, fmt = _formats(r)
        data = read_body(r)
        deadline = Deadline(config.deadline)
        with gate.slot(deadline):
            return handler(eng, fmt_in, fmt, data, deadline, str(r.environ["tilde.request_id"]))

    def rank(eng: Any, req: RerankRequest, clock: StageClock, policy: str, budget: EncodeBudget, q: np.ndarray,
             calibration: Mapping[str, float] | None, where: str = "", mode: str | None = None,
             first_stage: np.ndarray | None = None, max_tokens_per_doc: int | None = None,
             max_chunks_per_doc: int | None = None) -> Ranked:
        """Engine.rank, then calibrated scores when ``calibration`` is given."""
        ranked = eng.rank(req, policy, clock, budget, where=where, mode=mode, first_stage=first_stage, q=q,
                          max_tokens_per_doc=max_tokens_per_doc, max_chunks_per_doc=max_chunks_per_doc)
        return ranked if calibration is None else _calibrated(ranked, calibration)

    def reply(fmt: str, response: Any, clock: StageClock, headers: dict[str, str] | None = None) -> Response:
        body = schemas.encode(response, fmt)
        return Response(body, content_type=fmt, headers={"Server-Timing": clock.server_timing(), **(headers or {})})

    def single(eng: Any, req: RerankRequest, clock: StageClock, calibration: Mapping[str, float] | None,
               max_tokens: int | None = None, max_chunks: int | None = None) -> Ranked:
        """Budget, tokenize and rank one query (/v1/rerank, /v2/rerank, /rerank)."""
        check_budget([req], None, config, eng.query_encodes(req.mode))
        clock.lap("parse")
        q = eng.query_ids(req.query)
        check_budget([req], [q], config)
        clock.lap("tokenize")
        return rank(eng, req, clock, req.missing or config.missing, EncodeBudget(config.max_encode), q, calibration,
                    mode=req.mode, max_tokens_per_doc=max_tokens, max_chunks_per_doc=max_chunks)

    def finish(clock: StageClock, ranked: Ranked, n: int, calibration: Mapping[str, float] | None) -> dict[str, Any]:
        clock.lap("serialize", len(ranked.order))
        clock.finish(n)
        state.metrics.observe_work(1, n - len(ranked.encoded), len(ranked.encoded))
        return _meta(clock, method, ranked, calibration)

    def _rerank_v1(eng: Any, fmt_in: str, fmt: str, data: bytes, deadline: Deadline, rid: str) -> Response:
        clock = StageClock(state.recorder, deadline)
        req = schemas.parse_rerank(data, fmt_in, limits)
        cal = _calibration(eng.reranker, req.mode, req.score)
        ranked = single(eng, req, clock, cal, req.max_tokens_per_doc, req.max_chunks_per_doc)
        results = schemas.render_results(fmt, ranked, _candidate_ids(req), _echo(req), req.int_ids)
        meta = finish(clock, ranked, len(req), cal)
        return reply(fmt, schemas.RerankResponse(rid, msgspec.Raw(results), meta), clock)  # type: ignore[arg-type]

    def _rerank_v2(eng: Any, fmt_in: str, fmt: str, data: bytes, deadline: Deadline, rid: str) -> Response:
        clock = StageClock(state.recorder, deadline)
        req = schemas.parse_v2(data, fmt_in, limits)
        cal = _calibration(eng.reranker, req.mode, req.score)
        ranked = single(eng, req, clock, cal, req.max_tokens_per_doc)
        results = schemas.render_v2(fmt, ranked)
        meta = finish(clock, ranked, len(req), cal)
        return reply(fmt, schemas.RerankV2Response(rid, msgspec.Raw(results), meta), clock)  # type: ignore[arg-type]

    def _rerank_tei(eng: Any, fmt_in: str, fmt: str, data: bytes, deadline: Deadline, rid: str) -> Response:
        """TEI (``texts``: a bare array) or Infinity (``documents``: an object) on one path."""
        clock = StageClock(state.recorder, deadline)
        req, body = schemas.parse_tei(data, fmt_in, limits)
        # raw_scores false (both servers' default): calibrated where the index has a calibration, else raw
        cal = None if body.raw_scores else _calibration(eng.reranker, req.mode, "calibrated", strict=False)
        ranked = single(eng, req, clock, cal)
        kind = {"X-Tilde-Score": "raw" if cal is None else "calibrated"}
        texts = [d.text or "" for d in req.documents or ()]
        if body.texts is not None:
            results = schemas.render_tei(fmt, ranked, texts if body.return_text else None)
            finish(clock, ranked, len(req), cal)
            return Response(results, content_type=fmt, headers={"Server-Timing": clock.server_timing(), **kind})
        results = schemas.render_infinity(fmt, ranked, texts if body.return_documents else None)
        meta = finish(clock, ranked, len(req), cal)
        response = schemas.InfinityRerankResponse(id=rid, model=body.model or "tilde", created=int(time.time()),
                                                  results=msgspec.Raw(results), meta=meta)  # type: ignore[arg-type]
        return reply(fmt, response, clock, kind)

    def _rerank_batch(eng: Any, fmt_in: str, fmt: str, data: bytes, deadline: Deadline, rid: str) -> Response:
        clock = StageClock(state.recorder, deadline)
        batch = schemas.parse_batch(data, fmt_in, limits)
        cal = _calibration(eng.reranker, batch.mode, batch.score)
        check_budget(batch.queries, None, config, eng.query_encodes(batch.mode) * len(batch.queries))
        clock.lap("parse")
        qs = [eng.query_ids(req.query, f"queries[{qi}]: ") for qi, req in enumerate(batch.queries)]
        check_budget(batch.queries, qs, config)
        clock.lap("tokenize")
        policy = batch.missing or config.missing
        budget = EncodeBudget(config.max_encode)
        items = []
        n = encoded = 0
        for qi, req in enumerate(batch.queries):
            ranked = rank(eng, req, clock, policy, budget, qs[qi], cal, where=f"queries[{qi}]: ", mode=batch.mode,
                          max_tokens_per_doc=batch.max_tokens_per_doc, max_chunks_per_doc=batch.max_chunks_per_doc)
            results = schemas.render_results(fmt, ranked, _candidate_ids(req), _echo(req), req.int_ids)
            clock.lap("serialize", len(ranked.order))
            items.append(schemas.BatchItem(qi, req.id, msgspec.Raw(results), ranked.missing,  # type: ignore[arg-type]
                                           ranked.encoded, ranked.query_tokens,  # type: ignore[arg-type]
                                           ranked.feedback_terms))
            n += len(req)
            encoded += len(ranked.encoded)
        clock.lap("serialize", 0)
        clock.finish(n)
        state.metrics.observe_work(len(items), n - encoded, encoded)
        meta = _meta(clock, method, None, cal)
        return reply(fmt, schemas.BatchRerankResponse(rid, items, meta), clock)  # type: ignore[arg-type]

    def search(r: Request) -> Response:
        if state.bm25 is None:
            engine()
            raise ApiError(404, "this server has no first stage: start it with --bm25 DIR (tilde bm25 index) or "
                                "put one at <index>/bm25, or with --first-stage impact", "not_configured")
        return work(r, _search)

    def _search(eng: Any, fmt_in: str, fmt: str, data: bytes, deadline: Deadline, rid: str) -> Response:
        clock = StageClock(state.recorder, deadline)
        sreq = schemas.parse_search(data, fmt_in, limits)
        cal = _calibration(eng.reranker, sreq.mode, sreq.score)
        clock.lap("parse")
        hits = state.bm25.search(sreq.query, sreq.k)
        texts = _passage_texts(state, [h.docid for h in hits]) if sreq.return_documents else None
        clock.lap("first_stage", len(hits))
        ids = _index_ids([h.docid for h in hits], eng.reranker.index.manifest.docid_kind)
        req = RerankRequest(query=sreq.query, ids=ids, documents=None, top_n=sreq.top_n, score=sreq.score)
        check_budget([req], None, config, eng.query_encodes(sreq.mode))
        q = eng.query_ids(req.query)
        check_budget([req], [q], config)
        clock.lap("tokenize")
        # Candidates come from the same collection; one missing from the TILDEv2 index keeps its
        # place at the end with score 0 (reported), never silently dropped.
        ranked = rank(eng, req, clock, "zero", EncodeBudget(0), q, cal, mode=sreq.mode,
                      first_stage=np.array([h.score for h in hits], dtype=np.float64))
        results = schemas.render_search(fmt, ranked, ids, [h.score for h in hits], texts)
        meta = finish(clock, ranked, len(hits), cal)
        meta["first_stage"] = {"engine": getattr(state.bm25, "engine", "bm25"), "k": sreq.k, "hits": len(hits)}
        return reply(fmt, schemas.SearchResponse(rid, msgspec.Raw(results), meta), clock)  # type: ignore[arg-type]

    @app.get("/health")
    def health() -> Response:
        return _reply({"status": "ok"}, _out_format())

    @app.get("/ready")
    def ready() -> Response:
        if not state.ready:
            raise ApiError(503, "not ready: the index (or model) is still loading", "not_ready")
        return _reply({"status": "ready"}, _out_format())

    @app.get("/info")
    def info() -> Response:
        return _reply(state.info(expose_paths=config.expose_paths), _out_format())

    @app.get("/metrics")
    def metrics() -> Response:
        data, content_type = state.metrics.exposition()
        return Response(data, content_type=content_type)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return _reply(openapi_spec(config), wire.JSON)

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return _error(request, exc, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _http_error(request, exc)

    def _http_error(r: Request, exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {k: v for k, v in exc.get_headers() if k == "Allow"}
        if status == 404:
            message = f"no such endpoint {r.path!r}; see /openapi.json"
        elif status == 405:
            message = f"method {r.method} is not allowed on {r.path}; allowed: {headers.get('Allow', '')}"
        elif status == 413:
            message = f"request body larger than {config.max_body_bytes} bytes (max_body_bytes)"
        else:
            message = exc.description or exc.name
        return _error(r, ApiError(status, message, STATUS_CODES.get(status, re.sub(r"\W+", "_", exc.name.lower()))),
                      headers)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        return _internal_error(request, exc)

    def _internal_error(r: Request, exc: Exception) -> Response:
        rid = r.environ.get("tilde.request_id", "")
        logger.exception("internal error in request %s", rid)
        return _error(r, ApiError(500, f"internal error (request id {rid}); see the server log", "internal"))

    # The POST endpoints. Flask routes them too (so that, say, GET /v1/rerank is Flask's 405 with
    # its Allow header), but _Instrumented answers a POST to one of these paths through ``serve``:
    # the same authentication, handler and error handlers as under Flask, without its URL
    # matching, request and app contexts and response finalisation (nothing here uses them: no
    # session, no after_request, no signals), which cost ~45 us of a ~700 us request.
    views: dict[str, Callable[[Request], Response]] = {
        "/v1/rerank": lambda r: work(r, _rerank_v1),
        "/v2/rerank": lambda r: work(r, _rerank_v2),
        "/rerank": lambda r: work(r, _rerank_tei),
        "/v1/rerank/batch": lambda r: work(r, _rerank_batch),
        "/v1/search": search,
    }

    max_body = config.max_body_bytes

    class DirectRequest(Request):
        """A request outside an app context, with the body limit Flask reads from app.config."""

        max_content_length = max_body  # type: ignore[assignment]

    def serve(view: Callable[[Request], Response]) -> Callable[[dict[str, Any]], Response]:
        def answer(environ: dict[str, Any]) -> Response:
            r = DirectRequest(environ)
            try:
                authenticate(r)
                return view(r)
            except ApiError as exc:
                return _error(r, exc, exc.headers)
            except HTTPException as exc:
                return _http_error(r, exc)
            except Exception as exc:
                return _internal_error(r, exc)

        return answer

    for path, view in views.items():
        app.add_url_rule(path, path, lambda view=view: view(request), methods=["POST"])
    app.wsgi_app = _Instrumented(app.wsgi_app, state,  # type: ignore[method-assign]
                                 {path: serve(view) for path, view in views.items()})
    return app


def _out_format(r: Request | None = None) -> str:
    r = request if r is None else r
    return wire.response_format(r.headers.get("Accept"), r.mimetype)


def _error(r: Request, exc: ApiError, headers: dict[str, str] | None = None) -> Response:
    return _reply(exc.body(), _out_format(r), exc.status, headers)
