"""The real thing: `tilde serve` on a free loopback port (gunicorn, 2 workers), real HTTP in JSON
and msgpack through tilde.client, then a clean SIGTERM shutdown."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest_service import PLAIN_DOCS, build_plain_index, free_port

from tilde.client import Client, ClientError

pytest.importorskip("gunicorn")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    index = build_plain_index(tmp_path_factory.mktemp("svc-server") / "index")
    port = free_port()
    env = {**os.environ, "TILDE_METER": "cpu"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilde.cli", "serve", "--index", str(index), "--port", str(port), "--workers", "2",
         "--max-body-bytes", "4096"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    client = Client(url, timeout=5)
    deadline = time.monotonic() + 90
    while not client.ready():
        if proc.poll() is not None:
            pytest.fail(f"tilde serve exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("tilde serve did not become ready in 90 s")
        time.sleep(0.2)
    client.close()
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_real_server_json_msgpack_and_clean_shutdown(server: tuple[str, subprocess.Popen[str]]) -> None:
    url, proc = server
    sent = 0
    results = {}
    for fmt in ("json", "msgpack"):
        with Client(url, format=fmt) as client:
            assert client.health() and client.ready()
            info = client.info()
            assert info["index"]["passages"] == len(PLAIN_DOCS) and info["meter"]["method"].startswith("cpu-time")
            resp = client.rerank("apple cherry", ids=[10, 20, 30, 99], missing="zero", top_n=3)
            sent += 1
            assert [r.id for r in resp.results] == [20, 10, 30]
            assert [r.relevance_score for r in resp.results] == [2.25, 1.0, 0.0]
            assert resp.meta["energy"]["method"].startswith("cpu-time")
            results[fmt] = resp.results
            docs = client.rerank("cherry", documents=[{"id": 40}, {"id": "20"}], return_documents=True)
            sent += 1
            assert docs.results[0].document == {"id": "20"}
            batch = client.rerank_batch([{"query": "apple", "ids": [20, 10]}, {"query": "banana", "ids": [30]}])
            assert [r.id for r in batch[0].results] == [10, 20] and batch[1].results[0].id == 30
            with pytest.raises(ClientError) as err:
                client.rerank("apple", ids=[10, 99])
            sent += 1
            assert err.value.status == 422 and err.value.code == "unknown_ids" and "99" in err.value.message
            assert err.value.request_id
    assert results["json"] == results["msgpack"]

    # headers, and a too-large body answered with a 413 rather than a dropped connection
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("POST", "/v1/rerank", body=json.dumps({"query": "apple", "ids": [10]}),
                 headers={"Content-Type": "application/json", "X-Request-Id": "test-42"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    sent += 1
    assert resp.status == 200 and resp.getheader("X-Request-Id") == "test-42" and body["id"] == "test-42"
    assert "score;dur=" in (resp.getheader("Server-Timing") or "")
    conn.close()
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("POST", "/v1/rerank", body=json.dumps({"query": "apple", "ids": list(range(2000))}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "too_large"
    conn.close()

    # /metrics merges every worker's counts (prometheus multiprocess mode)
    with Client(url) as client:
        metrics = client.metrics()
    total = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith('tilde_requests_total{endpoint="/v1/rerank",method="POST"') and 'status="413"'
                not in line)
    assert total == sent
    assert 'tilde_request_duration_seconds_bucket{endpoint="/v1/rerank",le="0.0001"}' in metrics

    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("tilde serve did not stop within 30 s of SIGTERM")
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert "Traceback" not in stderr and "ready" in stderr
