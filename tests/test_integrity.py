"""A finished index damaged 21 ways: ``tilde index verify`` refuses every one with a message naming
what is wrong, and nothing crashes: ``TildeIndex.open``, ``Reranker`` (plain and with feedback) and
the ``tilde rerank`` command (a subprocess, so a segfault would show as a negative exit code) each
either refuse with one line naming the damaged file, or give exactly the undamaged index's result
(where the damage lies in postings no query reads, which only the digests reveal).

``TILDE_DAMAGE_TABLE=path.md pytest tests/test_integrity.py`` writes the damage x tool outcome table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WORDS, write_vocab
from tilde.index import IndexFormatError, TildeIndex
from tilde.index.format import Manifest
from tilde.index.writer import finalize
from tilde.rank import Reranker
from tilde.rank.feedback import Feedback
from tilde.text import TextProcessor

ROOT = Path(__file__).resolve().parents[1]
N = 40
DOCIDS = [str((i * 17) % 101 + 1) for i in range(N)]  # not ascending: docids_sorted/order are written
QUERIES = ["cat dog river", "the big red car", "music song book", "neural search rank query",
           "water fire light", "city town road house", "one two three four five", "fish tree bird"]
FEEDBACK = Feedback(2, 5, 0.5)
_OUTCOMES: dict[str, dict[str, str]] = {}


def _npy_data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _edit_array(path: Path, fn: Callable[[np.ndarray], None]) -> None:
    arr = np.load(path)
    fn(arr)
    np.save(path, arr)  # same dtype and shape: same size, so only the digest (and the values) differ


def _edit_manifest(idx: Path, fn: Callable[[dict], None]) -> None:
    m = json.loads((idx / "manifest.json").read_text())
    fn(m)
    (idx / "manifest.json").write_text(json.dumps(m))


def _flip_bytes(path: Path, count: int, seed: int) -> None:
    data = bytearray(path.read_bytes())
    start = _npy_data_offset(path)
    rng = np.random.default_rng(seed)
    for pos in rng.choice(np.arange(start, len(data)), size=count, replace=False):
        data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _row_slice(idx: Path, row: int) -> slice:
    off = np.load(idx / "offsets.npy")
    return slice(int(off[row]), int(off[row + 1]))


def _set_weights(idx: Path, row: int, value: float) -> None:
    sl = _row_slice(idx, row)
    _edit_array(idx / "weights.npy", lambda w: w.__setitem__(sl, value))


def _swap_first_last(idx: Path, row: int) -> None:
    sl = _row_slice(idx, row)

    def fn(t: np.ndarray) -> None:
        t[sl.start], t[sl.stop - 1] = t[sl.stop - 1], t[sl.start]

    _edit_array(idx / "tokens.npy", fn)


def _huge_offset(o: np.ndarray) -> None:
    o[5] = 10**12


def _decreasing_offsets(o: np.ndarray) -> None:
    o[10], o[11] = o[11], o[10]


def _tokens_65535(t: np.ndarray) -> None:
    t[::7] = 65535


def _order_out_of_range(o: np.ndarray) -> None:
    o[3] = 10**9


# name -> (how, where the damage must be caught at the latest)
#   "open":    TildeIndex.open refuses (cheap checks: manifest, sizes, shapes, per-passage arrays)
#   "load":    Reranker.load refuses (the tokenizer, or its match with the manifest)
#   "scoring": open accepts (postings are not read at open); scoring refuses naming the file, or
#              gives the undamaged result when no query reads the damaged postings
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated weights.npy": (lambda d: _truncate(d / "weights.npy"), "open"),
    "invalid manifest.json": (lambda d: (d / "manifest.json").write_text("{oops"), "open"),
    "wrong num_postings": (lambda d: _edit_manifest(d, lambda m: m.__setitem__("num_postings", m["num_postings"] + 1)),
                           "open"),
    "wrong weight_dtype": (lambda d: _edit_manifest(d, lambda m: m.update(weight_dtype="uint8", weight_scale=0.01)),
                           "open"),
    "deleted offsets.npy": (lambda d: (d / "offsets.npy").unlink(), "open"),
    "huge value in offsets.npy": (lambda d: _edit_array(d / "offsets.npy", _huge_offset), "open"),
    "16 flipped bytes in tokens.npy": (lambda d: _flip_bytes(d / "tokens.npy", 16, seed=1), "scoring"),
    "tokens set to 65535": (lambda d: _edit_array(d / "tokens.npy", _tokens_65535), "scoring"),
    "docids_order.npy out of range": (lambda d: _edit_array(d / "docids_order.npy", _order_out_of_range), "open"),
    "non-monotonic offsets": (lambda d: _edit_array(d / "offsets.npy", _decreasing_offsets), "open"),
    "flipped bytes in docids_sorted.npy": (lambda d: _flip_bytes(d / "docids_sorted.npy", 16, seed=2), "open"),
    "NaN weights": (lambda d: _set_weights(d, 2, np.nan), "scoring"),
    "inf weights": (lambda d: _set_weights(d, 3, np.inf), "scoring"),
    "truncated tokenizer.json": (lambda d: _truncate(d / "tokenizer.json"), "open"),
    "feedback.docs = 10^9": (lambda d: _edit_manifest(d, lambda m: m.__setitem__(
        "feedback", {"docs": 10**9, "terms": 30, "weight": 0.5})), "open"),
    "max_passage_tokens = -7": (lambda d: _edit_manifest(d, lambda m: m.__setitem__("max_passage_tokens", -7)),
                                "open"),
    "negative weights": (lambda d: _set_weights(d, 4, -1.5), "scoring"),
    "unsorted tokens within a row": (lambda d: _swap_first_last(d, 1), "scoring"),
    "docids.npy size differs from manifest": (lambda d: (d / "docids.npy").write_bytes(
        (d / "docids.npy").read_bytes() + b"\0" * 8), "open"),
    "missing tokenizer.json": (lambda d: (d / "tokenizer.json").unlink(), "open"),
    "wrong vocabulary hash": (lambda d: _edit_manifest(d, lambda m: m.__setitem__("vocab_sha256", "0" * 64)),
                              "load"),
}


@pytest.fixture(scope="module", autouse=True)
def _outcome_table() -> Iterator[None]:
    """With TILDE_DAMAGE_TABLE=path, write the damage x tool table the tests fill in (after them)."""
    yield
    target = os.environ.get("TILDE_DAMAGE_TABLE")
    if target and _OUTCOMES:
        tools = ["verify", "open", "rerank plain", "rerank+feedback", "tilde rerank", "tilde serve"]
        lines = ["| damage | " + " | ".join(tools) + " |", "|---" * (len(tools) + 1) + "|"]
        for damage in DAMAGES:
            row = _OUTCOMES.get(damage, {})
            lines.append(f"| {damage} | " + " | ".join(row.get(t, "") for t in tools) + " |")
        Path(target).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | list]:
    base = tmp_path_factory.mktemp("integrity")
    text = TextProcessor.load(write_vocab(base / "vocab"))
    rng = np.random.default_rng(0)
    content = np.setdiff1d(np.array([text.tokenizer.token_to_id(w) for w in WORDS]), text.stop_ids)
    lengths, tokens, weights = [], [], []
    for _ in range(N):
        ids = np.sort(rng.choice(content, size=int(rng.integers(8, 24)), replace=False))
        lengths.append(ids.size)
        tokens.append(ids)
        weights.append(rng.uniform(0.05, 3.0, ids.size))
    chunk = {"docids": np.array(DOCIDS, dtype=np.str_), "lengths": np.array(lengths, dtype=np.int64),
             "tokens": np.concatenate(tokens).astype(np.uint32),
             "weights": np.concatenate(weights).astype(np.float16)}
    manifest = Manifest(vocab_size=text.vocab_size, vocab_sha256=text.vocab_hash, model="synthetic",
                        model_sha256="0" * 64)
    idx = base / "idx"
    finalize([chunk], idx, manifest, tokenizer=text.tokenizer)
    queries = base / "queries.tsv"
    queries.write_text("".join(f"q{i}\t{q}\n" for i, q in enumerate(QUERIES)))
    run = base / "run.trec"
    run.write_text("".join(f"q{i} Q0 {d} {r + 1} {100 - r} bm25\n" for i in range(len(QUERIES))
                           for r, d in enumerate(DOCIDS)))
    expected = _rerank_all(idx, FEEDBACK), _rerank_all(idx, None)
    ref_out = base / "ref.trec"
    proc = _cli_rerank(idx, queries, run, ref_out)
    assert proc.returncode == 0, proc.stderr
    return {"idx": idx, "queries": queries, "run": run, "expected": list(expected), "ref": ref_out}


def _rerank_all(idx: Path, fb: Feedback | None) -> list[list[tuple[str, float]]]:
    rr = Reranker.load(idx, feedback=fb)
    return [[(d.docid, d.score) for d in rr.rerank(q, DOCIDS).results] for q in QUERIES]


def _cli_rerank(idx: Path, queries: Path, run: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "tilde.cli", "rerank", "--index", str(idx), "--queries", str(queries),
         "--run", str(run), "--output", str(out), "--feedback", str(FEEDBACK)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )


def _names_file(message: str, idx: Path) -> bool:
    return str(idx) in message and any(
        name in message for name in ("manifest.json", ".npy", "tokenizer.json", "tokenizer", "vocabulary")
    )


def _one_line_error(stderr: str) -> str:
    """The CLI's error line; fails on a traceback or a multi-line error."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_index(pristine: dict, damage: str, tmp_path: Path) -> None:
    how, caught_by = DAMAGES[damage]
    idx = tmp_path / "idx"
    shutil.copytree(pristine["idx"], idx)
    how(idx)
    outcome: dict[str, str] = {}

    # verify: always refuses, naming the file or field.
    from tilde.cli import main as cli_main

    with pytest.raises(IndexFormatError) as exc_info:
        TildeIndex.open(idx).verify()
    assert _names_file(str(exc_info.value), idx), exc_info.value
    outcome["verify"] = "refused: " + _short(str(exc_info.value), idx)
    assert cli_main(["index", "verify", str(idx)]) == 2

    # open: refuses exactly the damage its cheap checks cover.
    try:
        TildeIndex.open(idx)
        outcome["open"] = "accepted (postings are not read at open)"
        assert caught_by != "open", f"open() accepted {damage}"
    except IndexFormatError as exc:
        assert caught_by == "open", f"open() refused {damage}: {exc}"
        assert _names_file(str(exc), idx), exc
        outcome["open"] = "refused: " + _short(str(exc), idx)

    # Reranker in this process, with and without feedback: an error naming the file, or the right result.
    for label, fb, expected in (("rerank+feedback", FEEDBACK, pristine["expected"][0]),
                                ("rerank plain", None, pristine["expected"][1])):
        try:
            got = _rerank_all(idx, fb)
        except IndexFormatError as exc:
            assert _names_file(str(exc), idx), exc
            outcome[label] = "refused: " + _short(str(exc), idx)
            continue
        assert caught_by == "scoring", f"{damage}: scored although it should have been refused"
        assert got == expected, f"{damage}: {label} gave a different result instead of refusing"
        outcome[label] = "same result as undamaged (damaged postings not read)"

    # The command, in a subprocess: exit 0 with the right output, or exit 2 with one line.
    out = tmp_path / "out.trec"
    proc = _cli_rerank(idx, pristine["queries"], pristine["run"], out)
    assert proc.returncode in (0, 2), f"{damage}: exit {proc.returncode}\n{proc.stderr}"
    if proc.returncode == 2:
        line = _one_line_error(proc.stderr)
        assert _names_file(line, idx), line
        assert not out.exists()
        outcome["tilde rerank"] = "exit 2: " + _short(line.split(": error: ", 1)[1], idx)
    else:
        assert caught_by == "scoring"
        assert out.read_text() == pristine["ref"].read_text()
        outcome["tilde rerank"] = "exit 0, output identical to undamaged"
    _OUTCOMES[damage] = outcome


def _short(message: str, idx: Path) -> str:
    return message.replace(str(idx) + "/", "").replace(str(idx), "<idx>")


def test_serve_refuses_a_damaged_index(pristine: dict, tmp_path: Path) -> None:
    """`tilde serve` on damaged indexes: a clean exit with one line naming the file, never a crash
    (the master opens the index, then preloads the app, whose warm-up scores row 0)."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TILDE_WORKERS": "1"}
    for damage, name in (("huge value in offsets.npy", "offsets.npy"), ("tokens set to 65535", "tokens.npy")):
        idx = tmp_path / damage.replace(" ", "_")
        shutil.copytree(pristine["idx"], idx)
        DAMAGES[damage][0](idx)
        proc = subprocess.run(
            [sys.executable, "-m", "tilde.cli", "serve", "--index", str(idx), "--port", "0", "--workers", "1",
             "--model", "none"],
            capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
        )
        assert proc.returncode == 2, f"{damage}: exit {proc.returncode}\n{proc.stderr}"
        line = _one_line_error(proc.stderr)
        assert name in line and str(idx) in line, line
        _OUTCOMES.setdefault(damage, {})["tilde serve"] = "exit 2: " + _short(line.split(": error: ", 1)[1], idx)


def test_kernels_refuse_bad_arrays_without_reading_out_of_bounds() -> None:
    """The kernels given arrays that no open() check stands between (e.g. a file changed under a
    running service): ValueError, never an out-of-bounds access."""
    from tilde.rank.feedback import feedback_terms
    from tilde.rank.kernel import score_rows, score_rows_dense

    table = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    tokens = np.array([3, 5, 9, 2, 60000], dtype=np.uint16)
    codes = np.full(5, np.float16(1.0).view(np.uint16), dtype=np.uint16)
    q, c = np.array([5], np.int64), np.ones(1)
    good = np.array([0, 3, 5], np.int64)
    assert score_rows(good, tokens, codes, table, np.array([0]), q, c, 100).tolist() == [1.0]
    cases = [
        (good, np.array([7])),  # row beyond the index
        (np.array([0, 3, 10**12]), np.array([1])),  # offsets beyond the postings
        (np.array([0, -4, 5]), np.array([0])),  # negative offset
        (good, np.array([1])),  # token 60000 beyond the vocabulary of 100
    ]
    for offsets, rows in cases:
        with pytest.raises(ValueError):
            score_rows(offsets, tokens, codes, table, rows, q, c, 100)
        with pytest.raises(ValueError):
            score_rows_dense(offsets, tokens, codes, table, rows, q, np.ones(1), 100)
        with pytest.raises(ValueError):
            feedback_terms(offsets, tokens, codes, table, rows, np.ones(1), q, 5, 0.5, 100)
    with pytest.raises(ValueError):  # an expansion id beyond the vocabulary
        score_rows_dense(good, tokens, codes, table, np.array([0]), np.array([100]), np.ones(1), 100)
    small = np.ones(4, np.float32)  # weight codes beyond a 4-entry table
    with pytest.raises(ValueError):
        score_rows(good, tokens, codes, small, np.array([0]), q, c, 100)
    with pytest.raises(ValueError):
        feedback_terms(good, tokens, codes, small, np.array([0]), np.ones(1), q, 5, 0.5, 100)
    # damage the scoring loop might never read, caught by the kernel's touch of each row: a token
    # out of order a quarter into the row, a weight code outside the table where no query token
    # matches
    row = np.array([0, 8], np.int64)
    swapped = np.array([1, 2, 9, 4, 5, 6, 7, 8], dtype=np.uint16)
    eight = np.full(8, 1, dtype=np.uint16)
    assert score_rows(row, np.arange(1, 9, dtype=np.uint16), eight, small, np.array([0]), q, c, 100).tolist() == [1.0]
    with pytest.raises(ValueError, match="ascending"):
        score_rows(row, swapped, eight, small, np.array([0]), q, c, 100)
    bad_code = eight.copy()
    bad_code[0] = 7
    with pytest.raises(ValueError, match="weight code"):
        score_rows(row, np.arange(1, 9, dtype=np.uint16), bad_code, small, np.array([0]), q, c, 100)


def test_legacy_index_without_file_list(pristine: dict, tmp_path: Path) -> None:
    """An index written before the manifest listed its files still opens and verifies (arrays
    only, with a note); a damaged tokenizer is then reported by Reranker.load naming the file."""
    idx = tmp_path / "idx"
    shutil.copytree(pristine["idx"], idx)
    _edit_manifest(idx, lambda m: m.__setitem__("files", None))
    notes = TildeIndex.open(idx).verify()
    assert any("no file digests" in n for n in notes)
    assert _rerank_all(idx, None) == pristine["expected"][1]
    _truncate(idx / "tokenizer.json")
    with pytest.raises(IndexFormatError, match=r"tokenizer.json: not a loadable tokenizer"):
        Reranker.load(idx)
    with pytest.raises(IndexFormatError, match=r"tokenizer.json: not a loadable tokenizer"):
        TildeIndex.open(idx).verify()


def test_manifest_lists_every_file_written(tmp_path: Path, pristine: dict) -> None:
    """finalize records every file it writes plus the caller's extra files and folders (any name,
    sub-folders included); verify checks each, open() their sizes."""
    idx = tmp_path / "idx"
    text = TextProcessor.load(pristine["idx"] / "tokenizer.json")
    (idx / "encoder").mkdir(parents=True)
    (idx / "encoder" / "config.json").write_text("{}")
    (idx / "dense.npy").write_bytes(b"x" * 100)
    chunk = {"docids": np.array(["b", "a"], dtype=np.str_), "lengths": np.array([1, 1], dtype=np.int64),
             "tokens": np.array([20, 21], dtype=np.uint32), "weights": np.array([1, 2], dtype=np.float16)}
    manifest = Manifest(vocab_size=text.vocab_size, vocab_sha256=text.vocab_hash, model="m", model_sha256="0" * 64)
    m = finalize([chunk], idx, manifest, tokenizer=text.tokenizer, extra_files=["dense.npy", "encoder"])
    assert set(m.files or {}) == {"offsets.npy", "tokens.npy", "weights.npy", "tokenizer.json", "docids.npy",
                                  "docids_sorted.npy", "docids_order.npy", "dense.npy", "encoder/config.json"}
    TildeIndex.open(idx).verify()
    (idx / "encoder" / "config.json").write_text("[]")  # same size, other bytes
    with pytest.raises(IndexFormatError, match="encoder/config.json: contents differ"):
        TildeIndex.open(idx).verify()
    (idx / "dense.npy").write_bytes(b"x" * 99)
    with pytest.raises(IndexFormatError, match="dense.npy: 99 bytes"):
        TildeIndex.open(idx)
    _edit_manifest(idx, lambda d: d["files"].__setitem__("../outside", {"size": 1, "sha256": "0" * 64}))
    with pytest.raises(IndexFormatError, match="not a relative path inside the index"):
        TildeIndex.open(idx)


def test_verify_in_small_blocks(pristine: dict, tmp_path: Path) -> None:
    """verify scans the postings in blocks of whole rows: no block size changes its answer."""
    idx = TildeIndex.open(pristine["idx"])
    off = np.asarray(idx.offsets)
    for block in (1, 5, 64, 10**9):
        idx._verify_postings(off, block=block)
    bad = tmp_path / "idx"
    shutil.copytree(pristine["idx"], bad)
    _swap_first_last(bad, 7)
    damaged = TildeIndex.open(bad)
    for block in (1, 5, 64, 10**9):
        with pytest.raises(IndexFormatError, match="not strictly increasing within row 7"):
            damaged._verify_postings(off, block=block)
