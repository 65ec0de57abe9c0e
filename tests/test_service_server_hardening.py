"""A real `tilde serve` (default worker class, 2 workers, an API key, short read timeouts) under
the abuse of issue 11: slow clients trickling bytes while probes run, transport-level errors,
lone surrogates, the worst requests the default budget allows, and SIGTERM with requests queued.
Loopback only; every loop is bounded."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_service import build_plain_index, free_port

from service.config import ServiceConfig
from tilde.client import Client, ClientError

pytest.importorskip("gunicorn")

KEY = "test-key-0123456789abcdef"
AUTH = f"Authorization: Bearer {KEY}\r\n"


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def workers(self) -> set[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return {int(p) for p in out.stdout.split()}

    def raw(self, data: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        """Send ``data`` on a fresh connection and read the whole answer (also after a failed send):
        to its Content-Length, as an HTTP client does (the server keeps the connection alive),
        else to the end of the connection."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            try:
                s.sendall(data)
            except OSError:
                pass
            buf = b""
            try:
                while chunk := s.recv(65536):
                    buf += chunk
                    if complete(buf):
                        break
            except OSError:
                pass
        return parse(buf)


def complete(buf: bytes) -> bool:
    """Whether ``buf`` holds a whole response with a Content-Length."""
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def parse(buf: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head:
        return 0, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, body


def post(path: str, body: bytes, auth: bool = True, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{AUTH if auth else ''}{extra}\r\n").encode() + body


def error_code(status: int, headers: dict[str, str], body: bytes) -> str:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:200])
    out = json.loads(body)
    assert set(out) == {"error"} and set(out["error"]) == {"code", "message"}, out
    return str(out["error"]["code"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("svc-hard")
    index = build_plain_index(tmp / "index")
    port = free_port()
    env = {**os.environ, "TILDE_METER": "none"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tilde.cli", "serve", "--index", str(index), "--port", str(port), "--workers", "2",
             "--api-key", KEY, "--header-timeout", "1.5", "--body-timeout", "1.5", "--missing", "zero"],
            env=env, stdout=f, stderr=f,
        )
    client = Client(f"http://127.0.0.1:{port}", timeout=5)
    deadline = time.monotonic() + 90
    while not client.ready():
        if proc.poll() is not None:
            pytest.fail(f"tilde serve exited with {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("tilde serve did not become ready in 90 s")
        time.sleep(0.2)
    srv = Server(proc, port, log)
    for _ in range(100):  # both workers forked
        if len(srv.workers()) == 2:
            break
        time.sleep(0.1)
    try:
        yield srv
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_slow_clients_do_not_starve_probes(server: Server) -> None:
    workers = server.workers()
    assert len(workers) == 2
    stop = time.monotonic() + 4.0
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def slow(kind: str) -> None:
        body = json.dumps({"query": "apple", "ids": [10, 20]}).encode()
        if kind == "body":
            head = post("/v1/rerank", body)[: -len(body)]
            trickle = body
        else:
            head, trickle = b"POST /v1/rerank HTTP/1.1\r\n", b"X-Slow: " + b"a" * 60
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(head)
            buf = b""
            try:
                for b in trickle:  # 1 byte every 0.25 s, until the server answers (gives up on us)
                    if time.monotonic() > stop or select.select([s], [], [], 0)[0]:
                        break
                    s.send(bytes([b]))
                    time.sleep(0.25)
                while chunk := s.recv(65536):
                    buf += chunk
            except OSError:
                pass
        status, headers, out = parse(buf)
        with lock:
            answers.append((status, error_code(status, headers, out) if status else ""))

    threads = [threading.Thread(target=slow, args=("body" if i % 2 else "head",)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    probes = []
    body = json.dumps({"query": "apple", "ids": [10, 20, 30]}).encode()
    for i in range(40):  # bounded: 40 probes, alternating a health check and a re-ranking request
        t0 = time.perf_counter()
        status, _, _ = server.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" if i % 2 else post("/v1/rerank", body))
        probes.append((status, time.perf_counter() - t0))
        time.sleep(0.05)
    for t in threads:
        t.join(20)
    assert [s for s, _ in probes] == [200] * 40
    # every slow client was cut off with a JSON 408 once its read deadline passed
    assert sorted(answers) == [(408, "request_timeout")] * 8
    assert server.workers() == workers  # no worker was killed or restarted
    log = server.log.read_text()
    assert "WORKER TIMEOUT" not in log and "Traceback" not in log


def test_api_key_required_except_probes(server: Server) -> None:
    body = json.dumps({"query": "apple", "ids": [10]}).encode()
    status, headers, out = server.raw(post("/v1/rerank", body, auth=False))
    assert status == 401 and error_code(status, headers, out) == "unauthorized"
    status, headers, out = server.raw(post("/v1/rerank", body, auth=False, extra="Authorization: Bearer nope-nope\r\n"))
    assert status == 401
    for path in ("/health", "/ready"):
        assert server.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())[0] == 200
    assert server.raw(f"GET /info HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode())[0] == 200
    with Client(f"http://127.0.0.1:{server.port}", api_key=KEY) as client:
        assert [r.id for r in client.rerank("apple", ids=[10, 20]).results] == [10, 20]
    with Client(f"http://127.0.0.1:{server.port}", api_key="wrong-key-123") as client, \
            pytest.raises(ClientError) as err:
        client.info()
    assert err.value.status == 401
    assert KEY not in server.log.read_text()


def test_transport_errors_are_json(server: Server) -> None:
    cases = [
        (b"POST /v1/rerank HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /v1/rerank HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(150)) + b"\r\n", 431),
        (b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"\x16\x03\x01 not http\r\n\r\n", 400),
        (post("/v1//rerank", b'{"query": "apple", "ids": [10]}'), 404),
        (f"DELETE /v1/rerank HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode(), 405),
    ]
    for data, expected in cases:
        status, headers, out = server.raw(data)
        assert status == expected, (data[:60], status, out[:200])
        error_code(status, headers, out)
    # a chunked body over max_body_bytes (default 16 MiB) is a 413, not a JSON parse error
    chunk = b"[" + b"1," * (1 << 20)
    piece = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    head = f"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{AUTH}" \
           f"Transfer-Encoding: chunked\r\n\r\n".encode()
    status, headers, out = server.raw(head + piece * 9 + b"0\r\n\r\n", timeout=30)
    assert status == 413 and error_code(status, headers, out) == "too_large"
    small = b'{"query": "apple", "ids": [10]}'
    status, _, out = server.raw(head + b"%x\r\n" % len(small) + small + b"\r\n0\r\n\r\n")
    assert status == 200 and json.loads(out)["results"][0]["id"] == 10


def test_surrogates_everywhere_are_422(server: Server) -> None:
    s = "\\ud800"
    bodies = [
        f'{{"query": "plate", "ids": ["{s}"]}}',
        f'{{"query": "plate{s}", "ids": [10]}}',
        f'{{"query": "plate", "documents": [{{"id": "{s}"}}]}}',
        f'{{"query": "plate", "documents": [{{"text": "x{s}"}}]}}',
        f'{{"query": "plate", "documents": ["{s}"]}}',
    ]
    for body in bodies:
        status, headers, out = server.raw(post("/v1/rerank", body.encode()))
        assert status == 422 and error_code(status, headers, out) == "invalid", body
    batch = f'{{"queries": [{{"id": "{s}", "query": "a", "ids": [10]}}, {{"query": "a", "ids": ["{s}"]}}]}}'
    status, headers, out = server.raw(post("/v1/rerank/batch", batch.encode()))
    assert status == 422 and error_code(status, headers, out) == "invalid"


def test_worst_allowed_request_answered_and_over_budget_refused(server: Server) -> None:
    cfg = ServiceConfig()
    per, nq = cfg.max_documents, cfg.max_candidates // cfg.max_documents
    # the most candidates the default budget allows (missing ids score 0 under --missing zero)
    worst = {"queries": [{"query": "apple banana cherry fruit", "ids": list(range(i * per, (i + 1) * per))}
                         for i in range(nq)]}
    status, headers, out = server.raw(post("/v1/rerank/batch", json.dumps(worst).encode()), timeout=60)
    assert status == 200, out[:300]
    results = json.loads(out)["results"]
    assert len(results) == nq and all(len(r["results"]) == per for r in results)
    worst["queries"].append({"query": "apple", "ids": [10]})
    status, headers, out = server.raw(post("/v1/rerank/batch", json.dumps(worst).encode()), timeout=60)
    assert status == 422 and error_code(status, headers, out) == "over_budget" and b"max_candidates" in out


def read_response(s: socket.socket, buf: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """One response off a kept-alive connection: (status, headers, body, the bytes after it)."""
    while not complete(buf):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    status, headers, rest = parse(buf)
    n = int(headers.get("content-length", len(rest)))
    return status, headers, rest[:n], rest[n:]


def test_keepalive_serves_many_requests_then_closes_to_rebalance(server: Server) -> None:
    from service.config import ServerConfig

    limit = ServerConfig().keepalive_requests
    assert limit > 2
    body = json.dumps({"query": "apple", "ids": [10, 20]}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        buf = b""
        # two requests sent at once (pipelined) are answered in order on the same connection
        s.sendall(post("/v1/rerank", body) + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, out, buf = read_response(s, buf)
        assert status == 200 and json.loads(out)["results"][0]["id"] in (10, 20)
        assert headers.get("connection", "keep-alive").lower() != "close"
        status, headers, out, buf = read_response(s, buf)
        assert status == 200 and json.loads(out)["status"] == "ok"
        for i in range(3, limit + 1):
            s.sendall(post("/v1/rerank", body))
            status, headers, out, buf = read_response(s, buf)
            assert status == 200, (i, out[:200])
            closing = headers.get("connection", "").lower() == "close"
            assert closing == (i == limit), (i, headers)
        assert buf == b"" and s.recv(65536) == b""  # the server closed it after the last response


def test_sigterm_answers_every_queued_request(server: Server) -> None:
    # Each request takes a while (50,000 candidates, every result returned); 10 of them keep
    # both workers busy (one request at a time each) with the rest queued when SIGTERM arrives.
    # Every one gets its answer.
    per = 10_000
    body = json.dumps({"queries": [{"query": "apple banana", "ids": list(range(i * per, (i + 1) * per))}
                                   for i in range(5)]}).encode()
    answers: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    connected = threading.Semaphore(0)

    def one() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
            connected.release()
            buf = b""
            try:
                s.sendall(post("/v1/rerank/batch", body))
                while chunk := s.recv(1 << 20):
                    buf += chunk
            except OSError as exc:
                buf = repr(exc).encode()
        status, headers, out = parse(buf)
        with lock:
            answers.append((status, out if status != 200 else b""))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for _ in threads:
        assert connected.acquire(timeout=10)
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    statuses = sorted(s for s, _ in answers)
    assert len(statuses) == 10 and 0 not in statuses, answers
    # 200, or a JSON 429/503 when the queue or the deadline ran out on a slow machine
    assert set(statuses) <= {200, 429, 503}, answers
    for status, out in answers:
        if status != 200:
            assert json.loads(out)["error"]["code"] in ("too_many_requests", "deadline_exceeded")
    assert server.proc.wait(timeout=60) == 0
    log = server.log.read_text()
    assert "Traceback" not in log
