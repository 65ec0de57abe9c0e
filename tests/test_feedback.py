"""Pseudo-relevance feedback (tilde.rank.feedback): the fast path against a plain-Python
re-implementation of its definition, the off switch, the manifest default, and bad settings."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import random_passages, write_index
from tilde.index.writer import pool_postings
from tilde.rank import Reranker
from tilde.rank.feedback import Feedback, parse_feedback
from tilde.text import TextProcessor


def naive_feedback_scores(
    pooled: dict[str, tuple[np.ndarray, np.ndarray]], query_ids: list[int], cands: list[str], fb: Feedback
) -> tuple[list[float], int]:
    """The definition, spelled out: first-pass scores, the best ``docs`` candidates (ties in input
    order, score > 0), their L1-normalised weights summed with their first-pass scores as weights,
    query tokens removed, the ``terms`` heaviest (ties: smaller id) scaled so the heaviest weighs
    ``weight``, added to every score. Lists shorter than ``2 * docs`` are scored plain."""
    table = {d: dict(zip(t.tolist(), w.astype(np.float64).tolist())) for d, (t, w) in pooled.items()}
    base = [float(sum(table[d].get(q, 0.0) for q in query_ids)) for d in cands]
    if len(cands) < 2 * fb.docs:  # a short list is scored plain
        return base, 0
    order = sorted(range(len(cands)), key=lambda i: -base[i])
    best = [(cands[i], base[i]) for i in order[: fb.docs] if base[i] > 0]
    acc: dict[int, float] = defaultdict(float)
    for d, score in best:
        total = sum(table[d].values())
        if total > 0:
            for t, w in table[d].items():
                acc[t] += w * (score / total)
    for q in set(query_ids):
        acc.pop(q, None)
    ranked = sorted(((v, t) for t, v in acc.items() if v > 0), key=lambda x: (-x[0], x[1]))[: fb.terms]
    if not ranked:
        return base, 0
    top = ranked[0][0]
    expansion = sorted((t, v * fb.weight / top) for v, t in ranked)
    return [b + sum(w * table[d].get(t, 0.0) for t, w in expansion) for b, d in zip(base, cands)], len(expansion)


@pytest.fixture()
def index(tmp_path: Path, vocab_dir: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]], TextProcessor]:
    tp = TextProcessor.load(vocab_dir)
    stop_mask = np.zeros(tp.vocab_size, dtype=bool)
    stop_mask[tp.stop_ids] = True
    raw = random_passages(200, seed=11, vocab=tp.vocab_size, max_len=50)
    docids = [f"d{i}" for i in range(len(raw))]
    pooled = [pool_postings(ids, w, stop_mask) for ids, w in raw]
    write_index(tmp_path / "idx", docids, pooled, vocab_size=tp.vocab_size, vocab_sha256=tp.vocab_hash,
                tokenizer=tp.tokenizer)
    return tmp_path / "idx", dict(zip(docids, pooled)), tp


def test_feedback_equals_its_definition(index) -> None:  # type: ignore[no-untyped-def]
    path, pooled, tp = index
    rr = Reranker.load(path, feedback=Feedback(docs=4, terms=7, weight=0.6))
    rng = np.random.default_rng(3)
    docids = list(pooled)
    words = [w for w in tp.vocab if w.isalpha() and not w.startswith("##")]
    checked = 0
    for _ in range(40):
        query = " ".join(rng.choice(words, size=int(rng.integers(1, 6))).tolist())
        qids = tp.query_ids(query).tolist()
        if not qids:
            continue
        cands = list(rng.choice(docids, size=int(rng.integers(1, 120)), replace=False))
        res = rr.rerank(query, cands)
        expected, n_terms = naive_feedback_scores(pooled, qids, cands, rr.feedback)  # type: ignore[arg-type]
        got = dict(zip(res.order.tolist(), res.scores.tolist()))
        assert np.allclose([got[i] for i in range(len(cands))], expected, rtol=1e-12, atol=1e-12)
        assert res.feedback_terms == n_terms
        assert np.all(np.diff(res.scores) <= 0)
        checked += n_terms > 0
        plain = rr.rerank(query, cands, feedback=None)  # per-call off switch
        assert plain.feedback_terms == 0 and "feedback" not in plain.timing_ms
        table = {d: dict(zip(t.tolist(), w.astype(np.float64).tolist())) for d, (t, w) in pooled.items()}
        base = {i: sum(table[c].get(q, 0.0) for q in qids) for i, c in enumerate(cands)}
        assert dict(zip(plain.order.tolist(), plain.scores.tolist())) == base
    assert checked > 10  # the comparison exercised real expansions


def test_feedback_default_comes_from_the_manifest(index) -> None:  # type: ignore[no-untyped-def]
    path, _, _ = index
    assert Reranker.load(path).feedback is None  # plain TILDEv2 unless the model asks
    mpath = path / "manifest.json"
    data = json.loads(mpath.read_text())
    data["feedback"] = {"docs": 3, "terms": 10, "weight": 0.25}
    mpath.write_text(json.dumps(data))
    assert Reranker.load(path).feedback == Feedback(3, 10, 0.25)
    assert Reranker.load(path, feedback=None).feedback is None
    data["feedback"] = {"docs": 0, "terms": 10, "weight": 0.25}
    mpath.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="manifest feedback.*docs"):
        Reranker.load(path)


def test_feedback_settings_are_checked() -> None:
    assert parse_feedback("off") is None
    assert parse_feedback("5,30,0.5") == Feedback(5, 30, 0.5)
    assert str(Feedback(5, 30, 0.5)) == "5,30,0.5"
    for bad in ("5,30", "a,b,c", "0,30,0.5", "5,0,0.5", "5,30,0", "5,30,-1", "5,30,inf"):
        with pytest.raises(ValueError):
            parse_feedback(bad)
    with pytest.raises(ValueError, match="unknown field"):
        Feedback.from_dict({"docs": 5, "depth": 3})


def test_no_expansion_when_nothing_matches(index) -> None:  # type: ignore[no-untyped-def]
    path, pooled, tp = index
    rr = Reranker.load(path, feedback=Feedback())
    word = next(w for w in tp.vocab if w.isalpha() and not w.startswith("##") and tp.query_ids(w).size)
    qids = set(tp.query_ids(word).tolist())
    # candidates holding none of the query's tokens: every first-pass score is 0, so no feedback
    cands = [d for d, (t, _) in pooled.items() if not qids & set(t.tolist())][:20]
    assert len(cands) == 20
    res = rr.rerank(word, cands)
    assert res.feedback_terms == 0 and not res.scores.any()


def test_rerank_cli_feedback_flag(index, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tilde.cli import main as cli
    from tilde.io import read_run

    path, pooled, tp = index
    mpath = path / "manifest.json"
    data = json.loads(mpath.read_text())
    data["feedback"] = {"docs": 3, "terms": 8, "weight": 0.5}
    mpath.write_text(json.dumps(data))
    words = [w for w in tp.vocab if w.isalpha() and not w.startswith("##")][:40]
    queries = tmp_path / "q.tsv"
    queries.write_text("".join(f"q{i}\t{words[i]} {words[i + 1]} {words[i + 2]}\n" for i in range(0, 30, 3)))
    cands = list(pooled)[:60]
    run = tmp_path / "run.trec"
    lines = [f"q{i} Q0 {d} {r + 1} {100 - r} bm25\n" for i in range(0, 30, 3) for r, d in enumerate(cands)]
    run.write_text("".join(lines))
    outs = {}
    for flag in ("index", "off", "3,8,0.5"):
        out = tmp_path / f"out-{flag}.trec"
        assert cli(["rerank", "--index", str(path), "--queries", str(queries), "--run", str(run),
                    "--output", str(out), "--feedback", flag]) == 0
        outs[flag] = {q: [(e.docid, e.score) for e in v] for q, v in read_run(out).items()}
    assert outs["index"] == outs["3,8,0.5"] != outs["off"]
    plain = Reranker.load(path, feedback=None)
    for line in queries.read_text().splitlines():
        qid, text = line.split("\t")
        res = plain.rerank(text, cands)
        assert [d for d, _ in outs["off"][qid]] == [r.docid for r in res.results]
    assert cli(["rerank", "--index", str(path), "--queries", str(queries), "--run", str(run),
                "--output", str(tmp_path / "x.trec"), "--feedback", "5,30"]) != 0
    assert not (tmp_path / "x.trec").exists()


def test_dense_pass_equals_the_merge_kernel_bit_for_bit(index) -> None:  # type: ignore[no-untyped-def]
    from tilde.rank.kernel import score_rows, score_rows_dense

    path, pooled, tp = index
    rr = Reranker.load(path, feedback=None)
    offsets, tokens, codes, table = rr._arrays
    rng = np.random.default_rng(5)
    for _ in range(30):
        ids = np.unique(rng.integers(0, tp.vocab_size, size=int(rng.integers(1, 60))))
        weights = rng.random(ids.size) * 2
        rows = rng.integers(-1, len(pooled), size=80)
        merge = score_rows(offsets, tokens, codes, table, rows, ids, weights)
        dense = score_rows_dense(offsets, tokens, codes, table, rows, ids, weights, tp.vocab_size)
        assert merge.tolist() == dense.tolist()
