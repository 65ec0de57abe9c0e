"""Load test of the REST service: `tilde serve` on loopback over a synthetic 1M-passage index,
driven from a separate process with bounded concurrency for a bounded time.

    python benchmarks/service_load.py [--passages 1000000] [--duration 20] [--concurrency 4]
                                      [--workers 2] [--worker-class tilde|sync|gthread] [--no-preload]
                                      [--matrix] [--slow-clients 8] [--slow-duration 40]

Each request re-ranks 1,000 random candidates by ``ids`` (every result returned, no top_n), in JSON
and in msgpack. Prints requests/s, client-side p50/p99 latency, errors, server memory (RSS and
PSS: the index pages are shared, so RSS counts them once per process), and where the server's
time goes (mean ms per stage from /metrics: parse, tokenize, lookup, score, sort, serialize, plus
the whole WSGI call). Then a slow-client run: ``--slow-clients`` connections trickle a request
(half the headers, half a body) at 1 byte/s for ``--slow-duration`` seconds (longer than the
30 s worker timeout) while a probe sends, one after another, a health check or a 1,000-candidate
re-ranking request every 0.1 s; it prints the probes' latency and how many worker processes were
replaced meanwhile (killed by the timeout). The last two lines:

    slow_clients=8 probe_p99_ms=<x> worker_restarts=<n>
    rps=<x> p50_ms=<y> p99_ms=<z> errors=<n> candidates=1000      (the JSON run)

The load generator is a minimal HTTP/1.1 client on raw sockets with pre-encoded request bodies
(keep-alive where the server offers it), so that on a 2-core machine it takes as little CPU from
the server as possible; it checks every status and fully decodes one response in 50.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _service_index import build_synthetic_index, query_words  # noqa: E402

STAGES = ("parse", "tokenize", "lookup", "score", "sort", "serialize")
CTYPES = {"json": "application/json", "msgpack": "application/msgpack"}


# ---------------------------------------------------------------------------------------------
# Load generator (runs in its own process: `service_load.py --client ...`)
# ---------------------------------------------------------------------------------------------


def _bodies(fmt: str, n: int, passages: int, candidates: int, seed: int) -> list[bytes]:
    import msgpack

    rng = np.random.default_rng(seed)
    queries = query_words(n, seed=seed)
    out = []
    for q in queries:
        ids = rng.integers(0, passages, size=candidates).tolist()
        obj = {"query": q, "ids": ids}
        out.append(msgpack.packb(obj) if fmt == "msgpack" else json.dumps(obj, separators=(",", ":")).encode())
    return out


class _Conn:
    """Just enough HTTP/1.1: one request at a time, Content-Length bodies, reconnect on close."""

    def __init__(self, host: str, port: int) -> None:
        self.addr = (host, port)
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        return s

    def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = self._connect()
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"connection" and v.strip().lower() == b"close":
                close = True
        while len(rest) < length:
            chunk = self.sock.recv(max(65536, length - len(rest)))
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            rest += chunk
        body, self.buf = rest[:length], rest[length:]
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def run_client(args: argparse.Namespace) -> None:
    import msgpack

    bodies = _bodies(args.format, 256, args.passages, args.candidates, args.seed)
    ctype = CTYPES[args.format]
    raws = [
        (f"POST /v1/rerank HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nContent-Type: {ctype}\r\n"
         f"Accept: {ctype}\r\nContent-Length: {len(b)}\r\n\r\n").encode() + b
        for b in bodies
    ]
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = [0.0]
    measuring = [False]

    def worker(k: int) -> None:
        conn = _Conn(args.host, args.port)
        i = k
        local: list[float] = []
        local_err: list[str] = []
        while True:
            now = time.perf_counter()
            if now >= stop_at[0]:
                break
            raw = raws[i % len(raws)]
            i += args.concurrency
            try:
                status, body = conn.request(raw)
                t = time.perf_counter() - now
                if status != 200:
                    local_err.append(f"status {status}: {body[:200]!r}")
                elif i % 50 == 0:
                    out = msgpack.unpackb(body) if args.format == "msgpack" else json.loads(body)
                    if len(out["results"]) != args.candidates:
                        local_err.append(f"{len(out['results'])} results")
            except (OSError, ValueError) as exc:
                conn.close()
                t = time.perf_counter() - now
                local_err.append(f"{exc.__class__.__name__}: {exc}")
            if measuring[0]:
                local.append(t)
        conn.close()
        with lock:
            latencies.extend(local)
            errors.extend(local_err if measuring[0] else [])

    # warm-up phase (page cache, first-touch page faults in every worker), not measured
    stop_at[0] = time.perf_counter() + args.warmup
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(json.dumps({"phase": "warm"}), flush=True)
    sys.stdin.readline()  # the parent scrapes /metrics, then tells us to go
    measuring[0] = True
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    stop_at[0] = t0 + args.duration
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    lat = np.array(latencies) * 1e3
    print(json.dumps({
        "requests": int(lat.size), "seconds": elapsed, "rps": lat.size / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else 0.0,
        "p90_ms": float(np.percentile(lat, 90)) if lat.size else 0.0,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else 0.0,
        "max_ms": float(lat.max()) if lat.size else 0.0,
        "errors": len(errors), "error_examples": errors[:3],
        "client_cpu_ms": client_cpu / max(lat.size, 1) * 1e3,
    }), flush=True)


# ---------------------------------------------------------------------------------------------
# Server control and measurement
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [int(x) for x in out.split()]


def _mem_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def cpu_seconds(master: int) -> dict[int, float]:
    """User + system CPU seconds so far of each server process (master and workers)."""
    out = {}
    for pid in (master, *_children(master)):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return out


def memory(master: int) -> dict[str, Any]:
    pids = [master, *_children(master)]
    per = {p: _mem_kib(p) for p in pids}
    return {
        "master_rss_mib": per[master][0] / 1024,
        "worker_rss_mib": [per[p][0] / 1024 for p in pids[1:]],
        "total_rss_mib": sum(r for r, _ in per.values()) / 1024,
        "total_pss_mib": sum(p for _, p in per.values()) / 1024,
    }


_SAMPLE = re.compile(r'^(tilde_\w+?)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN|\+Inf)$')


def scrape(base: str) -> dict[tuple[str, str], float]:
    status, body = _get(base + "/metrics")
    out: dict[tuple[str, str], float] = {}
    for line in body.decode().splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def stage_means(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[str, float]:
    def diff(name: str, labels: str) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    means = {}
    for stage in STAGES:
        n = diff("tilde_stage_duration_seconds_count", f'stage="{stage}"')
        if n:
            means[stage] = diff("tilde_stage_duration_seconds_sum", f'stage="{stage}"') / n * 1e3
    n = diff("tilde_request_duration_seconds_count", 'endpoint="/v1/rerank"')
    if n:
        means["wsgi_call"] = diff("tilde_request_duration_seconds_sum", 'endpoint="/v1/rerank"') / n * 1e3
        joules = sum(after[k] - before.get(k, 0.0) for k in after if k[0] == "tilde_request_energy_joules_total")
        means["joules_per_request"] = joules / n
    return means


def start_server(args: argparse.Namespace, index: Path, port: int, worker_class: str, preload: bool,
                 threads: int) -> subprocess.Popen[bytes]:
    """Start `tilde serve` and wait until every worker is up."""
    cmd = [sys.executable, "-m", "tilde.cli", "serve", "--index", str(index), "--port", str(port),
           "--workers", str(args.workers), "--worker-class", worker_class,
           "--preload" if preload else "--no-preload", "--max-documents", str(max(args.candidates, 10_000))]
    if threads and worker_class != "sync":
        cmd += ["--threads", str(threads)]
    if args.keepalive is not None and worker_class != "sync":
        cmd += ["--keepalive", str(args.keepalive)]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    log = open(args.server_log, "ab")  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    log.close()
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    while _get(base + "/ready")[0] != 200:
        if proc.poll() is not None:
            raise SystemExit(f"tilde serve exited with {proc.returncode}; see {args.server_log}")
        if time.perf_counter() - t0 > 120:
            proc.kill()
            raise SystemExit("tilde serve not ready after 120 s")
        time.sleep(0.1)
    # every worker must be up (not just the first to answer)
    while len(_children(proc.pid)) < args.workers and time.perf_counter() - t0 < 120:
        time.sleep(0.1)
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def drive(args: argparse.Namespace, port: int, fmt: str, duration: float, base: str, master: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--client", "--format", fmt, "--port", str(port), "--duration", str(duration),
           "--concurrency", str(args.concurrency), "--passages", str(args.passages), "--candidates",
           str(args.candidates), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    client.stdout.readline()  # warm
    before = scrape(base)
    cpu0 = cpu_seconds(master)
    client.stdin.write("go\n")
    client.stdin.flush()
    result = json.loads(client.stdout.readline())
    cpu1 = cpu_seconds(master)
    client.wait()
    result["stages"] = stage_means(before, scrape(base))
    used = {pid: cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1}
    result["server_cpu_ms"] = sum(used.values()) / max(result["requests"], 1) * 1e3
    # how the work spread over the workers (keep-alive connections stay with the worker that accepted them)
    result["worker_cpu_s"] = [round(v, 1) for pid, v in sorted(used.items()) if pid != master]
    return result


def line(fmt: str, r: dict[str, Any], mem: dict[str, Any]) -> str:
    st = r["stages"]
    where = ", ".join(f"{k} {st[k]:.3f}" for k in (*STAGES, "wsgi_call") if k in st)
    return (f"[{fmt}] {r['requests']} requests in {r['seconds']:.1f} s: {r['rps']:.1f} req/s, "
            f"p50 {r['p50_ms']:.2f} ms, "
            f"p90 {r['p90_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms, errors {r['errors']}"
            + (f" {r['error_examples']}" if r["errors"] else "")
            + f"\n[{fmt}] server mean ms per request: {where}; server CPU {r['server_cpu_ms']:.2f} ms/request "
              f"(all processes, incl. gunicorn; CPU s per worker {r['worker_cpu_s']}); "
              f"load generator CPU {r['client_cpu_ms']:.2f} ms/request; "
              f"energy {st.get('joules_per_request', 0.0):.4f} J/request (handler)"
            + f"\n[{fmt}] server memory: total RSS {mem['total_rss_mib']:.0f} MiB (master {mem['master_rss_mib']:.0f}, "
              f"workers {', '.join(f'{w:.0f}' for w in mem['worker_rss_mib'])}), "
              f"total PSS {mem['total_pss_mib']:.0f} MiB")


def run_config(args: argparse.Namespace, index: Path, worker_class: str, preload: bool, threads: int,
               formats: list[str], duration: float) -> dict[str, dict[str, Any]]:
    port = args.port or _free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = start_server(args, index, port, worker_class, preload, threads)
    startup = time.perf_counter() - t0
    mem0 = memory(proc.pid)
    info = json.loads(_get(base + "/info")[1])
    per = f" x {threads or 'default'} threads" if worker_class != "sync" else ""
    print(f"# server: {args.workers} {worker_class} worker(s){per}, "
          f"{'preload' if preload else 'per-worker open'}; ready in {startup:.1f} s; meter {info['meter']['method']}; "
          f"idle RSS {mem0['total_rss_mib']:.0f} MiB, PSS {mem0['total_pss_mib']:.0f} MiB", flush=True)
    out = {}
    try:
        for fmt in formats:
            r = drive(args, port, fmt, duration, base, proc.pid)
            r["memory"] = memory(proc.pid)
            print(line(fmt, r, r["memory"]), flush=True)
            out[fmt] = r
    finally:
        code = stop_server(proc)
        print(f"# SIGTERM: server exited with status {code}", flush=True)
    return out


def slow_client_run(args: argparse.Namespace, index: Path, worker_class: str, preload: bool,
                    threads: int) -> dict[str, Any]:
    """Slow clients trickling at 1 byte/s while a probe measures the service (see the module doc)."""
    port = args.port or _free_port()
    proc = start_server(args, index, port, worker_class, preload, threads)
    initial = set(_children(proc.pid))
    seen = set(initial)
    stop_at = time.monotonic() + args.slow_duration
    step = max(args.passages // args.candidates, 1)
    bodyb = json.dumps({"query": "zqbab zqbac zqbad", "ids": list(range(0, args.passages, step))[: args.candidates]}
                       ).encode()

    def slow(kind: str) -> None:
        while time.monotonic() < stop_at:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                    if kind == "body":
                        s.sendall(f"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  f"Content-Length: {len(bodyb)}\r\n\r\n".encode())
                        trickle = bodyb
                    else:
                        trickle = b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
                    for b in trickle:  # until the server answers or closes
                        if time.monotonic() >= stop_at:
                            break
                        s.send(bytes([b]))
                        time.sleep(1.0)
            except OSError:
                time.sleep(0.2)

    raw_probe = (f"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(bodyb)}\r\nConnection: close\r\n\r\n").encode() + bodyb
    raw_health = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    latencies: list[float] = []
    failures: list[str] = []
    threads_ = [threading.Thread(target=slow, args=("body" if i % 2 == 0 else "head",), daemon=True)
                for i in range(args.slow_clients)]
    for t in threads_:
        t.start()
    time.sleep(1.5)  # every slow client is connected and holding whatever it holds
    i = 0
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=35) as s:
                s.sendall(raw_health if i % 2 else raw_probe)
                buf = b""
                while chunk := s.recv(1 << 16):
                    buf += chunk
            status = int(buf.split(b" ", 2)[1]) if buf else 0
            if status != 200:
                failures.append(f"status {status}")
        except OSError as exc:
            failures.append(exc.__class__.__name__)
        latencies.append(time.perf_counter() - t0)
        seen.update(_children(proc.pid))
        i += 1
        time.sleep(0.1)
    code = stop_server(proc)
    lat = np.array(latencies) * 1e3
    out = {"probes": int(lat.size), "failures": len(failures), "p50_ms": float(np.percentile(lat, 50)),
           "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()), "restarts": len(seen - initial)}
    print(f"# slow clients: {args.slow_clients} trickling at 1 byte/s for {args.slow_duration:.0f} s against "
          f"{args.workers} {worker_class} worker(s): {out['probes']} probes, {out['failures']} failed "
          f"{failures[:3] if failures else ''}, p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, "
          f"max {out['max_ms']:.1f} ms; worker processes replaced: {out['restarts']}; SIGTERM exit {code}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--index-dir", default=None, help="where the synthetic index lives (reused when it matches)")
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=2, help="requests in flight (default 2: one per worker)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-class", default="tilde", choices=("tilde", "sync", "gthread"))
    ap.add_argument("--threads", type=int, default=0, help="threads per worker (tilde, gthread; 0: the server's "
                                                           "default)")
    ap.add_argument("--keepalive", type=int, default=None, help="keep-alive seconds (default: the server's, 5)")
    ap.add_argument("--slow-clients", type=int, default=8, help="slow clients in the slow-client run (0: skip it)")
    ap.add_argument("--slow-duration", type=float, default=40.0, help="seconds of the slow-client run")
    ap.add_argument("--preload", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--formats", default="msgpack,json", help="run order; the JSON line is printed last")
    ap.add_argument("--matrix", action="store_true",
                    help="also compare worker classes and preload vs per-worker open (shorter JSON runs)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--server-log", default=None, help="server stderr (default: next to the index)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--format", default="json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        run_client(args)
        return
    default_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "tilde-svc-bench" / f"index-{args.passages}"
    cache = Path(args.index_dir or default_dir)
    index = build_synthetic_index(cache, args.passages)
    args.server_log = args.server_log or str(cache.parent / "server.log")
    print(f"# index {index}: {args.passages} passages; {args.candidates} candidates per request by ids, all results "
          f"returned; concurrency {args.concurrency}; {args.duration:.0f} s per run after {args.warmup:.0f} s warm-up; "
          f"{os.cpu_count()} CPUs", flush=True)
    if args.matrix:
        for wc, preload, threads in (("sync", True, 1), ("sync", False, 1), ("gthread", True, 4),
                                     ("gthread", True, 16), ("tilde", True, 0)):
            run_config(args, index, wc, preload, threads, ["json"], max(args.duration / 2, 5.0))
    results = run_config(args, index, args.worker_class, args.preload, args.threads,
                         [f for f in args.formats.split(",") if f != "json"] + ["json"], args.duration)
    for fmt, r in results.items():
        print(f"{fmt}: rps={r['rps']:.1f} p50_ms={r['p50_ms']:.2f} p99_ms={r['p99_ms']:.2f} errors={r['errors']} "
              f"candidates={args.candidates}")
    if args.slow_clients:
        slow = slow_client_run(args, index, args.worker_class, args.preload, args.threads)
        print(f"slow_clients={args.slow_clients} probe_p99_ms={slow['p99_ms']:.1f} "
              f"worker_restarts={slow['restarts']}")
    r = results["json"]
    print(f"rps={r['rps']:.1f} p50_ms={r['p50_ms']:.2f} p99_ms={r['p99_ms']:.2f} errors={r['errors']} "
          f"candidates={args.candidates}")


if __name__ == "__main__":
    main()
