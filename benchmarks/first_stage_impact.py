"""The in-process impact first stage (tilde.first_stage.inverted) against embedded BM25, measured
in the same run: inversion time (on load, or stored by ``tilde build``), memory, and query
latency (median and p99, top ``--k``) on the same postings.

Synthetic (default): a 1M-passage index of ~110 random-weight postings per passage
(benchmarks/_service_index.py), and a BM25 index of exactly the same (token, passage) pairs (term
frequency 1, Lucene BM25 weights), so both kernels walk the same posting lists; queries are 5
Zipf-frequent words, each term found in both.

    python benchmarks/first_stage_impact.py [--passages 1000000] [--work DIR] [--queries 300] [--k 1000]

Real (e.g. SciFact): a built tilde index and its BM25 index, with real queries (BM25 then
analyses the text, the impact side tokenizes it: each engine's own full query path).

    python benchmarks/first_stage_impact.py --index DIR --bm25 DIR --query-file queries.tsv
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _ms(fn: Callable[[], Any], repeats: int = 1) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _per_query(fn: Callable[[Any], Any], items: Sequence[Any], repeats: int = 3) -> list[float]:
    """One latency per query: the median of ``repeats`` runs (on a shared machine a single run
    also measures the neighbours)."""
    return [float(np.median(_ms(lambda x=x: fn(x), repeats))) for x in items]


def _row(name: str, ms: Sequence[float], extra: str = "") -> str:
    a = np.asarray(ms)
    return (f"| {name} | {np.median(a):.3f} | {np.percentile(a, 99):.3f} | {1e3 / a.mean():.0f} | {extra} |")


def _bm25_of_postings(index: Any, out: Path) -> Path:
    """A BM25 index (tilde's embedded format) of the index's (token, row) pairs, tf 1: term id =
    token id (terms are "t00000".. so that their sorted order is the id order)."""
    from tilde import __version__
    from tilde.first_stage.analyzer import Analyzer
    from tilde.first_stage.bm25 import (
        DATA,
        DOCIDS,
        INDICES,
        INDPTR,
        MANIFEST,
        TERMS,
        BM25Manifest,
        _as_bytes_array,
        bm25_weights,
    )

    if (out / MANIFEST).is_file():
        return out
    t0 = time.perf_counter()
    v = int(index.manifest.vocab_size)
    lengths = np.diff(np.asarray(index.offsets))
    data, indices, indptr = bm25_weights(np.asarray(index.tokens).astype(np.int32), lengths, v, 0.9, 0.4)
    out.mkdir(parents=True)
    terms = _as_bytes_array([f"t{t:05d}".encode() for t in range(v)])
    docids = _as_bytes_array([str(i).encode() for i in range(len(index))])
    for name, arr in ((DOCIDS, docids), (TERMS, terms), (DATA, data), (INDICES, indices), (INDPTR, indptr)):
        np.save(out / name, arr, allow_pickle=False)
    m = BM25Manifest(num_docs=len(index), num_terms=v, num_postings=int(data.size), avg_doc_len=float(lengths.mean()),
                     k1=0.9, b=0.4, length_norm="lucene", analyzer=Analyzer().to_dict(),
                     collection={"synthetic": str(index.path)}, tilde_version=__version__, bm25s_version="-")
    (out / MANIFEST).write_text(m.to_json(), encoding="utf-8")
    print(f"built the BM25 index of the same postings in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def synthetic(args: argparse.Namespace) -> list[str]:
    from _service_index import build_synthetic_index, query_words

    from tilde.first_stage import BM25Index
    from tilde.first_stage.inverted import ImpactIndex, invert_postings, write_inverted_index
    from tilde.index import TildeIndex

    work = Path(args.work)
    path = build_synthetic_index(work / "index", args.passages)
    idx = TildeIndex.open(path)
    lines = [f"synthetic index: {len(idx)} passages, {idx.manifest.num_postings} postings "
             f"({idx.manifest.num_postings / len(idx):.0f} per passage)"]
    invert_postings(TildeIndex.open(path))  # numba's cache, page cache: the timings below are warm
    t_mem = min(_ms(lambda: invert_postings(idx), 3))
    _, t_write = write_inverted_index(idx)
    t_open = min(_ms(lambda: ImpactIndex.load(path), 3))
    impact = ImpactIndex.load(path)
    assert impact.stored
    lines.append(f"inversion in memory: {t_mem / 1e3:.2f} s (best of 3), written to <index>/inverted: "
                 f"{t_write:.2f} s, opening the stored one: {t_open:.1f} ms; {impact.bytes_in_memory / 1e6:.0f} MB "
                 f"({impact.bytes_in_memory / idx.manifest.num_postings:.1f} B/posting)")
    bm25 = BM25Index.load(_bm25_of_postings(idx, work / "bm25"))
    texts = query_words(args.queries, seed=7)
    qids = [impact.term_ids(q) for q in texts]
    assert all(q.size for q in qids)
    for q in qids[:20]:  # same posting lists: the same passages match (the scores differ)
        a = impact.search_ids(q, len(idx))[0]
        b = bm25.search_ids(q, len(idx))[0]
        assert np.array_equal(np.sort(a), np.sort(b))
    touched = [int(sum(int(impact.arrays.indptr[t + 1] - impact.arrays.indptr[t]) for t in q)) for q in qids]
    lines.append(f"{len(texts)} queries of 5 Zipf-frequent words; postings walked per query: median "
                 f"{int(np.median(touched))}, p99 {int(np.percentile(touched, 99))}; top k={args.k}")
    return lines + _latency(impact, bm25, texts, qids, args.k, bm25_ids=qids)


def real(args: argparse.Namespace) -> list[str]:
    from tilde.first_stage import BM25Index
    from tilde.first_stage.inverted import ImpactIndex
    from tilde.io import read_queries

    t0 = time.perf_counter()
    impact = ImpactIndex.load(args.index, use_stored=False)
    t_inv = time.perf_counter() - t0
    bm25 = BM25Index.load(args.bm25)
    texts = [q.text for q in read_queries(args.query_file)]
    lines = [f"index {args.index}: {len(impact)} passages, {impact.index.manifest.num_postings} postings, inverted "
             f"in memory in {t_inv:.2f} s ({impact.bytes_in_memory / 1e6:.1f} MB); {len(texts)} queries; "
             f"top k={args.k}"]
    return lines + _latency(impact, bm25, texts, [impact.term_ids(q) for q in texts], args.k, bm25_ids=None)


def _latency(impact: Any, bm25: Any, texts: list[str], qids: list[np.ndarray], k: int,
             bm25_ids: list[np.ndarray] | None) -> list[str]:
    impact.warmup()
    bm25.warmup()
    rows = ["| engine | p50 ms | p99 ms | queries/s | what is timed (per query: median of 3 runs) |",
            "|---|---|---|---|---|"]
    if bm25_ids is not None:
        b = _per_query(lambda q: bm25._hits(q, k), bm25_ids)
        rows.append(_row("BM25 embedded (baseline)", b, "term ids -> top k hits (docids)"))
    else:
        b = _per_query(lambda t: bm25.search(t, k), texts)
        rows.append(_row("BM25 embedded (baseline)", b, "query text -> top k hits (analysis included)"))
    i = _per_query(lambda q: impact._hits(q, k), qids)
    rows.append(_row("impact in-process", i, "token ids -> top k hits (docids)"))
    full = _per_query(lambda t: impact.search(t, k), texts)
    rows.append(_row("impact in-process, with tokenization", full, "query text -> top k hits"))
    same = full if bm25_ids is None else i
    rows.append(f"ratio impact/BM25 at p50 (same kind of timing): {np.median(same) / np.median(b):.2f}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--work", default="/tmp/tilde-bench-impact", help="synthetic index and BM25 cache")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--index", help="a built tilde index (real mode)")
    ap.add_argument("--bm25", help="its BM25 index (real mode)")
    ap.add_argument("--query-file", help="qid<TAB>text (real mode)")
    args = ap.parse_args(argv)
    lines = real(args) if args.index else synthetic(args)
    print("\n".join(lines))
    print(json.dumps({"k": args.k, "mode": "real" if args.index else "synthetic"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
