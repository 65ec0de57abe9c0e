"""Choose fusion weights on a development set: a grid over the simplex of signal weights.

    python -m eval.tune_fusion --data ../shared/data/dl21 [--data ../shared/data/scifact --split train]
                               [--signals mlm,dense,first_stage] [--step 0.1] [--top 10]
                               [--normalization minmax,zscore] [--dense-feedback 3:1]

Each ``--data`` is a TREC DL folder (its BM25 top-100 run) or a BEIR folder (embedded BM25
top-100 of ``--split``); its passages are indexed with the default recipe (cached, as the
evaluation scripts do). Every signal is computed once per query, then each weight vector on the
grid (``step`` apart, summing to 1) is scored by nDCG@10, averaged over the data sets given (each
counts equally). Prints the best vectors; the recipe's weights (tilde.models.DEFAULT_RECIPE) were
chosen this way on DL21. Never pass a test set (DL19, SciFact test) here.

With ``--dense-feedback DOCS:WEIGHT`` every weight vector is scored by the re-ranker itself as
``fused:<weights>;dense_feedback=DOCS:WEIGHT`` (the dense query moves towards the best fused
candidates, then the candidates are fused again), so the grid measures what the recipe serves;
vectors without a dense weight are skipped.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import evaluate

logger = logging.getLogger(__name__)

__all__ = ["feedback_grid", "is_test_set", "main", "simplex"]

TEST_SETS = {("dl19", None), ("scifact", "test")}


def is_test_set(data: Path, split: str) -> bool:
    """Whether ``data`` (a TREC DL folder, or a BEIR folder read at ``split``) is a test set,
    which no setting may be chosen on."""
    beir = not (data / "passages.tsv").is_file()
    return (data.name, split if beir else None) in TEST_SETS


def simplex(n: int, step: float) -> list[tuple[float, ...]]:
    """Every n-vector of multiples of ``step`` in [0, 1] summing to 1."""
    k = round(1 / step)
    return [tuple(c / k for c in combo) for combo in itertools.product(range(k + 1), repeat=n) if sum(combo) == k]


def feedback_grid(names: Sequence[str], step: float, normalization: str,
                  feedback: tuple[int, float]) -> list[tuple[str, Any]]:
    """(key, Scoring) per weight vector of the grid that dense feedback applies to (a positive
    dense weight)."""
    from tilde.rank.scoring import Scoring

    if "dense" not in names:
        raise ValueError("--dense-feedback needs the dense signal in --signals")
    out = []
    for w in simplex(len(names), step):
        weights = dict(zip(names, w))
        if weights["dense"] <= 0:
            continue
        sc = Scoring("fused", weights, normalization=normalization,
                     dense_feedback={"docs": int(feedback[0]), "weight": float(feedback[1])})
        out.append((f"{normalization}|{sc}", sc))
    return out


def _signals(data: Path, split: str, names: Sequence[str], cache: str | None, bm25_tmp: Path,
             scorings: Mapping[str, Any] | None = None) -> tuple[
        dict[str, list[str]], dict[str, dict[str, np.ndarray]], dict[str, dict[str, int]]]:
    from tilde.io import read_qrels, read_queries, read_run
    from tilde.rank import Reranker

    from .index_cache import prepare_impact_index

    if (data / "passages.tsv").is_file():
        queries = {q.qid: q.text for q in read_queries(data / "queries.tsv")}
        qrels = read_qrels(data / "qrels.trec")
        run = {q: [(e.docid, e.score) for e in v[:100]] for q, v in read_run(data / "run.bm25.top100.trec").items()}
        passages = data / "passages.tsv"
    else:
        from tilde.bm25 import BM25Index, build_bm25_index

        from .beir import _corpus, corpus_ids
        from .pipeline import first_stage

        passages = _corpus(data)
        qs = read_queries(data / f"queries.{split}.tsv")
        queries = {q.qid: q.text for q in qs}
        qrels = read_qrels(data / f"qrels.{split}.trec")
        build_bm25_index(passages, bm25_tmp)
        run, _ = first_stage(BM25Index.load(bm25_tmp), [(q.qid, q.text) for q in qs], 100)
    needed = {d for v in run.values() for d, _ in v} if (data / "passages.tsv").is_file() else corpus_ids(passages)
    cached = prepare_impact_index(None, passages, needed, cache_dir=cache)
    rr = Reranker.load(cached.path, missing="zero", scoring="tokens")
    cands: dict[str, list[str]] = {}
    sig: dict[str, dict[str, np.ndarray]] = {}
    for qid, entries in run.items():
        if qid not in queries or not entries:
            continue
        ids = [d for d, _ in entries]
        cands[qid] = ids
        sig[qid] = {}
        rows = rr.index.lookup(ids)
        fs = np.array([s for _, s in entries], dtype=np.float64)
        for name in names:
            if name == "first_stage":
                sig[qid][name] = fs
                continue
            # a mode name, a whole scoring spec ("fused:..."), or a key of ``scorings`` (a Scoring),
            # scored by the re-ranker itself
            mode = (scorings or {}).get(name, name)
            fused = not isinstance(mode, str) or mode.startswith("fused")
            res = rr.rerank(queries[qid], ids, missing="zero", mode=mode, first_stage=fs if fused else None)
            full = np.zeros(len(ids))
            full[res.order] = res.scores
            sig[qid][name] = full
        sig[qid]["_known"] = rows >= 0  # type: ignore[assignment]
    return cands, sig, qrels


def _fused(signals: dict[str, np.ndarray], weights: dict[str, float], normalization: str) -> np.ndarray:
    """The fusion of one query's signals (``_known``: the candidates the index holds)."""
    from tilde.rank.fusion import fuse

    scores, _ = fuse({k: v for k, v in signals.items() if k != "_known"}, weights, mask=signals["_known"],
                     normalization=normalization)
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.tune_fusion", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, help="TREC DL or BEIR folder (repeatable)")
    p.add_argument("--split", default="train", help="BEIR split (default train)")
    p.add_argument("--signals", default="mlm,dense,first_stage")
    p.add_argument("--step", type=float, default=0.1)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--normalization", default="minmax", help="minmax (default) or zscore, or both: minmax,zscore")
    p.add_argument("--dense-feedback", default=None, metavar="DOCS:WEIGHT",
                   help="score every vector with this dense feedback, as the re-ranker serves it (e.g. 3:1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from ir_measures import nDCG

    names = [s.strip() for s in args.signals.split(",") if s.strip()]
    specs: dict[str, Any] = {}
    if args.dense_feedback:
        docs, colon, weight = args.dense_feedback.partition(":")
        try:
            if not colon:
                raise ValueError("expected DOCS:WEIGHT, e.g. 3:1")
            fb = (int(docs), float(weight))
            for normalization in args.normalization.split(","):
                specs.update(feedback_grid(names, args.step, normalization, fb))
        except ValueError as exc:
            print(f"eval.tune_fusion: error: --dense-feedback {args.dense_feedback!r}: {exc}",
                  file=sys.stderr)
            return 2
    sets = []
    for d in args.data:
        data = Path(d)
        if is_test_set(data, args.split):
            print(f"eval.tune_fusion: error: {data.name} is a test set; tune on DL21 / SciFact train", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            sets.append((data.name, *_signals(data, args.split, list(specs) if specs else names, args.cache_dir,
                                              Path(tmp) / "bm25", specs)))

    def ndcg_per_set(scores_of: Callable[[dict[str, np.ndarray]], np.ndarray]) -> list[float]:
        """nDCG@10 per data set of the run that ``scores_of(signals of a query)`` ranks."""
        out = []
        for _, cands, sig, qrels in sets:
            run = {qid: list(zip(ids, scores_of(sig[qid]).tolist())) for qid, ids in cands.items()}
            out.append(evaluate(run, qrels, {"ndcg@10": nDCG @ 10}).aggregate["ndcg@10"])
        return out

    results = []
    for key, sc in specs.items():  # scored whole by the re-ranker
        got = ndcg_per_set(itemgetter(key))
        results.append((float(np.mean(got)), tuple(sc.weights[n] for n in names), got, sc.normalization))
    for normalization in ([] if specs else args.normalization.split(",")):
        for w in simplex(len(names), args.step):
            weights = dict(zip(names, w))
            if not any(v > 0 for k, v in weights.items() if k != "first_stage"):
                continue
            got = ndcg_per_set(partial(_fused, weights=weights, normalization=normalization))
            results.append((float(np.mean(got)), w, got, normalization))
    results.sort(key=lambda r: -r[0])
    label = " ".join(name for name, *_ in sets)
    print(f"{len(results)} weight vectors over {', '.join(names)} on {label} (nDCG@10, mean over sets)")
    for mean, w, per_set, normalization in results[: args.top]:
        cells = " ".join(f"{n}={v:.2f}" for n, v in zip(names, w))
        print(f"{mean:.4f}  {normalization:<6} {cells}  ({' '.join(f'{x:.4f}' for x in per_set)})")
    best = results[0]
    extra = f";dense_feedback={args.dense_feedback}" if specs else ""
    print("best: fused:" + ",".join(f"{n}={v:g}" for n, v in zip(names, best[1])) + extra +
          f" normalization={best[3]} ndcg@10={best[0]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
