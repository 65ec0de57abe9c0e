"""Texts encoded on the fly by the service: long texts cut into passages (the best chunk's score
wins, checked against scoring each chunk alone), the token budget, and the encode cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flask")

from service.chunking import chunk_text, windows  # noqa: E402
from service.errors import ApiError  # noqa: E402
from service.textcache import Encoded, TextCache  # noqa: E402

# The impact_index fixture's passages (conftest.py): its tiny MLM knows these words.
WORDS = ("the cat sat on the road dogs run in the park and play ball how to read a book fast fish swim in the "
         "river near the bank neural search models rank passages money in the bank a big red car on a small "
         "road the sun and the moon and the stars").split()


def test_windows_are_consecutive_bounded_and_end_between_words() -> None:
    starts = [True, False, False, True, True, False, True, False, False, False, True]  # words of 3,1,2,4,1 pieces
    spans = windows(starts, window=4, max_chunks=10)
    assert spans[0][0] == 0 and spans[-1][1] == len(starts)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no gap, no overlap
    assert all(0 < e - s <= 4 for s, e in spans)
    assert all(e == len(starts) or starts[e] for _, e in spans)  # never inside a word here
    assert spans == [(0, 4), (4, 6), (6, 10), (10, 11)]
    assert windows(starts, window=4, max_chunks=2) == [(0, 4), (4, 6)]
    assert windows(starts, window=4, max_chunks=10, max_tokens=5) == [(0, 4), (4, 5)]  # truncated inside a word
    # one word longer than the window is cut inside it
    assert windows([True, False, False, False, False, True], window=2, max_chunks=10) == [(0, 2), (2, 4), (4, 6)]
    with pytest.raises(ValueError):
        windows(starts, window=0, max_chunks=1)


def _tokenizer(tiny_mlm: Path) -> Any:
    from tilde.text import TextProcessor

    return TextProcessor.load(tiny_mlm).tokenizer


def test_chunks_are_substrings_that_tokenize_to_their_window(tiny_mlm: Path) -> None:
    tok = _tokenizer(tiny_mlm)
    rng = np.random.default_rng(0)
    for _ in range(30):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 80)))) + rng.choice(["", ".", " ,  "])
        enc = tok.encode(text, add_special_tokens=False)
        window, most = int(rng.integers(3, 20)), int(rng.integers(1, 6))
        c = chunk_text(text, enc, window, most)
        assert len(c.texts) <= most and all(0 < p <= window for p in c.pieces)
        joined = [i for t in c.texts for i in tok.encode(t, add_special_tokens=False).ids]
        assert joined == enc.ids[: sum(c.pieces)]  # the chunks hold the text's pieces, in order, once each
        assert c.truncated == (sum(c.pieces) < len(enc.ids))
        assert c.tokens == sum(c.pieces) + 2 * len(c.texts)
        if len(enc.ids) <= window:
            assert c.texts == (text,)  # unchanged: encodes exactly as its indexed copy


@pytest.fixture(scope="module")
def engine(impact_index: Path, tiny_mlm: Path, tiny_bi_encoder: Path) -> Any:
    from service.encoder import TextEncoder
    from service.engine import Engine
    from tilde.rank import Reranker

    rr = Reranker.load(impact_index)
    enc = TextEncoder(str(tiny_mlm), rr.text, rr.index, dense_model=str(tiny_bi_encoder), cache_size=64)
    return Engine(rr, enc, max_encode_tokens=10_000, max_chunks_per_doc=10)


@pytest.fixture(scope="module")
def fresh(engine: Any, tiny_mlm: Path, tiny_bi_encoder: Path) -> Any:
    """The same models without a cache: the naive reference encodes every chunk anew."""
    from service.encoder import TextEncoder

    rr = engine.reranker
    return TextEncoder(str(tiny_mlm), rr.text, rr.index, dense_model=str(tiny_bi_encoder), dense_onnx=False)


def _rank(engine: Any, query: str, docs: list[Any], mode: str | None = None, budget: Any = None, **kw: Any) -> Any:
    from service.engine import EncodeBudget, StageClock
    from service.schemas import Document, RerankRequest
    from tilde.metering import NullMeter, Recorder

    documents = [Document(id=d, text=None, echo={}) if not isinstance(d, tuple) else
                 Document(id=d[0], text=d[1], echo={}) for d in docs]
    req = RerankRequest(query=query, ids=None, documents=documents)
    clock = StageClock(Recorder(NullMeter(), keep=False))
    return engine.rank(req, "error", clock, budget or EncodeBudget(1000), mode=mode, **kw)


def _long_text(seed: int, words: int = 60) -> str:
    return " ".join(np.random.default_rng(seed).choice(WORDS, size=words))


@pytest.mark.parametrize("mode", ["tokens", "mlm", "dense"])
def test_best_chunk_wins_against_scoring_each_chunk_alone(engine: Any, fresh: Any, mode: str) -> None:
    rr, enc = engine.reranker, engine.encoder
    query = "fish in the river bank"
    texts = [_long_text(1), "money in the bank", _long_text(2, 140)]
    docs: list[Any] = ["25", *((None, t) for t in texts), "8"]
    ranked = _rank(engine, query, docs, mode=mode)
    score = dict(zip(ranked.order.tolist(), ranked.scores.tolist()))
    report = {e["index"]: e for e in ranked.encoded}
    plain = rr.score(query, rr.index.lookup(["25", "8"]), mode=mode).scores
    assert (score[0], score[4]) == pytest.approx((plain[0], plain[1]), abs=0 if mode != "dense" else 1e-9)
    for pos, text in zip((1, 2, 3), texts):
        chunks = enc.chunk(text, None, 10).texts
        naive = [rr.score(query, np.array([-1]), mode=mode, texts=fresh.encode([c]), text_positions=np.array([0]))
                 .scores[0] for c in chunks]
        e = report[pos]
        assert e["chunks"] == len(chunks) and e["truncated"] is False
        assert e["best_chunk"] == int(np.argmax(naive))
        if mode == "dense":  # float vectors: the same to float tolerance
            assert score[pos] == pytest.approx(max(naive), abs=1e-5)
        else:  # the same stored weights, the same kernel: exact
            assert score[pos] == max(naive)
    assert report[1]["chunks"] > 1 and report[3]["chunks"] > report[1]["chunks"] and report[2]["chunks"] == 1


def test_fused_mode_and_first_stage_with_chunks(engine: Any) -> None:
    text = _long_text(3, 100)
    ranked = _rank(engine, "red car road", ["40", (None, text), "10"], mode="fused",
                   first_stage=np.array([3.0, 2.0, 1.0]))
    assert sorted(ranked.order.tolist()) == [0, 1, 2] and np.isfinite(ranked.scores).all()
    assert ranked.encoded[0]["chunks"] > 1


def test_max_tokens_and_chunks_per_doc_truncate(engine: Any) -> None:
    text = _long_text(4, 140)
    pieces = engine.encoder.text.token_ids(text).size
    full = _rank(engine, "the bank", [(None, text)]).encoded[0]
    assert full["truncated"] is False and full["tokens"] == pieces + 2 * full["chunks"]
    two = _rank(engine, "the bank", [(None, text)], max_chunks_per_doc=2).encoded[0]
    assert (two["chunks"], two["truncated"]) == (2, True) and two["tokens"] <= 2 * (engine.encoder.window + 2)
    short = _rank(engine, "the bank", [(None, text)], max_tokens_per_doc=5).encoded[0]
    assert (short["chunks"], short["truncated"], short["tokens"]) == (1, True, 7)
    for field, bad in (("max_tokens_per_doc", 0), ("max_chunks_per_doc", -1), ("max_chunks_per_doc", True)):
        with pytest.raises(ApiError, match=field) as err:
            _rank(engine, "the bank", [(None, text)], **{field: bad})
        assert err.value.status == 422


def test_token_budget_counts_chunk_tokens_and_is_shared(engine: Any) -> None:
    from service.engine import PASSAGE_COST_TOKENS, EncodeBudget, encode_cost

    text = _long_text(5, 50)
    chunks = engine.encoder.chunk(text, None, 10)
    need = encode_cost(chunks)
    assert need == chunks.tokens + PASSAGE_COST_TOKENS * len(chunks.texts)
    budget = EncodeBudget(1000, tokens=2 * need)
    _rank(engine, "cat", [(None, text)], budget=budget)
    assert budget.tokens_left == need
    _rank(engine, "cat", [(None, text)], budget=budget)  # a batch's second query: exactly what is left
    with pytest.raises(ApiError, match="max_encode_tokens") as err:
        _rank(engine, "cat", [(None, "cat")], budget=budget)
    assert err.value.status == 422 and err.value.code == "too_many_texts"
    # the engine's own limit applies when the caller leaves it unset
    assert _rank(engine, "cat", [(None, text)], budget=EncodeBudget(1000)) is not None


def test_default_budget_admits_100_texts_of_128_tokens() -> None:
    from service.config import ServiceConfig
    from service.engine import PASSAGE_COST_TOKENS

    c = ServiceConfig()
    assert c.max_encode >= 100 and c.max_encode_tokens >= 100 * (128 + PASSAGE_COST_TOKENS)


def test_text_cache_is_bounded_and_keyed_by_identity() -> None:
    item = Encoded(np.array([1], np.uint32), np.array([0.5], np.float16), None)
    cache = TextCache(2, "model-a")
    for t in ("x", "y", "z"):
        cache.put(cache.key(t), item)
    assert len(cache) == 2 and cache.get(cache.key("x")) is None and cache.get(cache.key("z")) is item
    assert cache.key("x") != TextCache(2, "model-b").key("x")
    assert cache.stats() == {"entries": 2, "capacity": 2, "hits": 1, "misses": 1}
    off = TextCache(0, "m")
    off.put(off.key("x"), item)
    assert len(off) == 0
    cache.put(cache.key("\ud800 lone surrogate"), item)  # a JSON body may carry one


def test_cached_texts_encode_the_same(engine: Any) -> None:
    enc = engine.encoder
    texts = [_long_text(6, 10), _long_text(7, 12)]
    first, hits = enc.encode_cached(texts)
    again, hits2 = enc.encode_cached(texts[::-1])
    assert hits2 == [True, True]
    np.testing.assert_array_equal(first.tokens[first.offsets[0]:first.offsets[1]],
                                  again.tokens[again.offsets[1]:again.offsets[2]])
    np.testing.assert_array_equal(first.dense[0], again.dense[1])  # type: ignore[index]


def test_service_chunks_long_texts_by_default(impact_index: Path, tiny_mlm: Path, tiny_bi_encoder: Path) -> None:
    from service.app import create_app
    from service.config import ServiceConfig

    app = create_app(ServiceConfig(index=str(impact_index), model=str(tiny_mlm), dense_model=str(tiny_bi_encoder),
                                   max_chunks_per_doc=3, max_encode_tokens=500))
    client = app.test_client()
    out = client.post("/v1/rerank", json={"query": "fish bank", "documents": [_long_text(8, 200), "fish"]}).get_json()
    long, short = sorted(out["meta"]["encoded"], key=lambda e: e["index"])
    assert (long["chunks"], long["truncated"], short["chunks"], short["truncated"]) == (3, True, 1, False)
    info = client.get("/info").get_json()
    assert info["limits"]["max_encode_tokens"] == 500 and info["model"]["chunk_pieces"] == 30
    assert info["model"]["encode_cache"]["capacity"] == 4096
    over = client.post("/v1/rerank", json={"query": "fish", "documents": [_long_text(9, 200)] * 5})
    assert over.status_code == 422 and "max_encode_tokens" in over.get_json()["error"]["message"]


def test_bi_encoder_on_onnx_matches_torch(engine: Any, fresh: Any) -> None:
    torch_enc = fresh
    assert engine.encoder._dense_session is not None and torch_enc._dense_session is None
    texts = [_long_text(s, int(n)) for s, n in enumerate(np.random.default_rng(0).integers(1, 30, size=11))]
    np.testing.assert_allclose(engine.encoder.vectors(texts), torch_enc.vectors(texts), atol=1e-5)
