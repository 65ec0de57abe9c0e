"""``Reranker``: query text + candidate docids -> TILDEv2 scores, sorted.

Needs only numpy, numba and ``tokenizers``: no torch, no transformers on the query path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tilde.index.reader import TildeIndex
from tilde.rank.kernel import prepare_query, score_rows
from tilde.text import TextProcessor

if TYPE_CHECKING:
    from tilde.metering import Recorder

logger = logging.getLogger(__name__)

__all__ = ["MISSING_POLICIES", "RerankResult", "Reranker", "ScoredDoc", "UnknownDocidError"]

MISSING_POLICIES = ("error", "skip", "zero")


class UnknownDocidError(KeyError):
    """Candidate ids that are not in the index, under the "error" policy."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = list(missing)
        shown = ", ".join(repr(m) for m in self.missing[:10])
        more = f" and {len(self.missing) - 10} more" if len(self.missing) > 10 else ""
        super().__init__(f"{len(self.missing)} candidate id(s) not in the index: {shown}{more}")

    def __str__(self) -> str:
        return str(self.args[0])


class ScoredDoc(NamedTuple):
    index: int  # type: ignore[assignment]  # position in the caller's list (shadows tuple.index, as Cohere names it)
    docid: str
    score: float


@dataclass(frozen=True)
class RerankResult:
    """Scores sorted best first. ``order`` holds positions into the candidate list; ties keep
    the candidates' input order. ``missing`` lists ids not in the index (policy "skip" leaves
    them out, "zero" puts them last with score 0)."""

    candidates: Sequence[str | int]
    order: np.ndarray
    scores: np.ndarray
    missing: tuple[str, ...]
    query_tokens: int
    timing_ms: dict[str, float] = field(default_factory=dict)

    @property
    def results(self) -> list[ScoredDoc]:
        c = self.candidates
        return [ScoredDoc(int(i), str(c[i]), float(s)) for i, s in zip(self.order.tolist(), self.scores.tolist())]

    def __len__(self) -> int:
        return int(self.order.size)


class Reranker:
    """TILDEv2 re-ranking over a memory-mapped index.

    >>> rr = Reranker.load("index_dir")
    >>> rr.rerank("what is a tilde", ["7", "3", "12"], top_n=2).results
    """

    def __init__(
        self,
        index: TildeIndex,
        text: TextProcessor,
        missing: str = "error",
        recorder: Recorder | None = None,
    ) -> None:
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, not {missing!r}")
        index.check_tokenizer(text.vocab_hash, text.vocab_size)
        self.index = index
        self.text = text
        self.missing = missing
        self.recorder = recorder
        # Bind the arrays once: attribute lookups through the dataclass cost more than the kernel
        # on small candidate lists.
        self._arrays = (index.offsets, index.tokens, index.weight_codes, index.weight_table)

    @classmethod
    def load(
        cls,
        index_dir: str | os.PathLike[str],
        tokenizer: str | os.PathLike[str] | None = None,
        missing: str = "error",
        recorder: Recorder | None = None,
    ) -> Reranker:
        """Open an index; the tokenizer defaults to the one stored with it."""
        index = TildeIndex.open(index_dir)
        text = TextProcessor.load(tokenizer if tokenizer is not None else index.tokenizer_path)
        return cls(index, text, missing=missing, recorder=recorder)

    def warmup(self, prefault: bool = False) -> None:
        """Compile the kernel and run one query, so the first request is not slow. With
        ``prefault``, also map every page of the index (see :meth:`TildeIndex.prefault`)."""
        if prefault:
            self.index.prefault()
        if len(self.index):
            self.rerank("warmup", [self.index.docid(0)], missing="skip")

    def score_ids(self, query_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        q, counts = prepare_query(query_ids)
        return score_rows(*self._arrays, np.ascontiguousarray(rows, dtype=np.int64), q, counts)

    def rerank(
        self,
        query: str,
        candidates: Sequence[str | int],
        top_n: int | None = None,
        missing: str | None = None,
    ) -> RerankResult:
        """Score ``candidates`` (index docids) for ``query`` and sort them, best first."""
        policy = self.missing if missing is None else missing
        if policy not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, not {policy!r}")
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query is empty")
        if top_n is not None and top_n < 0:
            raise ValueError(f"top_n must be >= 0, not {top_n}")
        rec = self.recorder
        t0 = time.perf_counter()
        with rec.measure("tokenize") if rec is not None else nullcontext():
            q = self.text.query_ids(query)
        t1 = time.perf_counter()
        with rec.measure("score", items=len(candidates)) if rec is not None else nullcontext():
            rows = self.index.lookup(candidates)
            t2 = time.perf_counter()
            scores = self.score_ids(q, rows)
            t3 = time.perf_counter()
            unknown = rows < 0
            missing_ids: tuple[str, ...] = ()
            if unknown.any():
                missing_pos = np.flatnonzero(unknown)
                missing_ids = tuple(str(candidates[i]) for i in missing_pos.tolist())
                if policy == "error":
                    raise UnknownDocidError(missing_ids)
                known_pos = np.flatnonzero(~unknown)
                order = known_pos[np.argsort(-scores[known_pos], kind="stable")]
                if policy == "zero":
                    order = np.concatenate([order, missing_pos])
            else:
                order = np.argsort(-scores, kind="stable")
            if top_n is not None:
                order = order[:top_n]
        t4 = time.perf_counter()
        timing = {
            "tokenize": (t1 - t0) * 1e3,
            "lookup": (t2 - t1) * 1e3,
            "score": (t3 - t2) * 1e3,
            "sort": (t4 - t3) * 1e3,
        }
        return RerankResult(candidates, order, scores[order], missing_ids, int(q.size), timing)

    def rerank_batch(
        self,
        requests: Iterable[tuple[str, Sequence[str | int]]],
        top_n: int | None = None,
        missing: str | None = None,
    ) -> list[RerankResult]:
        """Re-rank many (query, candidates) pairs; one result per pair, in order."""
        return [self.rerank(query, cands, top_n=top_n, missing=missing) for query, cands in requests]
