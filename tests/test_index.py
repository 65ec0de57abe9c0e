from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import random_passages, write_index
from tilde.index import IndexFormatError, TildeIndex
from tilde.index.writer import DuplicateDocidError, pool_postings


def test_pool_postings_matches_naive() -> None:
    stop = np.zeros(300, dtype=bool)
    stop[[0, 5, 7]] = True
    for ids, w in random_passages(50, seed=1, vocab=300):
        toks, ws = pool_postings(ids, w, stop)
        expected: dict[int, float] = {}
        for t, x in zip(ids.tolist(), w.astype(np.float16).tolist()):
            if not stop[t]:
                expected[t] = max(expected.get(t, -1.0), x)
        assert toks.tolist() == sorted(expected)
        assert ws.dtype == np.float16
        assert ws.astype(float).tolist() == [expected[t] for t in sorted(expected)]


def _pooled(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    stop = np.zeros(30522, dtype=bool)
    return [pool_postings(i, w, stop) for i, w in random_passages(n, seed=seed)]


@pytest.mark.parametrize("docids", [
    ["0", "1", "2", "3", "4"],              # MS MARCO style: ids are rows, nothing stored
    ["1", "2", "3", "10", "20"],            # ascending ints: no lookup permutation needed
    ["30", "2", "1000", "0", "7"],          # unsorted ints
    ["doc-b", "doc-a", "é", "007", "x"],    # strings (and "007" is not an int id)
])
def test_roundtrip_and_lookup(tmp_path: Path, docids: list[str]) -> None:
    postings = _pooled(len(docids))
    write_index(tmp_path / "idx", docids, postings)
    idx = TildeIndex.open(tmp_path / "idx")
    assert len(idx) == len(docids)
    for row, d in enumerate(docids):
        assert idx.docid(row) == d
        toks, ws = idx.postings(row)
        assert toks.tolist() == postings[row][0].tolist()
        assert ws.tolist() == postings[row][1].astype(np.float32).tolist()
    query = [*reversed(docids), "nope", "12345", "7 "]
    rows = idx.lookup(query)
    assert rows.tolist() == [docids.index(d) if d in docids else -1 for d in query]
    idx.verify()
    assert (idx.manifest.docid_kind == "range") == (docids == ["0", "1", "2", "3", "4"])
    assert (tmp_path / "idx" / "docids.npy").exists() == (idx.manifest.docid_kind != "range")


def test_int_index_rejects_non_canonical_ids(tmp_path: Path) -> None:
    write_index(tmp_path / "idx", ["1", "7", "12"], _pooled(3))
    idx = TildeIndex.open(tmp_path / "idx")
    assert idx.manifest.docid_kind == "int"
    assert idx.lookup(["007", "7", 7, "abc", "-7", "1e3", 12]).tolist() == [-1, 1, 1, -1, -1, -1, 2]
    write_index(tmp_path / "rng", ["0", "1", "2"], _pooled(3))
    rng = TildeIndex.open(tmp_path / "rng")
    assert rng.manifest.docid_kind == "range"
    assert rng.lookup(["2", 0, "3", -1, "01", "x", 2**40]).tolist() == [2, 0, -1, -1, -1, -1, -1]


def test_duplicate_docids_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(DuplicateDocidError, match="'5' \\(passages 2 and 4\\)"):
        write_index(tmp_path / "idx", ["1", "5", "2", "5"], _pooled(4))
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_uint8_weights(tmp_path: Path) -> None:
    postings = _pooled(20)
    m16 = write_index(tmp_path / "f16", [str(i) for i in range(20)], postings)
    m8 = write_index(tmp_path / "u8", [str(i) for i in range(20)], postings, weight_dtype="uint8")
    assert m8.weight_dtype == "uint8" and m8.weight_scale
    a, b = TildeIndex.open(tmp_path / "f16"), TildeIndex.open(tmp_path / "u8")
    assert b.weights.dtype == np.uint8
    for row in range(20):
        wa, wb = a.postings(row)[1], b.postings(row)[1]
        assert np.all(np.abs(wa - wb) <= m8.weight_scale / 2 + 1e-6)
    size16 = (tmp_path / "f16" / "weights.npy").stat().st_size
    size8 = (tmp_path / "u8" / "weights.npy").stat().st_size
    assert size8 < size16
    assert m16.num_postings == m8.num_postings


def _damage(idx: Path, how: str) -> None:
    man = idx / "manifest.json"
    if how == "missing-array":
        (idx / "tokens.npy").unlink()
    elif how == "truncated-array":
        data = (idx / "weights.npy").read_bytes()
        (idx / "weights.npy").write_bytes(data[: len(data) // 2])
    elif how == "wrong-version":
        m = json.loads(man.read_text())
        m["format_version"] = 99
        man.write_text(json.dumps(m))
    elif how == "not-json":
        man.write_text("{oops")
    elif how == "no-manifest":
        man.unlink()
    elif how == "count-mismatch":
        m = json.loads(man.read_text())
        m["num_postings"] += 1
        man.write_text(json.dumps(m))
    elif how == "wrong-dtype":
        np.save(idx / "tokens.npy", np.load(idx / "tokens.npy").astype(np.int32))
    elif how == "unknown-field":
        m = json.loads(man.read_text())
        m["surprise"] = 1
        man.write_text(json.dumps(m))
    elif how == "bad-offsets":
        off = np.load(idx / "offsets.npy")
        off[-1] += 3
        np.save(idx / "offsets.npy", off)


@pytest.mark.parametrize("how,match", [
    ("missing-array", "tokens.npy: missing"),
    ("truncated-array", "damaged"),
    ("wrong-version", "format version 99"),
    ("not-json", "not valid JSON"),
    ("no-manifest", "not a tilde index"),
    ("count-mismatch", "shape"),
    ("wrong-dtype", "tokens.npy: .*(bytes|dtype int32)"),
    ("unknown-field", "unknown fields"),
    ("bad-offsets", "offsets"),
])
def test_damaged_index_is_refused(tmp_path: Path, how: str, match: str) -> None:
    write_index(tmp_path / "idx", ["1", "2", "3"], _pooled(3))
    _damage(tmp_path / "idx", how)
    with pytest.raises(IndexFormatError, match=match):
        TildeIndex.open(tmp_path / "idx")


def test_verify_finds_unsorted_tokens(tmp_path: Path) -> None:
    postings = _pooled(5, seed=3)
    write_index(tmp_path / "idx", ["1", "2", "3", "4", "5"], postings)
    toks = np.load(tmp_path / "idx" / "tokens.npy")
    row = next(i for i, p in enumerate(postings) if len(p[0]) > 2)
    lo = sum(len(p[0]) for p in postings[:row])
    toks[lo], toks[lo + 1] = toks[lo + 1], toks[lo]
    np.save(tmp_path / "idx" / "tokens.npy", toks)
    idx = TildeIndex.open(tmp_path / "idx")  # O(1) checks pass ...
    with pytest.raises(IndexFormatError, match="tokens.npy: contents differ from the sha256 digest"):
        idx.verify()  # ... the digest does not
    with pytest.raises(IndexFormatError, match="strictly increasing"):
        idx.verify(checksums=False)  # ... nor the invariants


def test_tokenizer_mismatch(tmp_path: Path) -> None:
    write_index(tmp_path / "idx", ["1"], _pooled(1))
    idx = TildeIndex.open(tmp_path / "idx")
    with pytest.raises(IndexFormatError, match="does not match the index"):
        idx.check_tokenizer("x" * 64, 30522)
    idx.check_tokenizer("v" * 64, 30522)


def test_empty_passages_and_empty_index(tmp_path: Path) -> None:
    empty = (np.zeros(0, np.uint32), np.zeros(0, np.float16))
    write_index(tmp_path / "idx", ["1", "2"], [empty, empty])
    idx = TildeIndex.open(tmp_path / "idx")
    assert idx.manifest.num_postings == 0
    assert idx.postings(1)[0].size == 0
    write_index(tmp_path / "none", [], [])
    assert len(TildeIndex.open(tmp_path / "none")) == 0
    assert TildeIndex.open(tmp_path / "none").lookup(["1"]).tolist() == [-1]
