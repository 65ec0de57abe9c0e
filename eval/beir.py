"""BEIR-style evaluation (e.g. SciFact): embedded BM25 first stage, optional TILDEv2 re-ranking.

    python -m eval.beir --data ../shared/data/scifact [--split test] [--model M] [--expander E]
                        [--depth 100] [--first-stage bm25|impact|impact:DIR] [--cache-dir DIR] [--report DIR]

DATA holds ``corpus.jsonl(.gz)`` (``{"_id", "title", "text"}``, indexed as title + text, as
Anserini's "flat" BEIR indexes), ``queries.<split>.tsv`` and ``qrels.<split>.trec``. BM25 (the
embedded engine, Pyserini defaults k1=0.9 b=0.4) retrieves the top ``--depth``; with ``--model``
those are re-ranked with TILDEv2 (passages indexed once and cached, as in :mod:`eval.trec_dl`).
With ``--first-stage impact`` the re-ranking index's own weights retrieve instead (in process,
the whole corpus indexed), with ``impact:DIR`` the exported Lucene impact index of them
(:mod:`eval.first_stage`); either is reported beside BM25, and its run is the one re-ranked.
Metrics as BEIR reports them: nDCG@10 (graded) and R@100, every judged query counted, next to
the published BM25 figures. Last line:
``bm25_ndcg@10=<x> bm25_r@100=<y> [ndcg@10=<z> model=<name>]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .first_stage import add_first_stage_argument, select_first_stage
from .metrics import MEASURE_LABELS, evaluate
from .pipeline import (
    StageTimes,
    add_feedback_argument,
    add_mode_argument,
    available_modes,
    feedback_label,
    first_stage,
    rerank_run,
)
from .references import references_for
from .report import Report, SystemRow, write_report

logger = logging.getLogger(__name__)

__all__ = ["main"]

METRICS = ("ndcg@10", "r@100")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.beir", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True,
                   help="BEIR folder: corpus.jsonl[.gz], queries.<split>.tsv, qrels.<split>.trec")
    p.add_argument("--split", default="test")
    p.add_argument("--model", default="default",
                   help="re-rank with: default (the default recipe: splade-tiny impact + all-MiniLM-L6-v2), a TILDEv2 "
                        "checkpoint, a masked LM (impact index), or none (BM25 only)")
    p.add_argument("--dense", default="default",
                   help="impact indexes: the bi-encoder of the dense part (default: the recipe's), or none")
    p.add_argument("--expander", default=None, help="expand passages first (tilde.expand)")
    p.add_argument("--depth", type=int, default=100, help="BM25 depth, all re-ranked (default 100)")
    add_feedback_argument(p)
    add_mode_argument(p)
    add_first_stage_argument(p)
    p.add_argument("--bm25-index", default=None, help="BM25 index dir to reuse/build (default: a temporary one)")
    p.add_argument("--cache-dir", default=None, help="TILDE index cache (default ~/.cache/tilde/eval)")
    p.add_argument("--report", default=None, help="write report.md + PNG plots into this directory")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _corpus(data: Path) -> Path:
    for name in ("corpus.jsonl.gz", "corpus.jsonl"):
        if (data / name).is_file():
            return data / name
    raise FileNotFoundError(f"{data}: no corpus.jsonl(.gz)")


def evaluate_beir(args: argparse.Namespace, bm25_dir: Path) -> list[str]:
    from tilde.bm25 import BM25Index, build_bm25_index
    from tilde.io import read_qrels, read_queries
    from tilde.rank import Reranker

    from .first_stage import check_first_stage

    check_first_stage(args.first_stage)
    data = Path(args.data)
    corpus = _corpus(data)
    queries = read_queries(data / f"queries.{args.split}.tsv")
    qrels = read_qrels(data / f"qrels.{args.split}.trec")
    if not (bm25_dir / "manifest.json").is_file():
        logger.info(build_bm25_index(corpus, bm25_dir).format())
    index = BM25Index.load(bm25_dir)
    measures = _measures()
    run, times = first_stage(index, [(q.qid, q.text) for q in queries], args.depth)
    bm25 = evaluate(run, qrels, measures)
    dataset = data.name
    lines = [f"{dataset} ({args.split}): {len(queries)} queries, {bm25.num_queries} judged, {len(index)} documents"]
    m = index.manifest
    lines.append(f"BM25 embedded (k1={m.k1}, b={m.b}, {m.analyzer['stemmer']} stemmer): " + _cells(bm25.aggregate))
    for ref in references_for(dataset):
        lines.append(f"published {ref.system}: {MEASURE_LABELS[ref.metric]} {ref.value:.4f} ({ref.source})")
    rows = [SystemRow("BM25", "first stage", bm25.aggregate)]
    timings: dict[str, StageTimes] = {"BM25": times}
    last = f"bm25_ndcg@10={bm25.aggregate['ndcg@10']:.4f} bm25_r@100={bm25.aggregate['r@100']:.4f}"
    cached = None
    if args.first_stage == "impact":  # the re-ranking index's weights retrieve: index the whole corpus first
        if not args.model or args.model == "none":
            raise ValueError("--first-stage impact searches the re-ranking index's weights: it needs --model "
                             "(default: the default recipe)")
        cached = _prepare(args, corpus, corpus_ids(corpus))
    stage, run, times = select_first_stage(args.first_stage, (run, times), [(q.qid, q.text) for q in queries],
                                           args.depth, index=cached.path if cached is not None else None)
    if stage != "BM25":  # another first stage: reported beside BM25, and re-ranked instead of it
        res = evaluate(run, qrels, measures)
        lines.append(f"{stage} first stage ({args.first_stage}): " + _cells(res.aggregate))
        rows.append(SystemRow(stage, "first stage", res.aggregate))
        timings[stage] = times
        last += f" {stage}_ndcg@10={res.aggregate['ndcg@10']:.4f} {stage}_r@100={res.aggregate['r@100']:.4f}"
    if args.model and args.model != "none":
        if cached is None:
            cached = _prepare(args, corpus, {d for hits in run.values() for d, _ in hits})
        from tilde.rank.feedback import feedback_arg

        reranker = Reranker.load(cached.path, missing="zero", feedback=feedback_arg(args.feedback), scoring=args.mode)
        model_name = _model_name(args.model)
        modes = available_modes(reranker)
        lines.append(f"scoring: {reranker.scoring} ({'as the index recommends' if args.mode == 'index' else 'asked'}"
                     f"); modes reported: {', '.join(str(m) for m in modes)}")
        texts = {q.qid: q.text for q in queries}
        for other in modes[:-1]:
            alt_run, alt_times = rerank_run(reranker.with_scoring(other), texts, run, depth=args.depth)
            alt = evaluate(alt_run, qrels, measures)
            alt_name = f"{stage} -> {model_name} [{other}]"
            lines.append(f"{alt_name}: " + _cells(alt.aggregate))
            rows.append(SystemRow(alt_name, "re-ranked", alt.aggregate, first_stage=stage))
            timings[alt_name] = times.merged(alt_times)
        if reranker.feedback is not None:
            plain = reranker.with_feedback(None)
            plain_run, plain_times = rerank_run(plain, texts, run, depth=args.depth)
            plain_res = evaluate(plain_run, qrels, measures)
            plain_name = f"{stage} -> {model_name} (plain TILDEv2)"
            lines.append(f"{plain_name}: " + _cells(plain_res.aggregate))
            rows.append(SystemRow(plain_name, "re-ranked", plain_res.aggregate, first_stage=stage))
            timings[plain_name] = times.merged(plain_times)
        reranked, rr_times = rerank_run(reranker, texts, run, depth=args.depth)
        after = evaluate(reranked, qrels, measures)
        name = f"{stage} -> {model_name}" + feedback_label(reranker) + (f" [{reranker.scoring}]" if len(modes) > 1
                                                                        else "")
        lines.append(f"{name}: " + _cells(after.aggregate)
                     + f" (index {'built' if cached.built else 'cached'}: {cached.passages} passages)")
        rows.append(SystemRow(name, "re-ranked", after.aggregate, first_stage=stage))
        timings[name] = times.merged(rr_times)
        last += f" ndcg@10={after.aggregate['ndcg@10']:.4f} model={model_name}"
    for name, t in timings.items():
        lines.append(f"latency {name}: p50 {t.p('total', 50):.3f} ms, p99 {t.p('total', 99):.3f} ms per query; "
                     f"{t.joules_per_query:.6f} J/query ({t.method})")
    if args.report:
        md = write_report(Report(
            title=f"BEIR {dataset}", dataset=dataset, model=_model_name(args.model) if args.model else "-",
            metric_names=METRICS, rows=rows, references=references_for(dataset), timings=timings,
            index_bytes={"BM25 index": index.bytes_on_disk},
        ), args.report)
        lines.append(f"report: {md}")
    lines.append(last)
    return lines


def _prepare(args: argparse.Namespace, corpus: Path, needed: set[str]) -> Any:
    """The (cached) re-ranking index of ``args.model``: an impact index always of the whole corpus
    (one cached index serves every split, and eval.tune_fusion), a TILDEv2 one of ``needed``."""
    from .index_cache import is_impact, prepare_impact_index, prepare_index

    if is_impact(args.model):
        if args.expander:
            raise ValueError("an impact index expands passages with its own masked LM: drop --expander")
        dense = None if args.dense == "none" else args.dense
        return prepare_impact_index(args.model, corpus, corpus_ids(corpus), dense=dense, cache_dir=args.cache_dir)
    return prepare_index(args.model, corpus, needed, expander=args.expander, cache_dir=args.cache_dir)


def corpus_ids(corpus: Path) -> set[str]:
    from tilde.io import read_collection

    return {p.pid for p in read_collection(corpus)}


def _model_name(model: str) -> str:
    if model in ("default", "none"):
        from tilde.models import DEFAULT_RECIPE

        return DEFAULT_RECIPE.name if model == "default" else "-"
    from .trec_dl import model_label

    return model_label(model)


def _measures() -> dict[str, object]:
    from ir_measures import R, nDCG

    return {"ndcg@10": nDCG @ 10, "r@100": R @ 100}


def _cells(agg: dict[str, float]) -> str:
    return "  ".join(f"{MEASURE_LABELS[m]} {agg[m]:.4f}" for m in METRICS)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .index_cache import ExpansionUnavailable

    try:
        if args.bm25_index:
            lines = evaluate_beir(args, Path(args.bm25_index))
        else:
            with tempfile.TemporaryDirectory(prefix="tilde-beir-") as tmp:
                lines = evaluate_beir(args, Path(tmp) / "bm25")
    except (ExpansionUnavailable, ValueError, KeyError, FileNotFoundError) as exc:
        if args.verbose:
            raise
        print(f"eval.beir: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
