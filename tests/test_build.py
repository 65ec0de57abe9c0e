from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tilde.cli import main as cli
from tilde.index import IndexFormatError, TildeIndex
from tilde.index.build import build_index
from tilde.model import encode, load_model, passage_input_ids
from tilde.rank import Reranker
from tilde.text import TextProcessor

FILES = ("offsets.npy", "tokens.npy", "weights.npy", "docids.npy", "docids_sorted.npy", "docids_order.npy",
         "tokenizer.json", "manifest.json")


def _bytes(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in FILES if (folder / f).exists()}


def test_end_to_end_scores_equal_model_outputs(tiny_model: Path, tiny_collection: Path, tmp_path: Path) -> None:
    summary = build_index(str(tiny_model), tiny_collection, tmp_path / "idx", batch_size=3, progress=False)
    assert summary.passages == 9 and summary.empty_passages == 1
    rr = Reranker.load(tmp_path / "idx")
    model, tp = load_model(tiny_model), TextProcessor.load(tiny_model)
    rows = [line.split("\t") for line in tiny_collection.read_text().splitlines()]
    query = "cat on the road and the river bank"
    q = tp.query_ids(query).tolist()
    expected = {}
    for pid, text in rows:
        ids = passage_input_ids(tp.token_ids(text).tolist(), 3, 4)
        w = encode(model, [ids])[0].astype(np.float16)
        best: dict[int, float] = {}
        for t, x in zip(ids, w.tolist()):
            if t not in set(tp.stop_ids.tolist()):
                best[t] = max(best.get(t, 0.0), x)
        expected[pid] = sum(best.get(t, 0.0) for t in q)
    res = rr.rerank(query, [pid for pid, _ in rows])
    got = {r.docid: r.score for r in res.results}
    for pid in expected:
        assert got[pid] == pytest.approx(expected[pid], abs=2e-3)  # batch vs single: float16 ulps
    assert res.results[0].docid in {"10", "25", "40", "8"}
    assert got["11"] == 0.0  # the empty passage is indexed with no postings, not lost


def test_resume_after_interruption_is_byte_identical(tiny_model: Path, tiny_collection: Path, tmp_path: Path) -> None:
    build_index(str(tiny_model), tiny_collection, tmp_path / "full", batch_size=2, chunk_batches=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_index(str(tiny_model), tiny_collection, tmp_path / "part", batch_size=2, chunk_batches=1,
                    progress=False, stop_after_chunks=2)
    with pytest.raises(IndexFormatError, match="unfinished build"):
        TildeIndex.open(tmp_path / "part")
    s = build_index(str(tiny_model), tiny_collection, tmp_path / "part", batch_size=2, chunk_batches=1, progress=False)
    assert s.resumed_from == 4
    assert _bytes(tmp_path / "part") == _bytes(tmp_path / "full")
    assert not (tmp_path / "part" / ".partial").exists()


def test_resume_with_other_settings_is_refused(tiny_model: Path, tiny_collection: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        build_index(str(tiny_model), tiny_collection, tmp_path / "i", batch_size=2, chunk_batches=1,
                    progress=False, stop_after_chunks=1)
    with pytest.raises(IndexFormatError, match="different job.*batch_size"):
        build_index(str(tiny_model), tiny_collection, tmp_path / "i", batch_size=3, chunk_batches=1, progress=False)
    build_index(str(tiny_model), tiny_collection, tmp_path / "i", batch_size=3, progress=False, overwrite=True)
    with pytest.raises(IndexFormatError, match="already holds an index"):
        build_index(str(tiny_model), tiny_collection, tmp_path / "i", progress=False)


@pytest.mark.parametrize("n", [2, 3])
def test_shards_merge_to_the_unsharded_index(tiny_model: Path, tiny_collection: Path, tmp_path: Path, n: int) -> None:
    build_index(str(tiny_model), tiny_collection, tmp_path / "all", batch_size=2, progress=False)
    shards = []
    for i in reversed(range(n)):  # any order
        build_index(str(tiny_model), tiny_collection, tmp_path / f"s{i}", batch_size=2, shard=(i, n), progress=False)
        shards.append(str(tmp_path / f"s{i}"))
    assert cli(["index", "merge", "--output", str(tmp_path / "merged"), *shards]) == 0
    assert _bytes(tmp_path / "merged") == _bytes(tmp_path / "all")
    # an incomplete set is refused
    assert cli(["index", "merge", "--output", str(tmp_path / "bad"), *shards[:-1]]) == 2


def test_duplicate_pids_are_reported(tiny_model: Path, tmp_path: Path) -> None:
    coll = tmp_path / "c.tsv"
    coll.write_text("1\tcat\n2\tdog\n1\tfish\n")
    from tilde.index.writer import DuplicateDocidError

    with pytest.raises(DuplicateDocidError, match="'1' \\(passages 1 and 3\\)"):
        build_index(str(tiny_model), coll, tmp_path / "i", progress=False)


def test_malformed_collection_names_the_line(tiny_model: Path, tmp_path: Path) -> None:
    coll = tmp_path / "c.jsonl"
    coll.write_text('{"pid": "1", "psg": [10, 11]}\n{"pid": "2", "psg": [10, 999999]}\n')
    from tilde.io import FormatError

    with pytest.raises(FormatError, match="c.jsonl:2"):
        build_index(str(tiny_model), coll, tmp_path / "i", progress=False)


def test_cli_index_and_rerank(tiny_model: Path, tiny_collection: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    idx = tmp_path / "idx"
    assert cli(["index", "--model", str(tiny_model), "--collection", str(tiny_collection), "--output", str(idx),
                "--no-progress", "--weights", "uint8"]) == 0
    assert "passages/s" in capsys.readouterr().out
    (tmp_path / "q.tsv").write_text("q1\tcat on the road\nq2\tmoney in the river bank\n")
    (tmp_path / "run.trec").write_text(
        "".join(f"{q} Q0 {d} {r + 1} {10 - r} bm25\n" for q in ("q1", "q2")
                for r, d in enumerate(["10", "8", "25", "1"]))
    )
    out = tmp_path / "out.tsv"
    assert cli(["rerank", "--index", str(idx), "--queries", str(tmp_path / "q.tsv"), "--run",
                str(tmp_path / "run.trec"), "--output", str(out), "--format", "msmarco"]) == 0
    err = capsys.readouterr().err
    assert "p50" in err and "J/query" in err
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    assert len(lines) == 8 and [x[2] for x in lines[:4]] == ["1", "2", "3", "4"]
    # unknown candidate: error by default, continue with --missing skip
    (tmp_path / "run2.trec").write_text("q1 Q0 10 1 2 x\nq1 Q0 4242 2 1 x\n")
    args = ["rerank", "--index", str(idx), "--queries", str(tmp_path / "q.tsv"), "--run", str(tmp_path / "run2.trec"),
            "--output", str(tmp_path / "o2")]
    assert cli(args) == 2
    assert "4242" in capsys.readouterr().err
    assert cli([*args, "--missing", "skip"]) == 0
    assert (tmp_path / "o2").read_text().split()[2] == "10"
    assert cli(["index", "verify", str(idx)]) == 0
    assert json.loads((idx / "manifest.json").read_text())["weight_dtype"] == "uint8"
