"""tilde bm25 index --collection FILE --output DIR [--k1 0.9 --b 0.4] [--backend embedded|lucene]
tilde bm25 search --index DIR --queries FILE --output RUN [--k 1000] [--format trec|msmarco]"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bm25_command", metavar="{index,search}", required=True)
    ix = sub.add_parser("index", help="build a BM25 index of a collection",
                        description="Build a BM25 index (embedded: bm25s format, memory-mapped; lucene: Anserini).")
    ix.add_argument("--collection", required=True, help="pid<TAB>text TSV or JSONL (Pyserini, BEIR); .gz ok")
    ix.add_argument("--output", required=True, help="index directory to write (e.g. beside the TILDE index)")
    ix.add_argument("--backend", choices=("embedded", "lucene"), default="embedded",
                    help="embedded (default, no Java) or lucene (Anserini jar from pyserini==0.25.0, Java 11+)")
    ix.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (default 0.9, Pyserini's; MS MARCO tuned: 0.82)")
    ix.add_argument("--b", type=float, default=0.4, help="BM25 b (default 0.4, Pyserini's; MS MARCO tuned: 0.68)")
    ix.add_argument("--stemmer", choices=("porter", "english", "none"), default="porter",
                    help="embedded: porter (as Lucene/Anserini, default), english (Snowball), none")
    ix.add_argument("--stopwords", choices=("lucene", "none"), default="lucene", help="embedded: stopword list")
    ix.add_argument("--length-norm", choices=("lucene", "exact"), default="lucene",
                    help="embedded: document lengths rounded as Lucene stores them (default) or exact (as bm25s)")
    ix.add_argument("--threads", type=int, default=1, help="lucene: indexing threads")
    ix.add_argument("--overwrite", action="store_true", help="replace an existing index")

    se = sub.add_parser("search", help="retrieve the top k for every query into a run file",
                        description="Search a BM25 index (either backend) and write a run file.")
    se.add_argument("--index", required=True, help="BM25 index directory (from `tilde bm25 index`)")
    se.add_argument("--queries", required=True, help="qid<TAB>text TSV or JSONL")
    se.add_argument("--output", required=True, help="run file to write")
    se.add_argument("--k", type=int, default=1000, help="hits per query (default 1000)")
    se.add_argument("--format", choices=("trec", "msmarco"), default="trec", help="output run format")
    se.add_argument("--threads", type=int, default=1, help="queries searched in parallel")
    se.add_argument("--k1", type=float, default=None, help="lucene only: k1 at search time (default 0.9)")
    se.add_argument("--b", type=float, default=None, help="lucene only: b at search time (default 0.4)")
    se.add_argument("--tag", default="bm25")


def _index(args: argparse.Namespace) -> int:
    if args.backend == "lucene":
        from tilde.first_stage.lucene import build_lucene_index

        print(build_lucene_index(args.collection, args.output, threads=args.threads, overwrite=args.overwrite).format())
        print(f"(k1/b are chosen at search time: `tilde bm25 search --k1 {args.k1} --b {args.b}`)")
        return 0
    from tilde.first_stage.analyzer import Analyzer
    from tilde.first_stage.bm25 import build_bm25_index

    summary = build_bm25_index(
        args.collection, args.output, k1=args.k1, b=args.b, length_norm=args.length_norm,
        analyzer=Analyzer(stemmer=args.stemmer, stopwords=args.stopwords), overwrite=args.overwrite,
    )
    print(summary.format())
    return 0


def _search(args: argparse.Namespace) -> int:
    from tilde.first_stage.bm25 import BM25_FORMAT, BM25Index, read_bm25_manifest
    from tilde.io import read_queries, write_run
    from tilde.metering import Recorder, default_meter, percentile

    queries = read_queries(args.queries)
    pairs = [(q.qid, q.text) for q in queries]
    fmt = read_bm25_manifest(args.index).get("format")
    recorder = Recorder(default_meter(scope="process"), keep=False)
    per_query: list[float] = []
    extra_joules, method = 0.0, recorder.method  # the Lucene backend's JVM is metered separately
    if fmt == BM25_FORMAT:
        if args.k1 is not None or args.b is not None:
            raise ValueError("the embedded index fixes k1/b when it is built; rebuild with `tilde bm25 index --k1 --b`")
        index = BM25Index.load(args.index)
        index.warmup()
        run = {}
        with recorder.measure("first_stage", items=len(pairs)):
            if args.threads > 1:
                run = index.search_run(pairs, k=args.k, threads=args.threads)
            else:
                for qid, text in pairs:
                    t0 = time.perf_counter()
                    run[qid] = index.search(text, k=args.k)
                    per_query.append((time.perf_counter() - t0) * 1e3)
    else:
        from tilde.first_stage.lucene import LuceneBM25, java_joules

        lucene = LuceneBM25.load(args.index)
        with recorder.measure("first_stage", items=len(pairs)):
            run = lucene.search_run(pairs, k=args.k, k1=0.9 if args.k1 is None else args.k1,
                                    b=0.4 if args.b is None else args.b, threads=args.threads)
        extra_joules, method = java_joules(recorder.meter, lucene.last_java_cpu_s)
    write_run(args.output, run, fmt=args.format, tag=args.tag)
    stage = recorder.summary()["first_stage"]
    joules = stage.joules + extra_joules
    n = max(len(pairs), 1)
    empty = sum(1 for hits in run.values() if not hits)
    line = (f"searched {len(pairs)} queries ({empty} without hits) -> {args.output}: {stage.seconds:.2f} s, "
            f"{len(pairs) / stage.seconds if stage.seconds else 0:.1f} queries/s, "
            f"{joules / n:.4f} J/query ({method})")
    if per_query:
        line += f"; latency p50 {percentile(per_query, 50):.2f} ms, p99 {percentile(per_query, 99):.2f} ms"
    print(line, file=sys.stderr)
    return 0


def main(args: argparse.Namespace) -> int:
    from tilde.cli import CommandError
    from tilde.first_stage.lucene import LuceneUnavailable

    try:
        return _index(args) if args.bm25_command == "index" else _search(args)
    except LuceneUnavailable as exc:
        raise CommandError(str(exc)) from None
