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

from tilde.index.format import IndexFormatError
from tilde.index.reader import TildeIndex
from tilde.rank.feedback import Feedback, feedback_terms
from tilde.rank.kernel import prepare_query, score_rows, score_rows_dense
from tilde.text import TextProcessor

if TYPE_CHECKING:
    from tilde.metering import Recorder

logger = logging.getLogger(__name__)

__all__ = ["MISSING_POLICIES", "RerankResult", "Reranker", "ScoredDoc", "UnknownDocidError"]

MISSING_POLICIES = ("error", "skip", "zero")
INDEX_DEFAULT = "index"  # feedback as the index manifest recommends (its model's tilde_feedback)


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
    feedback_terms: int = 0  # expansion tokens pseudo-relevance feedback added (0: plain TILDEv2)

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
        feedback: Feedback | str | None = INDEX_DEFAULT,
    ) -> None:
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, not {missing!r}")
        index.check_tokenizer(text.vocab_hash, text.vocab_size)
        self.index = index
        self.text = text
        self.missing = missing
        self.recorder = recorder
        self.feedback = self._feedback(feedback)
        # Bind the arrays once: attribute lookups through the dataclass cost more than the kernel
        # on small candidate lists.
        self._arrays = (index.offsets, index.tokens, index.weight_codes, index.weight_table)
        self._vocab = int(index.manifest.vocab_size)

    @classmethod
    def load(
        cls,
        index_dir: str | os.PathLike[str],
        tokenizer: str | os.PathLike[str] | None = None,
        missing: str = "error",
        recorder: Recorder | None = None,
        feedback: Feedback | str | None = INDEX_DEFAULT,
    ) -> Reranker:
        """Open an index; the tokenizer defaults to the one stored with it. ``feedback``:
        ``"index"`` (default) = what the index's model recommends (none for reference models),
        None = plain TILDEv2 scoring, or a :class:`Feedback`."""
        index = TildeIndex.open(index_dir)
        if tokenizer is None:
            if not index.tokenizer_path.is_file():
                raise IndexFormatError(f"{index.tokenizer_path}: missing; the index stores no tokenizer (pass one)")
            try:
                text = TextProcessor.load(index.tokenizer_path)
            except Exception as exc:  # tokenizers raises its own exception type for a damaged file
                first = str(exc).splitlines()[0] if str(exc) else repr(exc)
                raise IndexFormatError(
                    f"{index.tokenizer_path}: not a loadable tokenizer ({first}); the index is damaged"
                ) from None
        else:
            text = TextProcessor.load(tokenizer)
        return cls(index, text, missing=missing, recorder=recorder, feedback=feedback)

    def with_feedback(self, feedback: Feedback | str | None) -> Reranker:
        """A re-ranker over the same mapped index and tokenizer with another feedback setting
        (e.g. None, to report plain TILDEv2 next to the model's recommended scoring)."""
        return Reranker(self.index, self.text, missing=self.missing, recorder=self.recorder, feedback=feedback)

    def _feedback(self, feedback: Feedback | str | None) -> Feedback | None:
        if feedback is None or isinstance(feedback, Feedback):
            return feedback
        if feedback == INDEX_DEFAULT:
            rec = self.index.manifest.feedback
            return Feedback.from_dict(rec, where=f"{self.index.path}: manifest feedback") if rec else None
        raise ValueError(f"feedback must be a Feedback, None or {INDEX_DEFAULT!r}, not {feedback!r}")

    def warmup(self, prefault: bool = False) -> None:
        """Compile the kernel and run one query, so the first request is not slow. With
        ``prefault``, also map every page of the index (see :meth:`TildeIndex.prefault`)."""
        if prefault:
            self.index.prefault()
        if len(self.index):
            self.rerank("warmup", [self.index.docid(0)], missing="skip")
            if self.feedback is not None:  # compile the feedback pass too ("warmup" may match nothing)
                offsets, tokens, codes, table = self._arrays
                vocab = int(self.index.manifest.vocab_size)
                none = np.zeros(0, np.int64)
                feedback_terms(offsets, tokens, codes, table, np.zeros(1, np.int64), np.ones(1), none, 1, 1.0, vocab)
                score_rows_dense(offsets, tokens, codes, table, none, none, np.zeros(0), vocab)

    def score_ids(self, query_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Plain TILDEv2 scores of index ``rows`` (-1: 0.0). A damaged index raises
        :class:`IndexFormatError` naming the file (the kernel refuses; it never reads out of bounds)."""
        q, counts = prepare_query(query_ids)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        try:
            return score_rows(*self._arrays, rows, q, counts, self._vocab)
        except ValueError as exc:
            raise self.index.damage(rows, str(exc)) from None

    def rerank(
        self,
        query: str,
        candidates: Sequence[str | int],
        top_n: int | None = None,
        missing: str | None = None,
        feedback: Feedback | str | None = "reranker",
    ) -> RerankResult:
        """Score ``candidates`` (index docids) for ``query`` and sort them, best first.
        ``feedback`` overrides the re-ranker's setting for this call (None: off)."""
        fb = self.feedback if feedback == "reranker" else self._feedback(feedback)
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
            added = 0
            if fb is not None:
                added = int(self.expand(q, rows, scores, fb)[0].size)
            t3b = time.perf_counter()
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
            "sort": (t4 - t3b) * 1e3,
        }
        if fb is not None:
            timing["feedback"] = (t3b - t3) * 1e3
        return RerankResult(candidates, order, scores[order], missing_ids, int(q.size), timing, added)

    def expand(
        self, q: np.ndarray, rows: np.ndarray, scores: np.ndarray, fb: Feedback
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pseudo-relevance feedback (:mod:`tilde.rank.feedback`): the expansion tokens (ids,
        weights) drawn from the best ``fb.docs`` indexed candidates (``rows`` >= 0) by their
        first-pass ``scores``; their weighted matches are added to ``scores`` in place."""
        none = (np.empty(0, np.int64), np.empty(0, np.float64))
        known = np.flatnonzero(rows >= 0)
        if known.size < 2 * fb.docs or q.size == 0:
            # Feeding back most of a short list would only re-weight each passage by its own terms.
            return none
        best = known[np.argsort(-scores[known], kind="stable")[: fb.docs]]
        best = best[scores[best] > 0]  # a passage matching no query token says nothing about it
        if best.size == 0:
            return none
        offsets, tokens, codes, table = self._arrays
        fb_rows = np.ascontiguousarray(rows[best], dtype=np.int64)
        try:
            ids, weights = feedback_terms(
                offsets,
                tokens,
                codes,
                table,
                fb_rows,
                np.ascontiguousarray(scores[best], dtype=np.float64),
                np.unique(q.astype(np.int64)),
                fb.terms,
                float(fb.weight),
                self._vocab,
            )
        except ValueError as exc:
            raise self.index.damage(fb_rows, str(exc)) from None
        if ids.size:
            rows64 = np.ascontiguousarray(rows, dtype=np.int64)
            try:
                scores += score_rows_dense(*self._arrays, rows64, ids, weights, self._vocab)
            except ValueError as exc:
                raise self.index.damage(rows64, str(exc)) from None
        return ids, weights

    def rerank_batch(
        self,
        requests: Iterable[tuple[str, Sequence[str | int]]],
        top_n: int | None = None,
        missing: str | None = None,
        feedback: Feedback | str | None = "reranker",
    ) -> list[RerankResult]:
        """Re-rank many (query, candidates) pairs; one result per pair, in order."""
        return [
            self.rerank(query, cands, top_n=top_n, missing=missing, feedback=feedback) for query, cands in requests
        ]
