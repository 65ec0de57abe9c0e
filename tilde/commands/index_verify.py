"""tilde index verify DIR"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="index directory")
    p.add_argument("--no-checksums", action="store_true",
                   help="check sizes and every array invariant, but do not re-read files for their digests")


def main(args: argparse.Namespace) -> int:
    from tilde.index import TildeIndex

    idx = TildeIndex.open(args.index)
    notes = idx.verify(checksums=not args.no_checksums)
    for note in notes:
        print(f"tilde index verify: note: {note}", file=sys.stderr)
    files = len(idx.manifest.files or {})
    what = f"{files} files match their digests" if files and not args.no_checksums else "digests not checked"
    print(f"{args.index}: ok ({idx.manifest.num_passages} passages, {idx.manifest.num_postings} postings; {what})")
    return 0
