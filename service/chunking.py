"""Long texts cut into passages: consecutive, non-overlapping windows of word pieces.

A document sent as text is scored like a passage of the index, and a passage is at most the
index's passage length (``window`` word pieces besides ``[CLS]`` and ``[SEP]``: 510 for the
default recipe). A longer text is cut, as Cohere's rerank documents it, into consecutive chunks
of at most ``window`` word pieces, each is encoded and scored as a passage, and the document gets
its best chunk's score. Chunks do not overlap: Cohere's don't, and an overlap would spend the
token budget twice on the same words for a gain nobody measured here.

- ``max_tokens`` (Cohere v2's ``max_tokens_per_doc``): the document is truncated to its first
  ``max_tokens`` word pieces before it is cut;
- ``max_chunks`` (Cohere v1's ``max_chunks_per_doc``): at most that many chunks; the rest of a
  longer text is dropped (``truncated``).

A cut falls between two words where it can: a window that would end inside a word ends before
it, so every chunk is a substring of the text that tokenizes back to the same word pieces (only a
single word longer than the window is cut inside). A text that fits one window is its own chunk,
unchanged, so it encodes exactly as its indexed copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Chunked", "chunk_text", "windows"]


@dataclass(frozen=True)
class Chunked:
    """One document's chunks (texts to encode as passages) and what was kept of it."""

    texts: tuple[str, ...]
    pieces: tuple[int, ...]  # word pieces per chunk (the model input adds [CLS] and [SEP])
    total: int  # word pieces of the whole text
    truncated: bool  # some of the text is in no chunk

    @property
    def tokens(self) -> int:
        """Model input tokens the chunks cost (what the encode budget counts)."""
        return sum(self.pieces) + 2 * len(self.pieces)


def windows(
    starts_word: list[bool], window: int, max_chunks: int, max_tokens: int | None = None
) -> list[tuple[int, int]]:
    """``[start, end)`` word-piece spans of the chunks of a text whose pieces are flagged
    ``starts_word`` (True where a piece begins a word). Consecutive, non-overlapping, at most
    ``window`` pieces each and ``max_chunks`` in all; a span ends before a word that would not fit
    unless that word alone is longer than the window."""
    if window < 1 or max_chunks < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError("window, max_chunks and max_tokens must be >= 1")
    n = len(starts_word) if max_tokens is None else min(len(starts_word), max_tokens)
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n and len(spans) < max_chunks:
        end = min(start + window, n)
        if end < n and not starts_word[end]:
            back = end
            while back > start and not starts_word[back]:
                back -= 1
            if back > start:  # else one word fills the window: cut inside it
                end = back
        spans.append((start, end))
        start = end
    return spans


def chunk_text(text: str, encoding: Any, window: int, max_chunks: int, max_tokens: int | None = None) -> Chunked:
    """The chunks of ``text``, given its tokenizer ``encoding`` (a ``tokenizers.Encoding``
    without special tokens: its ``word_ids`` and character ``offsets``)."""
    total = len(encoding.ids)
    limit = total if max_tokens is None else min(total, max_tokens)
    if limit == total and total <= window:
        return Chunked((text,), (total,), total, False)
    words = encoding.word_ids
    starts = [i == 0 or words[i] is None or words[i] != words[i - 1] for i in range(total)]
    spans = windows(starts, window, max_chunks, max_tokens)
    offsets = encoding.offsets
    texts = tuple(text[offsets[a][0] : offsets[b - 1][1]] for a, b in spans)
    kept = spans[-1][1] if spans else 0
    return Chunked(texts, tuple(b - a for a, b in spans), total, kept < total)
