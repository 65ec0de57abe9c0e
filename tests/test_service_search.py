"""POST /v1/search: embedded BM25 first stage + TILDEv2 re-ranking in one call."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
from flask import Flask

from service import ServiceConfig, create_app
from tests.conftest_service import PLAIN_DOCS, build_plain_index, expected_score
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
