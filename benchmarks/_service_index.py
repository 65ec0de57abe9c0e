"""A synthetic TILDEv2 index for service benchmarks: N passages of ~110 postings over a generated
WordPiece vocabulary, written with the real writer (``finalize``) so the reader and service open
it exactly like a built one. No model, no download: the weights are random float16 values.

    python benchmarks/_service_index.py OUT_DIR [--passages 1000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tilde.index.format import MANIFEST, Manifest
from tilde.index.writer import finalize
from tilde.text import TextProcessor

__all__ = ["build_synthetic_index", "query_words", "write_vocab"]

SPECIALS = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_SIZE = 30522
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(i: int) -> str:
    # Distinct lowercase alphabetic words ("ba", "ca", ... "baa", ...): plain word pieces that the
    # BERT normaliser leaves alone, and none is an NLTK stopword (all start with a consonant pair).
    letters = []
    i += 27 * 27  # skip short forms such as "a", "i", "an" that could be stopwords
    while i:
        i, r = divmod(i, 26)
        letters.append(_LETTERS[r])
    return "zq" + "".join(reversed(letters))


def vocab_words(size: int = VOCAB_SIZE) -> list[str]:
    return [*SPECIALS, *(_word(i) for i in range(size - len(SPECIALS)))]


def write_vocab(directory: Path, size: int = VOCAB_SIZE) -> TextProcessor:
    """Write ``vocab.txt`` (BERT WordPiece) into ``directory`` and load it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab_words(size)) + "\n", "utf-8")
    return TextProcessor.load(directory)


def query_words(n: int, seed: int = 1, words_per_query: int = 5) -> list[str]:
    """Queries made of frequent (low-rank) vocabulary words, so they hit many passages."""
    rng = np.random.default_rng(seed)
    words = vocab_words()[len(SPECIALS) :]
    out = []
    for _ in range(n):
        picks = np.minimum(rng.zipf(1.3, size=words_per_query) - 1, len(words) - 1)
        out.append(" ".join(words[int(p)] for p in picks))
    return out


def _chunk(rng: np.random.Generator, start: int, n: int, vocab: int, mean_len: int) -> dict[str, np.ndarray]:
    first = len(SPECIALS)
    lengths = rng.integers(mean_len // 2, mean_len * 3 // 2 + 1, size=n)
    total = int(lengths.sum())
    # Zipf-like token frequencies (as in text), by inverse CDF (rng.zipf is slow), then sort and
    # de-duplicate within each row.
    ranks = np.arange(vocab - first, dtype=np.float64)
    cdf = np.cumsum(1.0 / (ranks + 20.0))
    cdf /= cdf[-1]
    toks = first + np.searchsorted(cdf, rng.random(total))
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    keys = rows * 65536 + toks
    keys.sort()
    keep = np.ones(keys.size, dtype=np.bool_)
    keep[1:] = keys[1:] != keys[:-1]
    keys = keys[keep]
    tokens = (keys & 0xFFFF).astype(np.uint32)
    new_lengths = np.bincount(keys >> 16, minlength=n).astype(np.int64)
    weights = (rng.standard_exponential(tokens.size, dtype=np.float32) * 0.3).astype(np.float16)
    docids = np.arange(start, start + n).astype(str)
    return {"docids": docids, "lengths": new_lengths, "tokens": tokens, "weights": weights}


def build_synthetic_index(out: Path, passages: int = 1_000_000, mean_len: int = 117, seed: int = 0) -> Path:
    """Build (or reuse, when a matching one exists) a synthetic index in ``out``."""
    out = Path(out)
    stamp = out / "synthetic.json"
    want = {"passages": passages, "mean_len": mean_len, "seed": seed, "version": 2}
    if (out / MANIFEST).is_file() and stamp.is_file() and json.loads(stamp.read_text()) == want:
        return out
    t0 = time.perf_counter()
    text = write_vocab(out / "vocab")
    rng = np.random.default_rng(seed)
    step = 100_000
    chunks = [_chunk(rng, s, min(step, passages - s), text.vocab_size, mean_len) for s in range(0, passages, step)]
    manifest = Manifest(vocab_size=text.vocab_size, vocab_sha256=text.vocab_hash,
                        model="synthetic-random-weights", model_sha256="0" * 64)
    final = finalize(chunks, out, manifest, tokenizer=text.tokenizer)
    stamp.write_text(json.dumps(want))
    print(f"built synthetic index {out}: {final.num_passages} passages, {final.num_postings} postings "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--passages", type=int, default=1_000_000)
    args = ap.parse_args()
    build_synthetic_index(Path(args.out), args.passages)


if __name__ == "__main__":
    main()
