"""The endpoint shapes over one engine (/v1/rerank with rank_fields, /v2/rerank, /rerank, batch,
search), the id rule, score=calibrated, the chunking fields passed through, and /openapi.json
matching what the server accepts. Texts are encoded by a tiny TILDEv2 model (no download)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from conftest_service import build_plain_index, tiny_model

pytest.importorskip("torch")
pytest.importorskip("transformers")

from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402

from service.app import ENDPOINTS, _index_ids, create_app, get_state  # noqa: E402
from service.config import ServiceConfig  # noqa: E402
from service.openapi import openapi_spec  # noqa: E402
from tilde.rank.calibration import calibrated_scores  # noqa: E402

PASSAGES = {
    "1": "the apple tree is green",
    "2": "a sweet red cherry",
    "3": "how to rank passages fast on a cpu",
    "4": "lemon and melon are sour fruit",
}
TEXTS = ["a red cherry tree", "apple banana", "rank fast cpu passages", "nothing"]
CALIBRATION = {"a": 0.5, "b": -1.0}


def _index(root: Path, model: Path, name: str, calibration: bool) -> Path:
    from tilde.index.build import build_index

    coll = root / "collection.tsv"
    coll.write_text("".join(f"{pid}\t{text}\n" for pid, text in PASSAGES.items()), "utf-8")
    out = root / name
    build_index(str(model), coll, out, progress=False, batch_size=2)
    if calibration:  # as eval.calibrate records it: the scoring's calibration, by mode
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["scoring"] = {"mode": "tokens", "calibration": {"tokens": CALIBRATION}}
        (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("svc-api")
    model = tiny_model(root / "model")
    return model, _index(root, model, "index", False), _index(root, model, "calibrated", True)


@pytest.fixture(scope="module")
def app(built: tuple[Path, Path, Path]) -> Flask:
    model, index, _ = built
    return create_app(ServiceConfig(index=str(index), model=str(model), meter="cpu"))


@pytest.fixture(scope="module")
def calibrated_app(built: tuple[Path, Path, Path]) -> Flask:
    model, _, index = built
    return create_app(ServiceConfig(index=str(index), model=str(model), meter="cpu"))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(client: FlaskClient, body: Any, path: str, fmt: str = "json") -> tuple[int, Any, Any]:
    if fmt == "msgpack":
        r = client.post(path, data=msgpack.packb(body), content_type="application/msgpack")
        return r.status_code, msgpack.unpackb(r.data), r.headers
    r = client.post(path, data=json.dumps(body), content_type="application/json")
    return r.status_code, json.loads(r.data), r.headers


def v1_scores(client: FlaskClient, query: str, documents: list[Any], **extra: Any) -> dict[int, float]:
    status, out, _ = post(client, {"query": query, "documents": documents, **extra}, "/v1/rerank")
    assert status == 200, out
    return {r["index"]: r["relevance_score"] for r in out["results"]}


# -- Cohere v2 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_v2_rerank_shape_and_scores(client: FlaskClient, fmt: str) -> None:
    want = v1_scores(client, "red cherry", TEXTS)
    status, out, _ = post(client, {"model": "rerank-v3.5", "query": "red cherry", "documents": TEXTS}, "/v2/rerank",
                          fmt)
    assert status == 200, out
    assert set(out) == {"id", "results", "meta"} and len(out["results"]) == len(TEXTS)  # every document
    assert all(set(r) == {"index", "relevance_score"} for r in out["results"])
    assert {r["index"]: r["relevance_score"] for r in out["results"]} == want
    scores = [r["relevance_score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True)
    status, top, _ = post(client, {"model": "m", "query": "red cherry", "documents": TEXTS, "top_n": 2,
                                   "max_tokens_per_doc": 64, "priority": 0}, "/v2/rerank", fmt)
    assert status == 200 and top["results"] == out["results"][:2]


@pytest.mark.parametrize(("body", "fragment"), [
    ({"model": "m", "query": "x", "documents": [{"text": "a"}]}, "documents[0] must be a string"),
    ({"model": "m", "query": "x", "documents": ["a"], "top_n": 0}, "top_n"),
    ({"model": "m", "query": "x", "documents": ["a"], "return_documents": True}, "unknown field 'return_documents'"),
    ({"model": "m", "query": "x"}, "documents is required"),
])
def test_v2_validation(client: FlaskClient, body: Any, fragment: str) -> None:
    status, out, _ = post(client, body, "/v2/rerank")
    assert status == 422 and fragment in out["error"]["message"], out


# -- text-embeddings-inference ------------------------------------------------------------------


def test_tei_rerank_bare_array(client: FlaskClient) -> None:
    want = v1_scores(client, "apple tree", TEXTS)
    status, out, headers = post(client, {"query": "apple tree", "texts": TEXTS, "raw_scores": True}, "/rerank")
    assert status == 200 and isinstance(out, list) and len(out) == len(TEXTS)
    assert {r["index"]: r["score"] for r in out} == want and all(set(r) == {"index", "score"} for r in out)
    assert [r["score"] for r in out] == sorted(want.values(), reverse=True) and headers["X-Tilde-Score"] == "raw"
    status, out, headers = post(client, {"query": "apple tree", "texts": TEXTS, "return_text": True,
                                         "truncate": True, "truncation_direction": "Right"}, "/rerank")
    assert status == 200 and [TEXTS[r["index"]] for r in out] == [r["text"] for r in out]
    # raw_scores false on an index without calibration: raw scores, and the header says so
    assert headers["X-Tilde-Score"] == "raw" and {r["index"]: r["score"] for r in out} == want
    status, err, _ = post(client, {"query": "a", "texts": ["b"], "truncation_direction": "left"}, "/rerank")
    assert status == 422 and "truncation_direction" in err["error"]["message"]
    status, err, _ = post(client, {"query": "a", "texts": ["b"], "documents": ["b"]}, "/rerank")
    assert status == 422 and "exactly one of" in err["error"]["message"]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_infinity_rerank_object(client: FlaskClient, fmt: str) -> None:
    want = v1_scores(client, "apple tree", TEXTS)
    body = {"model": "bge-reranker", "query": "apple tree", "documents": TEXTS, "raw_scores": True}
    status, out, headers = post(client, body, "/rerank", fmt)
    assert status == 200 and out["object"] == "rerank" and out["model"] == "bge-reranker" and out["id"]
    assert {r["index"]: r["relevance_score"] for r in out["results"]} == want
    assert all(r["document"] is None for r in out["results"])
    status, out, _ = post(client, {**body, "top_n": 2, "return_documents": True}, "/rerank", fmt)
    assert len(out["results"]) == 2 and all(r["document"] == TEXTS[r["index"]] for r in out["results"])


# -- Cohere v1 / Jina: objects, extra fields, rank_fields ---------------------------------------


def test_rank_fields_score_the_named_fields(client: FlaskClient) -> None:
    docs = [{"title": "cherry", "text": "a red tree", "url": "u1"}, {"title": "lemon", "text": "apple", "n": 2}]
    got = v1_scores(client, "red cherry apple", docs, rank_fields=["title", "text"])
    want = v1_scores(client, "red cherry apple", ["title: cherry\ntext: a red tree", "title: lemon\ntext: apple"])
    assert got == want
    # without rank_fields the text field is scored; the other fields are kept and echoed
    assert v1_scores(client, "red cherry apple", docs) == v1_scores(client, "red cherry apple", ["a red tree", "apple"])
    status, out, _ = post(client, {"query": "apple", "documents": docs, "return_documents": True}, "/v1/rerank")
    assert status == 200 and sorted((r["document"] for r in out["results"]), key=str) == sorted(docs, key=str)
    # a numeric rank field is rendered like a string one
    assert v1_scores(client, "apple", [{"n": 2, "text": "apple"}], rank_fields=["text", "n"]) == v1_scores(
        client, "apple", ["text: apple\nn: 2"])


def test_jina_shape(client: FlaskClient) -> None:
    body = {"model": "jina-reranker-v2-base-multilingual", "query": "cherry", "top_n": 2, "return_documents": True,
            "documents": ["a red cherry", {"text": "an apple"}, "lemon"]}
    status, out, _ = post(client, body, "/v1/rerank")
    assert status == 200 and len(out["results"]) == 2
    assert out["results"][0] == {"index": 0, "id": None, "relevance_score": out["results"][0]["relevance_score"],
                                 "document": {"text": "a red cherry"}}


# -- the id rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_ids_come_back_in_the_type_sent(client: FlaskClient, fmt: str) -> None:
    for ids in ([1, 2, 3], ["1", "2", "3"], [1, "2", 3]):
        status, out, _ = post(client, {"query": "apple cherry", "ids": ids}, "/v1/rerank", fmt)
        assert status == 200
        assert {r["id"] for r in out["results"]} == set(ids) and all(r["id"] == ids[r["index"]] for r in out["results"])
        status, out, _ = post(client, {"query": "apple", "documents": [{"id": i} for i in ids]}, "/v1/rerank", fmt)
        assert all(r["id"] == ids[r["index"]] for r in out["results"])
    body = {"queries": [{"id": 7, "query": "apple", "ids": [1, "2"]}, {"id": "q", "query": "cherry", "ids": ["3"]}]}
    status, out, _ = post(client, body, "/v1/rerank/batch", fmt)
    assert status == 200 and [item["id"] for item in out["results"]] == [7, "q"]
    assert [sorted(map(str, (r["id"] for r in item["results"]))) for item in out["results"]] == [["1", "2"], ["3"]]
    assert {type(r["id"]) for r in out["results"][0]["results"]} == {int, str}


def test_search_ids_have_the_index_docid_type(tmp_path: Path) -> None:
    from tilde.first_stage import build_bm25_index

    assert _index_ids(["10", "20"], "int") == [10, 20] and _index_ids(["10", "20"], "range") == [10, 20]
    assert _index_ids(["a", "20"], "str") == ["a", "20"]
    for name, docs in (("numeric", {"10": {"apple": 1.0}, "20": {"apple": 0.5}}),
                       ("named", {"d10": {"apple": 1.0}, "d20": {"apple": 0.5}})):
        index = build_plain_index(tmp_path / name / "index", docs)
        coll = tmp_path / name / "collection.tsv"
        coll.write_text("".join(f"{d}\tapple fruit\n" for d in docs))
        build_bm25_index(coll, index / "bm25", store_texts=False)  # a BM25 index without texts
        app = create_app(ServiceConfig(index=str(index), meter="cpu"))
        client = app.test_client()
        status, out, _ = post(client, {"query": "apple"}, "/v1/search")
        want = [int(d) for d in docs] if name == "numeric" else list(docs)
        assert status == 200 and [r["id"] for r in out["results"]] == want
        # /v1/rerank with the ids /v1/search returned answers them alike
        status, again, _ = post(client, {"query": "apple", "ids": want}, "/v1/rerank")
        assert [r["id"] for r in again["results"]] == want
        status, err, _ = post(client, {"query": "apple", "return_documents": True}, "/v1/search")
        assert status == 422 and err["error"]["code"] == "texts_unavailable"
        status, err, _ = post(client, {"query": "apple", "top_n": 0}, "/v1/search")
        assert status == 422 and "top_n" in err["error"]["message"]
        # a BM25 index that keeps texts (tilde build's default) serves them by docid
        get_state(app).text_store = _Texts({d: f"text of {d}" for d in docs})
        status, out, _ = post(client, {"query": "apple", "return_documents": True, "top_n": 1}, "/v1/search")
        assert status == 200 and out["results"][0]["document"] == {"text": f"text of {out['results'][0]['id']}"}


class _Texts:
    def __init__(self, texts: dict[str, str]) -> None:
        self._texts = texts

    def texts(self, docids: list[str]) -> list[str | None]:
        return [self._texts.get(d) for d in docids]


# -- calibrated scores ---------------------------------------------------------------------------


def test_score_calibrated(client: FlaskClient, calibrated_app: Flask) -> None:
    status, err, _ = post(client, {"query": "apple", "ids": ["1", "2"], "score": "calibrated"}, "/v1/rerank")
    assert status == 422 and err["error"]["code"] == "calibration_unavailable"
    cal = calibrated_app.test_client()
    for path, body, key in (
        ("/v1/rerank", {"query": "apple cherry", "ids": ["1", "2", "3", "4"]}, "results"),
        ("/v2/rerank", {"model": "m", "query": "apple cherry", "documents": TEXTS}, "results"),
    ):
        status, raw, _ = post(cal, body, path)
        status, out, _ = post(cal, {**body, "score": "calibrated"}, path)
        assert status == 200 and out["meta"]["score"] == "calibrated" and raw["meta"]["score"] == "raw"
        assert [r["index"] for r in out[key]] == [r["index"] for r in raw[key]]  # monotonic: same order
        want = calibrated_scores(np.array([r["relevance_score"] for r in raw[key]]), CALIBRATION)
        assert [r["relevance_score"] for r in out[key]] == want.tolist()
        assert all(0.0 < r["relevance_score"] < 1.0 for r in out[key])
    # missing="zero" candidates keep 0.0, the floor of the calibrated scale
    status, out, _ = post(cal, {"query": "apple", "ids": ["1", "99"], "missing": "zero", "score": "calibrated"},
                          "/v1/rerank")
    assert status == 200 and out["results"][-1] == {"index": 1, "id": "99", "relevance_score": 0.0}
    # TEI's default (raw_scores false) is calibrated where the index has a calibration
    status, tei, headers = post(cal, {"query": "apple", "texts": TEXTS}, "/rerank")
    assert status == 200 and headers["X-Tilde-Score"] == "calibrated" and all(0 < r["score"] < 1 for r in tei)


# -- chunking fields reach the engine ------------------------------------------------------------


def test_chunking_fields_passed_to_the_engine(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = get_state(app).engine
    assert engine is not None
    seen: list[tuple[Any, Any]] = []
    real = engine.rank

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append((kwargs.get("max_tokens_per_doc"), kwargs.get("max_chunks_per_doc")))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "rank", spy)
    client = app.test_client()
    post(client, {"query": "a", "documents": ["b"], "max_tokens_per_doc": 64, "max_chunks_per_doc": 3}, "/v1/rerank")
    post(client, {"model": "m", "query": "a", "documents": ["b"], "max_tokens_per_doc": 32}, "/v2/rerank")
    post(client, {"queries": [{"query": "a", "documents": ["b"]}], "max_chunks_per_doc": 2}, "/v1/rerank/batch")
    post(client, {"query": "a", "texts": ["b"]}, "/rerank")
    assert seen == [(64, 3), (32, None), (None, 2), (None, None)]


# -- /openapi.json -------------------------------------------------------------------------------


def test_openapi_covers_every_endpoint_with_the_limits(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert set(spec["paths"]) == ENDPOINTS
    comps = spec["components"]["schemas"]
    search = comps["SearchRequest"]["properties"]
    assert search["top_n"]["anyOf"][0]["minimum"] == 1  # as the server refuses 0
    assert search["k"]["maximum"] == ServiceConfig().max_documents
    for name in ("RerankV1Request", "RerankV2Request", "TeiRerankRequest", "BatchRerankRequest", "SearchRequest"):
        assert comps[name]["additionalProperties"] is False
    assert comps["TeiRerankRequest"]["properties"]["texts"]["anyOf"][0]["maxItems"] == ServiceConfig().max_documents
    small = openapi_spec(ServiceConfig(max_batch_queries=3, max_query_chars=50))["components"]["schemas"]
    assert small["BatchRerankRequest"]["properties"]["queries"]["maxItems"] == 3
    assert small["BatchQuery"]["properties"]["query"]["maxLength"] == 50


# -- bodies msgspec alone would not refuse cleanly -----------------------------------------------


JSON_ONLY = "application/json"


def test_deep_and_exotic_document_fields_are_4xx(client: FlaskClient) -> None:
    def deep(n: int) -> bytes:
        return b'{"query": "x", "documents": [{"text": "a", "x": ' + b"[" * n + b"]" * n + b"}]}"

    for data, status, fragment in ((deep(100_000), 400, "nested too deeply"), (deep(40), 422, "documents[0].x[0]"),
                                   (deep(20), 200, "")):
        r = client.post("/v1/rerank", data=data, content_type="application/json")
        assert r.status_code == status and fragment in r.get_data(as_text=True), r.data[:200]
    packed = msgpack.packb({"query": "x", "documents": [{"text": "a", "t": msgpack.ExtType(5, b"x")}]})
    r = client.post("/v1/rerank", data=packed, content_type="application/msgpack", headers={"Accept": JSON_ONLY})
    assert r.status_code == 422 and "extension type" in r.get_json()["error"]["message"]
    packed = msgpack.packb({"query": "x", "documents": [{"text": "a", "t": {1: 2}}]}, strict_types=False)
    r = client.post("/v1/rerank", data=packed, content_type="application/msgpack", headers={"Accept": JSON_ONLY})
    assert r.status_code == 422 and "documents[0].t" in r.get_json()["error"]["message"]


def test_non_finite_scores_are_named_by_id_or_position() -> None:
    from service.errors import ApiError
    from service.schemas import Ranked, check_finite

    ranked = Ranked(np.array([1, 0]), np.array([np.nan, 1.0]), [], [], 2)
    with pytest.raises(ApiError, match=r"\['documents\[1\]'\]"):
        check_finite(ranked)
    with pytest.raises(ApiError, match=r"\['b'\]"):
        check_finite(ranked, ["a", "b"])
