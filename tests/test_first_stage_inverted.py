"""The in-process impact first stage (tilde.first_stage.inverted): the index's own weights,
inverted, searched without Anserini. Golden tests pin it to a naive numpy sum of weights over
every row, exactly, and to the re-ranker's tokens-mode score; the quantised variant to the
Lucene impact index of the export (when Java and the Anserini jar are here)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import lucene_available, write_beir_folder

from tests.conftest import write_vocab
from tests.helpers import random_passages, write_index
from tilde.first_stage.inverted import INVERTED_DIR, ImpactIndex, invert_postings, write_inverted_index
from tilde.index import IndexFormatError, TildeIndex
from tilde.index.writer import pool_postings
from tilde.rank import Reranker
from tilde.text import TextProcessor


def _index(folder: Path, vocab: Path, n: int = 150, seed: int = 5, weights: str = "float16") -> Path:
    tp = TextProcessor.load(vocab)
    stop = np.zeros(tp.vocab_size, dtype=bool)
    stop[tp.stop_ids] = True
    raw = random_passages(n, seed=seed, vocab=tp.vocab_size, max_len=30)
    raw[1] = (np.zeros(0, np.int64), np.zeros(0, np.float32))  # a passage without postings
    pooled = [pool_postings(ids, w, stop) for ids, w in raw]
    docids = [f"p{(11 * i) % n}" for i in range(n)]  # not ascending: docids_order is used
    write_index(folder, docids, pooled, weight_dtype=weights, vocab_size=tp.vocab_size,
                vocab_sha256=tp.vocab_hash, tokenizer=tp.tokenizer)
    return folder


@pytest.fixture(scope="module")
def vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab"))


def _dense(index: TildeIndex) -> np.ndarray:
    """[rows, vocab] float64 weights: the naive definition of every passage's weights."""
    w = np.zeros((len(index), index.manifest.vocab_size), dtype=np.float64)
    for r in range(len(index)):
        t, x = index.postings(r)
        w[r, t] = x
    return w


def _naive(dense: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = dense[:, q].sum(axis=1) if q.size else np.zeros(dense.shape[0])
    rows = np.flatnonzero(scores > 0)
    order = np.lexsort((rows, -scores[rows]))[:k]
    return rows[order], scores[rows[order]]


@pytest.mark.parametrize("weights", ["float16", "uint8"])
def test_search_is_the_naive_sum_of_weights_exactly(tmp_path: Path, vocab: Path, weights: str) -> None:
    idx = TildeIndex.open(_index(tmp_path / "idx", vocab, weights=weights))
    impact = ImpactIndex.load(idx)
    assert not impact.stored  # nothing stored: inverted in memory
    dense = _dense(idx)
    rng = np.random.default_rng(0)
    for _ in range(60):
        q = rng.integers(0, idx.manifest.vocab_size, size=int(rng.integers(1, 8)))
        q = np.concatenate([q, q[:1]])  # a repeated token counts twice
        for k in (1, 7, len(idx)):
            rows, scores = impact.search_ids(q, k)
            want_rows, want_scores = _naive(dense, q, k)
            assert rows.tolist() == want_rows.tolist()
            assert scores.tolist() == want_scores.tolist()  # exactly: float64 sums of float16 weights


def test_scores_are_the_rerankers_tokens_scores(tmp_path: Path, vocab: Path) -> None:
    path = _index(tmp_path / "idx", vocab)
    impact = ImpactIndex.load(path)
    rr = Reranker.load(path, missing="error", feedback=None, scoring="tokens")
    words = [t for t in rr.text.vocab if t.isalpha()]
    rng = np.random.default_rng(1)
    for _ in range(25):
        query = " ".join(rng.choice(words, size=int(rng.integers(1, 6))))
        hits = impact.search(query, k=len(impact))
        every = [impact.index.docid(r) for r in range(len(rr.index))]
        everything = {d.docid: d.score for d in rr.rerank(query, every).results}
        assert {h.docid: h.score for h in hits} == {d: s for d, s in everything.items() if s > 0}
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert impact.search("the of and", k=5) == []  # only stop words: no query token


def test_stored_inverted_index_equals_the_in_memory_one(tmp_path: Path, vocab: Path) -> None:
    path = _index(tmp_path / "idx", vocab)
    out, _ = write_inverted_index(path)
    assert out == path / INVERTED_DIR
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"indptr.npy", "rows.npy", "codes.npy"}
    stored = ImpactIndex.load(path)
    memory = invert_postings(TildeIndex.open(path))
    assert stored.stored
    for a, b in ((stored.arrays.indptr, memory.indptr), (stored.arrays.rows, memory.rows),
                 (stored.arrays.codes, memory.codes)):
        assert np.array_equal(a, b)
    write_inverted_index(path)  # rewriting replaces it atomically
    assert sorted(p.name for p in path.iterdir() if p.name.startswith(".")) == []


def test_stale_or_damaged_inverted_index_is_not_used(tmp_path: Path, vocab: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = _index(tmp_path / "idx", vocab, seed=5)
    write_inverted_index(path)
    fresh = _index(tmp_path / "other", vocab, seed=6)  # other postings under the same layout
    (fresh / INVERTED_DIR).symlink_to(path / INVERTED_DIR)
    with caplog.at_level(logging.WARNING):
        impact = ImpactIndex.load(fresh)
    assert not impact.stored and "stale" in caplog.text
    q = np.arange(12, 40)
    assert impact.search_ids(q, 10)[0].tolist() == _naive(_dense(impact.index), q, 10)[0].tolist()
    rows = path / INVERTED_DIR / "rows.npy"
    rows.write_bytes(rows.read_bytes()[:-4])  # truncated
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not ImpactIndex.load(path).stored
    assert "rows.npy" in caplog.text


def test_rows_outside_the_index_are_refused_not_read(tmp_path: Path, vocab: Path) -> None:
    path = _index(tmp_path / "idx", vocab)
    write_inverted_index(path)
    rows = np.load(path / INVERTED_DIR / "rows.npy")
    rows[:] = 10**6  # same size, wrong contents: only the digest would tell
    np.save(path / INVERTED_DIR / "rows.npy", rows)
    impact = ImpactIndex.load(path)
    assert impact.stored
    with pytest.raises(IndexFormatError, match="inverted index is damaged"):
        impact.search_ids(np.arange(12, 200), 5)


@pytest.mark.slow
def test_quantised_search_is_the_lucene_impact_search(tmp_path: Path, vocab: Path) -> None:
    if not lucene_available():
        pytest.skip("no Anserini jar / Java 11+ (pip install --no-deps pyserini==0.25.0)")
    from tilde.export.anserini import export_anserini
    from tilde.first_stage.impact import LuceneImpact

    path = _index(tmp_path / "idx", vocab)
    export_anserini(path, tmp_path / "impact", factor=100, build=True, progress=False)
    lucene = LuceneImpact.load(tmp_path / "impact")
    impact = ImpactIndex.load(path, quantization=100)
    words = [t for t in impact.text.vocab if t.isalpha()]
    rng = np.random.default_rng(3)
    queries = [(f"q{i}", " ".join(rng.choice(words, size=int(rng.integers(1, 6))))) for i in range(20)]
    want = lucene.search_run(queries, k=len(impact))
    got = impact.search_run(queries, k=len(impact))
    for qid, _ in queries:
        # The same passages with the same integer scores; ties may be ordered differently
        # (Anserini breaks them by docid, this engine by row).
        assert sorted((-e.score, e.docid) for e in got[qid]) == sorted((-e.score, e.docid) for e in want[qid])
        assert [e.score for e in got[qid]] == [e.score for e in want[qid]]


def test_beir_with_the_inprocess_impact_first_stage(tmp_path: Path, tiny_model: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from eval.beir import main

    d = write_beir_folder(tmp_path / "beirsyn")
    assert main(["--data", str(d), "--depth", "3", "--first-stage", "impact", "--model", str(tiny_model),
                 "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("impact first stage (impact): nDCG@10") for line in out)
    assert any(line.startswith(f"impact -> {tiny_model.name}") for line in out)
    assert any(line.startswith("latency impact: p50 ") for line in out)
    fields = out[-1].split()
    assert fields[2].startswith("impact_ndcg@10=") and fields[3].startswith("impact_r@100=")
    # the first stage searched the whole corpus (one cached index of every passage)
    cached = next((tmp_path / "c").glob("*/index"))
    assert len(ImpactIndex.load(cached)) == len((d / "corpus.jsonl").read_text().splitlines())
    assert main(["--data", str(d), "--model", "none", "--first-stage", "impact"]) == 2
    assert "needs --model" in capsys.readouterr().err


def test_cli_impact_build_writes_and_resumes_the_first_stages(tmp_path: Path, tiny_mlm: Path, tiny_collection: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from tilde.cli import main as cli_main
    from tilde.first_stage import BM25Index

    out = tmp_path / "idx"
    args = ["build", "--model", str(tiny_mlm), "--dense", "none", "--collection", str(tiny_collection),
            "--output", str(out), "--impact-top-k", "20", "--impact-max-length", "32", "--batch-size", "4",
            "--no-progress", "--no-query-encoders"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "BM25 index of 9 docs" in text and "inverted written" in text and "build complete" in text
    assert ImpactIndex.load(out).stored and BM25Index.load(out / "bm25").has_texts
    # interrupted in the first stages: the re-run keeps the finished index and completes them
    import shutil

    shutil.rmtree(out / "bm25")
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "index: already complete, reused" in text and "BM25 index of 9 docs" in text and "current, reused" in text
    assert TildeIndex.open(out).verify() == []
    # another collection is not taken for this index's: refused as before, without --overwrite
    other = tmp_path / "other.tsv"
    other.write_text("1\tone passage\n2\tanother one\n", encoding="utf-8")
    assert cli_main([str(other) if a == str(tiny_collection) else a for a in args]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert BM25Index.load(out / "bm25").texts(["10"]) == ["the cat sat on the road"]  # untouched
