"""Shared fixtures: a tiny WordPiece vocabulary and tiny TILDEv2 models built from a BertConfig
(never a download), and the location of ../shared/data for data tests (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REFERENCE = SHARED_DATA / "reference"

WORDS = (
    "the a an of to is what how when who why which in on for and or not cat cats dog dogs bird "
    "fish tree trees house car cars road river bank money water fire light dark sun moon star "
    "city town music song book books read write paper science data model neural search rank "
    "query passage text word words fast slow big small red blue green one two three four five "
    "year day time people world food eat drink sleep run walk play game ball team win lose"
).split()
SUFFIXES = ["##s", "##ing", "##ed", "##er", "##ly", "##x", "##z"]


def write_vocab(folder: Path) -> Path:
    """A BERT-style vocab: specials first, punctuation, words, word pieces (ids are stable)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!", "-", "'"]
    tokens += WORDS + SUFFIXES + [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokens += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    seen: list[str] = []
    for t in tokens:
        if t not in seen:
            seen.append(t)
    (folder / "vocab.txt").write_text("\n".join(seen) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    return folder


def tokenizer_files(folder: Path, vocab_dir: Path | None) -> int:
    """Put the tiny vocabulary (a fresh one, or ``vocab_dir``'s) in ``folder``; its size."""
    if vocab_dir is None:
        write_vocab(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.txt", "tokenizer_config.json"):
            (folder / name).write_bytes((vocab_dir / name).read_bytes())
    return len((folder / "vocab.txt").read_text("utf-8").splitlines())


def make_tildev2(folder: Path, seed: int = 0, vocab_dir: Path | None = None) -> Path:
    """A tiny random TILDEv2 checkpoint saved in the official layout, with tokenizer files."""
    import torch
    from transformers import BertConfig

    from tilde.model import TildeV2

    vocab_size = tokenizer_files(folder, vocab_dir)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=256)
    torch.manual_seed(seed)
    model = TildeV2(cfg)
    with torch.no_grad():
        model.tok_proj.bias.fill_(0.1)  # most ReLU outputs > 0, so indexes are not empty
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tildev2(tmp_path_factory.mktemp("tiny-tildev2"))


@pytest.fixture()
def tiny_collection(tmp_path: Path) -> Path:
    rows = [
        ("10", "the cat sat on the road"),
        ("3", "dogs run in the park and play ball"),
        ("7", "how to read a book fast"),
        ("25", "fish swim in the river near the bank"),
        ("1", "neural search models rank passages"),
        ("8", "money in the bank"),
        ("40", "a big red car on a small road"),
        ("2", "the sun and the moon and the stars"),
        ("11", ""),
    ]
    path = tmp_path / "collection.tsv"
    path.write_text("".join(f"{pid}\t{text}\n" for pid, text in rows), encoding="utf-8")
    return path


def require_reference() -> Path:
    if not (REFERENCE / "expanded.jsonl").is_file():
        pytest.skip(f"reference data not found at {REFERENCE}")
    return REFERENCE


def make_mlm(folder: Path, seed: int = 0, vocab_dir: Path | None = None) -> Path:
    """A tiny random ``BertForMaskedLM`` (a splade-tiny stand-in) with tokenizer files."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    vocab_size = tokenizer_files(folder, vocab_dir)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=256)
    torch.manual_seed(seed)
    model = BertForMaskedLM(cfg)
    with torch.no_grad():  # a spread of positive and negative logits, as a trained MLM has
        model.cls.predictions.bias.normal_(0.0, 2.0)
    model.save_pretrained(folder)
    return folder


def make_bi_encoder(folder: Path, seed: int = 1, vocab_dir: Path | None = None) -> Path:
    """A tiny sentence-transformers folder: a random BertModel, mean pooling, Normalize."""
    import torch
    from transformers import BertConfig, BertModel

    vocab_size = tokenizer_files(folder, vocab_dir)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=256)
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 24, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}), encoding="utf-8")
    (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mlm(tmp_path_factory.mktemp("tiny-mlm"))


@pytest.fixture(scope="session")
def tiny_bi_encoder(tmp_path_factory: pytest.TempPathFactory, tiny_mlm: Path) -> Path:
    return make_bi_encoder(tmp_path_factory.mktemp("tiny-bi"), vocab_dir=tiny_mlm)


@pytest.fixture(scope="session")
def impact_index(tmp_path_factory: pytest.TempPathFactory, tiny_mlm: Path, tiny_bi_encoder: Path) -> Path:
    """A one-pass impact index of a small collection, with dense vectors and query encoders."""
    from tilde.index.impact import build_impact_index

    root = tmp_path_factory.mktemp("impact")
    rows = [
        ("10", "the cat sat on the road"), ("3", "dogs run in the park and play ball"),
        ("7", "how to read a book fast"), ("25", "fish swim in the river near the bank"),
        ("1", "neural search models rank passages"), ("8", "money in the bank"),
        ("40", "a big red car on a small road"), ("2", "the sun and the moon and the stars"),
    ]
    coll = root / "collection.tsv"
    coll.write_text("".join(f"{pid}\t{text}\n" for pid, text in rows), encoding="utf-8")
    build_impact_index(str(tiny_mlm), coll, root / "index", top_k=20, max_length=32, dense_model=str(tiny_bi_encoder),
                       scoring={"mode": "fused", "weights": {"mlm": 0.5, "dense": 0.4, "first_stage": 0.1}},
                       batch_size=3, chunk_batches=1, progress=False)
    return root / "index"
