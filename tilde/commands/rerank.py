"""tilde rerank --index DIR --queries FILE --run FILE --output FILE [--format trec|msmarco]"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--queries", required=True, help="qid<TAB>text TSV or JSONL")
    p.add_argument("--run", required=True, help="first-stage run (TREC 6-column or MS MARCO 3-column)")
    p.add_argument("--output", required=True, help="re-ranked run to write")
    p.add_argument("--format", choices=("trec", "msmarco"), default="trec", help="output run format")
    p.add_argument("--depth", type=int, default=None, help="re-rank only the first DEPTH candidates per query")
    p.add_argument("--top-n", type=int, default=None, help="write at most TOP_N results per query")
    p.add_argument("--missing", choices=("error", "skip", "zero"), default="error",
                   help="candidates not in the index: fail, leave out, or append with score 0 (default error)")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the one stored with the index)")
    p.add_argument("--empty-queries", choices=("error", "skip"), default="error",
                   help="run queries whose text is empty (or only spaces): fail naming them (default), or leave "
                        "them out of the output and say how many")
    p.add_argument("--tag", default="tilde")
    p.add_argument("--feedback", default="index", help="query-time pseudo-relevance feedback: index (default: what "
                   "the index's model recommends), off, or DOCS,TERMS,WEIGHT (e.g. 5,30,0.5)")
    p.add_argument("--mode", default="index", help="scoring mode: index (default: what the index recommends), "
                   "tokens, mlm, dense, fused, or fused:mlm=0.3,dense=0.6,first_stage=0.1 "
                   "(first_stage: the run's scores)")


def main(args: argparse.Namespace) -> int:
    from tilde.cli import CommandError
    from tilde.io import read_queries, read_run, write_run
    from tilde.metering import Recorder, default_meter, format_summary, percentile
    from tilde.rank import Reranker, UnknownDocidError
    from tilde.rank.feedback import feedback_arg

    recorder = Recorder(default_meter(scope="thread"), keep=False)
    try:
        feedback = feedback_arg(args.feedback)
    except ValueError as exc:
        raise CommandError(f"--feedback: {exc}") from None
    try:
        reranker = Reranker.load(
            args.index, tokenizer=args.tokenizer, missing=args.missing, recorder=recorder, feedback=feedback,
            scoring=args.mode,
        )
    except ValueError as exc:
        raise CommandError(f"{exc}") from None
    print(f"scoring mode: {reranker.scoring}" + (" (as the index recommends; --mode to change)" if args.mode == "index"
                                                 else ""), file=sys.stderr)
    fb = reranker.feedback
    print(
        f"scoring: TILDEv2 + pseudo-relevance feedback ({fb.docs} passages, {fb.terms} terms, weight {fb.weight:g}; "
        "--feedback off for plain TILDEv2)" if fb is not None else "scoring: plain TILDEv2 (no feedback)",
        file=sys.stderr,
    )
    read = read_queries(args.queries)
    queries = {q.qid: q.text for q in read}
    run = read_run(args.run)
    if not run:
        raise CommandError(f"{args.run}: the run file holds no entries (nothing to re-rank)")
    absent = [qid for qid in run if qid not in queries]
    if absent:
        raise CommandError(f"{len(absent)} run queries have no text in {args.queries}, e.g. {absent[:5]}")
    empty = [q for q in read if q.qid in run and not q.text.strip()]
    if empty and args.empty_queries == "error":
        shown = ", ".join(f"{q.qid!r} (line {q.line})" for q in empty[:5])
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise CommandError(
            f"{len(empty)} run quer{'y has' if len(empty) == 1 else 'ies have'} empty text in {args.queries}: "
            f"{shown}{more}; fix them, or pass --empty-queries skip to leave them out of the output"
        )
    skipped = {q.qid for q in empty}
    if skipped:
        run = {qid: entries for qid, entries in run.items() if qid not in skipped}
        print(f"skipping {len(skipped)} run quer{'y' if len(skipped) == 1 else 'ies'} with empty text "
              f"(--empty-queries skip), e.g. {sorted(skipped)[:5]}", file=sys.stderr)
    reranker.warmup()
    recorder.reset()
    out: dict[str, list[tuple[str, float]]] = {}
    per_query: list[float] = []
    n_missing = 0
    for qid, entries in run.items():
        top = entries if args.depth is None else entries[: args.depth]
        cands = [e.docid for e in top]
        t0 = time.perf_counter()
        try:
            res = reranker.rerank(queries[qid], cands, top_n=args.top_n, first_stage=[e.score for e in top])
        except UnknownDocidError as exc:
            raise CommandError(f"query {qid}: {exc} (use --missing skip|zero to continue)") from None
        per_query.append((time.perf_counter() - t0) * 1e3)
        n_missing += len(res.missing)
        out[qid] = [(d.docid, d.score) for d in res.results]
    if not out:
        raise CommandError("no query left to re-rank (every run query has empty text); nothing written")
    write_run(args.output, out, fmt=args.format, tag=args.tag)
    n = len(per_query)
    cands_total = sum(len(v) for v in run.values())
    print(f"re-ranked {n} queries ({cands_total} candidates) -> {args.output}", file=sys.stderr)
    if n_missing:
        print(f"{n_missing} candidates were not in the index (policy {args.missing})", file=sys.stderr)
    if n:
        summary = recorder.summary()
        joules = sum(s.joules for s in summary.values())
        print(format_summary(summary, recorder.method, per="item"), file=sys.stderr)
        print(
            f"latency per query: p50 {percentile(per_query, 50):.3f} ms, p99 {percentile(per_query, 99):.3f} ms, "
            f"mean {sum(per_query) / n:.3f} ms; energy {joules / n:.6f} J/query ({recorder.method})",
            file=sys.stderr,
        )
    return 0
