from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import naive_scores, random_passages, write_index
from tilde.index import TildeIndex
from tilde.index.writer import pool_postings
from tilde.rank import Reranker, UnknownDocidError
from tilde.text import TextProcessor


@pytest.fixture()
def setup(tmp_path: Path, vocab_dir: Path) -> tuple[Reranker, dict[str, tuple[np.ndarray, np.ndarray]], set[int]]:
    tp = TextProcessor.load(vocab_dir)
    stop_mask = np.zeros(tp.vocab_size, dtype=bool)
    stop_mask[tp.stop_ids] = True
    raw = random_passages(300, seed=7, vocab=tp.vocab_size, max_len=60)
    docids = [str(1000 - 3 * i) for i in range(len(raw))]  # unsorted ids
    pooled = [pool_postings(ids, w, stop_mask) for ids, w in raw]
    write_index(tmp_path / "idx", docids, pooled, vocab_size=tp.vocab_size, vocab_sha256=tp.vocab_hash,
                tokenizer=tp.tokenizer)
    rr = Reranker.load(tmp_path / "idx")
    return rr, dict(zip(docids, raw)), set(tp.stop_ids.tolist())


def test_golden_against_naive_reference(setup) -> None:  # type: ignore[no-untyped-def]
    rr, raw, stop = setup
    rng = np.random.default_rng(0)
    docids = list(raw)
    content = [i for i in range(rr.text.vocab_size) if i not in stop]
    for _ in range(50):
        q = rng.choice(content, size=int(rng.integers(1, 10)))  # repeats allowed
        q = np.concatenate([q, q[:2]])
        cands = list(rng.choice(docids, size=int(rng.integers(1, 100)), replace=False))
        expected = naive_scores(raw, stop, q.tolist(), cands)
        rows = rr.index.lookup(cands)
        got = rr.score_ids(q, rows)
        assert got.tolist() == expected  # exact: float16 values summed in float64
        # the full rerank path, query given as text
        words = " ".join(rr.text.vocab[i] for i in q if not rr.text.vocab[i].startswith("##"))
        if not words:
            continue
        qids = rr.text.query_ids(words)
        res = rr.rerank(words, cands)
        exp = naive_scores(raw, stop, qids.tolist(), cands)
        order = sorted(range(len(cands)), key=lambda i: -exp[i])  # stable: ties keep input order
        assert [r.index for r in res.results] == order
        assert [r.score for r in res.results] == [exp[i] for i in order]
        assert [r.docid for r in res.results] == [cands[i] for i in order]


def test_ties_keep_input_order_and_top_n(setup) -> None:  # type: ignore[no-untyped-def]
    rr, raw, _ = setup
    cands = list(raw)[:50]
    res = rr.rerank("東京", cands)  # only [UNK], a stop id: every score is 0
    assert [r.docid for r in res.results] == cands
    assert all(r.score == 0.0 for r in res.results)
    top = rr.rerank("cat dog river", cands, top_n=5)
    full = rr.rerank("cat dog river", cands)
    assert top.results == full.results[:5]
    assert rr.rerank("cat", cands, top_n=0).results == []


def test_missing_policies(setup) -> None:  # type: ignore[no-untyped-def]
    rr, raw, _ = setup
    cands = [*list(raw)[:5], "nope", "999999", *list(raw)[5:8]]
    with pytest.raises(UnknownDocidError) as err:
        rr.rerank("cat dog", cands)
    assert err.value.missing == ["nope", "999999"]
    skip = rr.rerank("cat dog", cands, missing="skip")
    assert skip.missing == ("nope", "999999")
    assert {r.docid for r in skip.results} == set(cands) - {"nope", "999999"}
    zero = rr.rerank("cat dog", cands, missing="zero")
    assert [r.docid for r in zero.results][-2:] == ["nope", "999999"]
    assert [r.score for r in zero.results][-2:] == [0.0, 0.0]
    assert [r.index for r in zero.results][-2:] == [5, 6]
    with pytest.raises(ValueError, match="missing must be"):
        rr.rerank("cat", cands, missing="ignore")


def test_bad_queries(setup) -> None:  # type: ignore[no-untyped-def]
    rr, raw, _ = setup
    cands = list(raw)[:3]
    for q in ("", "   "):
        with pytest.raises(ValueError, match="empty"):
            rr.rerank(q, cands)
    with pytest.raises(ValueError, match="limit"):
        rr.rerank("cat " * 20_000, cands)
    only_stops = rr.rerank("the of and is", cands)
    assert only_stops.query_tokens == 0 and [r.docid for r in only_stops.results] == cands
    assert rr.rerank("cat", []).results == []
    with pytest.raises(ValueError, match="top_n"):
        rr.rerank("cat", cands, top_n=-1)


def test_batch_equals_single(setup) -> None:  # type: ignore[no-untyped-def]
    rr, raw, _ = setup
    cands = list(raw)[:40]
    reqs = [("cat dog", cands), ("river bank money", cands[::-1]), ("what is fast", cands[:3])]
    batch = rr.rerank_batch(reqs)
    assert [b.results for b in batch] == [rr.rerank(q, c).results for q, c in reqs]


def test_uint8_index_ranks_like_float16(tmp_path: Path, vocab_dir: Path) -> None:
    tp = TextProcessor.load(vocab_dir)
    stop_mask = np.zeros(tp.vocab_size, dtype=bool)
    stop_mask[tp.stop_ids] = True
    pooled = [pool_postings(i, w, stop_mask) for i, w in random_passages(100, seed=2, vocab=tp.vocab_size)]
    ids = [str(i) for i in range(100)]
    for dt in ("float16", "uint8"):
        write_index(tmp_path / dt, ids, pooled, weight_dtype=dt, vocab_size=tp.vocab_size,
                    vocab_sha256=tp.vocab_hash, tokenizer=tp.tokenizer)
    a = Reranker.load(tmp_path / "float16").rerank("cat dog river", ids)
    b = Reranker.load(tmp_path / "uint8").rerank("cat dog river", ids)
    scale = TildeIndex.open(tmp_path / "uint8").manifest.weight_scale
    sa = dict((r.docid, r.score) for r in a.results)
    sb = dict((r.docid, r.score) for r in b.results)
    assert all(abs(sa[d] - sb[d]) <= 3 * scale / 2 + 1e-6 for d in ids)  # 3 query tokens


def test_reranker_refuses_other_tokenizer(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import write_vocab

    rr, _, _ = setup
    other = write_vocab(tmp_path / "other")
    (other / "vocab.txt").write_text((other / "vocab.txt").read_text() + "extra\n")
    from tilde.index import IndexFormatError

    with pytest.raises(IndexFormatError, match="does not match"):
        Reranker.load(rr.index.path, tokenizer=other)


def test_numpy_ids(tmp_path: Path, vocab_dir: Path) -> None:
    """``rr.rerank(q, np.array([4, 5]))`` and numpy int scalars find the ids as Python ints do."""
    tp = TextProcessor.load(vocab_dir)
    raw = random_passages(12, seed=3, vocab=tp.vocab_size, max_len=30)
    stop_mask = np.zeros(tp.vocab_size, dtype=bool)
    stop_mask[tp.stop_ids] = True
    pooled = [pool_postings(ids, w, stop_mask) for ids, w in raw]
    docids = [str(i * 3 + 1) for i in range(12)]  # int ids, not a range
    write_index(tmp_path / "idx", docids, pooled, vocab_size=tp.vocab_size, vocab_sha256=tp.vocab_hash,
                tokenizer=tp.tokenizer)
    rr = Reranker.load(tmp_path / "idx", missing="error")
    want = rr.rerank("cat dog river bank", [4, 7, 10]).results
    for ids in (np.array([4, 7, 10]), np.array([4, 7, 10], dtype=np.int32), [np.int64(4), np.int64(7), 10],
                np.array(["4", "7", "10"])):
        got = rr.rerank("cat dog river bank", ids).results  # type: ignore[arg-type]
        assert got == want
    assert [type(c) for c in rr.rerank("cat", np.array([4, 7])).candidates] == [int, int]
    with pytest.raises(UnknownDocidError):
        rr.rerank("cat", np.array([4, 5]))  # 5 is not an id of this index
    with pytest.raises(ValueError, match="1-D"):
        rr.rerank("cat", np.array([[4, 7]]))
