"""Test helpers: synthetic indexes written through the real writer, and the naive reference
scorer (dict of token -> list of weights, max-pooled at query time, summed over
non-deduplicated query tokens) that the fast path must equal."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tilde.index.format import Manifest
from tilde.index.writer import finalize

VOCAB = 30522


def manifest(vocab_size: int = VOCAB, vocab_sha256: str = "v" * 64) -> Manifest:
    return Manifest(vocab_size=vocab_size, vocab_sha256=vocab_sha256, model="synthetic", model_sha256="m" * 64)


def random_passages(n: int, seed: int = 0, vocab: int = 200, max_len: int = 40) -> list[tuple[np.ndarray, np.ndarray]]:
    """Raw per-position (ids, weights) with repeats, as a model would emit them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(0, max_len))
        ids = rng.integers(0, vocab, size=k)
        w = rng.random(k).astype(np.float32)
        w[rng.random(k) < 0.1] = 0.0
        out.append((ids, w))
    return out


def write_index(out: Path, docids: Sequence[str], postings: Sequence[tuple[np.ndarray, np.ndarray]],
                weight_dtype: str = "float16", vocab_size: int = VOCAB, vocab_sha256: str = "v" * 64,
                tokenizer: object | None = None) -> Manifest:
    """postings must already be pooled (sorted unique ids, float16 weights). With a
    ``tokenizers.Tokenizer``, it is stored with the index (as the build job does)."""
    chunk = {
        "docids": np.array(list(docids), dtype=np.str_),
        "lengths": np.array([len(t) for t, _ in postings], dtype=np.int64),
        "tokens": np.concatenate([t for t, _ in postings]).astype(np.uint32) if postings else np.zeros(0, np.uint32),
        "weights": np.concatenate([w for _, w in postings]).astype(np.float16) if postings else np.zeros(0, np.float16),
    }
    return finalize([chunk], out, manifest(vocab_size, vocab_sha256), weight_dtype=weight_dtype, tokenizer=tokenizer)


def naive_scores(raw: dict[str, tuple[np.ndarray, np.ndarray]], stop: set[int], query_ids: Sequence[int],
                 candidates: Sequence[str]) -> list[float]:
    """The reference algorithm: store every (token, float16 weight) occurrence, max-pool per query
    token at query time, sum in float64 over the (non-deduplicated) query tokens."""
    scores = []
    for docid in candidates:
        ids, w = raw[docid]
        table: dict[int, list[float]] = {}
        for t, x in zip(ids.tolist(), w.astype(np.float16).tolist()):
            if t not in stop:
                table.setdefault(t, []).append(float(x))
        scores.append(sum(max(table[q]) if q in table else 0.0 for q in query_ids))
    return scores


def lucene_available() -> bool:
    """Whether Java and the Anserini jar (the pyserini wheel's) are here for the Lucene tests."""
    from tilde.first_stage.lucene import LuceneUnavailable, find_anserini_jar, find_java

    try:
        find_anserini_jar()
        find_java()
    except LuceneUnavailable:
        return False
    return True


def write_beir_folder(d: Path) -> Path:
    """A four-document BEIR folder (corpus.jsonl, queries.test.tsv, qrels.test.trec) at ``d``."""
    import json

    d.mkdir(parents=True, exist_ok=True)
    docs = [("d1", "Cats", "the cat sat on the road"), ("d2", "Banks", "money in the bank"),
            ("d3", "", "fish in the river near the bank"), ("d4", "Music", "song and music")]
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs))
    (d / "queries.test.tsv").write_text("q1\tcat road\nq2\tbank money\nq3\tmusic\n")
    (d / "qrels.test.trec").write_text("q1 0 d1 1\nq2 0 d2 1\nq3 0 d4 1\n")
    return d
