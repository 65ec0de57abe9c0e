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

from tilde.index.format import IndexFormatError
from tilde.metering import Recorder
from tilde.rank import Reranker, UnknownDocidError
from tilde.rank.texts import EncodedTexts

from .encoder import TextEncoder
from .errors import ApiError
from .limits import Deadline
from .schemas import DocId, Ranked, RerankRequest

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
        """The query's token ids; a query the tokenizer refuses is the client's error (422)."""
        try:
            return self.reranker.text.query_ids(query)
        except (TypeError, ValueError) as exc:
            raise ApiError(422, f"{where}{exc}", "invalid") from None

    def query_encodes(self, mode: str | None) -> int:
        """Query-encoder passes one query costs in ``mode`` (0 for token scoring; a malformed
        mode is 0 here and refused when ranked)."""
        try:
            signals = self.reranker._scoring(mode).signals
        except ValueError:
            return 0
        return sum(kind in signals for kind in ("mlm", "dense"))

    def rank(
        self, req: RerankRequest, policy: str, clock: StageClock, budget: EncodeBudget, where: str = "",
        mode: str | None = None, first_stage: np.ndarray | None = None, q: np.ndarray | None = None,
        max_tokens_per_doc: int | None = None, max_chunks_per_doc: int | None = None,
    ) -> Ranked:
        """Rank one query's candidates; ``q``: its token ids when the caller already tokenized it
        (the budget check), else it is tokenized (and checked) here. ``max_tokens_per_doc`` /
        ``max_chunks_per_doc``: how texts encoded on the fly are cut into chunks (Cohere's
        request fields; None: the service's defaults)."""
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
        unknown = rows < 0
        texts, text_pos, encoded = self._encode(req, ids, unknown, clock, budget, where)
        if text_pos.size:
            unknown[text_pos] = False
        try:
            scored = self.reranker.score(req.query, rows, mode=mode, first_stage=first_stage, texts=texts,
                                         text_positions=text_pos, query_ids=q)
        except IndexFormatError as exc:  # a mode this index cannot serve (no dense part, no query encoder)
            raise ApiError(422, f"{where}{exc}", "unsupported_mode") from None
        except ValueError as exc:  # a malformed mode
            raise ApiError(422, f"{where}{exc}", "invalid") from None
        clock.lap("score", n)
        if "encode" in scored.timing_ms:  # the query encoders' share of "score"
            clock.timing["query_encode"] = scored.timing_ms["encode"]
        scores = scored.scores
        missing: list[dict[str, Any]] = []
        if unknown.any():
            missing = self._missing(req, ids, unknown, policy, where)
        if missing:
            known_pos = np.flatnonzero(~unknown)
            order = known_pos[np.argsort(-scores[known_pos], kind="stable")]
            if policy == "zero":
                order = np.concatenate([order, np.flatnonzero(unknown)])
        else:
            order = np.argsort(-scores, kind="stable")
        if req.top_n is not None:
            order = order[: req.top_n]
        ranked = Ranked(order, scores[order], missing, encoded, scored.query_tokens, scored.feedback_terms,
                        str(self.reranker.scoring if mode is None else self.reranker._scoring(mode)),
                        scored.signals)
        clock.lap("sort", n)
        return ranked

    def _encode(
        self, req: RerankRequest, ids: list[DocId | None], unknown: np.ndarray, clock: StageClock,
        budget: EncodeBudget, where: str,
    ) -> tuple[EncodedTexts | None, np.ndarray, list[dict[str, Any]]]:
        """Encode the documents that carry text and are not in the index (within the budget)."""
        docs = req.documents
        none = np.zeros(0, dtype=np.int64)
        if docs is None or self.encoder is None or not unknown.any():
            return None, none, []
        with_text = [i for i in np.flatnonzero(unknown).tolist() if docs[i].text is not None]
        if not with_text:
            return None, none, []
        if len(with_text) > budget.left:
            raise ApiError(
                422,
                f"{where}{len(with_text)} documents are not in the index and would need encoding; a request may "
                f"have at most {budget.limit} encoded ({budget.left} left; max_encode in /info). "
                f"Send index ids, or fewer texts.",
                "too_many_texts",
            )
        budget.left -= len(with_text)
        texts = self.encoder.encode([docs[i].text or "" for i in with_text])
        clock.lap("encode", len(with_text))
        return texts, np.asarray(with_text, dtype=np.int64), [{"index": i, "id": ids[i]} for i in with_text]

    def _missing(
        self, req: RerankRequest, ids: list[DocId | None], unknown: np.ndarray, policy: str, where: str
    ) -> list[dict[str, Any]]:
        """Report the candidates that are neither in the index nor encoded, or raise under "error"."""
        docs = req.documents
        positions = np.flatnonzero(unknown).tolist()
        has_text = {i for i in positions if docs is not None and docs[i].text is not None}
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
        return missing
