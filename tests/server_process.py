"""A real `tilde serve` process on a free loopback port, for tests that drive it over HTTP with
third-party clients (imported, not a pytest conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest_service import free_port, tiny_model


def build_served_index(root: Path, passages: Mapping[str, str], bm25: bool = False) -> tuple[Path, Path]:
    """(index, model): a tiny TILDEv2 model and the index of ``passages`` built with it under
    ``root`` (with ``bm25``, also the BM25 index at ``<index>/bm25``), for a server to serve."""
    from tilde.first_stage import build_bm25_index
    from tilde.index.build import build_index

    model = tiny_model(root / "model")
    coll = root / "collection.tsv"
    coll.write_text("".join(f"{pid}\t{text}\n" for pid, text in passages.items()), "utf-8")
    build_index(str(model), coll, root / "index", progress=False, batch_size=2)
    if bm25:
        build_bm25_index(coll, root / "index" / "bm25")
    return root / "index", model


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextmanager
def serving(*args: str, workers: int = 1, timeout: float = 120) -> Iterator[str]:
    """``tilde serve ARGS`` on a free port until the block ends (then SIGTERM); yields its URL."""
    port = free_port()
    env = {**os.environ, "TILDE_METER": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilde.cli", "serve", *args, "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while not _ready(url):
            if proc.poll() is not None:
                pytest.fail(f"tilde serve exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                pytest.fail(f"tilde serve did not become ready in {timeout:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
