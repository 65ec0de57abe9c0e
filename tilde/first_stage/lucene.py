"""The optional Lucene BM25 backend: Anserini's indexer and searcher, run as Java subprocesses.

This is the engine the published MS MARCO and BEIR BM25 figures come from. The Anserini fat jar
ships inside the ``pyserini==0.25.0`` wheel (the last Pyserini whose Anserini runs on Java 11+,
so on Debian 12's OpenJDK 17; later ones need Java 21). Pyserini's *Python* package is never
imported: ``import pyserini.search.lucene`` pulls faiss (not even a declared dependency), torch
and an OpenAI client. We only locate the jar and call two of its command-line classes:

* ``io.anserini.index.IndexCollection -collection JsonCollection`` on a ``{"id", "contents"}``
  JSONL copy of the collection (default analyzer: Porter stemming, Lucene English stopwords);
* ``io.anserini.search.SearchCollection -bm25 -bm25.k1 K1 -bm25.b B`` on a ``qid<TAB>text``
  topics file; its TREC run is read back with :func:`tilde.io.read_run`.

The jar is found from ``$TILDE_ANSERINI_JAR``, else inside an installed ``pyserini`` package
(located with ``importlib.util.find_spec``, which does not execute it). Java is
``$JAVA_HOME/bin/java``, else ``java`` on ``PATH``; it must be version 11 or later.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilde import __version__
from tilde.first_stage.bm25 import DEFAULT_B, DEFAULT_K1, MANIFEST, BM25IndexError, read_bm25_manifest
from tilde.io import FormatError, RunEntry, atomic_path, open_text, read_collection, read_run

logger = logging.getLogger(__name__)

__all__ = [
    "LUCENE_FORMAT",
    "LuceneBM25",
    "LuceneUnavailable",
    "build_lucene_index",
    "find_anserini_jar",
    "find_java",
    "java_joules",
]

LUCENE_FORMAT = "tilde-lucene"
LUCENE_DIR = "lucene"
INSTALL_HINT = (
    "install the Lucene backend with `pip install --no-deps pyserini==0.25.0` (it ships Anserini's jar; "
    "nothing else of Pyserini is used) or set TILDE_ANSERINI_JAR to an anserini-*-fatjar.jar, and have "
    "Java 11+ (Debian: apt-get install openjdk-17-jre-headless)"
)
_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


class LuceneUnavailable(RuntimeError):
    """No Anserini jar or no suitable Java: the Lucene backend cannot run here."""


def find_anserini_jar() -> Path:
    env = os.environ.get("TILDE_ANSERINI_JAR")
    if env:
        jar = Path(env)
        if not jar.is_file():
            raise LuceneUnavailable(f"TILDE_ANSERINI_JAR={env}: no such file")
        return jar
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise LuceneUnavailable(f"no Anserini jar: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        jars = sorted((Path(location) / "resources" / "jars").glob("anserini-*-fatjar.jar"))
        if jars:
            return jars[-1]
    raise LuceneUnavailable(f"pyserini is installed but ships no Anserini jar; {INSTALL_HINT}")


def find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise LuceneUnavailable(f"no java executable (JAVA_HOME / PATH); {INSTALL_HINT}")
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    m = _JAVA_VERSION.search(proc.stderr + proc.stdout)
    major = 0 if m is None else int(m.group(1))
    if major == 1 and m is not None and m.group(2):  # "1.8.0" style
        major = int(m.group(2))
    if major < 11:
        raise LuceneUnavailable(f"{java} is Java {major or '?'}; Anserini 0.25 needs Java 11 or later")
    return java


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def java_joules(meter: Any, cpu_seconds: float) -> tuple[float, str]:
    """Energy of the Java subprocesses, which a CPU-time meter of this process does not see:
    ``(joules, method)``. RAPL counts the whole package (the JVM included) and adds nothing."""
    watts = getattr(meter, "watts_per_core", None)
    if watts is None:
        return 0.0, str(getattr(meter, "method", "none"))
    return cpu_seconds * float(watts), f"{meter.method}+java"


def _run_java(args: list[str], what: str) -> float:
    """Run an Anserini class; returns the CPU seconds the JVM used."""
    cmd = [find_java(), "-cp", str(find_anserini_jar()), *args]
    logger.info("running %s", " ".join(cmd))
    cpu0 = _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cpu = _children_cpu() - cpu0
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BM25IndexError(f"Anserini {what} failed (exit {proc.returncode}):\n{tail}")
    # Anserini reports some errors (e.g. an unknown option) on stderr with exit status 0.
    for line in proc.stderr.splitlines():
        if line.startswith("Error:"):
            raise BM25IndexError(f"Anserini {what} failed: {line}")
    return cpu


@dataclass(frozen=True)
class LuceneBuildSummary:
    output: Path
    docs: int
    bytes_on_disk: int
    seconds: float

    def format(self) -> str:
        return (f"Lucene index of {self.docs} docs -> {self.output} ({self.bytes_on_disk / 1e6:.1f} MB, "
                f"{self.seconds:.1f} s)")


def build_lucene_index(
    collection: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    threads: int = 1,
    fmt: str = "auto",
    overwrite: bool = False,
) -> LuceneBuildSummary:
    """Index ``collection`` (any format :func:`tilde.io.read_collection` reads, with text) with
    Anserini's defaults into ``output`` (``manifest.json`` + ``lucene/``), atomically."""
    coll, out = Path(collection), Path(output)
    if out.exists() and not overwrite:
        raise BM25IndexError(f"{out} already exists; pass --overwrite to replace it")
    jar = find_anserini_jar()
    started = time.perf_counter()
    docs = 0
    old: Path | None = None
    with tempfile.TemporaryDirectory(prefix="tilde-lucene-") as scratch, atomic_path(out) as tmp:
        jsonl = Path(scratch) / "docs" / "docs.jsonl"
        jsonl.parent.mkdir()
        with open_text(jsonl, "wt") as f:
            for p in read_collection(coll, fmt):
                if p.text is None:
                    raise FormatError(f"{coll}:{p.line}: Lucene BM25 needs passage text, not token ids")
                f.write(json.dumps({"id": p.pid, "contents": p.text}, ensure_ascii=False) + "\n")
                docs += 1
        tmp.mkdir()
        _run_java(["io.anserini.index.IndexCollection", "-collection", "JsonCollection", "-input", str(jsonl.parent),
                   "-index", str(tmp / LUCENE_DIR), "-generator", "DefaultLuceneDocumentGenerator",
                   "-threads", str(threads), "-storePositions", "-storeDocvectors", "-storeRaw"], "indexing")
        st = coll.stat()
        manifest = {
            "format": LUCENE_FORMAT, "format_version": 1, "engine": "anserini", "jar": jar.name,
            "num_docs": docs, "analyzer": "anserini-default (Porter, Lucene English stopwords)",
            "collection": {"path": str(coll.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
            "tilde_version": __version__,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".old-{tmp.name}")
            os.replace(out, old)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return LuceneBuildSummary(out, docs, size, time.perf_counter() - started)


def _clean_query(text: str) -> str:
    # The topics file is qid<TAB>text, one per line: tabs and line breaks inside a query would
    # split it. Anserini's analyzer treats all whitespace alike, so nothing changes for it.
    return " ".join(text.split())


class LuceneBM25:
    """BM25 over an Anserini index; searching is batch-oriented (one JVM start, ~1 s, per call)."""

    def __init__(self, path: Path, num_docs: int) -> None:
        self.path = path
        self.num_docs = num_docs
        self.last_java_cpu_s = 0.0  # CPU seconds of the JVM in the last search_run

    @classmethod
    def load(cls, index_dir: str | os.PathLike[str]) -> LuceneBM25:
        path = Path(index_dir)
        manifest = read_bm25_manifest(path)
        if manifest.get("format") != LUCENE_FORMAT:
            raise BM25IndexError(f"{path}: format {manifest.get('format')!r} is not a Lucene index")
        if not (path / LUCENE_DIR).is_dir():
            raise BM25IndexError(f"{path}: no {LUCENE_DIR}/ directory (damaged index)")
        return cls(path, int(manifest.get("num_docs", 0)))

    def __len__(self) -> int:
        return self.num_docs

    def search_run(
        self,
        queries: Iterable[tuple[str, str]],
        k: int = 1000,
        k1: float = DEFAULT_K1,
        b: float = DEFAULT_B,
        threads: int = 1,
    ) -> dict[str, list[RunEntry]]:
        """``{qid: hits}`` for ``(qid, text)`` pairs; queries without hits map to ``[]``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        pairs = [(qid, _clean_query(text)) for qid, text in queries]
        asked = [(qid, text) for qid, text in pairs if text]
        if not asked:
            return {qid: [] for qid, _ in pairs}
        with tempfile.TemporaryDirectory(prefix="tilde-lucene-") as scratch:
            topics = Path(scratch) / "topics.tsv"
            runfile = Path(scratch) / "run.trec"
            with open_text(topics, "wt") as f:
                for qid, text in asked:
                    f.write(f"{qid}\t{text}\n")
            self.last_java_cpu_s = _run_java(
                ["io.anserini.search.SearchCollection", "-index", str(self.path / LUCENE_DIR),
                 "-topics", str(topics), "-topicReader", "TsvString", "-output", str(runfile),
                 "-bm25", "-bm25.k1", repr(float(k1)), "-bm25.b", repr(float(b)), "-hits", str(k),
                 "-threads", str(threads)], "search")
            run = read_run(runfile, fmt="trec") if runfile.is_file() else {}
        return {qid: run.get(qid, []) for qid, _ in pairs}
