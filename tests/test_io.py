"""Tests for tilde.io: readers, writers, error messages and atomic writes."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tilde.io import (
    FormatError,
    Passage,
    Query,
    RunEntry,
    atomic_path,
    atomic_write_text,
    count_lines,
    iter_jsonl,
    open_text,
    read_collection,
    read_qrels,
    read_queries,
    read_run,
    write_jsonl,
    write_run,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def _jsonl(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def _assert_format_error(exc: pytest.ExceptionInfo[FormatError], path: Path, line: int, *needles: str) -> None:
    msg = str(exc.value)
    assert f"{path.name}:{line}:" in msg, msg
    assert exc.value.line == line
    for needle in needles:
        assert needle in msg, msg


# ------------------------------------------------------------------------------------------
# collections


def test_collection_tsv_auto_and_explicit(tmp_path: Path) -> None:
    path = _write(tmp_path, "collection.tsv", "0\thello world\n17\ta\tb\n 42 \t\n")
    expected = [Passage("0", "hello world"), Passage("17", "a\tb"), Passage("42", "")]
    for fmt in ("auto", "tsv"):
        got = list(read_collection(path, fmt))
        assert got == expected
        assert [p.line for p in got] == [1, 2, 3]
        assert all(p.ids is None for p in got)


def test_collection_jsonl_flavours(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "mixed.jsonl",
        _jsonl(
            {"pid": "7", "psg": [101, 2023, 0, 102]},
            {"pid": 8, "psg": []},
            {"pid": 9, "psg": "raw text"},
            {"id": 10, "contents": "pyserini text"},
            {"_id": "d1", "title": "Title", "text": "body", "metadata": {}},
            {"_id": "d2", "title": "", "text": "no title"},
            {"_id": "d3", "text": "missing title"},
        ),
    )
    got = list(read_collection(path))
    assert got == [
        Passage("7", ids=(101, 2023, 0, 102)),
        Passage("8", ids=()),
        Passage("9", text="raw text"),
        Passage("10", text="pyserini text"),
        Passage("d1", text="Title body"),
        Passage("d2", text="no title"),
        Passage("d3", text="missing title"),
    ]
    assert [p.line for p in got] == list(range(1, 8))
    assert list(read_collection(path, "jsonl")) == got


def test_collection_blank_lines_crlf_and_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.tsv", b"\xef\xbb\xbf1\tone\r\n\r\n   \n2\ttwo\r\n\n3\tthree")
    got = list(read_collection(path))
    assert got == [Passage("1", "one"), Passage("2", "two"), Passage("3", "three")]
    assert [p.line for p in got] == [1, 4, 6]
    assert count_lines(path) == 3


def test_collection_gz_round_trip(tmp_path: Path) -> None:
    records = [{"pid": "1", "psg": [5, 6]}, {"pid": "2", "psg": [7]}]
    gz_path = tmp_path / "expanded.jsonl.gz"
    assert write_jsonl(gz_path, records) == 2
    assert gzip.decompress(gz_path.read_bytes()).decode() == _jsonl(*records)
    assert list(read_collection(gz_path)) == [Passage("1", ids=(5, 6)), Passage("2", ids=(7,))]
    assert count_lines(gz_path) == 2
    assert [obj for _, obj in iter_jsonl(gz_path)] == records

    tsv_gz = tmp_path / "collection.tsv.gz"
    atomic_write_text(tsv_gz, "1\tcafé ☕\n\n2\tb\n")
    assert list(read_collection(tsv_gz)) == [Passage("1", "café ☕"), Passage("2", "b")]
    with open_text(tsv_gz) as f:
        assert f.read() == "1\tcafé ☕\n\n2\tb\n"


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    # No time stamp or temporary name in the gzip header: same content, same bytes.
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_jsonl(a, [{"x": 1}])
    write_jsonl(b, [{"x": 1}])
    assert a.read_bytes() == b.read_bytes()


def test_collection_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        read_collection(_write(tmp_path, "c.tsv", "1\ta\n"), "csv")
    with pytest.raises(FileNotFoundError):
        read_collection(tmp_path / "missing.tsv")


def test_empty_files(tmp_path: Path) -> None:
    path = _write(tmp_path, "empty.txt", "\n\n")
    assert list(read_collection(path)) == []
    assert read_queries(path) == []
    assert read_qrels(path) == {}
    assert read_run(path) == {}
    assert count_lines(path) == 0


@pytest.mark.parametrize(
    ("content", "line", "needles"),
    [
        ("1\tok\n\n2 no tab\n", 3, ("expected 'pid<TAB>text', got 1 field",)),
        ("1\tok\n\tno pid\n", 2, ("empty pid",)),
        ('{"pid": "1", "psg": [1]}\n{"pid": "2", "psg": [1,\n', 2, ("invalid JSON",)),
        ('{"pid": "1", "psg": [1, "2"]}\n', 1, ("non-negative integers", "'2'", "index 1")),
        ('{"pid": "1", "psg": [1]}\n{"pid": "2", "psg": [3, -1]}\n', 2, ("non-negative", "-1")),
        ('{"pid": "1", "psg": [1.5]}\n', 1, ("non-negative integers", "1.5")),
        ('{"pid": "1", "psg": [true]}\n', 1, ("non-negative integers", "True")),
        ('{"pid": "1", "psg": {"a": 1}}\n', 1, ("'psg'",)),
        ('{"pid": null, "psg": [1]}\n', 1, ("'pid'", "string or integer")),
        ('{"pid": "", "psg": [1]}\n', 1, ("empty 'pid'",)),
        ('{"doc": "1", "body": "x"}\n', 1, ("'contents'", "'_id'", "'psg'", "['body', 'doc']")),
        ('{"id": "1", "contents": 5}\n', 1, ("'contents'", "string")),
        ('{"_id": "1", "title": 3, "text": "x"}\n', 1, ("'title'",)),
        ('{"pid": "1", "psg": [1]}\n[1, 2]\n', 2, ("JSON object", "list")),
    ],
)
def test_collection_malformed(tmp_path: Path, content: str, line: int, needles: tuple[str, ...]) -> None:
    path = _write(tmp_path, "collection.txt", content)
    with pytest.raises(FormatError) as exc:
        list(read_collection(path))
    _assert_format_error(exc, path, line, *needles)


def test_invalid_utf8_is_an_error_with_line_number(tmp_path: Path) -> None:
    data = b"1\tfine\n2\tfine too\n3\tbad \xff byte\n"
    readers: list[tuple[str, Callable[[Path], object]]] = [
        ("collection.tsv", lambda p: list(read_collection(p))),
        ("collection.tsv.gz", lambda p: list(read_collection(p))),
        ("queries.tsv", read_queries),
    ]
    for name, read in readers:
        path = _write(tmp_path, name, data)
        with pytest.raises(FormatError) as exc:
            read(path)
        _assert_format_error(exc, path, 3, "UTF-8")
    run = _write(tmp_path, "run.trec", b"1 Q0 a 1 2.0 t\n1 Q0 b 2 1.0 t\n1 Q0 \xc3( 3 0.5 t\n")
    with pytest.raises(FormatError) as exc:
        read_run(run)
    _assert_format_error(exc, run, 3, "UTF-8")
    qrels = _write(tmp_path, "qrels.txt", b"1 0 a 1\n\n1 0 \xe2\x82 0\n")
    with pytest.raises(FormatError) as exc:
        read_qrels(qrels)
    _assert_format_error(exc, qrels, 3, "UTF-8")


def test_format_error_attributes() -> None:
    e = FormatError("expected x", path="dir/f.tsv", line=17)
    assert isinstance(e, ValueError)
    assert str(e) == "dir/f.tsv:17: expected x"
    assert (e.path, e.line, e.reason) == ("dir/f.tsv", 17, "expected x")
    assert str(FormatError("plain message")) == "plain message"


# ------------------------------------------------------------------------------------------
# queries and qrels


def test_read_queries_tsv(tmp_path: Path) -> None:
    path = _write(tmp_path, "queries.tsv", "30\twhat is x\r\n\n2\tcafé?\n10\t\n")
    assert read_queries(path) == [Query("30", "what is x"), Query("2", "café?"), Query("10", "")]


def test_read_queries_jsonl(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "queries.jsonl",
        _jsonl(
            {"qid": 1, "query": "a"},
            {"_id": "b1", "text": "b", "metadata": {}},
            {"id": "c", "text": "c"},
        ),
    )
    assert read_queries(path) == [Query("1", "a"), Query("b1", "b"), Query("c", "c")]


@pytest.mark.parametrize(
    ("name", "content", "line", "needles"),
    [
        ("queries.tsv", "1\ta\n2\tb\n\n1\tc\n", 4, ("duplicate qid '1'", "line 1")),
        (
            "queries.jsonl",
            _jsonl({"qid": "1", "query": "a"}, {"_id": 1, "text": "b"}),
            2,
            ("duplicate qid",),
        ),
        ("queries.tsv", "1\ta\n2 b\n", 2, ("expected 'qid<TAB>text'",)),
        (
            "queries.jsonl",
            _jsonl({"qid": "1", "query": "a"}, {"qid": "2", "q": "b"}),
            2,
            ("'query'",),
        ),
    ],
)
def test_read_queries_malformed(tmp_path: Path, name: str, content: str, line: int, needles: tuple[str, ...]) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(FormatError) as exc:
        read_queries(path)
    _assert_format_error(exc, path, line, *needles)


def test_read_qrels(tmp_path: Path) -> None:
    path = _write(tmp_path, "qrels.trec", "1 0 a 2\n1 0 b 0\r\n\n2\t0\ta\t-1\n1 Q0 c 3\n")
    qrels = read_qrels(path)
    assert qrels == {"1": {"a": 2, "b": 0, "c": 3}, "2": {"a": -1}}
    assert list(qrels["1"]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("content", "line", "needles"),
    [
        ("1 0 a 1\n1 0 b 1 extra\n", 2, ("4 fields", "got 5 fields")),
        ("1 0 a 1\n\n1 0 b\n", 3, ("got 3 fields",)),
        ("1 0 a 1\n1 0 b 1.0\n", 2, ("integer relevance", "'1.0'")),
        ("1 0 a 1\n1 0 a 2\n", 2, ("duplicate judgement",)),
    ],
)
def test_read_qrels_malformed(tmp_path: Path, content: str, line: int, needles: tuple[str, ...]) -> None:
    path = _write(tmp_path, "qrels.trec", content)
    with pytest.raises(FormatError) as exc:
        read_qrels(path)
    _assert_format_error(exc, path, line, *needles)


# ------------------------------------------------------------------------------------------
# runs


def test_read_run_trec_orders_by_score_then_rank(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "run.trec",
        "q2 Q0 x 1 5.0 t\n"
        "q1 Q0 a 3 1.5 t\n"
        "q1 Q0 b 1 2.5 t\r\n"
        "\n"
        "q1 Q0 c 2 1.5 t\n"  # ties with 'a' on score: rank 2 < 3 wins
        "q1 Q0 d 4 0 t\n"
        "q2 Q0 y 2 -1e-3 t\n",
    )
    run = read_run(path)
    assert list(run) == ["q2", "q1"]  # order of first appearance
    assert run["q1"] == [
        RunEntry("b", 2.5),
        RunEntry("c", 1.5),
        RunEntry("a", 1.5),
        RunEntry("d", 0.0),
    ]
    assert run["q2"] == [RunEntry("x", 5.0), RunEntry("y", -0.001)]
    assert read_run(path, "trec") == run


def test_read_run_msmarco(tmp_path: Path) -> None:
    path = _write(tmp_path, "run.tsv", "5\td2\t2\n5\td1\t1\n\n6\td9\t1\r\n")
    run = read_run(path)
    assert run == {"5": [RunEntry("d1", -1.0), RunEntry("d2", -2.0)], "6": [RunEntry("d9", -1.0)]}
    assert read_run(path, "msmarco") == run


def test_trec_run_round_trips_exactly(tmp_path: Path) -> None:
    scores = [0.1 + 0.2, 1e-300, 15.780599594116211, 0.0, -2.5, 1 / 3]
    ranked = sorted(scores, reverse=True)
    run = {"q1": [(f"d{i}", s) for i, s in enumerate(ranked)], "q0": [("z", 7.0)]}
    path = tmp_path / "out.trec"
    write_run(path, run, tag="mytag")
    lines = path.read_text().splitlines()
    assert lines[0] == f"q1 Q0 d0 1 {ranked[0]!r} mytag"
    assert lines[2] == "q1 Q0 d2 3 0.30000000000000004 mytag"
    assert lines[-1] == "q0 Q0 z 1 7.0 mytag"
    back = read_run(path)
    assert back == {q: [RunEntry(d, s) for d, s in rows] for q, rows in run.items()}
    assert list(back) == ["q1", "q0"]
    # read -> write -> read, and the file itself is a fixed point of write(read(.)).
    path2 = tmp_path / "out2.trec.gz"
    write_run(path2, back, tag="mytag")
    assert read_run(path2) == back
    with open_text(path2) as f:
        assert f.read() == path.read_text()


def test_msmarco_run_round_trip(tmp_path: Path) -> None:
    src = _write(tmp_path, "in.tsv", "1\ta\t1\n1\tb\t2\n2\tc\t1\n")
    run = read_run(src)
    out = tmp_path / "out.tsv"
    write_run(out, run, fmt="msmarco")
    assert out.read_bytes() == src.read_bytes()
    assert read_run(out) == run
    # Cross-format: a TREC file written from an MS MARCO run keeps the ranking.
    trec = tmp_path / "out.trec"
    write_run(trec, run)
    assert [[e.docid for e in rows] for rows in read_run(trec).values()] == [["a", "b"], ["c"]]


@pytest.mark.parametrize(
    ("content", "fmt", "line", "needles"),
    [
        ("1 Q0 a 1 2.0 t\n\n1 Q0 b 2 abc t\n", "auto", 3, ("numeric score", "'abc'")),
        ("1 Q0 a 1 2.0 t\n1 Q0 b 2 nan t\n", "auto", 2, ("finite score",)),
        ("1 Q0 a 1 2.0 t\n1 Q0 b two 1.0 t\n", "auto", 2, ("integer rank",)),
        ("1 Q0 a 1 2.0 t\n2 Q0 a 1 2.0 t\n1 Q0 a 2 1.0 t\n", "auto", 3, ("'a' repeated", "line 1")),
        ("1\ta\t1\n1\ta\t2\n", "auto", 2, ("repeated",)),
        ("1 Q0 a 1 2.0 t\n1 Q0 b 2 1.0\n", "auto", 2, ("6 fields", "got 5 fields")),
        ("\n1 Q0 a 1 2.0\n", "auto", 2, ("6 fields", "3 fields", "got 5 fields")),
        ("1\ta\t1\n1\tb\n", "msmarco", 2, ("3 fields", "got 2 fields")),
        ("1\ta\t1\n", "trec", 1, ("6 fields", "got 3 fields")),
    ],
)
def test_read_run_malformed(tmp_path: Path, content: str, fmt: str, line: int, needles: tuple[str, ...]) -> None:
    path = _write(tmp_path, "run.txt", content)
    with pytest.raises(FormatError) as exc:
        read_run(path, fmt)
    _assert_format_error(exc, path, line, *needles)


def test_write_run_rejects_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    for run, kwargs, match in [
        ({"q 1": [("a", 1.0)]}, {}, "qid must be"),
        ({"q": [("a b", 1.0)]}, {}, "docid must be"),
        ({"q": [("a", 1.0), ("a", 0.5)]}, {}, "repeated"),
        ({"q": [("a", float("nan"))]}, {}, "non-finite"),
        ({"q": [("a", 1.0)]}, {"tag": "my tag"}, "tag must be"),
        ({"q": [("a", 1.0)]}, {"fmt": "csv"}, "fmt must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            write_run(path, run, **kwargs)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_write_failure_keeps_existing_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")

    def records() -> Iterator[dict[str, object]]:
        yield {"pid": "1", "psg": [1]}
        raise RuntimeError("boom mid-write")

    with pytest.raises(RuntimeError, match="boom"):
        write_jsonl(target, records())
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]

    run_target = tmp_path / "run.trec"
    run_target.write_text("keep\n")
    with pytest.raises(ValueError, match="docid must be"):
        write_run(run_target, {"q": [("a", 1.0), ("b c", 0.5)]})
    assert run_target.read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "run.trec"]


def _interrupted_file_write(target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt


def _failed_dir_write(target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "part").write_bytes(b"x")
        raise OSError("disk full")


def test_atomic_path(tmp_path: Path) -> None:
    target = tmp_path / "index.npy.gz"
    with atomic_path(target) as tmp:
        # Hidden, same directory, and ending with the full target name (so .gz/.npy still apply).
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".")
        assert tmp.name.endswith(".index.npy.gz")
        assert not tmp.exists()
        assert not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"

    with pytest.raises(KeyboardInterrupt):
        _interrupted_file_write(target)
    assert target.read_bytes() == b"new"

    with pytest.raises(OSError, match="disk full"):
        _failed_dir_write(target)
    assert [p.name for p in tmp_path.iterdir()] == ["index.npy.gz"]

    atomic_write_text(target, "replaced")
    with open_text(target) as f:
        assert f.read() == "replaced"


def test_write_jsonl_rejects_nan_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    assert write_jsonl(path, iter([])) == 0
    assert path.read_text() == ""
    with pytest.raises(ValueError, match="Out of range float"):
        write_jsonl(path, [{"w": float("nan")}])
    assert path.read_text() == ""


# ------------------------------------------------------------------------------------------
# real data (skipped when ../shared/data is absent)


@pytest.mark.data
@pytest.mark.skipif(not (SHARED_DATA / "dl19").is_dir(), reason="shared dl19 data not available")
def test_shared_dl19() -> None:
    dl19 = SHARED_DATA / "dl19"
    queries = read_queries(dl19 / "queries.tsv")
    assert len(queries) == 43
    qrels = read_qrels(dl19 / "qrels.trec")
    assert len(qrels) == 43
    assert sum(map(len, qrels.values())) == 9260
    run = read_run(dl19 / "run.bm25.top100.trec")
    assert len(run) == 43
    assert all(len(rows) == 100 for rows in run.values())
    assert {q.qid for q in queries} == set(run) == set(qrels)
    passages = dl19 / "passages.tsv"
    pids = {p.pid for p in read_collection(passages)}
    assert len(pids) == 14_581 == count_lines(passages)
    assert {e.docid for rows in run.values() for e in rows} <= pids


@pytest.mark.data
@pytest.mark.skipif(
    not (SHARED_DATA / "scifact" / "corpus.jsonl.gz").is_file(),
    reason="shared scifact data not available",
)
def test_shared_scifact_corpus() -> None:
    corpus = SHARED_DATA / "scifact" / "corpus.jsonl.gz"
    n = 0
    for p in read_collection(corpus):
        assert p.text
        assert p.ids is None
        n += 1
    assert n == 5_183 == count_lines(corpus)
