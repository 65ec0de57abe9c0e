"""The POST endpoints' direct path (``_Instrumented`` answers them without Flask's routing and
request context) answers exactly as Flask does: same status, headers and body, errors included."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from conftest_service import PLAIN_DOCS, build_plain_index
from flask import Flask
from werkzeug.test import Client

from service.app import _Instrumented, create_app, get_state
from service.config import ServiceConfig

KEY = "key-12345678"
AUTH = {"Authorization": f"Bearer {KEY}", "X-Request-Id": "req-1"}
IDS = list(PLAIN_DOCS)[:3]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    index = build_plain_index(tmp_path_factory.mktemp("fast") / "index")
    return create_app(ServiceConfig(index=str(index), meter="cpu", api_keys=KEY, max_body_bytes=4096))


def _normalised(resp: Any) -> tuple[int, dict[str, str], Any]:
    """Status, headers and decoded body with the parts that differ run to run (timings) removed."""
    headers = {k: v for k, v in resp.headers.items() if k != "Server-Timing"}
    data = resp.get_data()
    if resp.mimetype == "application/msgpack":
        body = msgpack.unpackb(data, raw=False)
    elif resp.mimetype == "application/json":
        body = json.loads(data)
    else:
        body = data
    if isinstance(body, dict) and isinstance(body.get("meta"), dict):
        body["meta"].pop("timing", None)
        body["meta"].get("energy", {}).pop("joules", None)
        headers.pop("Content-Length", None)  # the timings' digits vary
    timing = resp.headers.get("Server-Timing", "")
    return resp.status_code, headers, (body, [part.split(";")[0] for part in timing.split(", ")])


REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/rerank", {"json": {"query": "apple", "ids": IDS}, "headers": AUTH}),
    ("/v1/rerank", {"data": msgpack.packb({"query": "apple", "ids": IDS}), "content_type": "application/msgpack",
                    "headers": AUTH}),
    ("/v1/rerank", {"json": {"query": "apple", "ids": IDS}, "headers": {**AUTH, "Accept": "application/msgpack"}}),
    ("/v1/rerank", {"json": {"query": "apple", "ids": ["nope"]}, "headers": AUTH}),
    ("/v1/rerank", {"json": {"query": "apple", "ids": IDS, "missing": "skip", "top_n": 0}, "headers": AUTH}),
    # no key, a wrong key: 401 with WWW-Authenticate
    ("/v1/rerank", {"json": {"query": "apple", "ids": IDS}, "headers": {"X-Request-Id": "req-2"}}),
    ("/v1/rerank", {"json": {"query": "apple", "ids": IDS}, "headers": {"Authorization": "Bearer wrong",
                                                                      "X-Request-Id": "req-3"}}),
    ("/v1/rerank", {"data": b"{not json", "content_type": "application/json", "headers": AUTH}),
    ("/v1/rerank", {"data": b"x", "content_type": "text/plain", "headers": AUTH}),
    ("/v1/rerank", {"data": b"{" + b" " * 5000 + b"}", "content_type": "application/json", "headers": AUTH}),
    ("/v1/rerank", {"json": {"query": "apple"}, "headers": AUTH}),
    ("/v2/rerank", {"json": {"query": "apple", "documents": ["a quick fox", "a lazy dog"], "model": "m"},
                    "headers": AUTH}),
    ("/rerank", {"json": {"query": "apple", "texts": ["a quick fox"]}, "headers": AUTH}),
    ("/rerank", {"json": {"query": "apple", "documents": ["a quick fox"]}, "headers": AUTH}),
    ("/v1/rerank/batch", {"json": {"queries": [{"query": "apple", "ids": IDS}, {"query": "dog", "ids": IDS[:1]}]},
                          "headers": AUTH}),
    ("/v1/search", {"json": {"query": "apple"}, "headers": AUTH}),
]


@pytest.mark.parametrize(("path", "kwargs"), REQUESTS)
def test_direct_path_answers_as_flask_does(app: Flask, path: str, kwargs: dict[str, Any]) -> None:
    direct = Client(app)
    flask_only = Client(_Instrumented(app.wsgi_app.wsgi, get_state(app)))  # type: ignore[attr-defined]
    assert path in app.wsgi_app.posts  # type: ignore[attr-defined]
    got, want = direct.post(path, **kwargs), flask_only.post(path, **kwargs)
    assert _normalised(got) == _normalised(want)
    assert got.headers["X-Request-Id"] == want.headers["X-Request-Id"]


def test_every_post_only_route_takes_the_direct_path(app: Flask) -> None:
    posts = {r.rule for r in app.url_map.iter_rules() if r.methods and "POST" in r.methods}
    assert posts == set(app.wsgi_app.posts)  # type: ignore[attr-defined]


def test_other_methods_on_a_post_path_stay_flask_405(app: Flask) -> None:
    resp = Client(app).get("/v1/rerank", headers=AUTH)
    assert resp.status_code == 405 and resp.headers["Allow"] and resp.json["error"]["code"] == "method_not_allowed"


def test_an_unexpected_error_is_the_same_json_500(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    state = get_state(app)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(state.engine, "rank", boom)
    kwargs: dict[str, Any] = {"json": {"query": "apple", "ids": IDS}, "headers": AUTH}
    got = Client(app).post("/v1/rerank", **kwargs)
    want = Client(_Instrumented(app.wsgi_app.wsgi, state)).post("/v1/rerank", **kwargs)  # type: ignore[attr-defined]
    assert got.status_code == 500 and _normalised(got) == _normalised(want)
    assert got.json["error"]["code"] == "internal"
