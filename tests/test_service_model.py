"""On-the-fly encoding in the service: documents that carry text but are not in the index are
encoded with the (tiny) TILDEv2 model and score exactly as if they had been indexed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest_service import tiny_model

pytest.importorskip("torch")
pytest.importorskip("transformers")

from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402

from service.app import create_app  # noqa: E402
from service.config import ServiceConfig  # noqa: E402
from service.encoder import ModelMismatchError  # noqa: E402

PASSAGES = {
    "1": "the apple tree is green",
    "2": "a sweet red cherry",
    "3": "how to rank passages fast on a cpu",
    "4": "lemon and lime are sour fruits",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tilde.index.build import build_index

    root = tmp_path_factory.mktemp("svc-model")
    model = tiny_model(root / "model")
    coll = root / "collection.tsv"
    coll.write_text("".join(f"{pid}\t{text}\n" for pid, text in PASSAGES.items()), "utf-8")
    build_index(str(model), coll, root / "index", progress=False, batch_size=2)
    return model, root / "index"


@pytest.fixture(scope="module")
def app(built: tuple[Path, Path]) -> Flask:
    model, index = built
    return create_app(ServiceConfig(index=str(index), model=str(model), max_encode=3))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(client: FlaskClient, body: Any, path: str = "/v1/rerank") -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json")


def test_encoded_text_scores_like_the_indexed_passage(client: FlaskClient, built: tuple[Path, Path]) -> None:
    from tilde.index import TildeIndex
    from tilde.text import TextProcessor

    query = "apple cherry rank cpu green"
    indexed = json.loads(post(client, {"query": query, "ids": list(PASSAGES)}).data)
    by_id = {r["id"]: r["relevance_score"] for r in indexed["results"]}
    assert any(v > 0 for v in by_id.values())
    docs = [{"id": f"new-{pid}", "text": text} for pid, text in PASSAGES.items()]  # ids not in the index
    out = json.loads(post(client, {"query": query, "documents": [docs[0], docs[2], "2"]}).data)
    got = {r["index"]: r["relevance_score"] for r in out["results"]}
    assert (got[0], got[1]) == (by_id["1"], by_id["3"])
    assert got[2] >= 0.0  # "2" is a text here, not an id
    assert [(e["index"], e["id"]) for e in out["meta"]["encoded"]] == [(0, "new-1"), (1, "new-3"), (2, None)]
    # short texts: one passage each, nothing cut; the second request finds them in the cache
    assert all((e["chunks"], e["truncated"], e["best_chunk"]) == (1, False, 0) for e in out["meta"]["encoded"])
    pieces = TextProcessor.load(TildeIndex.open(built[1]).tokenizer_path).token_ids
    sent = (PASSAGES["1"], PASSAGES["3"], "2")
    assert [e["tokens"] for e in out["meta"]["encoded"]] == [pieces(t).size + 2 for t in sent]
    again = json.loads(post(client, {"query": query, "documents": [docs[0], docs[2], "2"]}).data)
    assert [e["cached"] for e in again["meta"]["encoded"]] == [True, True, True]
    assert again["results"] == out["results"]
    assert out["meta"]["missing"] == [] and out["meta"]["timing"]["encode"] > 0
    # an id that is in the index wins over its text (no encoding)
    out = json.loads(post(client, {"query": query, "documents": [{"id": "1", "text": "zzz"}]}).data)
    assert out["results"][0]["relevance_score"] == by_id["1"] and out["meta"]["encoded"] == []


def test_encode_cap(client: FlaskClient) -> None:
    resp = post(client, {"query": "apple", "documents": ["a", "b", "c", "d"]})
    assert resp.status_code == 422 and json.loads(resp.data)["error"]["code"] == "too_many_texts"
    body = {"queries": [{"query": "apple", "documents": ["a", "b"]}, {"query": "red", "documents": ["c", "d"]}]}
    resp = post(client, body, "/v1/rerank/batch")
    assert resp.status_code == 422 and "queries[1]" in json.loads(resp.data)["error"]["message"]


def test_info_reports_encoder(client: FlaskClient, built: tuple[Path, Path]) -> None:
    info = json.loads(client.get("/info").data)
    assert info["model"]["encoder_loaded"] is True
    assert info["model"]["encoder_sha256"] == info["model"]["index_model_sha256"]
    assert info["limits"]["max_encode"] == 3


def test_mismatched_model_is_refused(built: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    _, index = built
    other = tiny_model(tmp_path / "other")
    from tilde.model import load_model

    net = load_model(other)
    with torch.no_grad():
        net.tok_proj.bias.fill_(0.3)
    net.save_pretrained(str(other))
    with pytest.raises(ModelMismatchError, match="not the one the index"):
        create_app(ServiceConfig(index=str(index), model=str(other)))
    app = create_app(ServiceConfig(index=str(index), model=str(other), check_model=False))
    assert app.test_client().get("/ready").status_code == 200


@pytest.fixture(scope="module")
def built_feedback(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same tiny model recommending pseudo-relevance feedback (tilde_feedback in its config)."""
    from tilde.commands.train import recommend_feedback
    from tilde.index.build import build_index

    root = tmp_path_factory.mktemp("svc-feedback")
    model = tiny_model(root / "model")
    recommend_feedback(str(model), "2,5,0.5")
    coll = root / "collection.tsv"
    coll.write_text("".join(f"{pid}\t{text}\n" for pid, text in PASSAGES.items()), "utf-8")
    build_index(str(model), coll, root / "index", progress=False, batch_size=2)
    return model, root / "index"


def test_feedback_recommended_by_the_model(built_feedback: tuple[Path, Path]) -> None:
    from tilde.index import TildeIndex
    from tilde.rank import Reranker
    from tilde.rank.feedback import Feedback

    model, index = built_feedback
    assert TildeIndex.open(index).manifest.feedback == {"docs": 2, "terms": 5, "weight": 0.5}
    client = create_app(ServiceConfig(index=str(index), model=str(model), max_encode=3)).test_client()
    assert json.loads(client.get("/info").data)["feedback"] == {"docs": 2, "terms": 5, "weight": 0.5}
    query = "apple cherry green"
    ids = list(PASSAGES)
    out = json.loads(post(client, {"query": query, "ids": ids}).data)
    expected = Reranker.load(index).rerank(query, ids)
    assert expected.feedback_terms > 0 and out["meta"]["feedback_terms"] == expected.feedback_terms
    assert [(r["index"], r["relevance_score"]) for r in out["results"]] == [
        (d.index, d.score) for d in expected.results
    ]
    plain = Reranker.load(index, feedback=None).rerank(query, ids)
    assert [d.score for d in plain.results] != [d.score for d in expected.results]
    # a text encoded on the fly is scored with the same expanded query as the indexed passages
    docs = [{"id": pid} for pid in ids] + [{"id": "copy-of-1", "text": PASSAGES["1"]}]
    out = json.loads(post(client, {"query": query, "documents": docs}).data)
    got = {r["index"]: r["relevance_score"] for r in out["results"]}
    assert got[4] == got[0] and [(e["index"], e["id"]) for e in out["meta"]["encoded"]] == [(4, "copy-of-1")]
    # the service can turn it off, or set its own
    off = create_app(ServiceConfig(index=str(index), model=str(model), feedback="off")).test_client()
    assert json.loads(off.get("/info").data)["feedback"] is None
    out = json.loads(post(off, {"query": query, "ids": ids}).data)
    assert out["meta"]["feedback_terms"] == 0
    assert [r["relevance_score"] for r in out["results"]] == [d.score for d in plain.results]
    own = create_app(ServiceConfig(index=str(index), feedback="1,3,1")).test_client()
    assert json.loads(own.get("/info").data)["feedback"] == Feedback(1, 3, 1.0).to_dict()


def test_bad_feedback_setting_is_a_config_error() -> None:
    from service.config import ConfigError

    with pytest.raises(ConfigError, match="feedback"):
        ServiceConfig(index="x", feedback="5,30")


def test_long_text_scores_as_its_best_passage(client: FlaskClient, built: tuple[Path, Path]) -> None:
    """A TILDEv2 index's passages are 190 word pieces: a longer text is cut, and gets the score
    of its best chunk, each chunk scored alone as a text."""
    from tilde.index import TildeIndex
    from tilde.text import TextProcessor

    words = " ".join(PASSAGES.values()).split()
    text = " ".join(words[i % len(words)] for i in range(450))
    query = "apple cherry rank cpu green"
    out = json.loads(post(client, {"query": query, "documents": [text]}).data)
    entry = out["meta"]["encoded"][0]
    tok = TextProcessor.load(TildeIndex.open(built[1]).tokenizer_path).tokenizer
    assert entry["chunks"] == -(-len(tok.encode(text, add_special_tokens=False).ids) // 190) > 1
    from service.chunking import chunk_text

    chunks = chunk_text(text, tok.encode(text, add_special_tokens=False), 190, 10).texts
    alone = [json.loads(post(client, {"query": query, "documents": [c]}).data)["results"][0]["relevance_score"]
             for c in chunks]
    assert out["results"][0]["relevance_score"] == max(alone)
    assert entry["best_chunk"] == alone.index(max(alone)) and entry["truncated"] is False
