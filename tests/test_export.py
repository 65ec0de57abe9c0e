"""Exports of a tilde index to Anserini (JsonVectorCollection, Lucene impact index) and to
OpenSearch / Elasticsearch (bulk NDJSON with rank_features), and the impact first stage.

The scoring identities are checked against the re-ranker itself: the exported weights summed
over the (non-de-duplicated) query tokens give the TILDEv2 score, exactly for the float
weights of the OpenSearch export and within the quantisation step for Anserini's integers."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_vocab
from tests.helpers import lucene_available, random_passages, write_beir_folder, write_index
from tilde.cli import main as cli_main
from tilde.export.anserini import export_anserini
from tilde.export.opensearch import (
    elasticsearch_query,
    escape_feature,
    export_opensearch,
    feature_value,
    neural_sparse_query,
    query_token_counts,
    score_from_doc,
    unescape_feature,
)
from tilde.export.quantize import quantize
from tilde.export.source import ExportError
from tilde.index import TildeIndex
from tilde.index.writer import pool_postings
from tilde.rank import Reranker
from tilde.text import TextProcessor

# WordPiece pieces with a dot or a percent sign: they must survive the OpenSearch escaping, and
# "##." / "##%2E" must not collide after it.
ODD_TOKENS = ["##.", "##%2E", "##%", "##é"]


def _vocab(folder: Path) -> Path:
    write_vocab(folder)
    with open(folder / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("\n".join(ODD_TOKENS) + "\n")
    return folder


def _index(folder: Path, vocab: Path, n: int = 120, seed: int = 3, weights: str = "float16") -> Path:
    tp = TextProcessor.load(vocab)
    stop = np.zeros(tp.vocab_size, dtype=bool)
    stop[tp.stop_ids] = True
    raw = random_passages(n, seed=seed, vocab=tp.vocab_size, max_len=50)
    raw[0] = (np.array([tp.vocab.index("cat")]), np.array([0.004], np.float32))  # impact 0 at factor 100
    raw[1] = (np.zeros(0, np.int64), np.zeros(0, np.float32))  # no postings at all
    odd = [tp.vocab.index(t) for t in ODD_TOKENS]
    raw[2] = (np.array(odd + [tp.vocab.index("dog")]), np.array([0.5, 0.25, 0.75, 1.5, 2.0], np.float32))
    # 0.125 * 100 = 12.5 exactly: a rounding tie (Python's round: to even, 12)
    raw[3] = (np.array([tp.vocab.index("river"), tp.vocab.index("bank")]), np.array([0.125, 0.375], np.float32))
    pooled = [pool_postings(ids, w, stop) for ids, w in raw]
    docids = [f"d{7 * i % n}" for i in range(n)]
    docids[5] = "naïve-id"
    write_index(folder, docids, pooled, weight_dtype=weights, vocab_size=tp.vocab_size,
                vocab_sha256=tp.vocab_hash, tokenizer=tp.tokenizer)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reranker]:
    root = tmp_path_factory.mktemp("export")
    idx = _index(root / "idx", _vocab(root / "vocab"))
    return idx, Reranker.load(idx, missing="error", feedback=None)


def _queries(rr: Reranker, n: int = 40, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [t for i, t in enumerate(rr.text.vocab) if t.isalpha() and not t.startswith("[")
             and i not in set(rr.text.stop_ids.tolist())]
    out = []
    for _ in range(n):
        q = list(rng.choice(words, size=int(rng.integers(1, 7))))
        out.append(" ".join(q + q[:1]))  # a repeated token counts twice
    return out + ["the of and", "river bank bank"]


def _expected_vector(index: TildeIndex, row: int, factor: float) -> dict[str, int]:
    vocab = TextProcessor.load(index.tokenizer_path).vocab
    tokens, weights = index.postings(row)
    out = {}
    for t, w in zip(tokens.tolist(), weights.tolist()):
        q = round(float(w) * factor)  # the definition: Python's round of weight * factor
        if q > 0:
            out[vocab[t]] = q
    return out


def _read_jsonl(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.iterdir()):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f)
    return rows


# -------------------------------------------------------------------------------------------
# quantisation


def test_quantize_is_pythons_round_of_weight_times_factor() -> None:
    codes = np.arange(0, 0x7C00, 7, dtype=np.uint16)  # every 7th finite non-negative float16
    w = codes.view(np.float16).astype(np.float32)
    for factor in (100.0, 37.5, 1.0):
        assert quantize(w, factor).tolist() == [round(float(x) * factor) for x in w]
    assert quantize(np.array([0.125, 0.375, 0.005], np.float32)).tolist() == [12, 38, 0]  # ties to even
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            quantize(w, bad)


# -------------------------------------------------------------------------------------------
# Anserini JsonVectorCollection


def test_anserini_collection_format(built: tuple[Path, Reranker], tmp_path: Path) -> None:
    idx, _ = built
    summary = export_anserini(idx, tmp_path / "out", factor=100, progress=False)
    index = TildeIndex.open(idx)
    files = sorted((tmp_path / "out" / "collection").iterdir())
    assert [f.name for f in files] == ["part-00000.jsonl"]
    lines = files[0].read_text("utf-8").splitlines()
    assert len(lines) == len(index) == summary.passages
    for row, line in enumerate(lines):
        doc = json.loads(line)
        assert list(doc) == ["id", "contents", "vector"]
        assert doc["id"] == index.docid(row) and doc["contents"] == ""
        assert doc["vector"] == _expected_vector(index, row, 100)
        assert all(type(v) is int and v > 0 for v in doc["vector"].values())
        assert line == json.dumps(doc, ensure_ascii=False)  # json.dumps spelling, UTF-8
    first = json.loads(lines[0])
    assert first["vector"] == {}  # its one weight quantises to 0 and is dropped
    assert json.loads(lines[3])["vector"] == {"river": 12, "bank": 38}
    assert "naïve-id" in lines[5]
    assert summary.empty == sum(1 for line in lines if not json.loads(line)["vector"]) >= 2
    assert summary.dropped >= 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["format"] == "tilde-impact" and manifest["quantization"]["factor"] == 100.0
    assert manifest["num_postings"] == summary.postings == sum(len(json.loads(x)["vector"]) for x in lines)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == index.tokenizer_path.read_bytes()
    assert "passages/s" in summary.format()


def test_anserini_shards_and_gzip_hold_the_same_documents(built: tuple[Path, Reranker], tmp_path: Path) -> None:
    idx, _ = built
    export_anserini(idx, tmp_path / "one", factor=37.5, progress=False)
    export_anserini(idx, tmp_path / "four", factor=37.5, shards=4, gzip=True, progress=False)
    parts = sorted((tmp_path / "four" / "collection").iterdir())
    assert [p.name for p in parts] == [f"part-0000{i}.jsonl.gz" for i in range(4)]
    assert _read_jsonl(tmp_path / "four" / "collection") == _read_jsonl(tmp_path / "one" / "collection")
    with gzip.open(parts[0], "rb") as f:
        assert f.read()  # a real gzip stream


def test_export_refuses_existing_output_and_bad_options(built: tuple[Path, Reranker], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    idx, _ = built
    out = tmp_path / "out"
    export_anserini(idx, out, progress=False)
    before = (out / "collection" / "part-00000.jsonl").read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        export_anserini(idx, out, progress=False)
    with pytest.raises(ExportError, match="shards"):
        export_anserini(idx, tmp_path / "x", shards=0, progress=False)
    with pytest.raises(ValueError, match="positive"):
        export_anserini(idx, tmp_path / "x", factor=0, progress=False)
    assert not (tmp_path / "x").exists()
    export_anserini(idx, out, factor=10, overwrite=True, progress=False)
    assert (out / "collection" / "part-00000.jsonl").read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directories left behind
    # the CLI: one-line errors, exit status 2
    assert cli_main(["export", "anserini", "--index", str(idx), "--output", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["export", "anserini", "--index", str(tmp_path / "none"), "--output", str(tmp_path / "y")]) == 2
    assert "no such index directory" in capsys.readouterr().err
    assert cli_main(["export", "anserini", "--output", str(tmp_path / "y")]) == 2
    assert "--index is required" in capsys.readouterr().err


def test_index_without_tokenizer_or_with_blank_ids_is_refused(tmp_path: Path, vocab_dir: Path) -> None:
    write_index(tmp_path / "idx", ["1"], [(np.array([5], np.uint32), np.array([1.0], np.float16))])
    with pytest.raises(ValueError, match="no tokenizer.json"):
        export_anserini(tmp_path / "idx", tmp_path / "out", progress=False)
    tp = TextProcessor.load(vocab_dir)
    write_index(tmp_path / "blank", ["a b"], [(np.array([40], np.uint32), np.array([1.0], np.float16))],
                vocab_size=tp.vocab_size, vocab_sha256=tp.vocab_hash, tokenizer=tp.tokenizer)
    with pytest.raises(ExportError, match="whitespace"):
        export_anserini(tmp_path / "blank", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    export_opensearch(tmp_path / "blank", tmp_path / "os", progress=False)  # any _id is fine there


def test_impact_sum_is_the_tilde_score_up_to_quantisation(built: tuple[Path, Reranker], tmp_path: Path) -> None:
    idx, rr = built
    factor = 100.0
    export_anserini(idx, tmp_path / "out", factor=factor, progress=False)
    docs = _read_jsonl(tmp_path / "out" / "collection")
    ids = [d["id"] for d in docs]
    for text in _queries(rr):
        qtok = [rr.text.vocab[i] for i in rr.text.query_ids(text)]
        res = {r.docid: r.score for r in rr.rerank(text, ids).results}
        for d in docs:
            impact = sum(d["vector"].get(t, 0) for t in qtok)
            exact = sum(round(float(w) * factor) for w in _weights_of(rr, d["id"], qtok) if round(float(w) * factor))
            assert impact == exact
            assert abs(impact / factor - res[d["id"]]) <= 0.5 * len(qtok) / factor + 1e-12


def _weights_of(rr: Reranker, docid: str, tokens: list[str]) -> list[float]:
    row = int(rr.index.lookup([docid])[0])
    ids, w = rr.index.postings(row)
    table = dict(zip([rr.text.vocab[i] for i in ids.tolist()], w.tolist()))
    return [table[t] for t in tokens if t in table]


# -------------------------------------------------------------------------------------------
# OpenSearch / Elasticsearch


def test_feature_name_escaping_is_injective() -> None:
    assert escape_feature("##.") == "##%2E"
    assert escape_feature("##%2E") == "##%252E"
    assert escape_feature("##%") == "##%25"
    assert escape_feature("cat") == "cat"
    for t in ODD_TOKENS + ["a.b.c", "%%..%2e", "plain"]:
        assert "." not in escape_feature(t)
        assert unescape_feature(escape_feature(t)) == t
    assert len({escape_feature(t) for t in ODD_TOKENS}) == len(ODD_TOKENS)


def test_opensearch_bulk_format(built: tuple[Path, Reranker], tmp_path: Path) -> None:
    idx, rr = built
    summary = export_opensearch(idx, tmp_path / "os", index_name="tilde-test", field="w", docs_per_file=50,
                                progress=False)
    out = tmp_path / "os"
    assert sorted(p.name for p in out.iterdir()) == [
        "bulk-00000.ndjson", "bulk-00001.ndjson", "bulk-00002.ndjson", "manifest.json", "mapping.json",
        "tokenizer.json"]
    assert json.loads((out / "mapping.json").read_text()) == {
        "mappings": {"properties": {"id": {"type": "keyword"}, "w": {"type": "rank_features"}}}}
    index = rr.index
    vocab = rr.text.vocab
    lines: list[str] = []
    for name in ("bulk-00000.ndjson", "bulk-00001.ndjson", "bulk-00002.ndjson"):
        text = (out / name).read_text("utf-8")
        assert text.endswith("\n")  # the bulk API needs the final newline
        lines.extend(text.splitlines())
    assert len(lines) == 2 * len(index) == 2 * summary.passages
    for row in range(len(index)):
        action, doc = json.loads(lines[2 * row]), json.loads(lines[2 * row + 1])
        assert action == {"index": {"_index": "tilde-test", "_id": index.docid(row)}}
        assert list(doc) == ["id", "w"] and doc["id"] == index.docid(row)
        tokens, weights = index.postings(row)
        expected = {escape_feature(vocab[t]): float(w) for t, w in zip(tokens.tolist(), weights.tolist()) if w > 0}
        assert doc["w"] == expected  # the stored weights, exactly (shortest round-trip decimals)
        assert all(v > 0 and "." not in k for k, v in doc["w"].items())
    assert json.loads(lines[5])["w"] == {"##%2E": 0.5, "##%252E": 0.25, "##%25": 0.75, "##é": 1.5, "dog": 2.0}
    with pytest.raises(ExportError, match="field name"):
        export_opensearch(idx, tmp_path / "bad", field="a.b", progress=False)
    with pytest.raises(ExportError, match="index name"):
        export_opensearch(idx, tmp_path / "bad", index_name="Upper", progress=False)


def test_opensearch_gzip(built: tuple[Path, Reranker], tmp_path: Path) -> None:
    idx, _ = built
    export_opensearch(idx, tmp_path / "a", progress=False)
    export_opensearch(idx, tmp_path / "b", gzip=True, progress=False)
    with gzip.open(tmp_path / "b" / "bulk-00000.ndjson.gz", "rb") as f:
        assert f.read() == (tmp_path / "a" / "bulk-00000.ndjson").read_bytes()


def _bulk_docs(folder: Path, field: str) -> dict[str, dict[str, float]]:
    docs = {}
    for path in sorted(folder.glob("bulk-*.ndjson")):
        lines = path.read_text("utf-8").splitlines()
        for action, doc in zip(lines[::2], lines[1::2]):
            docs[json.loads(action)["index"]["_id"]] = json.loads(doc)[field]
    return docs


@pytest.mark.parametrize("weights", ["float16", "uint8"])
def test_opensearch_scores_are_the_tilde_scores(tmp_path: Path, weights: str) -> None:
    idx = _index(tmp_path / "idx", _vocab(tmp_path / "vocab"), weights=weights)
    rr = Reranker.load(idx, feedback=None)
    export_opensearch(idx, tmp_path / "os", progress=False)
    docs = _bulk_docs(tmp_path / "os", "tilde")
    ids = list(docs)
    for text in _queries(rr, n=25, seed=1):
        counts = query_token_counts(text, rr.text)
        assert sum(counts.values()) == len(rr.text.query_ids(text))
        res = {r.docid: r.score for r in rr.rerank(text, ids).results}
        for docid, features in docs.items():
            exact = score_from_doc(features, counts)
            if weights == "float16":
                assert exact == res[docid]  # float16 values summed in float64: exact in any order
            else:
                assert exact == pytest.approx(res[docid], rel=1e-12, abs=1e-12)
            engine = score_from_doc(features, counts, engine=True)  # 9 significant bits per value
            assert exact - engine >= 0 and exact - engine <= exact * 2.0**-8 + 1e-30
        # the query bodies carry the same counts, under the escaped names
        body = neural_sparse_query(text, rr.text, size=10)
        es = elasticsearch_query(text, rr.text, size=10)
        if counts:
            assert body["query"]["neural_sparse"]["tilde"]["query_tokens"] == {
                escape_feature(t): float(c) for t, c in counts.items()}
            assert es["query"]["bool"]["should"] == [
                {"rank_feature": {"field": f"tilde.{escape_feature(t)}", "linear": {}, "boost": float(c)}}
                for t, c in counts.items()]
        else:
            assert body["query"] == es["query"] == {"match_none": {}}


def test_feature_value_keeps_nine_significant_bits() -> None:
    w = np.array([1.0, 0.5, 1.0 + 2**-8, 1.0 + 2**-9, 3.1415927, 6e-5], np.float32)
    got = feature_value(w)
    assert got[0] == 1.0 and got[1] == 0.5 and got[2] == np.float32(1.0 + 2**-8)
    assert got[3] == 1.0  # below the 9th significant bit: truncated
    assert np.all(got <= w) and np.all((w - got) / w < 2.0**-8)


# -------------------------------------------------------------------------------------------
# real engines: Anserini (jar + Java) for the impact index, Lucene's FeatureField for rank_features


@pytest.mark.slow
def test_anserini_impact_index_scores_are_the_quantised_dot_products(built: tuple[Path, Reranker],
                                                                     tmp_path: Path) -> None:
    if not lucene_available():
        pytest.skip("no Anserini jar / Java 11+ (pip install --no-deps pyserini==0.25.0)")
    from tilde.first_stage.impact import LuceneImpact

    idx, rr = built
    out = tmp_path / "impact"
    export_anserini(idx, out, factor=100, progress=False)  # then --build on the existing export
    before = json.loads((out / "manifest.json").read_text())
    assert before["lucene"] is False
    assert cli_main(["export", "anserini", "--output", str(out), "--build"]) == 0
    assert json.loads((out / "manifest.json").read_text()) == {**before, "lucene": True}
    assert sorted(p.name for p in out.iterdir()) == ["collection", "lucene", "manifest.json", "tokenizer.json"]
    docs = {d["id"]: d["vector"] for d in _read_jsonl(out / "collection")}
    searcher = LuceneImpact.load(out)
    texts = _queries(rr, n=12, seed=2)
    queries = [(f"q{i}", t) for i, t in enumerate(texts)] + [("stop", "the of and")]
    run = searcher.search_run(queries, k=len(docs))
    assert run["stop"] == []  # only stop words: no query tokens, nothing searched
    for qid, text in queries[:-1]:
        tokens = searcher.query_tokens(text)
        assert tokens == [rr.text.vocab[i] for i in rr.text.query_ids(text)]
        expected = {d: sum(v.get(t, 0) for t in tokens) for d, v in docs.items()}
        hits = run[qid]
        assert {e.docid for e in hits} == {d for d, s in expected.items() if s > 0}  # every match, no other
        for e in hits:
            assert e.score == expected[e.docid]  # the integer dot product, exactly
        assert [e.score for e in hits] == sorted((e.score for e in hits), reverse=True)
    # the CLI: search into a TREC run
    assert cli_main(["export", "search", "--index", str(out), "--queries", str(_write_queries(tmp_path, queries)),
                     "--output", str(tmp_path / "run.trec"), "--k", "5"]) == 0
    assert (tmp_path / "run.trec").read_text().splitlines()[0].startswith("q0 Q0 ")


def _write_queries(tmp_path: Path, queries: list[tuple[str, str]]) -> Path:
    path = tmp_path / "queries.tsv"
    path.write_text("".join(f"{q}\t{t}\n" for q, t in queries), encoding="utf-8")
    return path


def test_impact_search_without_lucene_index_is_a_clear_error(built: tuple[Path, Reranker], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tilde.first_stage.impact import LuceneImpact

    idx, _ = built
    export_anserini(idx, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="--build"):
        LuceneImpact.load(tmp_path / "out")
    with pytest.raises(ExportError, match="not a `tilde export anserini` directory"):
        LuceneImpact.load(idx)
    queries = _write_queries(tmp_path, [("q1", "cat")])
    assert cli_main(["export", "search", "--index", str(idx), "--queries", str(queries),
                     "--output", str(tmp_path / "r")]) == 2
    assert "not a `tilde export anserini` directory" in capsys.readouterr().err


# What OpenSearch's neural_sparse query runs (opensearch-project/neural-search: one
# FeatureField.newLinearQuery(field, token, weight) per query token, ORed), on Lucene itself: the
# Lucene of Anserini's fat jar, through Java's single-file source launcher.
FEATURE_SCORES_JAVA = r"""
import java.nio.file.*;
import org.apache.lucene.analysis.standard.StandardAnalyzer;
import org.apache.lucene.document.*;
import org.apache.lucene.index.*;
import org.apache.lucene.search.*;
import org.apache.lucene.store.*;

public class FeatureScores {
  public static void main(String[] args) throws Exception {
    Directory dir = new ByteBuffersDirectory();
    IndexWriter writer = new IndexWriter(dir, new IndexWriterConfig(new StandardAnalyzer()));
    for (String line : Files.readAllLines(Paths.get(args[0]))) {  // id TAB feature TAB value ...
      String[] f = line.split("\t", -1);
      Document doc = new Document();
      doc.add(new StoredField("id", f[0]));
      for (int i = 1; i + 1 < f.length; i += 2) doc.add(new FeatureField("tilde", f[i], Float.parseFloat(f[i + 1])));
      writer.addDocument(doc);
    }
    writer.close();
    IndexSearcher searcher = new IndexSearcher(DirectoryReader.open(dir));
    for (String line : Files.readAllLines(Paths.get(args[1]))) {  // qid TAB feature TAB weight ...
      String[] f = line.split("\t", -1);
      BooleanQuery.Builder query = new BooleanQuery.Builder();
      for (int i = 1; i + 1 < f.length; i += 2) {
        query.add(FeatureField.newLinearQuery("tilde", f[i], Float.parseFloat(f[i + 1])), BooleanClause.Occur.SHOULD);
      }
      for (ScoreDoc hit : searcher.search(query.build(), 1000000).scoreDocs) {
        System.out.println(f[0] + "\t" + searcher.doc(hit.doc).get("id") + "\t" + hit.score);
      }
    }
  }
}
"""


def _java_source_launcher() -> list[str] | None:
    from tilde.first_stage.lucene import LuceneUnavailable, find_anserini_jar, find_java

    try:
        jar, java = find_anserini_jar(), find_java()
    except LuceneUnavailable:
        return None
    modules = subprocess.run([java, "--list-modules"], capture_output=True, text=True, check=False).stdout
    return [java, "-cp", str(jar)] if "jdk.compiler" in modules else None


@pytest.mark.slow
def test_lucene_feature_fields_score_the_opensearch_export_as_tilde(built: tuple[Path, Reranker],
                                                                    tmp_path: Path) -> None:
    java = _java_source_launcher()
    if java is None:
        pytest.skip("no Anserini jar, or no Java 11+ with the source launcher (jdk.compiler)")
    idx, rr = built
    export_opensearch(idx, tmp_path / "os", progress=False)
    docs = _bulk_docs(tmp_path / "os", "tilde")
    (tmp_path / "docs.tsv").write_text("".join(
        "\t".join([docid, *(x for k, v in f.items() for x in (k, repr(v)))]) + "\n" for docid, f in docs.items()),
        encoding="utf-8")
    texts = {f"q{i}": t for i, t in enumerate(_queries(rr, n=15, seed=4)) if query_token_counts(t, rr.text)}
    body = {q: neural_sparse_query(t, rr.text)["query"]["neural_sparse"]["tilde"]["query_tokens"]
            for q, t in texts.items()}
    (tmp_path / "queries.tsv").write_text("".join(
        "\t".join([q, *(x for k, v in tokens.items() for x in (k, repr(v)))]) + "\n" for q, tokens in body.items()),
        encoding="utf-8")
    (tmp_path / "FeatureScores.java").write_text(FEATURE_SCORES_JAVA, encoding="utf-8")
    proc = subprocess.run([*java, str(tmp_path / "FeatureScores.java"), str(tmp_path / "docs.tsv"),
                           str(tmp_path / "queries.tsv")], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got: dict[str, dict[str, float]] = {}
    for line in proc.stdout.splitlines():
        qid, docid, score = line.split("\t")
        got.setdefault(qid, {})[docid] = float(score)
    ids = list(docs)
    for qid, text in texts.items():
        counts = query_token_counts(text, rr.text)
        tilde = {r.docid: r.score for r in rr.rerank(text, ids).results}
        expected = {d: score_from_doc(f, counts, engine=True) for d, f in docs.items()}
        assert set(got.get(qid, {})) == {d for d, s in expected.items() if s > 0}
        for docid, score in got.get(qid, {}).items():
            # Lucene = sum of count * (9-bit indexed weight), in float32
            assert score == pytest.approx(expected[docid], rel=2e-7)
            assert abs(score - tilde[docid]) <= tilde[docid] * 2.0**-8 + 1e-6  # the TILDEv2 score, to 9 bits


# -------------------------------------------------------------------------------------------
# the evaluation scripts' first-stage option


def test_first_stage_spec_errors() -> None:
    from eval.first_stage import select_first_stage

    bm25 = ({"q": [("d", 1.0)]}, None)
    assert select_first_stage("bm25", bm25, [], 10)[:2] == ("BM25", bm25[0])  # type: ignore[arg-type]
    for bad in ("impact:", "splade:x", "BM25", "impactx"):
        with pytest.raises(ValueError, match="expected bm25, impact or impact:DIR"):
            select_first_stage(bad, bm25, [], 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs --model"):
        select_first_stage("impact", bm25, [], 10)  # type: ignore[arg-type]


@pytest.mark.slow
def test_beir_with_the_impact_first_stage(tmp_path: Path, tiny_model: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    if not lucene_available():
        pytest.skip("no Anserini jar / Java 11+ (pip install --no-deps pyserini==0.25.0)")
    from eval.beir import main
    from tilde.index.build import build_index

    d = write_beir_folder(tmp_path / "beirsyn")
    build_index(str(tiny_model), d / "corpus.jsonl", tmp_path / "idx", progress=False)
    summary = export_anserini(tmp_path / "idx", tmp_path / "impact", build=True, progress=False)
    assert "Lucene index of 4 docs" in summary.format()
    assert main(["--data", str(d), "--depth", "3", "--first-stage", f"impact:{tmp_path / 'impact'}",
                 "--model", str(tiny_model), "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("impact first stage (impact:") for line in out)
    assert any(line.startswith(f"impact -> {tiny_model.name}") for line in out)
    fields = out[-1].split()
    assert fields[:2] == ["bm25_ndcg@10=1.0000", "bm25_r@100=1.0000"]
    assert fields[2].startswith("impact_ndcg@10=") and fields[3].startswith("impact_r@100=")
    assert fields[4].startswith("ndcg@10=") and fields[5] == f"model={tiny_model.name}"
    assert main(["--data", str(d), "--model", "none", "--first-stage", "impact:" + str(tmp_path / "none")]) == 2
    assert "none" in capsys.readouterr().err
