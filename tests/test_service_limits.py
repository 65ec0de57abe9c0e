"""Service hardening through Flask's test client: API keys, the cost budget, the deadline, the
429 gate, lone surrogates everywhere, non-finite numbers in and out, /info without host details."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest_service import build_plain_index
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app, get_state
from service.config import ConfigError, ServiceConfig
from service.limits import Deadline, Gate
from service.openapi import openapi_spec

KEY = "k3y-for-tests-0123456789"
MSGPACK = "application/msgpack"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_plain_index(tmp_path_factory.mktemp("svc-limits") / "index")


@pytest.fixture(scope="module")
def app(index_dir: Path) -> Flask:
    return create_app(ServiceConfig(index=str(index_dir), meter="none"))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post_raw(client: FlaskClient, data: bytes | str, path: str = "/v1/rerank", **kw: Any) -> Any:
    return client.post(path, data=data, content_type="application/json", **kw)


def error_of(resp: Any, status: int, code: str | None = None) -> str:
    assert resp.status_code == status, resp.data
    body = json.loads(resp.data)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


# -- authentication ----------------------------------------------------------------------------


def test_api_keys(index_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# service keys\nsecond-key-abcdefgh\n\n", "utf-8")
    cfg = ServiceConfig(index=str(index_dir), api_keys=KEY, api_key_file=str(key_file))
    assert KEY not in repr(cfg) and cfg.keys() == (KEY, "second-key-abcdefgh")
    client = create_app(cfg).test_client()
    # probes stay open
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
    body = json.dumps({"query": "apple", "ids": [10]})
    for path, method in (("/info", "get"), ("/metrics", "get"), ("/openapi.json", "get"), ("/nope", "get"),
                         ("/v1/rerank", "post"), ("/v1/rerank/batch", "post")):
        resp = getattr(client, method)(path, data=body, content_type="application/json")
        assert "Authorization: Bearer" in error_of(resp, 401, "unauthorized"), path
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for bad in ("Bearer wrong-key-123456", f"Basic {KEY}", "Bearer", KEY, f"Bearer {KEY}x"):
        resp = post_raw(client, body, headers={"Authorization": bad})
        msg = error_of(resp, 401, "unauthorized")
        assert KEY not in msg and "wrong-key" not in msg
    for good in (f"Bearer {KEY}", f"bearer  {KEY} ", "Bearer second-key-abcdefgh"):
        assert post_raw(client, body, headers={"Authorization": good}).status_code == 200, good
    info = json.loads(client.get("/info", headers={"Authorization": f"Bearer {KEY}"}).data)
    assert info["auth"] == "api-key" and KEY not in json.dumps(info)
    # without keys everything is open
    assert json.loads(create_app(ServiceConfig(index=str(index_dir))).test_client().get("/info").data)["auth"] == "none"


def test_bad_key_settings() -> None:
    with pytest.raises(ConfigError, match="8 or more"):
        ServiceConfig(api_keys="short")
    with pytest.raises(ConfigError, match="8 or more"):
        ServiceConfig(api_keys="has space in it")
    with pytest.raises(ConfigError, match="api key file"):
        ServiceConfig(api_key_file="/nonexistent/keys")


def test_client_sends_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from tilde.client import Client

    assert Client("http://127.0.0.1:1", api_key="abc")._auth == {"Authorization": "Bearer abc"}
    monkeypatch.setenv("TILDE_API_KEY", "from-env")
    assert Client("http://127.0.0.1:1")._auth == {"Authorization": "Bearer from-env"}
    monkeypatch.delenv("TILDE_API_KEY")
    assert Client("http://127.0.0.1:1")._auth == {}


# -- /info -------------------------------------------------------------------------------------


def test_info_hides_paths_and_pid_unless_asked(client: FlaskClient, index_dir: Path) -> None:
    info = json.loads(client.get("/info").data)
    text = json.dumps(info)
    assert "pid" not in info and str(index_dir.parent) not in text and info["index"]["path"] == "index"
    for name in ("max_candidates", "max_work", "max_query_chars_total", "max_response_bytes", "deadline_seconds",
                 "max_queue"):
        assert name in info["limits"]
    exposed = create_app(ServiceConfig(index=str(index_dir), expose_paths=True)).test_client()
    info = json.loads(exposed.get("/info").data)
    assert info["index"]["path"] == str(index_dir) and isinstance(info["pid"], int)
    props = openapi_spec(ServiceConfig(max_work=123))["components"]["schemas"]
    assert "123" in json.dumps(props) or "max_work" in json.dumps(openapi_spec(ServiceConfig(max_work=123)))


# -- surrogates and non-finite numbers -----------------------------------------------------------

S = "\\ud800"  # a lone surrogate, as JSON writes it
SURROGATE_BODIES = [
    ("/v1/rerank", f'{{"query": "plate{S}", "ids": [10]}}', "query"),
    ("/v1/rerank", f'{{"query": "plate", "ids": ["{S}"]}}', "ids[0]"),
    ("/v1/rerank", f'{{"query": "plate", "ids": ["10", "x{S}y"]}}', "ids[1]"),
    ("/v1/rerank", f'{{"query": "plate", "ids": [10, "{S}"]}}', "ids[1]"),
    ("/v1/rerank", f'{{"query": "plate", "documents": ["{S}"]}}', "documents[0]"),
    ("/v1/rerank", f'{{"query": "plate", "documents": [{{"id": "{S}"}}]}}', "documents[0].id"),
    ("/v1/rerank", f'{{"query": "plate", "documents": [{{"id": 10, "text": "a{S}"}}]}}', "documents[0].text"),
    ("/v1/rerank", f'{{"query": "plate", "ids": [10], "{S}": 1}}', "field name"),
    ("/v1/rerank", f'{{"query": "plate", "ids": [10], "missing": "{S}"}}', "missing"),
    ("/v1/rerank", f'{{"query": "plate", "ids": [10], "mode": "{S}"}}', "mode"),
    ("/v1/rerank/batch", f'{{"queries": [{{"query": "{S}", "ids": [10]}}]}}', "queries[0].query"),
    ("/v1/rerank/batch", f'{{"queries": [{{"id": "{S}", "query": "a", "ids": [10]}}]}}', "queries[0].id"),
    ("/v1/rerank/batch", f'{{"queries": [{{"query": "a", "ids": ["{S}"]}}]}}', "queries[0].ids[0]"),
    ("/v1/rerank/batch", f'{{"queries": [{{"query": "a", "documents": [{{"text": "{S}"}}]}}]}}', "documents[0]"),
]


@pytest.mark.parametrize("path,body,where", SURROGATE_BODIES)
def test_lone_surrogates_are_422(client: FlaskClient, path: str, body: str, where: str) -> None:
    resp = post_raw(client, body, path)
    assert where in error_of(resp, 422)
    resp = post_raw(client, body, path, headers={"Accept": MSGPACK})  # the msgpack error encodes too
    assert resp.status_code == 422 and resp.mimetype == MSGPACK


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_numbers_are_400(client: FlaskClient, literal: str) -> None:
    msg = error_of(post_raw(client, f'{{"query": "apple", "ids": [10], "top_n": {literal}}}'), 400, "malformed")
    assert literal.lstrip("-") in msg


def test_non_finite_scores_never_reach_json(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = get_state(app).engine
    assert engine is not None
    real = engine.reranker.score_ids

    def poisoned(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = real(q, rows)
        out[0] = np.inf
        if out.size > 1:
            out[1] = np.nan
        return out

    monkeypatch.setattr(engine.reranker, "score_ids", poisoned)
    client = app.test_client()
    for accept in ("application/json", MSGPACK):
        resp = post_raw(client, json.dumps({"query": "apple", "ids": [10, 20, 30]}), headers={"Accept": accept})
        assert resp.status_code == 500 and b"inf" not in resp.data.replace(b"index", b"")
        if accept == "application/json":
            assert "10" in error_of(resp, 500, "non_finite_score")
        resp = post_raw(client, json.dumps({"queries": [{"query": "apple", "ids": [10, 20]}]}), "/v1/rerank/batch",
                        headers={"Accept": accept})
        assert resp.status_code == 500


# -- the budget ---------------------------------------------------------------------------------


def test_budget_refuses_before_scoring(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ServiceConfig(index=str(index_dir), max_candidates=6, max_work=8, max_query_chars_total=30,
                        max_response_bytes=1000)
    app = create_app(cfg)
    engine = get_state(app).engine
    assert engine is not None
    scored: list[int] = []
    real = engine.reranker.score_ids
    monkeypatch.setattr(engine.reranker, "score_ids", lambda q, rows: scored.append(len(rows)) or real(q, rows))
    client = app.test_client()

    def over(path: str, body: Any, status: int = 422) -> str:
        return error_of(post_raw(client, json.dumps(body), path), status, "over_budget")

    batch = "/v1/rerank/batch"
    assert "max_candidates" in over(batch, {"queries": [{"query": "apple", "ids": [10, 20, 30, 40]}] * 2})
    assert "max_query_chars_total" in over(batch, {"queries": [{"query": "apple banana cherry", "ids": [10]}] * 2})
    # 3 candidates x 3 distinct tokens = 9 > 8 (the repeated "apple" counts once)
    assert "max_work" in over("/v1/rerank", {"query": "apple banana cherry apple", "ids": [10, 20, 30]})
    assert "max_response_bytes" in over("/v1/rerank", {"query": "apple", "ids": ["x" * 400, "y" * 400]}, 413)
    assert scored == []  # nothing was scored for any refused request
    ok = post_raw(client, json.dumps({"query": "apple banana", "ids": [10, 20, 30, 40]}))
    assert ok.status_code == 200 and scored == [4]
    # top_n bounds the response estimate
    assert post_raw(client, json.dumps({"query": "apple", "ids": ["x" * 400, "y" * 400], "top_n": 1,
                                        "missing": "zero"})).status_code \
        == 200


def test_query_encoder_passes_are_budgeted(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(ServiceConfig(index=str(index_dir), max_query_encodes=2))
    engine = get_state(app).engine
    assert engine is not None
    assert engine.query_encodes(None) == 0 and engine.query_encodes("no-such-mode") == 0  # token scoring
    monkeypatch.setattr(engine, "query_encodes", lambda mode: 1)  # as a dense or mlm mode would
    client = app.test_client()
    item = {"query": "apple", "ids": [10]}
    assert post_raw(client, json.dumps({"queries": [item] * 2}), "/v1/rerank/batch").status_code == 200
    msg = error_of(post_raw(client, json.dumps({"queries": [item] * 3}), "/v1/rerank/batch"), 422, "over_budget")
    assert "max_query_encodes" in msg


def test_deadline_is_a_json_503(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(ServiceConfig(index=str(index_dir), deadline=0.05))
    engine = get_state(app).engine
    assert engine is not None
    real = engine.reranker.score_ids

    def slow(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        time.sleep(0.1)
        return real(q, rows)

    monkeypatch.setattr(engine.reranker, "score_ids", slow)
    resp = post_raw(app.test_client(), json.dumps({"query": "apple", "ids": [10, 20]}))
    assert "0.05 s" in error_of(resp, 503, "deadline_exceeded") and resp.headers["Retry-After"] == "1"


def test_busy_worker_answers_429(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(ServiceConfig(index=str(index_dir), concurrency=1, max_queue=1))
    state = get_state(app)
    assert state.engine is not None
    release = threading.Event()
    real = state.engine.reranker.score_ids

    def blocked(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        release.wait(10)
        return real(q, rows)

    monkeypatch.setattr(state.engine.reranker, "score_ids", blocked)
    body = json.dumps({"query": "apple", "ids": [10]})
    statuses: list[int] = []

    def call() -> None:
        statuses.append(post_raw(app.test_client(), body).status_code)

    first = threading.Thread(target=call)
    first.start()
    for _ in range(500):  # until the first request holds the slot (bounded wait)
        if state.gate._sem._value == 0:  # type: ignore[attr-defined]
            break
        time.sleep(0.01)
    second = threading.Thread(target=call)
    second.start()
    for _ in range(500):
        if state.gate.waiting == 1:
            break
        time.sleep(0.01)
    assert state.gate.waiting == 1
    resp = post_raw(app.test_client(), body)
    assert "max_queue 1" in error_of(resp, 429, "too_many_requests") and resp.headers["Retry-After"] == "1"
    assert app.test_client().get("/health").status_code == 200  # probes need no slot
    release.set()
    first.join(10)
    second.join(10)
    assert statuses == [200, 200]


def test_gate_and_deadline_units() -> None:
    gate = Gate(1, 0)
    with gate.slot(Deadline(1.0)):
        with pytest.raises(Exception) as err:
            with gate.slot(Deadline(1.0)):
                pass
        assert getattr(err.value, "status", None) == 429
    gate = Gate(1, 1)
    with gate.slot(Deadline(1.0)):
        with pytest.raises(Exception) as err:
            with gate.slot(Deadline(0.01)):  # waits for the slot until its deadline
                pass
        assert getattr(err.value, "status", None) == 503
    with gate.slot(Deadline(1.0)):  # released again
        pass


def test_double_slash_is_a_json_404(client: FlaskClient) -> None:
    error_of(post_raw(client, json.dumps({"query": "apple", "ids": [10]}), "/v1//rerank"), 404, "not_found")
