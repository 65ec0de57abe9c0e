"""`tilde build` / build_pipeline: expansion then indexing in one resumable job, and `tilde index`
reading the expansion output (settings recorded in the manifest)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertLMHeadModel

from tests.conftest import WORDS, make_tildev2, require_reference, write_vocab
from tilde.cli import main as cli_main
from tilde.expand import JobMismatchError, build_pipeline, expand_collection, load_expander
from tilde.index import TildeIndex
from tilde.index.build import build_index
from tilde.io import read_collection
from tilde.metering import NullMeter, Recorder

TOP_K = 30
MAX_LEN = 12


def _quiet() -> Recorder:
    return Recorder(NullMeter(), keep=False, use_global_hooks=False)


@pytest.fixture(scope="module")
def expander_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_vocab(tmp_path_factory.mktemp("tiny-tilde-lm"))
    vocab_size = len((folder / "vocab.txt").read_text("utf-8").splitlines())
    torch.manual_seed(3)
    model = BertLMHeadModel(BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    with torch.no_grad():
        model.cls.predictions.bias.copy_(torch.randn(vocab_size))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tildev2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tildev2(tmp_path_factory.mktemp("tiny-tildev2"), seed=4)


@pytest.fixture()
def collection(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    rows = [f"{100 + i}\t{' '.join(rng.choice(WORDS, size=int(rng.integers(1, 20))))}\n" for i in range(17)]
    path = tmp_path / "collection.tsv"
    path.write_text("".join(rows), encoding="utf-8")
    return path


def _build(expander_dir: Path | None, tildev2_dir: Path, collection: Path, out: Path, **kw: object) -> object:
    return build_pipeline(
        collection, out, model=str(tildev2_dir), expander=None if expander_dir is None else str(expander_dir),
        top_k=TOP_K, max_length=MAX_LEN, batch_size=2, chunk_batches=2, progress=False, recorder=_quiet(),
        **kw,  # type: ignore[arg-type]
    )


def _index_bytes(out: Path) -> dict[str, bytes]:
    names = ("offsets.npy", "tokens.npy", "weights.npy", "docids.npy", "expanded.jsonl")
    return {n: (out / n).read_bytes() for n in names}


def test_build_expands_then_indexes_and_records_the_expansion(
    expander_dir: Path, tildev2_dir: Path, collection: Path, tmp_path: Path
) -> None:
    out = tmp_path / "idx"
    summary = _build(expander_dir, tildev2_dir, collection, out)
    idx = TildeIndex.open(out)
    assert len(idx) == 17
    exp = load_expander(expander_dir, top_k=TOP_K, max_length=MAX_LEN)
    assert dict(idx.manifest.expansion or {}) == exp.settings.to_meta("ids")
    assert idx.manifest.expansion["model_sha256"] == exp.settings.model_sha256  # type: ignore[index]
    assert "build complete" in summary.format()  # type: ignore[attr-defined]
    # the same as running the two stages by hand
    manual = tmp_path / "manual"
    manual.mkdir()
    expand_collection(exp, collection, manual / "expanded.jsonl", batch_size=2, chunk_batches=2, progress=False,
                      recorder=_quiet())
    build_index(str(tildev2_dir), manual / "expanded.jsonl", manual, batch_size=2, chunk_batches=2, progress=False,
                recorder=_quiet())
    assert _index_bytes(manual) == _index_bytes(out)
    # a finished build re-run is reported, not redone
    again = _build(expander_dir, tildev2_dir, collection, out)
    assert again.reused == ("expansion", "index")  # type: ignore[attr-defined]


@pytest.mark.parametrize("stage", ["expand", "index"])
def test_interrupted_build_resumes_to_identical_output(
    expander_dir: Path, tildev2_dir: Path, collection: Path, tmp_path: Path, stage: str
) -> None:
    whole = tmp_path / "whole"
    _build(expander_dir, tildev2_dir, collection, whole)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _build(expander_dir, tildev2_dir, collection, out, stop_after=(stage, 2))
    assert not (out / "manifest.json").exists()
    summary = _build(expander_dir, tildev2_dir, collection, out)
    if stage == "expand":
        assert summary.expansion.resumed_from == 8  # type: ignore[attr-defined]
    else:
        assert summary.reused == ("expansion",) and summary.index.resumed_from == 8  # type: ignore[attr-defined]
    assert _index_bytes(out) == _index_bytes(whole)


def test_build_without_expansion(tildev2_dir: Path, collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "noexp"
    _build(None, tildev2_dir, collection, out)
    idx = TildeIndex.open(out)
    assert idx.manifest.expansion is None and len(idx) == 17
    assert not (out / "expanded.jsonl").exists()


def test_build_refuses_changed_settings_without_overwrite(
    expander_dir: Path, tildev2_dir: Path, collection: Path, tmp_path: Path
) -> None:
    out = tmp_path / "idx"
    _build(expander_dir, tildev2_dir, collection, out)
    with pytest.raises(JobMismatchError, match="top_k"):
        build_pipeline(collection, out, model=str(tildev2_dir), expander=str(expander_dir), top_k=TOP_K - 1,
                       max_length=MAX_LEN, progress=False, recorder=_quiet())
    build_pipeline(collection, out, model=str(tildev2_dir), expander=str(expander_dir), top_k=TOP_K - 1,
                   max_length=MAX_LEN, progress=False, recorder=_quiet(), overwrite=True)
    assert TildeIndex.open(out).manifest.expansion["top_k"] == TOP_K - 1  # type: ignore[index]


def test_build_refuses_mismatched_vocabularies(expander_dir: Path, collection: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "vocab.txt").write_text("[PAD]\n[unused0]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncat\n", encoding="utf-8")
    (other / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    make_tildev2(tmp_path / "v2", vocab_dir=other)
    with pytest.raises(ValueError, match="different vocabularies"):
        _build(expander_dir, tmp_path / "v2", collection, tmp_path / "idx")


def test_cli_build(expander_dir: Path, tildev2_dir: Path, collection: Path, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-idx"
    args = ["build", "--expander", str(expander_dir), "--model", str(tildev2_dir), "--collection", str(collection),
            "--output", str(out), "--top-k", str(TOP_K), "--max-length", str(MAX_LEN), "--batch-size", "4",
            "--no-progress"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "expanded 17 passages" in text and "indexed 17 passages" in text
    assert "BM25 index of 17 docs" in text and "impact first stage: " in text and "written" in text
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "already complete" in text and "bm25 is current, reused" in text and "current, reused" in text
    idx = TildeIndex.open(out)
    assert idx.manifest.expansion is not None
    # BM25 beside the index (where `tilde serve` looks for it), with the passages' texts
    from tilde.first_stage import BM25Index
    from tilde.first_stage.inverted import ImpactIndex

    bm25 = BM25Index.load(out / "bm25")
    assert len(bm25) == 17 and bm25.has_texts
    first = next(read_collection(collection))
    assert bm25.texts([first.pid]) == [first.text]
    # the inverted weights, listed in the index manifest (verify checks their digests)
    assert {"inverted/indptr.npy", "inverted/rows.npy", "inverted/codes.npy"} <= set(idx.manifest.files or {})
    assert idx.verify() == []
    assert ImpactIndex.load(out).stored
    # a changed collection makes the BM25 index stale (rebuilt by the next run)
    from tilde.first_stage.beside import bm25_is_current

    assert bm25_is_current(collection, out / "bm25")
    os.utime(collection, ns=(1, 1))
    assert not bm25_is_current(collection, out / "bm25")
    # opting out
    bare = tmp_path / "bare"
    assert cli_main([str(bare) if a == str(out) else a for a in args] + ["--no-bm25", "--no-inverted"]) == 0
    text = capsys.readouterr().out
    assert "not built (--no-bm25)" in text and "not written (--no-inverted)" in text
    assert not (bare / "bm25").exists() and not (bare / "inverted").exists()


@pytest.mark.data
def test_reference_build_end_to_end(tmp_path: Path) -> None:
    """Expand with tiny-tilde and index with tiny-tildev2 in one job: the index holds the
    reference index's weights, max-pooled (so `tilde index` reads the expansion as the reference
    does: [CLS] passage [SEP] expansion [SEP], 192 tokens)."""
    ref = require_reference()
    out = tmp_path / "idx"
    build_pipeline(ref / "collection.tsv", out, model=str(ref / "tiny-tildev2"), expander=str(ref / "tiny-tilde"),
                   batch_size=16, progress=False, recorder=_quiet())
    assert (out / "expanded.jsonl").read_bytes() == (ref / "expanded.jsonl").read_bytes()
    idx = TildeIndex.open(out)
    assert idx.manifest.expansion["expander"] == "tilde" and idx.manifest.expansion["top_k"] == 200  # type: ignore[index]
    for line in (ref / "index.jsonl").read_text().splitlines():
        row = json.loads(line)
        pooled: dict[int, float] = {}
        for t, w in zip(row["token_ids"], row["weights"]):
            pooled[t] = max(pooled.get(t, -1.0), w)
        toks, ws = idx.postings(int(idx.lookup([row["pid"]])[0]))
        assert toks.tolist() == sorted(pooled), row["pid"]
        # Model outputs: CPUs differ by an ulp (one float16 ulp is at most 2**-10 relative), so
        # allow that; scores from stored weights are compared exactly elsewhere.
        np.testing.assert_allclose(ws.astype(np.float64), [pooled[t] for t in sorted(pooled)], rtol=2**-10,
                                   atol=2**-24, err_msg=row["pid"])
