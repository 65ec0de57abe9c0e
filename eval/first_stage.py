"""The exported TILDEv2 impact index as a first stage of the evaluation scripts, and the SciFact
pipeline that compares it with embedded BM25.

``--first-stage impact`` (``eval.beir``): retrieve with the re-ranking index's own weights, in
process (:class:`tilde.first_stage.inverted.ImpactIndex`: float weights, tokenizer-only queries,
no Java); ``impact:DIR`` with :class:`tilde.first_stage.impact.LuceneImpact` over ``DIR`` (from
``tilde export anserini --build``: the same weights quantised, searched by Anserini). Either
replaces BM25 as the run that is re-ranked. ``bm25`` (the default) keeps the script's own BM25.

The pipeline, one re-runnable command (every step is skipped when its output is current)::

    python -m eval.first_stage --data ../shared/data/scifact --work WORK [--model default]

1. ``tilde build`` of the whole corpus into ``WORK/index`` (resumable);
2. ``tilde export anserini --build`` into ``WORK/impact`` (redone when the index changed);
3. embedded BM25 of the corpus (``WORK/bm25``);
4. the three first stages (BM25, the impact export in Lucene, the same weights in process) to
   ``--depth`` (100), nDCG@10 and R@100, then each re-ranked with
   ``WORK/index`` (plain TILDEv2, and with the model's feedback when it recommends one);
5. a Markdown table, and ``WORK/runs/*.trec``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .pipeline import Run, StageTimes, batch_first_stage, new_recorder

__all__ = ["add_first_stage_argument", "impact_first_stage", "inprocess_impact_first_stage", "select_first_stage"]


def add_first_stage_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--first-stage", default="bm25", metavar="bm25|impact|impact:DIR",
                   help="first stage: bm25 (default); impact, the re-ranking index's own weights searched in process "
                        "(the whole corpus is indexed); or impact:DIR, the Lucene impact index of those weights "
                        "(`tilde export anserini --build --output DIR`; Java 11+ and the pyserini jar)")


def inprocess_impact_first_stage(index: str | Path, queries: Sequence[tuple[str, str]],
                                 k: int, quantization: float | None = None) -> tuple[Run, StageTimes]:
    """Top ``k`` per query from the index's own weights (:class:`ImpactIndex`), timed per query."""
    from tilde.first_stage.inverted import ImpactIndex

    from .pipeline import first_stage

    return first_stage(ImpactIndex.load(index, quantization=quantization), queries, k)


def impact_first_stage(export_dir: str | Path, queries: Sequence[tuple[str, str]], k: int,
                       threads: int = 1) -> tuple[Run, StageTimes]:
    """Top ``k`` per query from the exported impact index, as one timed batch (one JVM)."""
    from tilde.first_stage.impact import LuceneImpact
    from tilde.first_stage.lucene import java_joules

    recorder = new_recorder()
    t0 = time.perf_counter()
    searcher = LuceneImpact.load(export_dir)
    with recorder.measure("first_stage", items=len(queries)):
        hits = searcher.search_run(queries, k=k, threads=threads)
    run = {qid: [(e.docid, e.score) for e in entries] for qid, entries in hits.items()}
    java, method = java_joules(recorder.meter, searcher.last_java_cpu_s)
    joules = sum(s.joules for s in recorder.summary().values()) + java
    return run, batch_first_stage(time.perf_counter() - t0, joules, method, [q for q, _ in queries])


def check_first_stage(spec: str) -> str:
    """``spec`` when it names a first stage (``bm25``, ``impact``, ``impact:DIR``), else ValueError."""
    kind, colon, where = spec.partition(":")
    if spec in ("bm25", "impact") or (kind == "impact" and where):
        return spec
    raise ValueError(f"--first-stage {spec!r}: expected bm25, impact or impact:DIR")


def select_first_stage(spec: str, bm25: tuple[Run, StageTimes], queries: Sequence[tuple[str, str]],
                       k: int, index: str | Path | None = None) -> tuple[str, Run, StageTimes]:
    """``(name, run, times)`` of the first stage ``spec`` names: ``bm25``, ``impact`` (the weights
    of ``index``, in process) or ``impact:DIR`` (the Lucene export)."""
    check_first_stage(spec)
    if spec == "bm25":
        return ("BM25", *bm25)
    if spec == "impact":
        if index is None:
            raise ValueError("--first-stage impact searches the re-ranking index's weights: it needs --model")
        return ("impact", *inprocess_impact_first_stage(index, queries, k))
    return ("impact", *impact_first_stage(spec.partition(":")[2], queries, k))


# --------------------------------------------------------------------------------------------
# the SciFact pipeline


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    from .pipeline import add_feedback_argument

    p = argparse.ArgumentParser(prog="python -m eval.first_stage", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="BEIR folder: corpus.jsonl[.gz], queries.<split>.tsv, qrels")
    p.add_argument("--work", required=True, help="working directory (index, export, BM25, runs)")
    p.add_argument("--split", default="test")
    p.add_argument("--model", default=None, help="TILDEv2 checkpoint (default: the embedded default)")
    p.add_argument("--expander", default="default", help="expander of `tilde build` (default: the model's)")
    p.add_argument("--depth", type=int, default=100, help="first-stage depth, all re-ranked (default 100)")
    p.add_argument("--quantization-factor", type=float, default=100.0)
    p.add_argument("--threads", type=int, default=1, help="Anserini indexing/search threads")
    add_feedback_argument(p)
    return p.parse_args(argv)


def _build_index(args: argparse.Namespace, corpus: Path, out: Path) -> None:
    from tilde.index.format import MANIFEST

    if (out / MANIFEST).is_file():
        return
    from tilde.cli import main as tilde

    cmd = ["build", "--collection", str(corpus), "--output", str(out), "--expander", args.expander]
    if args.model:
        cmd += ["--model", args.model]
    print(f"$ tilde {' '.join(cmd)}", file=sys.stderr)
    if tilde(cmd) != 0:
        raise RuntimeError("tilde build failed")


def _export(args: argparse.Namespace, index: Path, out: Path) -> None:
    from tilde.export.anserini import export_anserini
    from tilde.export.source import ExportSource

    identity = ExportSource.open(index).identity()
    manifest = out / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text("utf-8"))
        if (data.get("source_index") == identity and data.get("lucene")
                and data.get("quantization", {}).get("factor") == args.quantization_factor):
            return
    print(export_anserini(index, out, factor=args.quantization_factor, build=True, threads=args.threads,
                          overwrite=True, progress=False).format(), file=sys.stderr)


def _cells(agg: dict[str, float]) -> str:
    return f"{agg['ndcg@10']:.4f} | {agg['r@100']:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    from tilde.bm25 import BM25Index, build_bm25_index
    from tilde.io import read_qrels, read_queries, write_run
    from tilde.rank import Reranker
    from tilde.rank.feedback import feedback_arg

    from .beir import _corpus, _measures
    from .metrics import evaluate
    from .pipeline import first_stage, rerank_run

    data, work = Path(args.data), Path(args.work)
    corpus = _corpus(data)
    work.mkdir(parents=True, exist_ok=True)
    queries = read_queries(data / f"queries.{args.split}.tsv")
    qrels = read_qrels(data / f"qrels.{args.split}.trec")
    pairs = [(q.qid, q.text) for q in queries]
    texts = dict(pairs)
    _build_index(args, corpus, work / "index")
    _export(args, work / "index", work / "impact")
    if not (work / "bm25" / "manifest.json").is_file():
        print(build_bm25_index(corpus, work / "bm25").format(), file=sys.stderr)
    measures = _measures()
    stages: dict[str, tuple[Run, StageTimes]] = {
        "BM25 (embedded)": first_stage(BM25Index.load(work / "bm25"), pairs, args.depth),
        "TILDEv2 impact (Lucene)": impact_first_stage(work / "impact", pairs, args.depth, args.threads),
        "TILDEv2 impact (in-process)": inprocess_impact_first_stage(work / "index", pairs, args.depth),
    }
    reranker = Reranker.load(work / "index", missing="zero", feedback=feedback_arg(args.feedback))
    rerankers: list[tuple[str, Any]] = [(f"tilde [{reranker.scoring}]", reranker.with_feedback(None))]
    if reranker.scoring.mode != "tokens":  # the index's recommended mode, and the tokenizer-only one
        rerankers.append(("tilde [tokens]", reranker.with_feedback(None).with_scoring("tokens")))
    if reranker.feedback is not None:
        rerankers.append((f"TILDEv2 + PRF({reranker.feedback})", reranker))
    (work / "runs").mkdir(exist_ok=True)
    rows = []
    for name, (run, times) in stages.items():
        tag = "bm25" if name.startswith("BM25") else "impact" if "Lucene" in name else "impact-inprocess"
        write_run(work / "runs" / f"{tag}.trec", run, tag=tag)
        rows.append((name, "-", evaluate(run, qrels, measures).aggregate, times.p("total", 50)))
        for rname, rr in rerankers:
            reranked, rtimes = rerank_run(rr, texts, run, depth=args.depth)
            rows.append((name, rname, evaluate(reranked, qrels, measures).aggregate, rtimes.p("total", 50)))
    print(f"{data.name} ({args.split}): {len(queries)} queries, first stage depth {args.depth}, "
          f"index {work / 'index'}, impact export {work / 'impact'} (factor {args.quantization_factor:g})")
    print("| first stage | re-ranked by | nDCG@10 | R@100 | p50 ms/query, that stage (impact: JVM batch / queries) |")
    print("|---|---|---|---|---|")
    for name, rname, agg, p50 in rows:
        print(f"| {name} | {rname} | {_cells(agg)} | {p50:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
