"""What the integrity checks cost on a 1M-passage index: the digests finalize records, open()'s
checks (file sizes, offsets monotonic, lookup array ascending, row orders in range), and the full
``verify`` scan with and without digests.

The index (built once, cached in --work) has rerank_latency.py's synthetic postings and shuffled
integer docids, so the docid lookup pair (docids_sorted.npy, docids_order.npy) exists and open()
checks it too (the MS MARCO layout, ids 0..N-1, stores no docids at all).

    python benchmarks/index_integrity.py [--passages 1000000]

Last line: open_s=<x> open_checks_s=<y> digest_s=<z> digest_mb_per_s=<r> verify_s=<v> verify_no_digest_s=<w>
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rerank_latency import bert_tokenizer_dir, zipf_probs  # noqa: E402

from tilde.index.format import MANIFEST, Manifest, file_entries  # noqa: E402
from tilde.index.reader import TildeIndex  # noqa: E402
from tilde.index.writer import finalize  # noqa: E402
from tilde.text import TextProcessor  # noqa: E402


def build(out: Path, text: TextProcessor, n: int, draws: int = 118, seed: int = 0) -> float:
    ids, p = zipf_probs(text)
    cdf = np.cumsum(p)
    rng = np.random.default_rng(seed)
    docids = rng.permutation(n) * 7 + 3  # not ascending, not 0..N-1

    def chunks():  # type: ignore[no-untyped-def]
        block = 50_000
        for start in range(0, n, block):
            b = min(block, n - start)
            sample = ids[np.minimum(np.searchsorted(cdf, rng.random((b, draws))), ids.size - 1)]
            sample.sort(axis=1)
            keep = np.ones_like(sample, dtype=bool)
            keep[:, 1:] = sample[:, 1:] != sample[:, :-1]
            tokens = sample[keep].astype(np.uint32)
            yield {
                "docids": docids[start : start + b].astype(str),
                "lengths": keep.sum(axis=1).astype(np.int64),
                "tokens": tokens,
                "weights": rng.gamma(2.0, 0.6, size=tokens.size).astype(np.float16),
            }

    manifest = Manifest(vocab_size=text.vocab_size, vocab_sha256=text.vocab_hash, model="synthetic",
                        model_sha256="0" * 64)
    t0 = time.perf_counter()
    finalize(list(chunks()), out, manifest, tokenizer=text.tokenizer)
    return time.perf_counter() - t0


def open_seconds(index: Path) -> float:
    """TildeIndex.open in a fresh process (imports not counted), median of 5, page cache warm."""
    code = ("import time; from tilde.index.reader import TildeIndex; t=time.perf_counter(); "
            f"TildeIndex.open({str(index)!r}); print(time.perf_counter()-t)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return statistics.median(float(subprocess.check_output([sys.executable, "-c", code], text=True, env=env))
                             for _ in range(5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tilde-bench")
    args = ap.parse_args()
    text = TextProcessor.load(bert_tokenizer_dir())
    index = args.work / f"integrity-{args.passages}"
    if not (index / MANIFEST).exists():
        seconds = build(index, text, args.passages)
        print(f"built {index} (finalize, digests included) in {seconds:.1f} s", file=sys.stderr)
    idx = TildeIndex.open(index)
    m = idx.manifest
    total = sum(e["size"] for e in (m.files or {}).values())
    print(f"index: {m.num_passages} passages, {m.num_postings} postings, {len(m.files or {})} files, "
          f"{total / 2**20:.0f} MiB; docid kind {m.docid_kind}, lookup pair stored: {not m.docids_sorted}")

    t0 = time.perf_counter()
    file_entries(index, list(m.files or {}))
    digest = time.perf_counter() - t0
    print(f"digests of every file (what finalize adds): {digest:.2f} s, {total / 2**20 / digest:.0f} MiB/s")

    opened = open_seconds(index)
    print(f"TildeIndex.open, fresh process, page cache warm: {opened:.3f} s (median of 5)")
    # The O(N) part of open() alone, on the mapped arrays (what open() adds over shape checks).
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        off, ds, order = idx.offsets, idx.docids_sorted, idx.docids_order
        assert ds is not None and order is not None
        bool(np.any(off[1:] < off[:-1]))
        bool(np.all(ds[1:] > ds[:-1]))
        int(order.min()), int(order.max())
        runs.append(time.perf_counter() - t0)
    checks = statistics.median(runs)
    print(f"  of which the per-passage checks (offsets, lookup array, row orders): {checks:.3f} s")

    plain, full_runs = [], []
    for _ in range(2):  # alternated, each the median of two: the first pass may still page files in
        t0 = time.perf_counter()
        idx.verify(checksums=False)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        idx.verify()
        full_runs.append(time.perf_counter() - t0)
    no_digest, full = statistics.median(plain), statistics.median(full_runs)
    print(f"verify: {full:.2f} s with digests, {no_digest:.2f} s without")
    print(f"open_s={opened:.3f} open_checks_s={checks:.3f} digest_s={digest:.2f} "
          f"digest_mb_per_s={total / 2**20 / digest:.0f} verify_s={full:.2f} verify_no_digest_s={no_digest:.2f}")


if __name__ == "__main__":
    main()
