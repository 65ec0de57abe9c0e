"""Helpers for the service tests (imported, not a pytest conftest): a tiny inline WordPiece vocab,
hand-weighted indexes written with the real writer, and a tiny TILDEv2 model from a BertConfig.
No shared data and no download."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tilde.index.format import Manifest
from tilde.index.writer import finalize
from tilde.text import TextProcessor

SPECIALS = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the", "a", "is", "of", "what", "how", "apple", "banana", "cherry", "date", "fig", "grape", "lemon",
    "mango", "melon", "olive", "peach", "pear", "plum", "tilde", "index", "rank", "passage", "query", "fast",
    "cpu", "weight", "token", "model", "search", "fruit", "tree", "red", "green", "yellow", "sweet", "sour",
    "##s", "##ing", "##ed", ".", ",", "?", "!",
]
VOCAB = SPECIALS + WORDS

# Hand-made postings: docid -> {word: weight}; weights are exact in float16.
PLAIN_DOCS: dict[str, dict[str, float]] = {
    "10": {"apple": 1.0, "banana": 0.5, "fruit": 0.25},
    "20": {"apple": 0.25, "cherry": 2.0},
    "30": {"banana": 1.5, "tree": 0.125},
    "40": {"cherry": 0.5, "fruit": 0.75, "red": 1.0},
    "50": {},
    "60": {"apple": 1.0, "banana": 0.5, "fruit": 0.25},  # ties with 10
    "70": {"tilde": 3.0, "rank": 1.0, "fast": 0.5},
}


def write_vocab(directory: Path) -> TextProcessor:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", "utf-8")
    return TextProcessor.load(directory)


def build_plain_index(out: Path, docs: Mapping[str, Mapping[str, float]] = PLAIN_DOCS) -> Path:
    """An index of hand-weighted postings, through the real writer (``finalize``)."""
    text = write_vocab(out.parent / (out.name + "-vocab"))
    index = {t: i for i, t in enumerate(VOCAB)}
    lengths, tokens, weights = [], [], []
    for postings in docs.values():
        items = sorted((index[w], v) for w, v in postings.items())
        lengths.append(len(items))
        tokens.extend(t for t, _ in items)
        weights.extend(v for _, v in items)
    chunk = {
        "docids": np.array(list(docs), dtype=np.str_),
        "lengths": np.array(lengths, dtype=np.int64),
        "tokens": np.array(tokens, dtype=np.uint32),
        "weights": np.array(weights, dtype=np.float16),
    }
    manifest = Manifest(vocab_size=text.vocab_size, vocab_sha256=text.vocab_hash, model="hand-made",
                        model_sha256="0" * 64)
    finalize([chunk], out, manifest, tokenizer=text.tokenizer)
    return out


def expected_score(query_words: list[str], postings: Mapping[str, float]) -> float:
    """Reference score: sum over query tokens (with repeats) of the stored weight."""
    return float(sum(postings.get(w, 0.0) for w in query_words))


def tiny_model(directory: Path) -> Path:
    """A randomly initialised TILDEv2 model over VOCAB, saved with its vocab (needs torch)."""
    import torch
    from transformers import BertConfig

    from tilde.model import TildeV2

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=256)
    model = TildeV2(config)
    with torch.no_grad():
        model.tok_proj.bias.fill_(0.1)  # most ReLU outputs > 0
    model.save_pretrained(str(directory))
    write_vocab(directory)
    return directory


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
