"""The OpenAPI 3.1 description served at ``/openapi.json`` (limits filled from the config)."""

from __future__ import annotations

from typing import Any

from tilde import __version__
from tilde.rank import MISSING_POLICIES

from .config import ServiceConfig

__all__ = ["openapi_spec"]

_BODY_TYPES = ("application/json", "application/msgpack")
_ERROR_STATUSES = {
    "400": "Malformed body (not valid JSON / msgpack)",
    "404": "No BM25 index configured for /v1/search (code not_configured)",
    "401": "Missing or invalid API key (when the server has keys; code unauthorized)",
    "408": "The body did not arrive within the server's body timeout (code request_timeout)",
    "413": "Body larger than max_body_bytes (also when chunked), or a response larger than max_response_bytes "
           "(code over_budget)",
    "415": "Content-Type is neither JSON nor msgpack",
    "422": "Validation failed: wrong types, empty query, text that is not valid Unicode (lone surrogates), too many "
           "documents, unknown ids under the 'error' policy (code unknown_ids), too many texts to encode (code "
           "too_many_texts), over the cost budget (code over_budget: max_candidates, max_query_chars_total, max_work)",
    "429": "The worker is busy beyond max_queue: retry after the Retry-After header (code too_many_requests)",
    "500": "Internal error, including a non-finite score from a damaged index (code non_finite_score)",
    "503": "Index not loaded yet (code not_ready), or the request's deadline passed (code deadline_exceeded)",
}


_WORK_ERRORS = ("400", "401", "408", "413", "415", "422", "429", "500", "503")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {t: {"schema": schema} for t in _BODY_TYPES}


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: {"description": _ERROR_STATUSES[s], "content": _content(_ref("Error"))} for s in statuses}


def openapi_spec(config: ServiceConfig) -> dict[str, Any]:
    mode_schema = {
        "type": "string", "maxLength": 200,
        "description": "Scoring mode: tokens, mlm, dense, fused, or fused:SIGNAL=WEIGHT,... "
                       "(default: the service's --mode, else what the index recommends; see /info)"}
    docid = {"oneOf": [{"type": "string"}, {"type": "integer", "format": "int64"}]}
    candidates = {
        "ids": {"type": "array", "items": docid, "maxItems": config.max_documents,
                "description": "Index docids (the fast path). Give ids or documents, not both."},
        "documents": {
            "type": "array", "maxItems": config.max_documents,
            "items": {"oneOf": [
                {"type": "string", "maxLength": config.max_text_chars,
                 "description": "A text (scored on the fly when the service has a model)"},
                {"$ref": "#/components/schemas/Document"},
            ]},
        },
    }
    schemas: dict[str, Any] = {
        "Document": {
            "type": "object", "additionalProperties": False,
            "properties": {"id": docid, "text": {"type": "string", "maxLength": config.max_text_chars}},
            "description": "An index docid, a text, or both: the id is looked up first; a text is encoded on the "
                           "fly only when the id is absent from the index (and a model is configured).",
        },
        "RerankRequest": {
            "type": "object", "required": ["query"], "additionalProperties": False,
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": config.max_query_chars},
                **candidates,
                "top_n": {"type": ["integer", "null"], "minimum": 1},
                "return_documents": {"type": "boolean", "default": False},
                "missing": {"enum": list(MISSING_POLICIES), "default": config.missing,
                            "description": "Candidates not in the index: error (422), skip, or zero (last, score 0)"},
                "model": {"type": "string", "description": "Accepted for Cohere compatibility; ignored"},
                "max_tokens_per_doc": {"type": "integer", "description": "Accepted; passages use 192 tokens"},
                "mode": mode_schema,
            },
        },
        "Result": {
            "type": "object", "required": ["index", "id", "relevance_score"],
            "properties": {
                "index": {"type": "integer", "description": "Position in the request's ids/documents"},
                "id": {"oneOf": [docid, {"type": "null"}]},
                "relevance_score": {"type": "number", "description": "The mode's score: tokens/mlm a sum of stored "
                                    "weights, dense an inner product, fused a weighted sum of min-max normalised "
                                    "signals in [0, 1]"},
                "document": {"type": "object"},
            },
        },
        "Report": {
            "type": "object",
            "properties": {"index": {"type": "integer"}, "id": {"oneOf": [docid, {"type": "null"}]},
                           "reason": {"enum": ["not_in_index", "no_model"]}},
        },
        "Meta": {
            "type": "object",
            "properties": {
                "timing": {"type": "object", "additionalProperties": {"type": "number"},
                           "description": "Milliseconds per stage: parse, tokenize, lookup, score, encode, sort, "
                                          "serialize, total"},
                "energy": {"type": "object", "properties": {"joules": {"type": "number"},
                                                            "method": {"type": "string"}}},
                "missing": {"type": "array", "items": _ref("Report")},
                "encoded": {"type": "array", "items": _ref("Report"),
                            "description": "Documents scored by encoding their text on the fly (no expansion)"},
                "query_tokens": {"type": "integer"},
                "feedback_terms": {"type": "integer",
                                   "description": "Expansion tokens added by pseudo-relevance feedback (see /info)"},
                "mode": {"type": "string", "description": "The scoring mode that ranked the results"},
                "signals": {"type": "array", "items": {"type": "string"},
                            "description": "The signals that took part (tokens, mlm, dense, first_stage)"},
            },
        },
        "RerankResponse": {
            "type": "object",
            "properties": {"id": {"type": "string"}, "results": {"type": "array", "items": _ref("Result")},
                           "meta": _ref("Meta")},
        },
        "BatchRequest": {
            "type": "object", "required": ["queries"], "additionalProperties": False,
            "properties": {
                "queries": {
                    "type": "array", "minItems": 1, "maxItems": config.max_batch_queries,
                    "items": {"type": "object", "required": ["query"],
                              "properties": {"id": docid, "query": {"type": "string"}, **candidates,
                                             "top_n": {"type": ["integer", "null"], "minimum": 1}}},
                },
                "top_n": {"type": ["integer", "null"], "minimum": 1},
                "return_documents": {"type": "boolean"},
                "missing": {"enum": list(MISSING_POLICIES)},
                "mode": mode_schema,
            },
        },
        "BatchResponse": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "index": {"type": "integer"}, "id": {"oneOf": [docid, {"type": "null"}]},
                    "results": {"type": "array", "items": _ref("Result")},
                    "missing": {"type": "array", "items": _ref("Report")},
                    "encoded": {"type": "array", "items": _ref("Report")},
                    "query_tokens": {"type": "integer"}, "feedback_terms": {"type": "integer"}}}},
                "meta": _ref("Meta"),
            },
        },
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"],
                                     "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
        },
    }
    headers = {
        "X-Request-Id": {"schema": {"type": "string"}, "description": "Echoes a valid X-Request-Id, else generated"},
        "Server-Timing": {"schema": {"type": "string"}, "description": "Per-stage milliseconds"},
    }

    def ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "headers": headers, "content": _content(schema)}

    simple = {"type": "object", "properties": {"status": {"type": "string"}}}
    paths = {
        "/v1/rerank": {"post": {
            "summary": "Re-rank candidates for one query (Cohere-compatible, plus ids)",
            "requestBody": {"required": True, "content": _content(_ref("RerankRequest"))},
            "responses": {"200": ok(_ref("RerankResponse"), "Results, best first"),
                          **_errors(*_WORK_ERRORS)},
        }},
        "/v1/rerank/batch": {"post": {
            "summary": "Re-rank many queries in one request",
            "requestBody": {"required": True, "content": _content(_ref("BatchRequest"))},
            "responses": {"200": ok(_ref("BatchResponse"), "One result list per query, in request order"),
                          **_errors(*_WORK_ERRORS)},
        }},
        "/v1/search": {"post": {
            "summary": "First stage (embedded BM25) + TILDEv2 re-ranking in one call",
            "requestBody": {"required": True, "content": _content({
                "type": "object", "required": ["query"], "additionalProperties": False,
                "properties": {
                    "query": {"type": "string", "minLength": 1},
                    "k": {"type": "integer", "minimum": 1, "default": 1000,
                          "description": "first-stage depth: BM25 candidates re-ranked"},
                    "top_n": {"type": "integer", "minimum": 0},
                    "mode": mode_schema,
                }})},
            "responses": {"200": ok({"type": "object", "properties": {
                "id": {"type": "string"},
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "index": {"type": "integer", "description": "rank in the BM25 list (0-based)"},
                    "id": {"type": "string"},
                    "relevance_score": {"type": "number", "description": "TILDEv2 score"},
                    "first_stage_score": {"type": "number", "description": "BM25 score"}}}},
                "meta": {"type": "object"}}}, "Results, best first"),
                **_errors("404", *_WORK_ERRORS)},
        }},
        "/health": {"get": {"summary": "Liveness", "responses": {"200": ok(simple, "The process is up")}}},
        "/ready": {"get": {"summary": "Readiness: index (and model) loaded",
                           "responses": {"200": ok(simple, "Ready"), **_errors("503")}}},
        "/info": {"get": {"summary": "Model, index statistics, limits, energy meter method",
                          "responses": {"200": ok({"type": "object"}, "Service description")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tilde re-ranking service", "version": __version__,
                 "description": "TILDEv2 passage re-ranking on CPUs. Bodies are JSON or msgpack "
                                "(Content-Type / Accept: application/msgpack)."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "Required on every endpoint but /health and /ready when the server has API keys"}}},
        # every limit the server enforces, as in /info (a batch counts all its queries)
        "x-tilde-limits": config.limits(),
    }
