"""tilde demo: the pipeline end to end on a bundled corpus with the default recipe."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work", default=None, help="work directory for the indexes (default: a temp dir)")
    p.add_argument("--model", default=None, help="default: the default recipe (splade-tiny impact weights + "
                   "all-MiniLM-L6-v2); or a TILDEv2 checkpoint (e.g. tildev2-splade-tiny) or a masked LM")
    p.add_argument("--mode", default="index", help="scoring mode (default: what the index recommends)")
    p.add_argument("--no-expansion", action="store_true", help="TILDEv2 models: index the passages without expansion")
    p.add_argument("--depth", type=int, default=10, help="BM25 candidates re-ranked per query")


def main(args: argparse.Namespace) -> int:
    from tilde.demo import run_demo

    run_demo(work=args.work, model=args.model, expander=None if args.no_expansion else "default", depth=args.depth,
             mode=args.mode)
    return 0
