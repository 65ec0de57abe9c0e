"""The OpenAPI 3.1 description served at ``/openapi.json``: the request and response schemas are
generated from the msgspec Structs of :mod:`service.schemas` (the same types that validate the
bodies), with the limits of the running config filled in; paths and descriptions are here."""

from __future__ import annotations

from typing import Any

import msgspec

from tilde import __version__

from . import schemas
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
    "422": "Validation failed, naming the field: wrong types, unknown fields, empty query, text that is not valid "
           "Unicode (lone surrogates), over a limit (x-tilde-limits), unknown ids under the 'error' policy (code "
           "unknown_ids), too many texts to encode (code too_many_texts), over the cost budget (code over_budget), "
           "score calibrated without a calibration (code calibration_unavailable), return_documents on a BM25 "
           "index without texts (code texts_unavailable)",
    "429": "The worker is busy beyond max_queue: retry after the Retry-After header (code too_many_requests)",
    "500": "Internal error, including a non-finite score from a damaged index (code non_finite_score)",
    "503": "Index not loaded yet (code not_ready), or the request's deadline passed (code deadline_exceeded)",
}
_WORK_ERRORS = ("400", "401", "408", "413", "415", "422", "429", "500", "503")
# Request bodies refuse unknown fields (forbid_unknown_fields); msgspec does not say so in the schema.
_REQUESTS = ("RerankV1Request", "BatchQuery", "BatchRerankRequest", "RerankV2Request", "TeiRerankRequest",
             "SearchRequest")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {t: {"schema": schema} for t in _BODY_TYPES}


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: {"description": _ERROR_STATUSES[s], "content": _content(_ref("ErrorResponse"))} for s in statuses}


def _branch(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an optional property (``anyOf: [T, null]``), else the property."""
    for option in prop.get("anyOf", ()):
        if option.get("type") != "null":
            return option  # type: ignore[no-any-return]
    return prop


def _fill_limits(components: dict[str, Any], config: ServiceConfig) -> None:
    """The config's limits, as the server enforces them after decoding."""
    for name in _REQUESTS:
        comp = components[name]
        comp["additionalProperties"] = False
        props = comp["properties"]
        if "query" in props:
            props["query"]["maxLength"] = config.max_query_chars
        for field in ("ids", "documents", "texts"):
            if field in props:
                arr = _branch(props[field])
                arr["maxItems"] = config.max_documents
                for item in arr["items"].get("anyOf", [arr["items"]]):
                    if item.get("type") == "string" and field != "ids":
                        item["maxLength"] = config.max_text_chars
    components["BatchRerankRequest"]["properties"]["queries"]["maxItems"] = config.max_batch_queries
    components["SearchRequest"]["properties"]["k"]["maximum"] = config.max_documents


def openapi_spec(config: ServiceConfig) -> dict[str, Any]:
    refs, components = msgspec.json.schema_components(schemas.SCHEMA_TYPES,
                                                      ref_template="#/components/schemas/{name}")
    _fill_limits(components, config)
    components["TeiRanks"] = refs[schemas.SCHEMA_TYPES.index(list[schemas.TeiRank])]
    # /rerank answers TEI's bare array for "texts", Infinity's object for "documents"
    components["RerankTeiOrInfinity"] = {"anyOf": [_ref("TeiRanks"), _ref("InfinityRerankResponse")]}
    headers = {
        "X-Request-Id": {"schema": {"type": "string"}, "description": "Echoes a valid X-Request-Id, else generated"},
        "Server-Timing": {"schema": {"type": "string"}, "description": "Per-stage milliseconds"},
    }

    def ok(name: str, description: str) -> dict[str, Any]:
        return {"description": description, "headers": headers, "content": _content(_ref(name))}

    def post(request: str, response: str, summary: str, description: str, *extra: str) -> dict[str, Any]:
        return {"post": {
            "summary": summary,
            "requestBody": {"required": True, "content": _content(_ref(request))},
            "responses": {"200": ok(response, description), **_errors(*extra, *_WORK_ERRORS)},
        }}

    paths = {
        "/v1/rerank": post("RerankV1Request", "RerankResponse",
                           "Re-rank candidates for one query: Cohere v1 and Jina shape, plus index ids",
                           "Results, best first (every candidate unless top_n)"),
        "/v1/rerank/batch": post("BatchRerankRequest", "BatchRerankResponse", "Re-rank many queries in one request",
                                 "One result list per query, in request order"),
        "/v2/rerank": post("RerankV2Request", "RerankV2Response", "Cohere v2 re-ranking of texts",
                           "Results, best first (every document unless top_n)"),
        "/rerank": post("TeiRerankRequest", "RerankTeiOrInfinity",
                        "text-embeddings-inference (texts) or Infinity (documents) re-ranking of texts",
                        "texts: a bare array, every text best first; documents: Infinity's object (header "
                        "X-Tilde-Score: raw or calibrated)"),
        "/v1/search": post("SearchRequest", "SearchResponse",
                           "First stage (embedded BM25) + TILDEv2 re-ranking in one call", "Results, best first",
                           "404"),
        "/health": {"get": {"summary": "Liveness", "responses": {"200": ok("Status", "The process is up")}}},
        "/ready": {"get": {"summary": "Readiness: index (and model) loaded",
                           "responses": {"200": ok("Status", "Ready"), **_errors("503")}}},
        "/info": {"get": {"summary": "Model, index statistics, limits, energy meter method",
                          "responses": {"200": {"description": "Service description", "headers": headers,
                                                "content": _content({"type": "object"})}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tilde re-ranking service", "version": __version__,
                 "description": "TILDEv2 passage re-ranking on CPUs. Bodies are JSON or msgpack "
                                "(Content-Type / Accept: application/msgpack). An id comes back in the type it was "
                                "sent in; /v1/search answers the index's docid type."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "Required on every endpoint but /health and /ready when the server has API keys"}}},
        # every limit the server enforces, as in /info (a batch counts all its queries)
        "x-tilde-limits": config.limits(),
    }
