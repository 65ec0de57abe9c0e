"""Ranking one request's candidates, stage by stage, over the pieces of ``tilde.rank``.

The fast path (``ids``) is the ``Reranker``'s own sequence (tokenize, lookup, score, sort) with a
metered lap per stage; documents add on-the-fly encoding for texts that are not in the index.
Semantics are the Reranker's: ties keep input order, unknown ids follow the missing policy
("error" → 422, "skip" → left out, "zero" → appended with score 0) and are always reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.encoder import TextEncoder
from service.errors import ApiError
from service.limits import Deadline
from service.schemas import DocId, Ranked, RerankRequest
from tilde.metering import Recorder
from tilde.rank import Reranker, UnknownDocidError

__all__ = ["EncodeBudget", "Engine", "StageClock"]


class StageClock:
    """Laps of one request: each stage's wall time and meter energy, recorded through the
    service's :class:`Recorder` (aggregates, hooks, Prometheus) and kept for ``meta`` and
    ``Server-Timing``. A stage lapped several times (a batch) accumulates."""

    __slots__ = ("_e", "_e0", "_read", "_rec", "_t", "_t0", "deadline", "joules", "timing")

    def __init__(self, recorder: Recorder, deadline: Deadline | None = None) -> None:
        self.deadline = deadline  # checked after every lap: past it, a JSON 503
        self._rec = recorder
        self._read = recorder.meter.read
        self._e0 = self._e = self._read()
        self._t0 = self._t = time.perf_counter()
        self.timing: dict[str, float] = {}
        self.joules = 0.0

    def lap(self, stage: str, items: int = 1) -> None:
        t = time.perf_counter()
        e = self._read()
        seconds = t - self._t
        self._rec.record(stage, seconds, max(0.0, e - self._e), items)
        self.timing[stage] = self.timing.get(stage, 0.0) + seconds * 1e3
        # The next stage starts after this bookkeeping: stages time their own work, and the
        # metering overhead shows as the difference between "total" and the sum of the stages.
        self._e = self._read()
        self._t = time.perf_counter()
        if self.deadline is not None:
            self.deadline.check(stage)

    def finish(self, items: int) -> None:
        """Record the whole handler span as stage "request"; sets ``timing["total"]`` and ``joules``."""
        t = time.perf_counter()
        e = self._read()
        self.joules = max(0.0, e - self._e0)
        self._rec.record("request", t - self._t0, self.joules, items)
        self.timing["total"] = (t - self._t0) * 1e3

    def server_timing(self) -> str:
        return ", ".join(f"{k};dur={v:.3f}" for k, v in self.timing.items())


@dataclass
class EncodeBudget:
    """Texts a request may still have encoded on the fly (shared by a batch's queries)."""

    limit: int
    left: int = -1

    def __post_init__(self) -> None:
        if self.left < 0:
            self.left = self.limit


def _unknown_message(ids: list[str], hint: str) -> str:
    return f"{UnknownDocidError(ids)}{hint}"


class Engine:
    def __init__(self, reranker: Reranker, encoder: TextEncoder | None) -> None:
        self.reranker = reranker
        self.encoder = encoder

    def query_ids(self, query: str, where: str = "") -> np.ndarray:
        try:
            return self.reranker.text.query_ids(query)
        except (TypeError, ValueError) as exc:
            raise ApiError(422, f"{where}{exc}", "invalid") from None

    def rank(self, req: RerankRequest, policy: str, clock: StageClock, budget: EncodeBudget, where: str = "",
             q: np.ndarray | None = None) -> Ranked:
        """Rank one query's candidates; ``q``: its token ids when already tokenized (budget check)."""
        index = self.reranker.index
        if q is None:
            q = self.query_ids(req.query, where)
            clock.lap("tokenize")
        n = len(req)
        docs = req.documents
        ids: list[DocId | None]
        if req.ids is not None:
            ids = req.ids  # type: ignore[assignment]
            rows = index.lookup(req.ids)
        else:
            assert docs is not None
            ids = [d.id for d in docs]
            keyed = [i for i, d in enumerate(ids) if d is not None]
            rows = np.full(n, -1, dtype=np.int64)
            if keyed:
                rows[keyed] = index.lookup([ids[i] for i in keyed])  # type: ignore[misc]
        clock.lap("lookup", n)
        scores = self.reranker.score_ids(q, rows)
        clock.lap("score", n)
        expansion = None
        if self.reranker.feedback is not None:
            # Feedback passages come from the indexed candidates; texts encoded below are scored
            # with the same expanded query.
            expansion = self.reranker.expand(q, rows, scores, self.reranker.feedback)
            clock.lap("feedback", n)
        unknown = rows < 0
        missing: list[dict[str, Any]] = []
        encoded: list[dict[str, Any]] = []
        if unknown.any():
            missing, encoded = self._resolve(q, req, ids, unknown, scores, policy, clock, budget, where, expansion)
        if missing:
            known_pos = np.flatnonzero(~unknown)
            order = known_pos[np.argsort(-scores[known_pos], kind="stable")]
            if policy == "zero":
                order = np.concatenate([order, np.flatnonzero(unknown)])
        else:
            order = np.argsort(-scores, kind="stable")
        if req.top_n is not None:
            order = order[: req.top_n]
        added = 0 if expansion is None else int(expansion[0].size)
        ranked = Ranked(order, scores[order], missing, encoded, int(q.size), added)
        clock.lap("sort", n)
        return ranked

    def _resolve(
        self,
        q: np.ndarray,
        req: RerankRequest,
        ids: list[DocId | None],
        unknown: np.ndarray,
        scores: np.ndarray,
        policy: str,
        clock: StageClock,
        budget: EncodeBudget,
        where: str,
        expansion: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Encode texts not in the index (updates ``scores`` and ``unknown`` in place) and report
        the rest as missing, or raise under the "error" policy."""
        docs = req.documents
        encoded: list[dict[str, Any]] = []
        positions = np.flatnonzero(unknown).tolist()
        with_text = [i for i in positions if docs is not None and docs[i].text is not None]
        if with_text and self.encoder is not None:
            if len(with_text) > budget.left:
                raise ApiError(
                    422,
                    f"{where}{len(with_text)} documents are not in the index and would need encoding; a request may "
                    f"have at most {budget.limit} encoded ({budget.left} left; max_encode in /info). "
                    f"Send index ids, or fewer texts.",
                    "too_many_texts",
                )
            budget.left -= len(with_text)
            assert docs is not None
            scores[with_text] = self.encoder.score(q, [docs[i].text or "" for i in with_text], expansion)
            unknown[with_text] = False
            encoded = [{"index": i, "id": ids[i]} for i in with_text]
            clock.lap("encode", len(with_text))
            text_set = set(with_text)
            positions = [i for i in positions if i not in text_set]
        if not positions:
            return [], encoded
        has_text = set(with_text)
        missing = [
            {"index": i, "id": ids[i], "reason": "no_model" if i in has_text else "not_in_index"} for i in positions
        ]
        if policy == "error":
            no_model = sum(1 for m in missing if m["reason"] == "no_model")
            hint = (
                f" ({no_model} of them carry text, but this service has no model to encode it: start it with --model)"
                if no_model
                else ""
            )
            shown = [str(ids[i]) if ids[i] is not None else f"documents[{i}]" for i in positions]
            raise ApiError(
                422,
                where + _unknown_message(shown, hint) + '. Send "missing": "skip" or "zero" to rank the others.',
                "unknown_ids",
            )
        return missing, encoded
