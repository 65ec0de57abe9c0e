"""tilde index merge --output DIR SHARD_DIR..."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", nargs="+", help="shard index directories (any order)")
    p.add_argument("--output", required=True)
    p.add_argument("--weights", choices=("float16", "uint8"), default="float16")
    p.add_argument("--overwrite", action="store_true")


def main(args: argparse.Namespace) -> int:
    from tilde.index.merge import merge_indexes

    m = merge_indexes(args.shards, args.output, weight_dtype=args.weights, overwrite=args.overwrite)
    print(f"merged {len(args.shards)} shards into {args.output}: {m.num_passages} passages, {m.num_postings} postings")
    return 0
