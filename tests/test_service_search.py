"""POST /v1/search: embedded BM25 first stage + TILDEv2 re-ranking in one call."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
from flask import Flask

from service import ServiceConfig, create_app
from service.config import ConfigError
from tests.conftest_service import PLAIN_DOCS, build_plain_index, expected_score
from tilde.client import ClientError
from tilde.first_stage import BM25Index, build_bm25_index

# Passage texts whose words match the hand-made postings of PLAIN_DOCS (same docids).
TEXTS = {
    "10": "apple banana fruit",
    "20": "apple cherry cherry",
    "30": "banana tree",
    "40": "cherry fruit red",
    "50": "nothing here",
    "60": "apple banana fruit salad",
    "70": "tilde rank fast",
}


@pytest.fixture(scope="module")
def search_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    root = tmp_path_factory.mktemp("search")
    index = build_plain_index(root / "index")
    coll = root / "collection.tsv"
    coll.write_text("".join(f"{d}\t{t}\n" for d, t in TEXTS.items()))
    build_bm25_index(coll, index / "bm25")  # found by default at <index>/bm25
    return create_app(ServiceConfig(index=str(index), meter="cpu"))


def _post(app: Flask, body: object, fmt: str = "json") -> tuple[int, dict]:  # type: ignore[type-arg]
    client = app.test_client()
    if fmt == "json":
        r = client.post("/v1/search", data=json.dumps(body), content_type="application/json")
        return r.status_code, json.loads(r.data)
    r = client.post("/v1/search", data=msgpack.packb(body), content_type="application/msgpack",
                    headers={"Accept": "application/msgpack"})
    return r.status_code, msgpack.unpackb(r.data)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_search_reranks_bm25_candidates(search_app: Flask, fmt: str) -> None:
    status, out = _post(search_app, {"query": "apple fruit", "k": 5}, fmt)
    assert status == 200
    bm25 = BM25Index.load(Path(search_app.extensions["tilde"].config.index) / "bm25").search("apple fruit", 5)
    # ids in the index's docid type (numeric docids: integers), as /v1/rerank answers integer ids
    assert sorted(r["id"] for r in out["results"]) == sorted(int(h.docid) for h in bm25)
    by_id = {int(h.docid): h.score for h in bm25}
    for r in out["results"]:
        assert r["relevance_score"] == expected_score(["apple", "fruit"], PLAIN_DOCS[str(r["id"])])
        assert r["first_stage_score"] == pytest.approx(by_id[r["id"]])
        assert int(bm25[r["index"]].docid) == r["id"]
    scores = [r["relevance_score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True)
    assert {"parse", "first_stage", "tokenize", "score", "serialize"} <= set(out["meta"]["timing"])
    assert out["meta"]["first_stage"] == {"engine": "bm25", "k": 5, "hits": len(bm25)}
    assert out["meta"]["energy"]["method"].startswith("cpu-time")


def test_search_top_n_and_no_hits(search_app: Flask) -> None:
    status, out = _post(search_app, {"query": "apple fruit", "top_n": 1})
    assert status == 200 and len(out["results"]) == 1 and out["results"][0]["id"] in {10, 60}
    status, out = _post(search_app, {"query": "zzz unknownword"})
    assert status == 200 and out["results"] == []


@pytest.mark.parametrize("body", [{"query": ""}, {"query": "apple", "k": 0}, {"query": "apple", "k": "5"},
                                  {"query": "apple", "ids": [1]}, {"k": 3}, [1, 2]])
def test_search_validation(search_app: Flask, body: object) -> None:
    status, out = _post(search_app, body)
    assert status == 422 and set(out["error"]) == {"code", "message"}


def test_search_without_bm25_index(tmp_path: Path) -> None:
    app = create_app(ServiceConfig(index=str(build_plain_index(tmp_path / "index")), meter="cpu"))
    status, out = _post(app, {"query": "apple"})
    assert status == 404 and out["error"]["code"] == "not_configured" and "--bm25" in out["error"]["message"]
    assert app.test_client().get("/info").get_json()["first_stage"] is None


# -------------------------------------------------------------------------------------------
# the Python client against the real app over HTTP, and the impact first stage


@pytest.fixture(scope="module")
def search_url(search_app: Flask) -> Iterator[str]:
    """The app served over real HTTP (werkzeug's threaded server in this process)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, search_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_client_search_is_the_endpoint(search_app: Flask, search_url: str, fmt: str) -> None:
    from tilde.client import Client

    _, raw = _post(search_app, {"query": "apple fruit", "k": 5, "top_n": 3})
    with Client(search_url, format=fmt) as client:
        got = client.search("apple fruit", k=5, top_n=3)
        assert [(r.index, r.id, r.relevance_score, r.first_stage_score) for r in got.results] == [
            (r["index"], r["id"], r["relevance_score"], r["first_stage_score"]) for r in raw["results"]]
        assert got.meta["first_stage"]["k"] == 5 and got.ids == [r["id"] for r in raw["results"]]
        assert client.search("zzz unknownword").results == []
        with pytest.raises(ClientError) as err:
            client.search("apple", k=0)
        assert err.value.status == 422 and "k" in err.value.message


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_client_sends_numpy_ids_as_plain_ids(search_url: str, fmt: str) -> None:
    from tilde.client import Client

    with Client(search_url, format=fmt) as client:
        want = client.rerank("apple fruit", ids=["10", "40"]).results
        got = client.rerank("apple fruit", ids=np.array(["10", "40"])).results
        assert got == want
        # numpy integers are sent as integers, and come back in the type they were sent in
        ints = client.rerank("apple fruit", ids=np.array([10, 40]), top_n=np.int64(1)).results
        assert [(r.id, r.relevance_score) for r in ints] == [(10, want[0].relevance_score)]
        assert type(ints[0].id) is int
        scalars = client.rerank("apple fruit", ids=[np.int64(10), np.int32(40)]).results
        assert [r.id for r in scalars] == [10, 40]


def test_client_search_passes_its_fields_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from tilde.client import Client

    sent: list[tuple[str, str, object]] = []

    def fake(method: str, path: str, body: object = None) -> tuple[int, object, dict[str, str]]:
        sent.append((method, path, body))
        return 200, {"id": "r1", "results": [{"index": 0, "id": "10", "relevance_score": 1.5,
                                               "first_stage_score": 2.0, "document": {"text": "apple"}}]}, {}

    client = Client("http://127.0.0.1:1")
    monkeypatch.setattr(client, "request", fake)
    res = client.search("apple", k=7, top_n=2, return_documents=True, mode="tokens")
    assert sent == [("POST", "/v1/search", {"query": "apple", "k": 7, "top_n": 2, "return_documents": True,
                                            "mode": "tokens"})]
    assert res.results[0].document == {"text": "apple"} and res.results[0].first_stage_score == 2.0
    client.search("apple")
    assert sent[-1][2] == {"query": "apple"}  # defaults are the server's


def test_search_with_the_impact_first_stage(search_app: Flask) -> None:
    from tilde.first_stage.inverted import ImpactIndex

    index = search_app.extensions["tilde"].config.index
    app = create_app(ServiceConfig(index=index, meter="cpu", first_stage="impact"))
    info = app.test_client().get("/info").get_json()
    assert info["first_stage"]["engine"] == "impact"
    impact = ImpactIndex.load(index).search("apple fruit", 5)
    assert [h.docid for h in impact][:2] == ["10", "60"]  # 1.25 each, then 40 (0.75) and 20 (0.25)
    status, out = _post(app, {"query": "apple fruit", "k": 5})
    assert status == 200
    assert out["meta"]["first_stage"]["engine"] == "impact"
    # ids come back in the index's docid type (integers here)
    assert sorted(r["id"] for r in out["results"]) == sorted(int(h.docid) for h in impact)
    by_id = {int(h.docid): h.score for h in impact}
    for r in out["results"]:
        # the first stage is the index's own weights: its score is the TILDEv2 score itself
        assert r["first_stage_score"] == by_id[r["id"]] == r["relevance_score"]
    assert app.extensions["tilde"].text_store is not None  # <index>/bm25 keeps texts for return_documents
    with pytest.raises(ConfigError, match="first_stage"):
        create_app(ServiceConfig(index=index, meter="cpu", first_stage="splade"))


def test_search_returns_the_stored_passage_texts(search_app: Flask) -> None:
    coll = Path(search_app.extensions["tilde"].config.index).parent / "collection.tsv"
    texts = dict(line.split("\t", 1) for line in coll.read_text(encoding="utf-8").splitlines())
    status, out = _post(search_app, {"query": "apple fruit", "k": 5, "return_documents": True})
    assert status == 200 and out["results"]
    for r in out["results"]:
        assert r["document"] == {"text": texts[str(r["id"])]}


def test_the_first_stage_is_chosen_by_flag_or_environment() -> None:
    from service.config import from_env
    from tilde.cli import build_parser

    args = build_parser().parse_args(["serve", "--index", "idx", "--first-stage", "impact"])
    assert args.first_stage == "impact"
    assert from_env(ServiceConfig, {"TILDE_FIRST_STAGE": "impact"}, index="idx").first_stage == "impact"
    assert from_env(ServiceConfig, {}, index="idx").first_stage == "bm25"
    with pytest.raises(ConfigError, match="first_stage"):
        from_env(ServiceConfig, {"TILDE_FIRST_STAGE": "splade"}, index="idx")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--index", "idx", "--first-stage", "splade"])
