"""MS MARCO passage evaluation: first stage, TILDEv2 re-ranking, official MRR@10.

    python -m eval.msmarco --collection collection.tsv --queries queries.dev.small.tsv \\
        --qrels qrels.dev.small.tsv --index TILDE_INDEX [--run FIRST_STAGE | --bm25 embedded|pyserini] \\
        [--k 1000] [--output runs/msmarco-dev] [--report DIR]

Files are MS MARCO's own: ``pid<TAB>text`` collection, ``qid<TAB>text`` queries, qrels as TREC
(``qid 0 pid 1``) or MS MARCO's 4-column TSV (the same columns, tab-separated). The first stage
is a given run (TREC or MS MARCO format) or BM25 computed here: ``embedded`` (default; the index
is built once next to the TILDE index, ``<index>.bm25``) or ``pyserini`` (Anserini's Lucene, the
engine of the published figures; ``<index>.lucene``; needs the jar and Java, see
:mod:`tilde.first_stage.lucene`). The top ``--k`` are re-ranked with the TILDE index (built
beforehand with ``tilde index``).

Metrics: MRR@10 as MS MARCO defines it (rel >= 1, ranks as given, averaged over every qrels
query, missing ones 0) and R@1000. The re-ranked run is written in TREC (``PREFIX.trec``) and
MS MARCO (``PREFIX.tsv``) formats. Last line:
``mrr@10=<x> r@1000=<y> first_stage_mrr@10=<z> model=<name>``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .metrics import MEASURE_LABELS, evaluate, msmarco_measures
from .pipeline import (
    StageTimes,
    add_feedback_argument,
    batch_first_stage,
    feedback_label,
    first_stage,
    new_recorder,
    rerank_run,
)
from .references import references_for
from .report import Report, SystemRow, write_report

logger = logging.getLogger(__name__)

__all__ = ["main"]

METRICS = ("mrr@10", "r@1000")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.msmarco", description=__doc__.split("\n\n")[0])
    p.add_argument("--collection", required=True, help="pid<TAB>text collection (collection.tsv)")
    p.add_argument("--queries", required=True, help="qid<TAB>text queries (e.g. queries.dev.small.tsv)")
    p.add_argument("--qrels", required=True, help="qrels, TREC or MS MARCO TSV")
    p.add_argument("--index", required=True, help="TILDE index of the collection (`tilde index`)")
    first = p.add_mutually_exclusive_group()
    first.add_argument("--run", default=None, help="first-stage run (TREC or MS MARCO format)")
    first.add_argument("--bm25", choices=("embedded", "pyserini"), default=None,
                       help="compute the BM25 first stage (default: embedded)")
    p.add_argument("--bm25-index", default=None, help="BM25 index dir (default: <index>.bm25 or <index>.lucene)")
    p.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (0.9 Pyserini default; 0.82 tuned)")
    p.add_argument("--b", type=float, default=0.4, help="BM25 b (0.4 Pyserini default; 0.68 tuned)")
    p.add_argument("--k", type=int, default=1000, help="first-stage depth, all re-ranked (default 1000)")
    add_feedback_argument(p)
    p.add_argument("--threads", type=int, default=1, help="pyserini: search threads")
    p.add_argument("--output", default="runs/msmarco-dev.tilde", help="re-ranked run prefix: PREFIX.trec, PREFIX.tsv")
    p.add_argument("--report", default=None, help="write report.md + PNG plots into this directory")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _bm25_first_stage(args: argparse.Namespace, pairs: list[tuple[str, str]]) -> tuple[dict, StageTimes, str, Path]:
    """The BM25 run (building its index beside the TILDE index when absent), timed."""
    from tilde.first_stage.bm25 import MANIFEST

    engine = args.bm25 or "embedded"
    suffix = ".bm25" if engine == "embedded" else ".lucene"
    index_dir = Path(args.bm25_index) if args.bm25_index else Path(str(Path(args.index)).rstrip("/") + suffix)
    label = f"BM25 {engine} (k1={args.k1}, b={args.b})"
    if engine == "embedded":
        from tilde.first_stage.bm25 import BM25Index, build_bm25_index

        if not (index_dir / MANIFEST).is_file():
            print(build_bm25_index(args.collection, index_dir, k1=args.k1, b=args.b).format(), file=sys.stderr)
        searcher = BM25Index.load(index_dir)
        if (searcher.manifest.k1, searcher.manifest.b) != (args.k1, args.b):
            raise ValueError(f"{index_dir} was built with k1={searcher.manifest.k1}, b={searcher.manifest.b}; "
                             f"pass those, or another --bm25-index for k1={args.k1}, b={args.b}")
        run, times = first_stage(searcher, pairs, args.k)
        return run, times, label, index_dir
    from tilde.first_stage.lucene import LuceneBM25, build_lucene_index, java_joules

    if not (index_dir / MANIFEST).is_file():
        print(build_lucene_index(args.collection, index_dir, threads=args.threads).format(), file=sys.stderr)
    recorder = new_recorder()
    t0 = time.perf_counter()
    lucene = LuceneBM25.load(index_dir)
    with recorder.measure("first_stage", items=len(pairs)):
        hits = lucene.search_run(pairs, k=args.k, k1=args.k1, b=args.b, threads=args.threads)
    run = {qid: [(e.docid, e.score) for e in entries] for qid, entries in hits.items()}
    java, method = java_joules(recorder.meter, lucene.last_java_cpu_s)
    joules = sum(s.joules for s in recorder.summary().values()) + java
    times = batch_first_stage(time.perf_counter() - t0, joules, method, [q for q, _ in pairs])
    return run, times, label, index_dir


def evaluate_msmarco(args: argparse.Namespace) -> list[str]:
    from tilde.index.reader import TildeIndex
    from tilde.io import read_qrels, read_queries, read_run, write_run
    from tilde.rank import Reranker

    if args.k < 1:
        raise ValueError(f"--k must be >= 1, not {args.k}")
    for flag, path in (("--collection", args.collection), ("--queries", args.queries), ("--qrels", args.qrels)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    queries = read_queries(args.queries)
    texts = {q.qid: q.text for q in queries}
    qrels = read_qrels(args.qrels)
    tilde_index = TildeIndex.open(args.index)  # fail on a bad index before the first stage runs
    model = Path(tilde_index.manifest.model).name or tilde_index.manifest.model
    lines: list[str] = []
    bm25_bytes = 0
    if args.run:
        given = read_run(args.run)
        run = {qid: [(e.docid, e.score) for e in entries[: args.k]] for qid, entries in given.items()}
        first_label, times = f"given run {Path(args.run).name}", None
    else:
        pairs = [(q.qid, q.text) for q in queries]
        run, times, first_label, bm25_dir = _bm25_first_stage(args, pairs)
        bm25_bytes = sum(p.stat().st_size for p in bm25_dir.rglob("*") if p.is_file())
    measures = msmarco_measures()
    before = evaluate(run, qrels, measures, by_rank=True)
    from tilde.rank.feedback import feedback_arg

    reranker = Reranker.load(args.index, missing="zero", feedback=feedback_arg(args.feedback))
    reranked, rerank_times = rerank_run(reranker, texts, run, depth=args.k)
    after = evaluate(reranked, qrels, measures, by_rank=True)
    prefix = Path(args.output)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    trec_path, tsv_path = Path(f"{prefix}.trec"), Path(f"{prefix}.tsv")
    write_run(trec_path, reranked, fmt="trec", tag="tilde")
    write_run(tsv_path, reranked, fmt="msmarco")

    all_times = rerank_times if times is None else times.merged(rerank_times)
    system = f"{first_label} -> TILDEv2 ({model})" + feedback_label(reranker)
    lines.append(f"queries: {len(queries)} ({after.num_queries} judged, {before.num_missing} judged without "
                 f"first-stage results)")
    for name, res in ((first_label, before), (system, after)):
        lines.append(f"{name}: " + "  ".join(f"{MEASURE_LABELS[m]} {res.aggregate[m]:.4f}" for m in METRICS))
    for ref in references_for("msmarco-dev"):
        lines.append(f"published {ref.system}: {MEASURE_LABELS[ref.metric]} {ref.value:.3f} ({ref.source})")
    stages = ", ".join(f"{s} p50 {all_times.p(s, 50):.3f}" for s in all_times.ms)
    lines.append(f"latency per query: p50 {all_times.p('total', 50):.3f} ms, p99 {all_times.p('total', 99):.3f} ms "
                 f"({stages}); {all_times.joules_per_query:.6f} J/query ({all_times.method})")
    lines.append(f"runs: {trec_path} {tsv_path}")
    if args.report:
        sizes = {"tilde index": sum(p.stat().st_size for p in Path(args.index).iterdir() if p.is_file())}
        if bm25_bytes:
            sizes["BM25 index"] = bm25_bytes
        md = write_report(Report(
            title="MS MARCO passage re-ranking", dataset="msmarco-dev", model=model, metric_names=METRICS,
            rows=[SystemRow(first_label, "first stage", before.aggregate),
                  SystemRow(system, "re-ranked", after.aggregate, first_stage=first_label)],
            references=references_for("msmarco-dev"), timings={system: all_times}, index_bytes=sizes,
            notes=[f"first stage depth {args.k}, all re-ranked; MRR@10 as msmarco_eval.py (ranks as given, every "
                   "qrels query counted)"],
        ), args.report)
        lines.append(f"report: {md}")
    lines.append(f"mrr@10={after.aggregate['mrr@10']:.4f} r@1000={after.aggregate['r@1000']:.4f} "
                 f"first_stage_mrr@10={before.aggregate['mrr@10']:.4f} model={model}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from tilde.first_stage.lucene import LuceneUnavailable

    try:
        lines = evaluate_msmarco(args)
    except (LuceneUnavailable, ValueError, KeyError, FileNotFoundError) as exc:
        if args.verbose:
            raise
        print(f"eval.msmarco: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
