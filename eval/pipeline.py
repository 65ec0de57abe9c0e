"""Timed, metered first stage and re-ranking over a whole query set.

Every evaluation reports where a query's time goes -- first stage, tokenise, lookup, score,
sort -- per query, with the energy meter's method stated (RAPL where readable, else a labelled
CPU-time estimate; see :mod:`tilde.metering`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tilde.metering import Recorder, default_meter, percentile

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "StageTimes", "add_mode_argument", "available_modes", "first_stage", "new_recorder", "rerank_run"]

#: Per-query stages, in pipeline order. "first_stage" only when the evaluation ran it.
STAGES = ("first_stage", "tokenize", "encode", "lookup", "score", "dense", "fuse", "sort")

Run = dict[str, list[tuple[str, float]]]


def add_feedback_argument(p: Any) -> None:
    """``--feedback`` for the evaluation scripts (tilde.rank.feedback)."""
    p.add_argument("--feedback", default="index", help="query-time pseudo-relevance feedback: index (default: what "
                   "the model recommends; then plain TILDEv2 is reported too), off, or DOCS,TERMS,WEIGHT")


def add_mode_argument(p: Any) -> None:
    """``--mode`` for the evaluation scripts (tilde.rank.scoring)."""
    p.add_argument("--mode", default="index",
                   help="scoring mode of the headline row: index (default: what the index recommends), tokens, mlm, "
                        "dense, fused, or fused:mlm=0.3,dense=0.6,first_stage=0.1; every mode the index supports "
                        "gets a row")


def available_modes(reranker: Any) -> list[Any]:
    """The scoring modes an index can serve, the recommended one last: tokens always; mlm with
    an MLM query encoder on an impact index; dense with vectors and their encoder; fused."""
    from tilde.rank.scoring import Scoring

    m = reranker.index.manifest
    enc = m.query_encoders or {}
    modes = [Scoring("tokens")]
    if m.weighting == "impact" and "mlm" in enc:
        modes.append(Scoring("mlm"))
    if m.dense is not None and "dense" in enc:
        modes.append(Scoring("dense"))
    rec = reranker.scoring
    modes = [s for s in modes if s != rec]
    return [*modes, rec]


def feedback_label(reranker: Any) -> str:
    """`` + PRF(d,t,w)`` when the re-ranker expands queries, else empty: for system names."""
    return f" + PRF({reranker.feedback})" if reranker.feedback is not None else ""


def new_recorder() -> Recorder:
    # Thread scope: with the CPU-time estimate, only this thread's CPU time is charged to a query.
    return Recorder(default_meter(scope="thread"), keep=False, use_global_hooks=False)


@dataclass(frozen=True)
class StageTimes:
    """Per-query milliseconds by stage, the joules measured over the same spans, and the method."""

    ms: dict[str, list[float]]
    joules: float
    method: str
    queries: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_ms(self) -> list[float]:
        """Per-query end-to-end time: the sum of the stages."""
        stages = [v for v in self.ms.values() if v]
        return [sum(vals) for vals in zip(*stages)] if stages else []

    @property
    def joules_per_query(self) -> float:
        return self.joules / self.queries if self.queries else 0.0

    def p(self, stage: str, q: float) -> float:
        values = self.total_ms if stage == "total" else self.ms.get(stage, [])
        return percentile(values, q) if values else 0.0

    def merged(self, other: StageTimes) -> StageTimes:
        """Stages of both (same queries in the same order), e.g. first stage + re-ranking."""
        if self.queries != other.queries:
            raise ValueError("stage times cover different query sets")
        method = self.method if self.method == other.method else f"{self.method} / {other.method}"
        return StageTimes({**self.ms, **other.ms}, self.joules + other.joules, method, self.queries,
                          {**self.extra, **other.extra})


def first_stage(searcher: Any, queries: Sequence[tuple[str, str]], k: int) -> tuple[Run, StageTimes]:
    """Run an embedded BM25 index (:class:`tilde.bm25.BM25Index`) query by query, timed."""
    recorder = new_recorder()
    searcher.warmup()
    run: Run = {}
    ms: list[float] = []
    for qid, text in queries:
        with recorder.measure("first_stage"):
            t0 = time.perf_counter()
            hits = searcher.search(text, k=k)
            ms.append((time.perf_counter() - t0) * 1e3)
        run[qid] = [(h.docid, h.score) for h in hits]
    joules = sum(s.joules for s in recorder.summary().values())
    return run, StageTimes({"first_stage": ms}, joules, recorder.method, len(queries))


def batch_first_stage(seconds: float, joules: float, method: str, qids: Sequence[str]) -> StageTimes:
    """A first stage run as one batch (the Lucene backend): its time spread evenly over queries."""
    n = len(qids)
    per = seconds * 1e3 / n if n else 0.0
    return StageTimes({"first_stage": [per] * n}, joules, method, n, {"first_stage_batch": True})


def rerank_run(
    reranker: Any,
    queries: Mapping[str, str],
    run: Mapping[str, Sequence[tuple[str, float]]],
    depth: int | None = None,
) -> tuple[Run, StageTimes]:
    """Re-rank the first ``depth`` candidates of every query in ``run`` with a
    :class:`tilde.rank.Reranker`; candidates missing from the index go last with score 0 and are
    counted in ``StageTimes.extra["missing"]``. Queries without text are an error."""
    absent = [qid for qid in run if qid not in queries]
    if absent:
        raise KeyError(f"{len(absent)} run queries have no text, e.g. {absent[:5]}")
    recorder = new_recorder()
    previous = reranker.recorder
    reranker.recorder = recorder
    try:
        reranker.warmup()
        recorder.reset()
        out: Run = {}
        ms: dict[str, list[float]] = {s: [] for s in STAGES[1:]}
        missing = 0
        for qid, entries in run.items():
            cands = [d for d, _ in (entries if depth is None else entries[:depth])]
            if not cands or not queries[qid].strip():
                # Nothing to score (an empty query has no terms): keep the first-stage order.
                out[qid] = [(d, 0.0) for d in cands]
                for s in ms:
                    ms[s].append(0.0)
                continue
            top = entries if depth is None else entries[:depth]
            res = reranker.rerank(queries[qid], cands, missing="zero", first_stage=[float(s) for _, s in top])
            missing += len(res.missing)
            for s in ms:
                ms[s].append(float(res.timing_ms.get(s, 0.0)))
            out[qid] = [(d.docid, d.score) for d in res.results]
    finally:
        reranker.recorder = previous
    joules = sum(s.joules for s in recorder.summary().values())
    if missing:
        logger.warning("%d candidates were not in the index (scored 0, put last)", missing)
    return out, StageTimes(ms, joules, recorder.method, len(run), {"missing": missing})
