"""How fast the service encodes texts that are not in the index: requests of 100 texts of 128
tokens (126 word pieces + [CLS] + [SEP]: one MLM input of the narrowest padded width), each step timed,
against the implementation before this one (torch bi-encoder over the whole request as one batch)
measured in the same run, on 1 and 2 threads.

    python benchmarks/encode_texts.py [--index DIR] [--requests 5] [--threads 1,2]

Without ``--index`` it builds a default-recipe index (splade-tiny impact weights + all-MiniLM-L6-v2
vectors) of 200 DL21 passages into a temporary folder (about a minute); the texts come from DL21
passages too (the development set), cut to 126 word pieces, every request's texts distinct, the cache off
(a last line times a request served from it). Prints, per thread count and
implementation: median and p99 (max over few requests) wall seconds per request, texts/s, CPU
seconds per request (on a shared machine wall time also counts other processes' load), and the
load average; then the ratio new/baseline. Checks that the new path gives the baseline's postings
bit for bit and its vectors within float tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dl21" / "passages.tsv"
PIECES = 126


def _passages(limit: int | None = None) -> list[tuple[str, str]]:
    out = []
    with open(DATA, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 1)
            if len(parts) == 2 and parts[1].strip():
                out.append((parts[0], parts[1]))
            if limit and len(out) >= limit:
                break
    return out


def _texts(tokenizer: Any, n: int) -> list[str]:
    """``n`` distinct texts of exactly PIECES word pieces, cut from consecutive DL21 passages."""
    texts: list[str] = []
    buf = ""
    for _, text in _passages()[400:]:  # not the passages of the built index
        buf = f"{buf} {text}".strip()
        enc = tokenizer.encode(buf, add_special_tokens=False)
        if len(enc.ids) >= PIECES:
            cut = buf[: enc.offsets[PIECES - 1][1]]
            if len(tokenizer.encode(cut, add_special_tokens=False).ids) == PIECES:
                texts.append(cut)
            buf = ""
        if len(texts) == n:
            return texts
    raise SystemExit(f"only {len(texts)} texts of {PIECES} word pieces in {DATA}")


def _build(root: Path) -> Path:
    from tilde.index.impact import build_impact_index
    from tilde.models import DEFAULT_RECIPE as R
    from tilde.models import bundled_path

    coll = root / "collection.tsv"
    coll.write_text("".join(f"{pid}\t{t}\n" for pid, t in _passages(200)), encoding="utf-8")
    build_impact_index(bundled_path(R.impact_model), coll, root / "index", top_k=R.top_k, max_length=R.max_length,
                       dense_model=bundled_path(str(R.dense_model)), dense_codec=R.dense_codec,
                       dense_query_int8=R.dense_query_int8, scoring=R.scoring, progress=False)
    return root / "index"


def _baseline(enc: Any, texts: list[str]) -> tuple[list[Any], np.ndarray]:
    """The implementation this replaces: the MLM over all texts, then the torch bi-encoder with
    the whole request as one batch."""
    from tilde.index.impact import impact_postings

    ids = [enc.text.token_ids(t).tolist() for t in texts]
    return impact_postings(enc.expander, ids, enc._stop), enc.dense.encode(texts, batch_size=len(texts))


def _stats(walls: list[float], cpus: list[float], n: int) -> str:
    w = np.asarray(walls)
    return (f"median_s={np.median(w):.3f} p99_s={np.percentile(w, 99):.3f} texts_per_s={n / np.median(w):.1f} "
            f"cpu_s={np.median(cpus):.3f}")


def _budget_edges(enc: Any, tokenizer: Any) -> None:
    """One request at the default budget of 128-token texts and one of 16-token texts: the
    per-passage charge makes them cost about the same time."""
    from service.config import ServiceConfig
    from service.engine import PASSAGE_COST_TOKENS

    budget = ServiceConfig().max_encode_tokens
    short: list[str] = []
    for _, text in _passages()[400:]:
        e = tokenizer.encode(text, add_special_tokens=False)
        if len(e.ids) >= 14:
            short.append(text[: e.offsets[13][1]])
        if len(short) == budget // (16 + PASSAGE_COST_TOKENS):
            break
    for pieces, texts in ((PIECES, _texts(tokenizer, budget // (PIECES + 2 + PASSAGE_COST_TOKENS))), (14, short)):
        c0, w0 = time.process_time(), time.perf_counter()
        enc.encode(texts)
        print(f"  at the default budget ({budget}): {len(texts)} texts of {pieces + 2} tokens in "
              f"{time.perf_counter() - w0:.2f} s (cpu {time.process_time() - c0:.2f} s)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", help="a default-recipe index (default: build one of 200 DL21 passages)")
    ap.add_argument("--requests", type=int, default=5, help="requests per implementation and thread count")
    ap.add_argument("--texts", type=int, default=100, help="texts per request")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args(argv)
    if not DATA.is_file() and not args.index:
        print(f"skip: {DATA} not found (pass --index and keep the data beside the project)")
        return
    import torch

    from service.encoder import TextEncoder, index_models
    from tilde.rank import Reranker

    tmp = tempfile.TemporaryDirectory(prefix="tilde-encode-bench-")
    index = Path(args.index) if args.index else _build(Path(tmp.name))
    rr = Reranker.load(index)
    mlm, dense = index_models(rr.index)
    if mlm is None or dense is None:
        raise SystemExit(f"{index}: needs an impact index with a dense part whose models are on this machine")
    texts = _texts(rr.text.tokenizer, args.texts * args.requests)
    print(f"index={index} texts/request={args.texts} pieces/text={PIECES} requests={args.requests} "
          f"torch={torch.__version__} cpus={os.cpu_count()} load_avg={os.getloadavg()}")
    for threads in [int(t) for t in args.threads.split(",")]:
        t0 = time.perf_counter()
        enc = TextEncoder(mlm, rr.text, rr.index, threads=threads, dense_model=dense, cache_size=0)
        print(f"threads={threads} encoder_load_s={time.perf_counter() - t0:.2f} "
              f"(includes the bi-encoder's ONNX export) onnx={enc._dense_session is not None}")
        enc.encode(texts[:8])
        _baseline(enc, texts[:8])
        # correctness on one request: postings bit for bit, vectors to float tolerance
        batch = texts[: args.texts]
        base_p, base_v = _baseline(enc, batch)
        new = enc.encode(batch)
        same = all(np.array_equal(new.tokens[new.offsets[i]:new.offsets[i + 1]], p[0]) and
                   np.array_equal(new.codes[new.offsets[i]:new.offsets[i + 1]], p[1].view(np.uint16))
                   for i, p in enumerate(base_p))
        assert new.dense is not None
        print(f"  check: postings identical={same} vector max|diff|={np.abs(new.dense - base_v).max():.2e}")
        results: dict[str, tuple[list[float], list[float]]] = {"baseline": ([], []), "new": ([], [])}
        steps: dict[str, list[float]] = {"chunk": [], "mlm": [], "dense": []}
        for r in range(args.requests):
            req = texts[r * args.texts : (r + 1) * args.texts]  # the cache is off: nothing is reused
            for name, run in (("baseline", partial(_baseline, enc)), ("new", enc.encode_cached)):
                c0, w0 = time.process_time(), time.perf_counter()  # interleaved: the same load for both
                run(req)
                results[name][0].append(time.perf_counter() - w0)
                results[name][1].append(time.process_time() - c0)
            # the new path's steps, on the same request
            s0 = time.perf_counter()
            [enc.chunk(t, None, 10) for t in req]
            s1 = time.perf_counter()
            enc.postings(req)
            s2 = time.perf_counter()
            enc.vectors(req)
            s3 = time.perf_counter()
            for k, lap in zip(steps, (s1 - s0, s2 - s1, s3 - s2)):
                steps[k].append(lap)
        for name, (walls, cpus) in results.items():
            print(f"  {name}: {_stats(walls, cpus, args.texts)}")
        for k, laps in steps.items():
            print(f"  step {k}: median_s={np.median(laps):.3f} texts_per_s={args.texts / np.median(laps):.1f}")
        ratio = np.median(results["baseline"][0]) / np.median(results["new"][0])
        cpu_ratio = np.median(results["baseline"][1]) / np.median(results["new"][1])
        print(f"  speedup new/baseline: wall x{ratio:.2f} cpu x{cpu_ratio:.2f} load_avg={os.getloadavg()}")
        if threads == 1:
            _budget_edges(enc, rr.text.tokenizer)
        cached = TextEncoder(mlm, rr.text, rr.index, threads=threads, dense_model=dense, cache_size=4096)
        cached.encode(texts[: args.texts])
        w0 = time.perf_counter()
        _, hits = cached.encode_cached(texts[: args.texts])
        print(f"  cached request: {time.perf_counter() - w0:.4f} s, {sum(hits)}/{len(hits)} hits")
    tmp.cleanup()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
