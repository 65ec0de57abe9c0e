"""tilde export anserini --index DIR --output OUT [--quantization-factor 100] [--shards N] [--gzip] [--build]
tilde export anserini --output OUT --build            (build the Lucene index of an existing export)
tilde export search --index OUT --queries FILE --output RUN [--k 1000]   (impact first stage)
tilde export opensearch --index DIR --output OUT [--index-name tilde] [--field tilde] [--docs-per-file N]"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="export_command", metavar="{anserini,search,opensearch}", required=True)
    an = sub.add_parser("anserini", help="Anserini JsonVectorCollection (+ Lucene impact index with --build)",
                        description="Write an Anserini JsonVectorCollection of a tilde index (integer impacts, "
                                    "round(weight * factor)); --build also runs Anserini's IndexCollection "
                                    "-impact -pretokenized (Java 11+, the jar of pyserini==0.25.0).")
    an.add_argument("--index", help="tilde index directory (omit with --build to build an existing export)")
    an.add_argument("--output", required=True, help="export directory (collection/, manifest.json, lucene/)")
    an.add_argument("--quantization-factor", type=float, default=100.0,
                    help="impact = round(weight * factor) (default 100, as Pyserini's SPLADE collections)")
    an.add_argument("--shards", type=int, default=1, help="number of JSONL files (default 1)")
    an.add_argument("--gzip", action="store_true", help="write .jsonl.gz files")
    an.add_argument("--build", action="store_true", help="then build the Lucene impact index (OUT/lucene)")
    an.add_argument("--threads", type=int, default=1, help="Anserini indexing threads (with --build)")
    an.add_argument("--store-raw", action="store_true", help="Anserini -storeRaw (keep each JSON line)")
    an.add_argument("--overwrite", action="store_true", help="replace an existing export")
    an.add_argument("--no-progress", action="store_true")

    se = sub.add_parser("search", help="first stage: search an exported Lucene impact index",
                        description="Retrieve the top k per query from `tilde export anserini --build` output, "
                                    "queries tokenised as the re-ranker does (stop ids dropped, repeats kept).")
    se.add_argument("--index", required=True, help="export directory with lucene/ (from --build)")
    se.add_argument("--queries", required=True, help="qid<TAB>text TSV or JSONL")
    se.add_argument("--output", required=True, help="run file to write")
    se.add_argument("--k", type=int, default=1000, help="hits per query (default 1000)")
    se.add_argument("--format", choices=("trec", "msmarco"), default="trec", help="output run format")
    se.add_argument("--threads", type=int, default=1, help="Anserini search threads")
    se.add_argument("--tag", default="tilde-impact")

    os_ = sub.add_parser("opensearch", help="OpenSearch/Elasticsearch bulk NDJSON with a rank_features field",
                         description="Write bulk NDJSON files and mapping.json; feature names escape '%%' as "
                                     "'%%25' and '.' as '%%2E' (see the README for the query).")
    os_.add_argument("--index", required=True, help="tilde index directory")
    os_.add_argument("--output", required=True, help="output directory")
    os_.add_argument("--index-name", default="tilde", help="_index of the bulk actions (default tilde)")
    os_.add_argument("--field", default="tilde", help="rank_features field name (default tilde)")
    os_.add_argument("--docs-per-file", type=int, default=10_000, help="documents per bulk file (default 10000)")
    os_.add_argument("--gzip", action="store_true", help="write .ndjson.gz files")
    os_.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    os_.add_argument("--no-progress", action="store_true")


def _anserini(args: argparse.Namespace) -> int:
    from tilde.cli import CommandError
    from tilde.export.anserini import build_impact_index, export_anserini

    if args.index is None:
        if not args.build:
            raise CommandError("--index is required (without it, --build builds an existing export)")
        print(build_impact_index(args.output, threads=args.threads, store_raw=args.store_raw).format())
        return 0
    summary = export_anserini(args.index, args.output, factor=args.quantization_factor, shards=args.shards,
                              gzip=args.gzip, build=args.build, threads=args.threads, store_raw=args.store_raw,
                              overwrite=args.overwrite, progress=not args.no_progress)
    print(summary.format())
    return 0


def _search(args: argparse.Namespace) -> int:
    from tilde.first_stage.impact import LuceneImpact
    from tilde.first_stage.lucene import java_joules
    from tilde.io import read_queries, write_run
    from tilde.metering import Recorder, default_meter

    searcher = LuceneImpact.load(args.index)
    pairs = [(q.qid, q.text) for q in read_queries(args.queries)]
    recorder = Recorder(default_meter(scope="process"), keep=False)
    with recorder.measure("first_stage", items=len(pairs)):
        run = searcher.search_run(pairs, k=args.k, threads=args.threads)
    write_run(args.output, run, fmt=args.format, tag=args.tag)
    stage = recorder.summary()["first_stage"]
    extra, method = java_joules(recorder.meter, searcher.last_java_cpu_s)
    empty = sum(1 for hits in run.values() if not hits)
    n = max(len(pairs), 1)
    print(f"searched {len(pairs)} queries ({empty} without hits) -> {args.output}: {stage.seconds:.2f} s, "
          f"{len(pairs) / stage.seconds if stage.seconds else 0:.1f} queries/s, "
          f"{(stage.joules + extra) / n:.4f} J/query ({method}); scores are impacts, "
          f"{searcher.factor:g} x the TILDEv2 score", file=sys.stderr)
    return 0


def _opensearch(args: argparse.Namespace) -> int:
    from tilde.export.opensearch import export_opensearch

    summary = export_opensearch(args.index, args.output, index_name=args.index_name, field=args.field,
                                docs_per_file=args.docs_per_file, gzip=args.gzip, overwrite=args.overwrite,
                                progress=not args.no_progress)
    print(summary.format())
    return 0


def main(args: argparse.Namespace) -> int:
    from tilde.cli import CommandError
    from tilde.first_stage.bm25 import BM25IndexError
    from tilde.first_stage.lucene import LuceneUnavailable

    handlers = {"anserini": _anserini, "search": _search, "opensearch": _opensearch}
    try:
        return handlers[args.export_command](args)
    except (LuceneUnavailable, BM25IndexError) as exc:
        raise CommandError(str(exc)) from None
