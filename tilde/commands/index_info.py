"""tilde index info DIR"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="index directory")


def main(args: argparse.Namespace) -> int:
    from tilde.index import TildeIndex

    idx = TildeIndex.open(args.index)
    print(idx.manifest.to_json(), end="")
    m = idx.manifest
    size = sum(f.stat().st_size for f in idx.path.iterdir() if f.is_file())
    per = m.num_postings / m.num_passages if m.num_passages else 0.0
    print(f"# {m.num_passages} passages, {per:.1f} postings/passage, {size / 2**20:.1f} MiB on disk")
    return 0
