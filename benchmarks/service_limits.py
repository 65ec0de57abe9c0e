"""The worst requests the default limits allow, timed against `tilde serve` on loopback over the
synthetic 1M-passage index (the same as benchmarks/service_load.py), with the default settings.

    python benchmarks/service_limits.py [--passages 1000000] [--repeat 3] [--feedback 5,30,0.5]

Each row is one request shape at the edge of the budget (max_candidates, max_work,
max_query_chars_total, max_batch_queries, max_encode_tokens of full passages), answered by one worker
while the other is idle; it prints the status and the client-side wall time (median and max of
``--repeat`` runs). Shapes over the budget must be refused fast (422/413). The last lines are

    worst_id_only_ms=<x> status=200 limit_ms=2000
    encode_<n>_texts_ms=<y> deadline_ms=<z>

The encode row uses the embedded default model (as many full 192-token passages, not in the
index, as max_encode_tokens admits; TILDE_CHECK_MODEL=0 since the synthetic index was not built
with it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _service_index import SPECIALS, build_synthetic_index, vocab_words  # noqa: E402

from service.config import ServiceConfig  # noqa: E402
from service.engine import PASSAGE_COST_TOKENS  # noqa: E402

WORDS = vocab_words()[len(SPECIALS):]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(port: int, path: str, body: dict[str, Any], timeout: float = 120) -> tuple[int, float, bytes]:
    """One request on a fresh connection; the answer is read even when the server refuses the
    body before it has all been sent (a 413 closes the connection)."""
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(head + data)
        except OSError:
            pass
        buf = b""
        try:
            while chunk := s.recv(1 << 20):
                buf += chunk
        except OSError:
            pass
    seconds = time.perf_counter() - t0
    head_bytes, _, out = buf.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1]) if head_bytes else 0
    return status, seconds, out


def query(distinct: int, offset: int = 0) -> str:
    """A query of ``distinct`` different (non-stopword) vocabulary words."""
    return " ".join(WORDS[offset + i] for i in range(distinct))


def shapes(passages: int, cfg: ServiceConfig) -> list[tuple[str, str, dict[str, Any]]]:
    rng = np.random.default_rng(3)

    def ids(n: int) -> list[int]:
        return rng.integers(0, passages, size=n).tolist()

    per_query = cfg.max_documents
    nq = cfg.max_candidates // per_query  # queries of max_documents candidates that fit max_candidates
    tokens_long = cfg.max_work // cfg.max_candidates  # distinct tokens per query at max_work
    chars_per_query = cfg.max_query_chars_total // cfg.max_batch_queries
    per_small = cfg.max_candidates // cfg.max_batch_queries
    longest = query(3282)[: cfg.max_query_chars]
    out = [
        ("max_candidates, 1-token queries, every result returned",
         "/v1/rerank/batch", {"queries": [{"query": WORDS[i], "ids": ids(per_query)} for i in range(nq)]}),
        (f"max_work: {nq} x {per_query} candidates x {tokens_long} distinct tokens",
         "/v1/rerank/batch", {"queries": [{"query": query(tokens_long, 50 * i), "ids": ids(per_query)}
                                          for i in range(nq)], "top_n": 10}),
        (f"max_batch_queries x {per_small} candidates, max_query_chars_total",
         "/v1/rerank/batch", {"queries": [{"query": query(chars_per_query // 6, i)[:chars_per_query],
                                           "ids": ids(per_small)} for i in range(cfg.max_batch_queries)],
                              "top_n": 10}),
        ("max_documents with one query of max_query_chars (all distinct tokens)",
         "/v1/rerank", {"query": longest, "ids": ids(per_query), "top_n": 10}),
        ("the issue's 256 x 10,000 ids 0..9999 with a 11k-character query, 15.5 MB (must be refused)",
         "/v1/rerank/batch", {"queries": [{"query": longest[:11000], "ids": list(range(per_query))}
                                          for _ in range(cfg.max_batch_queries)]}),
    ]
    # the longest query at the most candidates max_work allows for it (one token per word)
    distinct = len(set(longest.split()))
    out.insert(4, (f"one query of max_query_chars ({distinct} distinct tokens) x max_work / tokens candidates",
                   "/v1/rerank", {"query": longest, "ids": ids(min(per_query, cfg.max_work // distinct)),
                                  "top_n": 10}))
    return out


def start(index: Path, port: int, log: Path, extra: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tilde.cli", "serve", "--index", str(index), "--port", str(port), *extra]
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=f)
    t0 = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - t0 > 180:
            proc.kill()
            raise SystemExit(f"tilde serve did not start; see {log}")
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--feedback", default="off", help="pseudo-relevance feedback for the id runs (e.g. 5,30,0.5)")
    ap.add_argument("--no-encode", action="store_true", help="skip the on-the-fly encoding row")
    args = ap.parse_args()
    cfg = ServiceConfig()
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / "tilde-svc-bench" / f"index-{args.passages}"
    index = build_synthetic_index(cache, args.passages)
    log = cache.parent / "limits-server.log"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    print(f"# {args.passages} passages; default limits {json.dumps(cfg.limits())}; feedback {args.feedback}; "
          f"{os.cpu_count()} CPUs; {args.repeat} runs per shape", flush=True)
    port = _free_port()
    proc = start(index, port, log, ["--feedback", args.feedback, "--model", "none"], env)
    worst = (0.0, 0)
    try:
        for name, path, body in shapes(args.passages, cfg):
            times, statuses, code = [], set(), ""
            for _ in range(args.repeat):
                status, seconds, out = post(port, path, body)
                times.append(seconds * 1e3)
                statuses.add(status)
                if status != 200:
                    code = json.loads(out)["error"]["code"]
            med, mx = float(np.median(times)), max(times)
            print(f"{name}: status {sorted(statuses)}{' ' + code if code else ''}; median {med:.0f} ms, "
                  f"max {mx:.0f} ms", flush=True)
            if 200 in statuses and mx > worst[0]:
                worst = (mx, 200)
    finally:
        stop(proc)
    print(f"worst_id_only_ms={worst[0]:.0f} status={worst[1]} limit_ms=2000", flush=True)
    if args.no_encode:
        return
    from tilde.models import default_model_path

    port = _free_port()
    proc = start(index, port, log, ["--model", str(default_model_path()), "--feedback", "off"],
                 {**env, "TILDE_CHECK_MODEL": "0"})
    try:
        # The budget is in model input tokens: the most full passages it admits (190 one-piece
        # words + [CLS] + [SEP] fill a TILDEv2 passage; a longer text would only be cut into more).
        rng = np.random.default_rng(5)
        per_text = 192
        n_texts = min(cfg.max_encode, cfg.max_encode_tokens // (per_text + PASSAGE_COST_TOKENS))
        texts = [" ".join(WORDS[i] for i in rng.integers(0, 5000, size=per_text - 2)) for _ in range(n_texts)]
        body = {"query": query(5), "documents": [{"id": f"new-{i}", "text": t} for i, t in enumerate(texts)]}
        times = []
        for _ in range(args.repeat):
            status, seconds, out = post(port, "/v1/rerank", body)
            assert status == 200, out[:300]
            times.append(seconds * 1e3)
        over = dict(body, documents=body["documents"] + [{"id": "one-more", "text": texts[0]}])
        status, seconds, out = post(port, "/v1/rerank", over)
        print(f"{n_texts} texts of {per_text} tokens (max_encode_tokens {cfg.max_encode_tokens}) encoded: median "
              f"{np.median(times):.0f} ms, max {max(times):.0f} ms; one more text: status {status} "
              f"{json.loads(out).get('error', {}).get('code', '')} in {seconds * 1e3:.0f} ms", flush=True)
    finally:
        stop(proc)
    print(f"encode_{n_texts}_texts_ms={max(times):.0f} deadline_ms={cfg.deadline * 1e3:.0f}")


if __name__ == "__main__":
    main()
