"""The REST service through Flask's test client: every endpoint and error path, JSON and msgpack,
metering/metrics, on-the-fly encoding with a tiny model, and a property test on random bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from conftest_service import PLAIN_DOCS, build_plain_index, expected_score
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.app import create_app, get_state
from service.config import ConfigError, ServerConfig, ServiceConfig, from_env, to_env
from service.openapi import openapi_spec
from tilde.metering import Measurement, add_hook
from tilde.rank import Reranker

MSGPACK = "application/msgpack"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_plain_index(tmp_path_factory.mktemp("svc") / "index")


@pytest.fixture(scope="module")
def app(index_dir: Path) -> Flask:
    return create_app(ServiceConfig(index=str(index_dir), meter="cpu"))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(client: FlaskClient, body: Any, path: str = "/v1/rerank", fmt: str = "json", **kw: Any) -> Any:
    if fmt == "json":
        return client.post(path, data=json.dumps(body), content_type="application/json", **kw)
    return client.post(path, data=msgpack.packb(body), content_type=MSGPACK, **kw)


def packable(body: Any) -> bool:
    try:
        msgpack.packb(body)
    except (OverflowError, ValueError, TypeError):
        return False  # e.g. ints beyond 64 bits: msgpack cannot carry them
    return True


def decode(resp: Any) -> Any:
    if resp.mimetype == MSGPACK:
        return msgpack.unpackb(resp.data, raw=False)
    return json.loads(resp.data)


def error_of(resp: Any, status: int, code: str | None = None) -> str:
    assert resp.status_code == status, resp.data
    body = decode(resp)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    assert "Traceback" not in body["error"]["message"]
    return str(body["error"]["message"])


# -- basics ------------------------------------------------------------------------------------


def test_health_ready_info_openapi(client: FlaskClient, index_dir: Path) -> None:
    assert decode(client.get("/health")) == {"status": "ok"}
    assert decode(client.get("/ready")) == {"status": "ready"}
    info = decode(client.get("/info"))
    assert info["index"]["passages"] == len(PLAIN_DOCS)
    assert info["index"]["path"] == index_dir.name and "pid" not in info  # no host details by default
    assert str(index_dir) not in json.dumps(info)
    assert info["meter"]["method"].startswith("cpu-time")
    assert info["limits"]["max_documents"] == 10_000 and info["limits"]["max_encode"] == 0
    assert info["model"]["encoder"] is None and info["model"]["index_model"] == "hand-made"
    spec = decode(client.get("/openapi.json"))
    assert spec["openapi"].startswith("3.")
    assert {"/v1/rerank", "/v1/rerank/batch", "/health", "/ready", "/info", "/metrics", "/openapi.json"} <= set(
        spec["paths"])
    info_mp = decode(client.get("/info", headers={"Accept": MSGPACK}))
    assert info_mp["index"]["passages"] == len(PLAIN_DOCS)


def test_rerank_ids_scores_and_order(client: FlaskClient) -> None:
    resp = post(client, {"query": "apple cherry fruit", "ids": [10, 20, 30, 40, 50, 60, 70]})
    assert resp.status_code == 200
    out = decode(resp)
    words = ["apple", "cherry", "fruit"]
    want = sorted(((expected_score(words, PLAIN_DOCS[str(d)]), -i, d) for i, d in enumerate([10, 20, 30, 40, 50,
                                                                                            60, 70])), reverse=True)
    assert [r["id"] for r in out["results"]] == [d for _, _, d in want]
    assert [r["relevance_score"] for r in out["results"]] == [s for s, _, _ in want]
    assert [r["index"] for r in out["results"]] == [-i for _, i, _ in want]
    # ties (10 and 60 score the same) keep input order
    ids = [r["id"] for r in out["results"]]
    assert ids.index(10) < ids.index(60)
    meta = out["meta"]
    assert {"parse", "tokenize", "lookup", "score", "sort", "serialize", "total"} <= set(meta["timing"])
    assert meta["energy"]["method"].startswith("cpu-time") and meta["energy"]["joules"] >= 0
    assert meta["missing"] == [] and meta["query_tokens"] == 3
    assert out["id"] == resp.headers["X-Request-Id"]
    timing = resp.headers["Server-Timing"]
    assert "score;dur=" in timing and "total;dur=" in timing


def test_string_ids_and_top_n(client: FlaskClient) -> None:
    out = decode(post(client, {"query": "tilde rank", "ids": ["70", "10"], "top_n": 1}))
    assert out["results"] == [{"index": 0, "id": "70", "relevance_score": 4.0}]


@pytest.mark.parametrize("accept", [None, MSGPACK])
def test_msgpack_equals_json(client: FlaskClient, accept: str | None) -> None:
    body = {"query": "apple banana banana", "ids": [10, 20, 30, 60, "x"], "missing": "zero"}
    js = decode(post(client, body))
    headers = {"Accept": accept} if accept else {}
    resp = post(client, body, fmt="msgpack", headers=headers)
    assert resp.mimetype == MSGPACK
    mp = decode(resp)
    assert mp["results"] == js["results"]
    assert mp["meta"]["missing"] == js["meta"]["missing"]
    # the fixed-width msgpack records decode to plain ints and floats
    assert all(type(r["index"]) is int and type(r["relevance_score"]) is float for r in mp["results"])
    # JSON body, msgpack answer
    resp = post(client, {"query": "apple", "ids": [10, 20]}, headers={"Accept": MSGPACK})
    assert resp.mimetype == MSGPACK and [r["id"] for r in decode(resp)["results"]] == [10, 20]


def test_matches_reranker_for_every_policy(client: FlaskClient, index_dir: Path) -> None:
    rr = Reranker.load(index_dir)
    rng = np.random.default_rng(1)
    words = ["apple", "banana", "cherry", "fruit", "tree", "red", "tilde", "the", "what"]
    pool: list[str | int] = [10, 20, 30, 40, 50, 60, 70, "404", 99]
    for trial in range(30):
        query = " ".join(rng.choice(words, size=int(rng.integers(1, 6))))
        cands = [pool[i] for i in rng.choice(len(pool), size=int(rng.integers(0, 9)), replace=False)]
        policy = ["skip", "zero"][trial % 2]
        top_n = None if trial % 3 else 3
        want = rr.rerank(query, cands, top_n=top_n, missing=policy)
        body = {"query": query, "ids": cands, "missing": policy}
        if top_n:
            body["top_n"] = top_n
        for fmt in ("json", "msgpack"):
            accept = MSGPACK if fmt == "msgpack" else "application/json"
            got = decode(post(client, body, fmt=fmt, headers={"Accept": accept}))
            assert [r["index"] for r in got["results"]] == want.order.tolist()
            assert [r["relevance_score"] for r in got["results"]] == want.scores.tolist()
            assert sorted(str(m["id"]) for m in got["meta"]["missing"]) == sorted(want.missing)


def test_unknown_ids_policies(client: FlaskClient) -> None:
    msg = error_of(post(client, {"query": "apple", "ids": [10, 11, "abc"]}), 422, "unknown_ids")
    assert "'11'" in msg and "'abc'" in msg and "skip" in msg
    out = decode(post(client, {"query": "apple", "ids": [10, 11, 20], "missing": "skip"}))
    assert [r["id"] for r in out["results"]] == [10, 20]
    assert out["meta"]["missing"] == [{"index": 1, "id": 11, "reason": "not_in_index"}]
    out = decode(post(client, {"query": "apple", "ids": [11, 10, 20], "missing": "zero"}))
    assert [(r["id"], r["relevance_score"]) for r in out["results"]] == [(10, 1.0), (20, 0.25), (11, 0.0)]


def test_documents_cohere_shape(client: FlaskClient) -> None:
    body = {"query": "cherry", "documents": [{"id": 10}, {"id": "20", "text": "ignored: in the index"}],
            "return_documents": True, "model": "rerank-english-v3.0"}
    out = decode(post(client, body))
    assert [(r["index"], r["id"], r["relevance_score"]) for r in out["results"]] == [(1, "20", 2.0), (0, 10, 0.0)]
    assert out["results"][0]["document"] == {"id": "20", "text": "ignored: in the index"}
    assert out["meta"]["encoded"] == []
    # return_documents on the ids path echoes the id
    out = decode(post(client, {"query": "cherry", "ids": [20], "return_documents": True}))
    assert out["results"][0]["document"] == {"id": 20}


def test_texts_without_model_follow_policy(client: FlaskClient) -> None:
    msg = error_of(post(client, {"query": "apple", "documents": ["an apple tree", {"id": 10}]}), 422, "unknown_ids")
    assert "--model" in msg
    out = decode(post(client, {"query": "apple", "documents": ["an apple tree", {"id": 10}], "missing": "skip"}))
    assert [r["index"] for r in out["results"]] == [1]
    assert out["meta"]["missing"] == [{"index": 0, "id": None, "reason": "no_model"}]
    resp = post(client, {"query": "apple", "documents": ["an apple tree"], "missing": "zero",
                         "return_documents": True}, fmt="msgpack")
    out = decode(resp)
    assert out["results"] == [{"index": 0, "id": None, "relevance_score": 0.0, "document": {"text": "an apple tree"}}]


def test_batch(client: FlaskClient) -> None:
    body = {"queries": [{"query": "apple", "ids": [20, 10]}, {"id": "q2", "query": "tilde", "ids": [10, 70],
                                                                 "top_n": 1}],
            "top_n": 5}
    for fmt in ("json", "msgpack"):
        out = decode(post(client, body, "/v1/rerank/batch", fmt=fmt))
        assert [item["index"] for item in out["results"]] == [0, 1]
        assert out["results"][1]["id"] == "q2"
        assert [r["id"] for r in out["results"][0]["results"]] == [10, 20]
        assert [r["id"] for r in out["results"][1]["results"]] == [70]
        assert out["meta"]["timing"]["total"] > 0 and "energy" in out["meta"]
    msg = error_of(post(client, {"queries": [{"query": "a b", "ids": [10]}, {"query": "apple", "ids": [1]}]},
                        "/v1/rerank/batch"), 422, "unknown_ids")
    assert msg.startswith("queries[1]")
    error_of(post(client, {"queries": []}, "/v1/rerank/batch"), 422, "invalid")
    error_of(post(client, {"queries": [{"query": "x"}]}, "/v1/rerank/batch"), 422, "invalid")
    error_of(post(client, {"queries": [7]}, "/v1/rerank/batch"), 422, "invalid")


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"ids": [10]}, "query is required"),
        ({"query": "   ", "ids": [10]}, "query is empty"),
        ({"query": 7, "ids": [10]}, "query must be a string"),
        ({"query": "x"}, "exactly one of"),
        ({"query": "x", "ids": [10], "documents": ["t"]}, "exactly one of"),
        ({"query": "x", "ids": "10"}, "ids must be a list"),
        ({"query": "x", "ids": [10, 1.5]}, "ids[1]"),
        ({"query": "x", "ids": [True]}, "ids[0]"),
        ({"query": "x", "ids": [None]}, "ids[0]"),
        ({"query": "x", "ids": [2**70]}, "64-bit"),
        ({"query": "x", "ids": [10], "top_n": 0}, "top_n"),
        ({"query": "x", "ids": [10], "top_n": "3"}, "top_n"),
        ({"query": "x", "ids": [10], "return_documents": "yes"}, "return_documents"),
        ({"query": "x", "ids": [10], "missing": "ignore"}, "missing must be"),
        ({"query": "x", "ids": [10], "topn": 3}, "unknown field"),
        ({"query": "x", "documents": [{"title": "t"}]}, "documents[0] needs an"),  # extra fields are kept
        ({"query": "x", "documents": [{"title": "t"}], "rank_fields": ["text"]}, "any of rank_fields"),
        ({"query": "x", "documents": [{"title": {"a": 1}}], "rank_fields": ["title"]}, "documents[0].title"),
        ({"query": "x", "ids": [10], "max_tokens_per_doc": 0}, "max_tokens_per_doc"),
        ({"query": "x", "ids": [10], "score": "0-1"}, "score must be raw or calibrated"),
        ({"query": "x", "documents": [{}]}, "needs an"),
        ({"query": "x", "documents": [{"text": 5}]}, "text must be a string"),
        ({"query": "x", "documents": [5]}, "string or an object"),
        ({"query": "x", "ids": list(range(10_001))}, "limit is 10000"),
        ([1, 2], "must be an object"),
        ("query", "must be an object"),
    ],
)
def test_validation_422(client: FlaskClient, body: Any, fragment: str) -> None:
    assert fragment in error_of(post(client, body), 422, "invalid")


def test_malformed_400(client: FlaskClient) -> None:
    error_of(client.post("/v1/rerank", data="{", content_type="application/json"), 400, "malformed")
    error_of(client.post("/v1/rerank", data=b"\xff\xfe", content_type="application/json"), 400, "malformed")
    error_of(client.post("/v1/rerank", data=b"", content_type="application/json"), 400, "malformed")
    error_of(client.post("/v1/rerank", data=b"\xc1", content_type=MSGPACK), 400, "malformed")
    # trailing bytes after a valid object (msgspec reports the first fault it meets, so the object is valid)
    error_of(client.post("/v1/rerank", data=msgpack.packb({"query": "a", "ids": [10]}) + b"\x01",
                         content_type=MSGPACK), 400)
    # a msgpack error answers in msgpack
    resp = client.post("/v1/rerank", data=b"\xc1", content_type=MSGPACK)
    assert resp.mimetype == MSGPACK


def test_http_errors(client: FlaskClient, index_dir: Path) -> None:
    error_of(client.get("/nope"), 404, "not_found")
    resp = client.get("/v1/rerank")
    assert "POST" in error_of(resp, 405, "method_not_allowed") and "POST" in resp.headers["Allow"]
    error_of(client.delete("/health"), 405)
    error_of(client.post("/v1/rerank", data="query=x", content_type="application/x-www-form-urlencoded"), 415,
             "unsupported_media_type")
    small = create_app(ServiceConfig(index=str(index_dir), max_body_bytes=64)).test_client()
    resp = post(small, {"query": "apple", "ids": list(range(100))})
    assert "64 bytes" in error_of(resp, 413, "too_large")
    # the request id is on error responses too, and a valid incoming one is echoed
    resp = client.get("/nope", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123" and "total;dur=" in resp.headers["Server-Timing"]
    resp = client.get("/health", headers={"X-Request-Id": "bad id\twith spaces"})
    assert resp.headers["X-Request-Id"] != "bad id\twith spaces" and len(resp.headers["X-Request-Id"]) == 32


def test_not_ready_503(index_dir: Path) -> None:
    app = create_app(ServiceConfig(index=str(index_dir), eager=False))
    client = app.test_client()
    assert client.get("/health").status_code == 200
    error_of(client.get("/ready"), 503, "not_ready")
    error_of(post(client, {"query": "apple", "ids": [10]}), 503, "not_ready")
    assert decode(client.get("/info"))["index"] is None
    get_state(app).load()
    assert client.get("/ready").status_code == 200
    assert post(client, {"query": "apple", "ids": [10]}).status_code == 200


def test_internal_error_is_json_500(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(ServiceConfig(index=str(index_dir)))
    engine = get_state(app).engine
    assert engine is not None

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(engine, "rank", boom)
    resp = post(app.test_client(), {"query": "apple", "ids": [10]})
    msg = error_of(resp, 500, "internal")
    assert "secret" not in msg and resp.headers["X-Request-Id"] in msg


# -- metering and metrics ----------------------------------------------------------------------


def test_measurements_reach_hooks_and_metrics(client: FlaskClient) -> None:
    seen: list[Measurement] = []
    remove = add_hook(seen.append)
    try:
        post(client, {"query": "apple", "ids": [10, 20]})
    finally:
        remove()
    stages = [m.stage for m in seen]
    assert stages == ["parse", "tokenize", "lookup", "score", "sort", "serialize", "request"]
    assert all(m.method.startswith("cpu-time") and m.seconds >= 0 and m.joules >= 0 for m in seen)
    assert seen[3].items == 2
    post(client, {"query": "apple", "ids": [10, 99]})  # a 422
    text = client.get("/metrics").get_data(as_text=True)
    assert 'tilde_request_duration_seconds_bucket{endpoint="/v1/rerank",le="0.0001"}' in text
    assert 'tilde_requests_total{endpoint="/v1/rerank",method="POST",status="422"}' in text
    assert 'tilde_stage_duration_seconds_count{stage="score"}' in text
    assert 'tilde_stage_energy_joules_total{method="cpu-time*15W/core(thread)",stage="score"}' in text
    assert "tilde_request_energy_joules_total" in text and "tilde_candidates_total" in text


def test_meter_none(index_dir: Path) -> None:
    client = create_app(ServiceConfig(index=str(index_dir), meter="none")).test_client()
    out = decode(post(client, {"query": "apple", "ids": [10]}))
    assert out["meta"]["energy"] == {"joules": 0.0, "method": "none"}
    assert decode(client.get("/info"))["meter"]["method"] == "none"


# -- config ------------------------------------------------------------------------------------


def test_config_from_env_and_back() -> None:
    env = {"TILDE_INDEX": "/x", "TILDE_MAX_DOCUMENTS": "50", "TILDE_MISSING": "skip", "TILDE_EAGER": "off"}
    cfg = from_env(ServiceConfig, env, max_encode=3)
    assert (cfg.index, cfg.max_documents, cfg.missing, cfg.eager, cfg.max_encode) == ("/x", 50, "skip", False, 3)
    assert from_env(ServiceConfig, to_env(cfg)) == cfg
    server = from_env(ServerConfig, {"TILDE_PORT": "9001", "TILDE_WORKERS": "3"})
    assert server.bind == "127.0.0.1:9001" and server.workers == 3 and server.access_log == ""
    with pytest.raises(ConfigError, match="TILDE_MAX_DOCUMENTS"):
        from_env(ServiceConfig, {"TILDE_MAX_DOCUMENTS": "many"})
    with pytest.raises(ConfigError, match="missing"):
        ServiceConfig(missing="drop")
    with pytest.raises(ConfigError, match="worker class"):
        ServerConfig(worker_class="eventlet")
    with pytest.raises(ConfigError, match="gthread"):
        ServerConfig(worker_class="sync", threads=4)
    ids = openapi_spec(ServiceConfig(max_documents=7))["components"]["schemas"]["RerankV1Request"]["properties"]["ids"]
    assert ids["anyOf"][0]["maxItems"] == 7


# -- property: random bodies never produce a 500 ------------------------------------------------

# Text with lone UTF-16 surrogates (JSON can carry them as "\\ud800") and non-finite floats (sent
# as NaN/Infinity, which Python's JSON writes): each must be a 400/422, never a 500.
_surrogates = st.text(st.characters(codec=None, categories=["Cs", "Ll", "Nd"]), min_size=1, max_size=6)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), _surrogates)
_json = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                                                          max_size=4), max_leaves=12)
_ids = st.lists(st.one_of(st.sampled_from([10, 20, 70, "10", "x", "\ud800", "1\udfff"]), st.integers(),
                          st.text(max_size=5), _scalars), max_size=8)
_docs = st.lists(st.one_of(st.text(max_size=20), st.fixed_dictionaries({}, optional={"id": _scalars | st.just(10),
                                                                                     "text": _scalars}), _json),
                 max_size=5)
_bodies = st.one_of(
    _json,
    st.fixed_dictionaries(
        {},
        optional={"query": st.one_of(st.text(max_size=30), st.just("apple fruit"), st.just("apple \udc00"),
                                     _scalars),
                  "ids": st.one_of(_ids, _json),
                  "documents": st.one_of(_docs, _json), "top_n": _scalars, "return_documents": _scalars,
                  "missing": st.one_of(st.sampled_from(["error", "skip", "zero"]), _scalars), "model": _scalars,
                  "extra": _scalars},
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=_bodies, fmt=st.sampled_from(["json", "msgpack"]), path=st.sampled_from(["/v1/rerank",
                                                                                     "/v1/rerank/batch"]))
def test_random_bodies_never_500(client: FlaskClient, body: Any, fmt: str, path: str) -> None:
    if path.endswith("batch") and isinstance(body, dict) and "query" in body:
        body = {"queries": [body], "missing": body.get("missing")}
    assume(fmt == "json" or packable(body))
    resp = post(client, body, path, fmt=fmt)
    assert resp.status_code in (200, 400, 413, 415, 422), resp.data
    if resp.mimetype != MSGPACK:
        # strict JSON: no NaN/Infinity, valid UTF-8
        out = json.loads(resp.data.decode("utf-8"), parse_constant=lambda c: pytest.fail(f"{c} in the response"))
    else:
        out = decode(resp)
    assert "X-Request-Id" in resp.headers
    if resp.status_code == 200:
        assert set(out) == {"id", "results", "meta"}
        assert isinstance(out["results"], list)
        assert all(np.isfinite(r["relevance_score"]) for r in out["results"])
    else:
        assert set(out) == {"error"} and set(out["error"]) == {"code", "message"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64), ctype=st.sampled_from(["application/json", MSGPACK, "", "text/plain"]))
def test_random_bytes_never_500(client: FlaskClient, data: bytes, ctype: str) -> None:
    resp = client.post("/v1/rerank", data=data, content_type=ctype or None)
    assert resp.status_code in (200, 400, 413, 415, 422)
    out = decode(resp)
    assert "error" in out or "results" in out


def test_int_lookup_matches_string_lookup(tmp_path: Path) -> None:
    from tilde.index.reader import TildeIndex

    # ascending ids (docids.npy doubles as the lookup array) and shuffled ids (sorted copy + order)
    # and 0..N-1 (the "range" kind: nothing stored)
    for name, docids in (("asc", ["3", "5", "9", "12"]), ("shuffled", ["12", "3", "9", "5"]),
                         ("range", ["0", "1", "2", "3"])):
        index = TildeIndex.open(build_plain_index(tmp_path / name, {d: {"apple": 1.0} for d in docids}))
        for ids in ([], [5], [12, 3, 4, 0, -1, 13, 9, 2**63 - 1, -(2**63)], [9, 9, 5], [0, 1, 2, 3, 4]):
            assert index.lookup(ids).tolist() == index.lookup([str(i) for i in ids]).tolist()


def test_empty_candidates_and_duplicates(client: FlaskClient) -> None:
    assert decode(post(client, {"query": "apple", "ids": []}))["results"] == []
    out = decode(post(client, {"query": "apple", "ids": [20, 10, 20]}))
    assert [(r["index"], r["id"]) for r in out["results"]] == [(1, 10), (0, 20), (2, 20)]


def test_gunicorn_settings_and_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from service.gunicorn_conf import settings
    from tilde.cli import main

    s = settings(ServerConfig(port=9, workers=3))
    assert s["bind"] == ["127.0.0.1:9"] and s["workers"] == 3 and s["worker_class"] == "service.worker.TildeWorker"
    assert s["threads"] == 24 and s["keepalive"] == 5
    assert settings(ServerConfig(worker_class="sync"))["threads"] == 1
    assert s["accesslog"] is None and s["preload_app"] is True
    assert main(["serve"]) == 2
    assert "no index" in capsys.readouterr().err


def test_client_errors() -> None:
    from conftest_service import free_port

    from tilde.client import Client, ClientError

    with pytest.raises(ValueError, match="format"):
        Client("http://127.0.0.1:1", format="xml")
    with pytest.raises(ValueError, match="url"):
        Client("127.0.0.1:8000")
    client = Client(f"http://127.0.0.1:{free_port()}", timeout=2)
    assert client.health() is False
    with pytest.raises(ClientError) as err:
        client.rerank("apple", ids=[1])
    assert err.value.status == 0 and err.value.code == "connection_error"
