"""Effectiveness metrics, computed with ``ir-measures``, under the conventions of each benchmark.

* TREC DL (as ``trec_eval -c -l 2``; NIST grades 0-3): nDCG@10 with graded gains (the grade is
  the gain); MRR@10, MAP and recall count grade >= 2 as relevant.
* MS MARCO passage (the official ``msmarco_eval.py``): MRR@10 with any judged passage (rel >= 1)
  relevant, the ranking taken in the order given (not re-sorted by score), averaged over every
  query of the qrels; R@1000 likewise.

Everywhere: unjudged passages are non-relevant, and a query of the qrels that is missing from the
run scores 0 (``trec_eval -c``). Queries in the run without judgements are ignored. The only code
here beyond ``ir-measures`` is that averaging, which tests pin on hand-computed examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EvalResult", "MEASURE_LABELS", "evaluate", "msmarco_measures", "trec_dl_measures"]

#: Display names, in table order.
MEASURE_LABELS = {
    "ndcg@10": "nDCG@10",
    "mrr@10": "MRR@10",
    "map": "MAP",
    "r@100": "R@100",
    "r@1000": "R@1000",
}

Run = Mapping[str, Sequence[tuple[str, float]]]
Qrels = Mapping[str, Mapping[str, int]]


def trec_dl_measures(depths: Sequence[int] = (100, 1000)) -> dict[str, Any]:
    """``name -> ir_measures measure`` for TREC DL (grade >= 2 relevant except for nDCG)."""
    from ir_measures import AP, RR, R, nDCG

    out: dict[str, Any] = {"ndcg@10": nDCG @ 10, "mrr@10": RR(rel=2) @ 10, "map": AP(rel=2)}
    out.update({f"r@{d}": R(rel=2) @ d for d in depths})
    return out


def msmarco_measures() -> dict[str, Any]:
    """MS MARCO passage dev: MRR@10 (the official metric) and R@1000, rel >= 1 relevant."""
    from ir_measures import RR, R

    return {"mrr@10": RR @ 10, "r@1000": R @ 1000}


@dataclass(frozen=True)
class EvalResult:
    """``aggregate[name]`` is the mean of ``per_query[qid][name]`` over the ``num_queries`` judged
    queries (missing ones count 0)."""

    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]]
    num_queries: int
    num_missing: int  # judged queries absent from the run (or with no results)


def _as_ir_run(run: Run, by_rank: bool) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for qid, hits in run.items():
        if by_rank:
            # Scores that reproduce the given order exactly: trec_eval would otherwise re-sort
            # equal scores by docid, while the MS MARCO script reads the ranks as written.
            n = len(hits)
            out[qid] = {docid: float(n - i) for i, (docid, _) in enumerate(hits)}
        else:
            out[qid] = {docid: float(score) for docid, score in hits}
    return out


def evaluate(run: Run, qrels: Qrels, measures: Mapping[str, Any], *, by_rank: bool = False) -> EvalResult:
    """Evaluate ``run`` (``{qid: [(docid, score), ...]}`` best first) against ``qrels``.

    ``measures`` maps display names to ir_measures measures (see :func:`trec_dl_measures`,
    :func:`msmarco_measures`). ``by_rank=True`` evaluates the lists in their given order whatever
    the scores (MS MARCO's convention); otherwise ties are ordered as trec_eval orders them.
    """
    import ir_measures

    if not qrels:
        raise ValueError("qrels are empty: nothing to evaluate against")
    judged = {qid: {d: int(r) for d, r in docs.items()} for qid, docs in qrels.items()}
    ir_run = {qid: docs for qid, docs in _as_ir_run(run, by_rank).items() if qid in judged and docs}
    by_measure = {m: name for name, m in measures.items()}
    per_query: dict[str, dict[str, float]] = {qid: dict.fromkeys(measures, 0.0) for qid in judged}
    if ir_run:
        for metric in ir_measures.iter_calc(list(measures.values()), judged, ir_run):
            if metric.query_id in per_query:
                per_query[metric.query_id][by_measure[metric.measure]] = float(metric.value)
    n = len(judged)
    aggregate = {name: sum(q[name] for q in per_query.values()) / n for name in measures}
    return EvalResult(aggregate, per_query, n, sum(1 for qid in judged if qid not in ir_run))
