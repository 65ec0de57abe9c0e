"""The official Cohere SDK (``cohere.Client`` for v1, ``cohere.ClientV2``) against a real
`tilde serve` process with a tiny model, plus raw requests in the TEI and Jina shapes: what a new
user's code does, on loopback only (``base_url``; nothing leaves the machine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import build_served_index, serving

cohere = pytest.importorskip("cohere")  # a dev dependency: installed in CI
pytest.importorskip("torch")
pytest.importorskip("transformers")
httpx = pytest.importorskip("httpx")  # cohere's own transport


PASSAGES = {"1": "the apple tree is green", "2": "a sweet red cherry", "3": "how to rank passages fast on a cpu"}
TEXTS = ["a red cherry tree", "apple banana", "rank fast cpu passages", "nothing at all"]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    index, model = build_served_index(tmp_path_factory.mktemp("cohere-sdk"), PASSAGES)
    with serving("--index", str(index), "--model", str(model)) as base:
        yield base


def _v1(url: str) -> object:
    return cohere.Client(api_key="local-test-key", base_url=url, timeout=30)


def _v2(url: str) -> object:
    return cohere.ClientV2(api_key="local-test-key", base_url=url, timeout=30)


def test_v1_strings_objects_top_n_return_documents(url: str) -> None:
    co = _v1(url)
    resp = co.rerank(model="rerank-english-v3.0", query="red cherry", documents=TEXTS)  # type: ignore[attr-defined]
    assert len(resp.results) == len(TEXTS)  # every document without top_n
    scores = [r.relevance_score for r in resp.results]
    assert scores == sorted(scores, reverse=True) and sorted(r.index for r in resp.results) == [0, 1, 2, 3]
    by_index = {r.index: r.relevance_score for r in resp.results}
    objects = [{"text": t, "source": f"s{i}"} for i, t in enumerate(TEXTS)]
    top = co.rerank(query="red cherry", documents=objects, top_n=2, return_documents=True)  # type: ignore[attr-defined]
    assert len(top.results) == 2 and [r.index for r in top.results] == [r.index for r in resp.results[:2]]
    for r in top.results:
        assert r.document.text == TEXTS[r.index] and r.relevance_score == by_index[r.index]
    # rank_fields: the named fields scored as "name: value" lines
    titled = [{"title": "cherry", "text": t} for t in TEXTS]
    ranked = co.rerank(query="red cherry", documents=titled, rank_fields=["title", "text"])  # type: ignore[attr-defined]
    assert len(ranked.results) == len(TEXTS)


def test_v2_rerank(url: str) -> None:
    co = _v2(url)
    resp = co.rerank(model="rerank-v3.5", query="red cherry", documents=TEXTS)  # type: ignore[attr-defined]
    assert len(resp.results) == len(TEXTS) and resp.id
    v1 = _v1(url).rerank(query="red cherry", documents=TEXTS)  # type: ignore[attr-defined]
    assert [(r.index, r.relevance_score) for r in resp.results] == [(r.index, r.relevance_score) for r in v1.results]
    top = co.rerank(model="rerank-v3.5", query="red cherry", documents=TEXTS, top_n=1,  # type: ignore[attr-defined]
                    max_tokens_per_doc=128)
    assert [r.index for r in top.results] == [resp.results[0].index]


def test_v2_hundred_texts(url: str) -> None:
    """The common "re-rank my 100 retrieved chunks" call: the default budget of texts encoded on
    the fly admits it (128 texts of 128 tokens)."""
    texts = [f"{TEXTS[i % len(TEXTS)]} number {i}" for i in range(100)]
    resp = _v2(url).rerank(model="m", query="red cherry", documents=texts)  # type: ignore[attr-defined]
    assert len(resp.results) == 100 and sorted(r.index for r in resp.results) == list(range(100))
    scores = [r.relevance_score for r in resp.results]
    assert scores == sorted(scores, reverse=True)


def test_v1_errors_reach_the_sdk(url: str) -> None:
    with pytest.raises(cohere.errors.UnprocessableEntityError) as err:
        _v1(url).rerank(query="x", documents=["a"], top_n=0)  # type: ignore[attr-defined]
    assert err.value.body["error"]["code"] == "invalid" and "top_n" in err.value.body["error"]["message"]


def test_tei_and_jina_shapes_raw(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/rerank", json={"query": "red cherry", "texts": TEXTS, "raw_scores": True, "return_text": True})
        assert r.status_code == 200, r.text
        ranks = r.json()
        assert isinstance(ranks, list) and len(ranks) == len(TEXTS)
        assert [x["text"] for x in ranks] == [TEXTS[x["index"]] for x in ranks]
        assert [x["score"] for x in ranks] == sorted((x["score"] for x in ranks), reverse=True)
        jina = {"model": "jina-reranker-v2-base-multilingual", "query": "red cherry", "top_n": 3,
                "documents": TEXTS, "return_documents": True}
        r = http.post("/v1/rerank", json=jina)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 3 and all(x["document"] == {"text": TEXTS[x["index"]]} for x in results)
        assert [(x["index"], x["score"]) for x in ranks[:3]] == [(x["index"], x["relevance_score"]) for x in results]


def test_index_ids_beside_texts(url: str, tmp_path: Path) -> None:
    """Documents that carry an index id are looked up, not encoded: the same id type comes back."""
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/v1/rerank", json={"query": "cherry", "documents": [{"id": 2}, {"id": "1"}, "a cherry"]})
        assert r.status_code == 200, r.text
        assert {x["index"]: x["id"] for x in r.json()["results"]} == {0: 2, 1: "1", 2: None}
