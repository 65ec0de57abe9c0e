"""Reading a finished tilde index for export: rows as (docid, token strings, weights).

The weights are the values the re-ranker scores with (``TildeIndex.weight_table`` of the stored
codes: float16 values, or ``q * scale`` rounded to float32 for uint8 indexes), so a score
computed from an export is the re-ranker's score, term for term. Token strings come from the
index's own ``tokenizer.json`` (the WordPiece vocabulary the weights belong to), checked against
the manifest's vocabulary hash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from tilde.index.format import IndexFormatError
from tilde.index.reader import TildeIndex
from tilde.text import TextProcessor

__all__ = ["ExportError", "ExportSource", "RowBlock"]


class ExportError(ValueError):
    """The export cannot be written: bad input index, bad option, or an existing output."""


@dataclass(frozen=True)
class RowBlock:
    """A block of consecutive rows in CSR form: row ``i`` of the block has postings
    ``tokens[offsets[i]:offsets[i+1]]`` (int64 ids) with ``weights`` (float32)."""

    start: int
    docids: list[str]
    offsets: np.ndarray
    tokens: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class ExportSource:
    index: TildeIndex
    text: TextProcessor

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ExportSource:
        index = TildeIndex.open(path)
        if not index.tokenizer_path.is_file():
            raise IndexFormatError(f"{index.path}: no tokenizer.json; the token strings of the weights are unknown")
        text = TextProcessor.load(index.tokenizer_path)
        index.check_tokenizer(text.vocab_hash, text.vocab_size, where=f"{index.tokenizer_path}")
        return cls(index, text)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def path(self) -> Path:
        return self.index.path

    @cached_property
    def vocab(self) -> list[str]:
        return self.text.vocab

    @cached_property
    def json_tokens(self) -> list[str]:
        """Every vocabulary entry as a JSON string literal (escaped once, not per posting)."""
        return [json.dumps(t, ensure_ascii=False) for t in self.vocab]

    def blocks(self, start: int = 0, stop: int | None = None, rows_per_block: int = 4096) -> Iterator[RowBlock]:
        """Rows ``[start, stop)`` in blocks; negative or non-finite weights are refused."""
        stop = len(self) if stop is None else stop
        table = self.index.weight_table
        for lo in range(start, stop, rows_per_block):
            hi = min(lo + rows_per_block, stop)
            offsets = np.asarray(self.index.offsets[lo:hi + 1], dtype=np.int64)
            a, b = int(offsets[0]), int(offsets[-1])
            tokens = np.asarray(self.index.tokens[a:b], dtype=np.int64)
            weights = table[np.asarray(self.index.weight_codes[a:b])]
            if weights.size and not (np.all(np.isfinite(weights)) and float(weights.min()) >= 0.0):
                raise ExportError(f"{self.path}: negative or non-finite weights in rows {lo}..{hi - 1}; "
                                  "run `tilde index verify`")
            yield RowBlock(lo, [self.index.docid(r) for r in range(lo, hi)], offsets - a, tokens, weights)

    def identity(self) -> dict[str, object]:
        """What an export records about its source."""
        m = self.index.manifest
        return {"path": str(self.path.resolve()), "model": m.model, "model_sha256": m.model_sha256,
                "vocab_sha256": m.vocab_sha256, "vocab_size": m.vocab_size, "num_passages": m.num_passages,
                "num_postings": m.num_postings, "weight_dtype": m.weight_dtype}
