"""Offline jobs on bad input and after crashes: empty inputs are errors, a job that wrote nothing
does not block its re-run, killed runs leave no temporary files behind once resumed, a full disk
is one line, summaries report what this run did, hub ids fail fast offline, and a missing
optional dependency names the extra to install."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tilde.cli import main as cli
from tilde.index import IndexFormatError, TildeIndex
from tilde.index.build import build_index
from tilde.io import FormatError

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_empty_collection_is_an_error(tiny_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(FormatError, match="empty"):
        build_index(str(tiny_model), empty, tmp_path / "idx", progress=False)
    assert not (tmp_path / "idx" / "manifest.json").exists()
    assert cli(["index", "--model", str(tiny_model), "--collection", str(empty), "--output", str(tmp_path / "i2"),
                "--no-progress"]) == 2


def test_validation_failure_does_not_block_the_rerun(tiny_model: Path, tmp_path: Path) -> None:
    coll = tmp_path / "c.tsv"
    coll.write_text("1\tthe cat\n2 no tab here\n3\tthe dog\n")
    with pytest.raises(FormatError, match=":2:"):
        build_index(str(tiny_model), coll, tmp_path / "idx", batch_size=2, progress=False)
    assert not (tmp_path / "idx" / ".partial").exists()  # nothing was finished: nothing is kept
    coll.write_text("1\tthe cat\n2\tno tab here\n3\tthe dog\n")  # fixed: another size and mtime
    summary = build_index(str(tiny_model), coll, tmp_path / "idx", batch_size=2, progress=False)
    assert summary.passages == 3


def test_job_file_without_chunks_is_replaced(tiny_model: Path, tiny_collection: Path, tmp_path: Path) -> None:
    """A job killed before its first chunk (job.json only) does not make the next run ask for --overwrite."""
    part = tmp_path / "idx" / ".partial"
    part.mkdir(parents=True)
    (part / "job.json").write_text('{"collection": "something else"}')
    assert build_index(str(tiny_model), tiny_collection, tmp_path / "idx", progress=False).passages == 9


def test_resume_removes_temporary_files_and_reports_this_run(
    tiny_model: Path, tiny_collection: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tilde.index.build as build

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed in finalize")

    out = tmp_path / "idx"
    with monkeypatch.context() as m:
        m.setattr(build, "finalize", killed)
        with pytest.raises(KeyboardInterrupt):  # every chunk written (4 + 4 + 1 passages), then killed
            build_index(str(tiny_model), tiny_collection, out, batch_size=2, chunk_batches=2, progress=False)
    # What a SIGKILL during finalize / a chunk write leaves behind:
    stale = [out / ".tmp-0123456789ab.tokens.npy", out / ".partial" / ".tmp-abcdefabcdef.chunk-00000003.npz"]
    for f in stale:
        f.write_bytes(b"partial")
    with pytest.raises(IndexFormatError, match="re-run the same `tilde index` command"):
        TildeIndex.open(out)
    s = build_index(str(tiny_model), tiny_collection, out, batch_size=2, chunk_batches=2, progress=False)
    assert not any(f.exists() for f in stale)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert s.resumed_from == 9 and s.passages == 9 and s.done_now == 0
    text = s.format()
    assert "resumed: 9 of 9 passages were already encoded, 0 encoded now" in text
    assert " 0.0 passages/s" in text


def test_unfinished_build_hint_names_the_command(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    (out / ".partial").mkdir(parents=True)
    (out / ".partial" / "command").write_text("tilde build\n")
    with pytest.raises(IndexFormatError, match="re-run the same `tilde build` command"):
        TildeIndex.open(out)
    exp = tmp_path / "exp"
    (exp / "expanded.jsonl.partial").mkdir(parents=True)  # stopped during the expansion stage
    with pytest.raises(IndexFormatError, match="unfinished `tilde build`"):
        TildeIndex.open(exp)


def test_stale_temp_files_of_other_targets_are_kept(tmp_path: Path) -> None:
    from tilde.index.writer import remove_stale_temp_files

    mine, other = tmp_path / ".tmp-0123456789ab.exp.0.jsonl", tmp_path / ".tmp-0123456789ab.exp.1.jsonl"
    keep = tmp_path / ".tmp-notatempfile"
    for f in (mine, other, keep):
        f.write_text("x")
    assert remove_stale_temp_files(tmp_path, ["exp.0.jsonl"]) == 1
    assert not mine.exists() and other.exists() and keep.exists()


def test_disk_full_in_finalize_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import tilde.index.writer as writer
    from tests.helpers import write_index

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_write_npy_header", full)
    with pytest.raises(writer.DiskFullError, match="no space left on the device while writing the index"):
        write_index(tmp_path / "idx", ["1"], [(np.array([5], np.uint32), np.array([1.0], np.float16))])
    assert not [p for p in (tmp_path / "idx").iterdir() if p.name.startswith(".tmp-")]
    assert str(writer.DiskFullError(errno.ENOSPC, "x")) == "x"  # the CLI prints just the message


def _rerank_files(tmp_path: Path) -> tuple[Path, Path]:
    from tests.helpers import write_index
    from tilde.text import TextProcessor

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "dog", "river"]) + "\n")
    text = TextProcessor.load(vocab)
    idx = tmp_path / "idx"
    write_index(idx, ["1", "2"], [(np.array([5], np.uint32), np.array([1.0], np.float16)),
                                  (np.array([6], np.uint32), np.array([2.0], np.float16))],
                vocab_size=text.vocab_size, vocab_sha256=text.vocab_hash, tokenizer=text.tokenizer)
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 1 1 2.0 bm25\nq1 Q0 2 2 1.0 bm25\nq2 Q0 2 1 1.0 bm25\nq3 Q0 1 1 1.0 bm25\n")
    return idx, run


def test_rerank_empty_query_names_qid_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    idx, run = _rerank_files(tmp_path)
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\tcat dog\nq2\t   \nq3\triver\n")
    out = tmp_path / "out.trec"
    args = ["rerank", "--index", str(idx), "--queries", str(queries), "--run", str(run), "--output", str(out)]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "'q2' (line 2)" in err and "--empty-queries skip" in err and not out.exists()
    assert cli([*args, "--empty-queries", "skip"]) == 0
    assert "skipping 1 run query with empty text" in capsys.readouterr().err
    assert [line.split()[0] for line in out.read_text().splitlines()] == ["q1", "q1", "q3"]


def test_rerank_empty_run_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    idx, _ = _rerank_files(tmp_path)
    (tmp_path / "q.tsv").write_text("q1\tcat\n")
    (tmp_path / "empty.trec").write_text("")
    out = tmp_path / "out.trec"
    assert cli(["rerank", "--index", str(idx), "--queries", str(tmp_path / "q.tsv"), "--run",
                str(tmp_path / "empty.trec"), "--output", str(out)]) == 2
    assert "no entries" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("offline", ["endpoint", "env"])
def test_hub_id_fails_fast_when_the_hub_is_unreachable(tmp_path: Path, offline: str) -> None:
    """No network needed: a closed local port stands in for an unreachable hub."""
    env = {**_env(), "HF_HOME": str(tmp_path / "hf"), "TILDE_HUB_TIMEOUT": "2"}
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "HF_HUB_OFFLINE"):
        env.pop(var, None)
    if offline == "env":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    coll = tmp_path / "c.tsv"
    coll.write_text("1\tthe cat\n")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tilde.cli", "index", "--model", "someorg/some-model",
                           "--collection", str(coll), "--output", str(tmp_path / "idx")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr, proc.stderr
    assert "'someorg/some-model' is a Hugging Face hub id, but the hub is unreachable" in proc.stderr
    print(f"failed after {elapsed:.1f} s")  # for the record; not asserted (machines differ)


def test_missing_extra_is_one_line(tmp_path: Path) -> None:
    """`pip install .` without [index]: the command names the extra instead of a traceback."""
    code = ("import sys; sys.modules['torch'] = None; from tilde.cli import main; "
            f"sys.exit(main(['index', '--collection', 'x', '--output', {str(tmp_path / 'i')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "the [index] extra" in proc.stderr and "pip install 'tilde[index]'" in proc.stderr


def test_python_m_tilde_cli_reports_command_errors_in_one_line(tmp_path: Path) -> None:
    """`python -m tilde.cli` runs cli.py as __main__: a CommandError raised by a command must still
    be the one its except clause catches (exit 2, one line, no traceback)."""
    idx, _ = _rerank_files(tmp_path)
    (tmp_path / "q.tsv").write_text("q1\tcat\n")
    (tmp_path / "empty.trec").write_text("")
    proc = subprocess.run([sys.executable, "-m", "tilde.cli", "rerank", "--index", str(idx), "--queries",
                           str(tmp_path / "q.tsv"), "--run", str(tmp_path / "empty.trec"), "--output",
                           str(tmp_path / "o.trec")], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "tilde rerank: error: " in proc.stderr and "no entries" in proc.stderr
