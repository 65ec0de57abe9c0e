"""tilde index verify DIR"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="index directory")


def main(args: argparse.Namespace) -> int:
    from tilde.index import TildeIndex

    idx = TildeIndex.open(args.index)
    idx.verify()
    print(f"{args.index}: ok ({idx.manifest.num_passages} passages, {idx.manifest.num_postings} postings)")
    return 0
