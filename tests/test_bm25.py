"""Embedded BM25 (tilde.bm25): analyzer, Lucene length norms, weights pinned to bm25s, search,
the on-disk format, the CLI, the optional Lucene backend and SciFact against Anserini's figure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from helpers import lucene_available

from tilde.bm25 import Analyzer, BM25Index, BM25IndexError, build_bm25_index
from tilde.cli import main as cli_main
from tilde.first_stage.bm25 import bm25_weights, lucene_doc_length
from tilde.first_stage.kernel import top_k
from tilde.io import FormatError, read_run

DOCS = [
    ("d1", "The cat sat on the mat."),
    ("d2", "Dogs and cats are popular pets; a dog's life."),
    ("d3", "A tilde is a diacritic: ñ, õ."),
    ("d4", "Cats, cats and more cats!"),
    ("d5", "the and of"),  # only stopwords: an empty document after analysis
    ("é-7", "Café society in Zürich"),
]


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{pid}\t{text}\n" for pid, text in rows), encoding="utf-8")
    return path


@pytest.fixture()
def small_index(tmp_path: Path) -> Path:
    coll = write_tsv(tmp_path / "c.tsv", DOCS)
    build_bm25_index(coll, tmp_path / "idx")
    return tmp_path / "idx"


# -------------------------------------------------------------------------------------------
# analyzer


# Outputs of Anserini 0.25's DefaultEnglishAnalyzer (through its jar) on these strings.
LUCENE_ANALYSIS = [
    ("RESULTS:The km\u00b2 of H\u2082O\u2082 in 2000;284:1-5", ["results:th", "km", "h", "o", "2000;284", "1", "5"]),
    ("Crohn's disease isn't 3's O\u2019Neil\u2019s", ["crohn", "diseas", "isn't", "3", "s", "o\u2019neil"]),
    ("she\u00e2\u20ac\u2122s \u00a9 2019 \u2122 \u2606 \u25b8 \U0001f600ok",
     ["she\u00e2", "\u2122", "s", "\u00a9", "2019", "\u2122", "\U0001f600", "ok"]),
    ("sh\u00e5\u00adn\u00adtr\u00e5 \u6771\u4eac\u30bf\u30ef\u30fc a_b _____ v1.2 end.1 x.y",
     ["sh\u00e5\u00adn\u00adtr\u00e5", "\u6771", "\u4eac", "\u30bf\u30ef\u30fc", "a_b", "v1.2", "end", "1", "x.y"]),
    ("The U.S. vs. Wi-Fi 1,000.50 e.g. r\u00e9sum\u00e9 na\u00efve",
     ["u.", "vs", "wi", "fi", "1,000.50", "e.g", "r\u00e9sum\u00e9", "na\u00efv"]),
    ("what is the meaning of running", ["what", "mean", "run"]),  # Lucene's stopwords keep "what"
]

# word:stem pairs from Lucene's PorterStemmer: all but the last 24 are words where Snowball's
# "porter" (PyStemmer) gives another stem, the last 24 a random control sample.
LUCENE_PORTER = """
    archaeology:archaeolog assemblies:assembl assembly:assembl bacteriology:bacteriolog
    coassembly:coassembl cytology:cytolog dermatology:dermatolog disassembly:disassembl garbology:garbolog
    gerontology:gerontolog hydrology:hydrolog impossibly:imposs incredibly:incred indelibly:indel
    inducibly:induc invisibly:invis irreversibly:irrevers meteorology:meteorolog neonatology:neonatolog
    nobbly:nobbl ostensibly:ostens osteology:osteolog pathologies:patholog physiologies:physiolog
    possibly:possibl preassembly:preassembl reassembly:reassembl reproducibly:reproduc responsibly:respons
    reversibly:revers sensibly:sensibl trekked:trek visibly:visibl amidase:amidas animism:anim
    aphoristic:aphorist classless:classless cta:cta dbs:db declines:declin endoscopically:endoscop
    epitope:epitop fosters:foster hyperplasias:hyperplasia hypomethylated:hypomethyl kyiv:kyiv
    laureates:laureat localizing:local montecito:montecito nonviable:nonviabl
    osteoprogenitor:osteoprogenitor plca:plca polysorbate:polysorb pristine:pristin pulpit:pulpit
    recalibration:recalibr vcam:vcam
"""


@pytest.mark.parametrize(("text", "expected"), LUCENE_ANALYSIS)
def test_analyzer_matches_anserini(text: str, expected: list[str]) -> None:
    assert Analyzer().terms(text) == expected


def test_porter_stems_match_lucene() -> None:
    pairs = [p.split(":") for p in LUCENE_PORTER.split()]
    assert len(pairs) > 50
    analyzer = Analyzer(stopwords="none")
    assert [(w, analyzer.terms(w)) for w, _ in pairs] == [(w, [stem]) for w, stem in pairs]


def test_analyzer_options() -> None:
    a = Analyzer()
    assert a.terms("The cat's toys don't RUN") == ["cat", "toi", "don't", "run"]
    assert a.terms("") == [] and a.terms("the of and") == []
    assert Analyzer(stemmer="none", stopwords="none").terms("The Cats") == ["the", "cats"]
    assert Analyzer(stemmer="english").terms("generously") == ["generous"]  # Porter2 differs from Porter
    assert a.terms("generously") == ["gener"]


def test_analyzer_round_trips_and_validates() -> None:
    a = Analyzer(stemmer="english", stopwords="none")
    assert Analyzer.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="stemmer"):
        Analyzer(stemmer="snowball")
    with pytest.raises(ValueError, match="unknown analyzer settings"):
        Analyzer.from_dict({"stemmer": "porter", "colour": "red"})


def test_lucene_doc_length_matches_smallfloat() -> None:
    # Values worked out from org.apache.lucene.util.SmallFloat.intToByte4/byte4ToInt:
    # exact below 24, then 24 + (v with its top 4 significant bits kept), v = len - 24.
    lengths = np.array([0, 1, 23, 24, 31, 32, 39, 40, 41, 55, 56, 60, 61, 63, 64, 100, 1000])
    expected = [0, 1, 23, 24, 31, 32, 39, 40, 40, 54, 56, 60, 60, 60, 64, 96, 984]
    assert lucene_doc_length(lengths).tolist() == expected


# -------------------------------------------------------------------------------------------
# weights and search against bm25s and a naive reference


def random_corpus(seed: int, n_docs: int = 60, vocab: int = 40) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[f"t{int(t)}" for t in rng.zipf(1.3, size=int(rng.integers(1, 30))) % vocab] for _ in range(n_docs)]


def csc_from_tokens(corpus: list[list[str]], k1: float, b: float, norm: str) -> tuple[list[str], np.ndarray]:
    terms = sorted({t for doc in corpus for t in doc})
    tid = {t: i for i, t in enumerate(terms)}
    flat = np.array([tid[t] for doc in corpus for t in doc], dtype=np.int32)
    lengths = np.array([len(doc) for doc in corpus], dtype=np.int64)
    data, indices, indptr = bm25_weights(flat, lengths, len(terms), k1, b, norm)
    dense = np.zeros((len(corpus), len(terms)), dtype=np.float32)
    for t in range(len(terms)):
        dense[indices[indptr[t]:indptr[t + 1]], t] = data[indptr[t]:indptr[t + 1]]
    return terms, dense


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_weights_equal_bm25s(seed: int) -> None:
    bm25s = pytest.importorskip("bm25s")
    corpus = random_corpus(seed)
    k1, b = 0.9, 0.4
    terms, ours = csc_from_tokens(corpus, k1, b, "exact")
    ref = bm25s.BM25(k1=k1, b=b, method="lucene")
    ref.index(corpus, show_progress=False)
    theirs = np.zeros_like(ours)
    s = ref.scores
    for term, col in ref.vocab_dict.items():
        if term in terms:
            a, z = s["indptr"][col], s["indptr"][col + 1]
            theirs[s["indices"][a:z], terms.index(term)] = s["data"][a:z]
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-7)


def naive_bm25(corpus: list[list[str]], query: list[str], k1: float, b: float) -> np.ndarray:
    """Lucene BM25 written out term by term, Lucene's length rounding and statistics included."""
    lengths = np.array([len(d) for d in corpus])
    n = int((lengths > 0).sum())
    avgdl = lengths.sum() / n
    dl = lucene_doc_length(lengths)
    out = np.zeros(len(corpus))
    for q in query:
        df = sum(1 for d in corpus if q in d)
        if df == 0:
            continue
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(corpus):
            tf = d.count(q)
            if tf:
                out[i] += idf * tf / (tf + k1 * (1 - b + b * dl[i] / avgdl))
    return out


@pytest.mark.parametrize("seed", [3, 4])
def test_search_equals_naive_lucene_bm25(tmp_path: Path, seed: int) -> None:
    corpus = random_corpus(seed, n_docs=80)
    corpus[5] = []  # an empty document
    write_tsv(tmp_path / "c.tsv", [(f"doc{i}", " ".join(d)) for i, d in enumerate(corpus)])
    build_bm25_index(tmp_path / "c.tsv", tmp_path / "idx", k1=0.82, b=0.68, analyzer=Analyzer("none", "none"))
    index = BM25Index.load(tmp_path / "idx")
    rng = np.random.default_rng(seed)
    for _ in range(10):
        query = [f"t{int(t)}" for t in rng.integers(0, 45, size=3)]  # some terms unseen
        expected = naive_bm25(corpus, query, 0.82, 0.68)
        hits = index.search(" ".join(query), k=15)
        order = sorted((i for i in range(len(corpus)) if expected[i] > 0), key=lambda i: (-expected[i], i))[:15]
        assert [h.docid for h in hits] == [f"doc{i}" for i in order]
        np.testing.assert_allclose([h.score for h in hits], expected[order], rtol=1e-5)


def test_top_k_is_deterministic_at_ties() -> None:
    rows = np.array([9, 3, 7, 1, 5], dtype=np.int64)
    scores = np.array([1.0, 2.0, 1.0, 1.0, 3.0], dtype=np.float32)
    r, s = top_k(rows, scores, 3)
    assert r.tolist() == [5, 3, 1] and s.tolist() == [3.0, 2.0, 1.0]
    r, _ = top_k(rows, scores, 10)
    assert r.tolist() == [5, 3, 1, 7, 9]


# -------------------------------------------------------------------------------------------
# the index directory


def test_index_layout_manifest_and_mmap(small_index: Path) -> None:
    manifest = json.loads((small_index / "manifest.json").read_text())
    assert manifest["format"] == "tilde-bm25" and manifest["format_version"] == 1
    assert (manifest["k1"], manifest["b"], manifest["length_norm"]) == (0.9, 0.4, "lucene")
    assert manifest["analyzer"] == Analyzer().to_dict()
    assert manifest["num_docs"] == len(DOCS)
    index = BM25Index.load(small_index)
    assert len(index) == len(DOCS)
    assert isinstance(index._csc[0], np.memmap)
    assert not [p for p in small_index.parent.iterdir() if p.name.startswith(".tmp-")]


def test_bm25s_can_open_the_directory(small_index: Path) -> None:
    bm25s = pytest.importorskip("bm25s")
    ref = bm25s.BM25.load(small_index, mmap=True, load_vocab=False)
    terms = np.load(small_index / "terms.npy")
    ids = [int(np.searchsorted(terms, b"cat"))]
    scores = ref.get_scores(ids)
    ours = {h.docid: h.score for h in BM25Index.load(small_index).search("cat", k=10)}
    assert {DOCS[i][0]: float(s) for i, s in enumerate(scores) if s > 0} == pytest.approx(ours)


def test_search_results(small_index: Path) -> None:
    index = BM25Index.load(small_index)
    hits = index.search("cats", k=10)
    assert [h.docid for h in hits][:1] == ["d4"]  # three "cats"
    assert {h.docid for h in hits} == {"d1", "d2", "d4"}
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert index.search("zürich café", k=3)[0].docid == "é-7"
    assert index.search("the and of", k=5) == []  # only stopwords
    assert index.search("xylophone", k=5) == []  # unknown term
    assert len(index.search("cat", k=1)) == 1
    with pytest.raises(ValueError, match="k must be"):
        index.search("cat", k=0)
    many = index.search_many(["cat", "tilde", "nothing-here"], k=2, threads=2)
    assert [h.docid for h in many[1]] == ["d3"] and many[2] == []
    assert index.search_run([("q1", "dog")], k=5)["q1"][0].docid == "d2"


def test_collection_formats(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "contents": "red fish"}) + "\n" +
                     json.dumps({"id": "b", "contents": "blue fish"}) + "\n")
    build_bm25_index(jsonl, tmp_path / "i1")
    assert BM25Index.load(tmp_path / "i1").search("red", k=5)[0].docid == "a"
    beir = tmp_path / "b.jsonl"
    beir.write_text(json.dumps({"_id": "x", "title": "Salmon", "text": "a fish"}) + "\n")
    build_bm25_index(beir, tmp_path / "i2")
    assert BM25Index.load(tmp_path / "i2").search("salmon", k=5)[0].docid == "x"  # title indexed
    ids = tmp_path / "e.jsonl"
    ids.write_text(json.dumps({"pid": "1", "psg": [101, 2054]}) + "\n")
    with pytest.raises(FormatError, match="needs passage text"):
        build_bm25_index(ids, tmp_path / "i3")


def test_build_refuses_bad_input_and_overwrites_atomically(tmp_path: Path) -> None:
    coll = write_tsv(tmp_path / "c.tsv", [("1", "a b"), ("2", "c d"), ("1", "e f")])
    with pytest.raises(BM25IndexError, match="more than once"):
        build_bm25_index(coll, tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
    empty = write_tsv(tmp_path / "e.tsv", [])
    with pytest.raises(BM25IndexError, match="empty"):
        build_bm25_index(empty, tmp_path / "idx")
    good = write_tsv(tmp_path / "g.tsv", [("1", "apple"), ("2", "pear")])
    build_bm25_index(good, tmp_path / "idx")
    with pytest.raises(BM25IndexError, match="already exists"):
        build_bm25_index(good, tmp_path / "idx")
    write_tsv(good, [("9", "plum")])
    build_bm25_index(good, tmp_path / "idx", overwrite=True, k1=1.2, b=0.75)
    index = BM25Index.load(tmp_path / "idx")
    assert (index.manifest.k1, len(index)) == (1.2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tsv", "e.tsv", "g.tsv", "idx"]
    with pytest.raises(ValueError, match="k1"):
        build_bm25_index(good, tmp_path / "other", b=1.5)


def test_texts_are_stored_and_looked_up_by_docid(small_index: Path, tmp_path: Path) -> None:
    index = BM25Index.load(small_index)
    assert index.has_texts
    assert [index.text(r) for r in range(len(index))] == [t for _, t in DOCS]
    ids = [d for d, _ in DOCS]
    assert index.texts(ids[::-1]) == [t for _, t in DOCS][::-1]
    assert index.texts(["nope", ids[0], "x" * 200, ""]) == [None, DOCS[0][1], None, None]
    assert index.texts([]) == []
    with pytest.raises(IndexError):
        index.text(len(index))
    assert BM25Index.load(small_index, mmap=False).texts(ids[:2]) == [t for _, t in DOCS[:2]]
    coll = write_tsv(tmp_path / "c2.tsv", DOCS)
    build_bm25_index(coll, tmp_path / "plain", store_texts=False)
    plain = BM25Index.load(tmp_path / "plain")
    assert not plain.has_texts and not (tmp_path / "plain" / "texts.bin").exists()
    with pytest.raises(BM25IndexError, match="no texts"):
        plain.texts(ids[:1])
    assert plain.search("cats", k=3) == index.search("cats", k=3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # the streamed texts moved in
    (small_index / "texts.bin").write_bytes(b"short")
    with pytest.raises(BM25IndexError, match="texts do not match"):
        BM25Index.load(small_index)


def test_load_refuses_damaged_or_foreign_dirs(small_index: Path, tmp_path: Path) -> None:
    with pytest.raises(BM25IndexError, match="not a BM25 index"):
        BM25Index.load(tmp_path)
    manifest = json.loads((small_index / "manifest.json").read_text())
    (small_index / "manifest.json").write_text(json.dumps({**manifest, "num_postings": 3}))
    with pytest.raises(BM25IndexError, match="do not match"):
        BM25Index.load(small_index)
    (small_index / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BM25IndexError, match="version 99"):
        BM25Index.load(small_index)


# -------------------------------------------------------------------------------------------
# CLI


def test_cli_index_and_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coll = write_tsv(tmp_path / "c.tsv", DOCS)
    queries = write_tsv(tmp_path / "q.tsv", [("1", "cats"), ("2", "tilde"), ("3", "the")])
    assert cli_main(["bm25", "index", "--collection", str(coll), "--output", str(tmp_path / "idx"),
                     "--k1", "0.82", "--b", "0.68"]) == 0
    assert "BM25 index of 6 docs" in capsys.readouterr().out
    assert cli_main(["bm25", "search", "--index", str(tmp_path / "idx"), "--queries", str(queries),
                     "--output", str(tmp_path / "run.trec"), "--k", "2"]) == 0
    assert "searched 3 queries (1 without hits)" in capsys.readouterr().err
    run = read_run(tmp_path / "run.trec")
    assert [e.docid for e in run["1"]] == ["d4", "d1"] and "3" not in run
    assert cli_main(["bm25", "search", "--index", str(tmp_path / "idx"), "--queries", str(queries),
                     "--output", str(tmp_path / "run.tsv"), "--format", "msmarco", "--threads", "2"]) == 0
    assert (tmp_path / "run.tsv").read_text().splitlines()[0].split("\t") == ["1", "d4", "1"]
    assert cli_main(["bm25", "search", "--index", str(tmp_path), "--queries", str(queries),
                     "--output", str(tmp_path / "x")]) == 2
    assert "not a BM25 index" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------
# Lucene backend (Anserini jar + Java): runs where the jar is installed, else skips


def test_lucene_backend_missing_jar_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tilde.first_stage.lucene import LuceneUnavailable, find_anserini_jar

    monkeypatch.setenv("TILDE_ANSERINI_JAR", str(tmp_path / "nope.jar"))
    with pytest.raises(LuceneUnavailable, match="no such file"):
        find_anserini_jar()


@pytest.mark.slow
def test_lucene_backend_agrees_with_embedded(tmp_path: Path) -> None:
    if not lucene_available():
        pytest.skip("no Anserini jar / Java 11+ (pip install --no-deps pyserini==0.25.0)")
    from tilde.first_stage.lucene import LuceneBM25, build_lucene_index

    rows = [(f"p{i}", text) for i, text in enumerate([
        "the cat sat on the mat", "dogs and cats are pets", "a tilde is a diacritic", "cats cats cats",
        "passage ranking with exact term matching", "fast re-ranking on cpus with tilde", "the river bank",
    ])]
    coll = write_tsv(tmp_path / "c.tsv", rows)
    summary = build_lucene_index(coll, tmp_path / "lucene")
    assert summary.docs == len(rows)
    queries = [("q1", "cats"), ("q2", "tilde ranking"), ("q3", "the"), ("q4", "")]
    lucene = LuceneBM25.load(tmp_path / "lucene").search_run(queries, k=5)
    build_bm25_index(coll, tmp_path / "emb")
    embedded = BM25Index.load(tmp_path / "emb").search_run(queries, k=5)
    assert lucene["q3"] == [] and lucene["q4"] == []
    for qid in ("q1", "q2"):
        assert [e.docid for e in lucene[qid]] == [e.docid for e in embedded[qid]]
        np.testing.assert_allclose([e.score for e in lucene[qid]], [e.score for e in embedded[qid]], atol=1e-3)


# -------------------------------------------------------------------------------------------
# real data: SciFact against Anserini's published BM25 (skips when ../shared/data is absent)


@pytest.mark.data
@pytest.mark.slow
def test_scifact_bm25_matches_anserini(tmp_path: Path) -> None:
    ir_measures = pytest.importorskip("ir_measures")
    folder = SHARED_DATA / "scifact"
    if not (folder / "corpus.jsonl.gz").is_file():
        pytest.skip(f"SciFact not found at {folder}")
    from tilde.io import read_qrels, read_queries

    build_bm25_index(folder / "corpus.jsonl.gz", tmp_path / "idx")
    index = BM25Index.load(tmp_path / "idx")
    run = index.search_run(((q.qid, q.text) for q in read_queries(folder / "queries.test.tsv")), k=100)
    qrels = read_qrels(folder / "qrels.test.trec")
    ndcg, r100 = ir_measures.nDCG @ 10, ir_measures.R @ 100
    got = ir_measures.calc_aggregate([ndcg, r100], qrels, {q: dict(h) for q, h in run.items()})
    # Anserini's beir-v1.0.0-scifact.flat regression: nDCG@10 0.6789, R@100 0.9253.
    assert got[ndcg] == pytest.approx(0.6789, abs=0.002)
    assert got[r100] == pytest.approx(0.9253, abs=0.005)


def test_package_imports_stay_light() -> None:
    # tilde.bm25 must not pull bm25s, torch or transformers into a service worker.
    import subprocess
    import sys

    code = "import sys, tilde.bm25; print(sorted(m for m in ('bm25s', 'torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "[]"
