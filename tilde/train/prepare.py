"""Build distillation data from unlabelled passages and query texts (``tilde train prepare``).

1. The teacher encodes every passage once (sparse SPLADE vectors) and expands it
   (:mod:`tilde.train.teacher_docs`).
2. BM25 (bm25s, k1=0.9 b=0.4 as Pyserini's defaults) retrieves ``depth`` candidates per query
   from the pooled passages; the teacher scores each candidate (``q . d``). Written as
   distillation groups (``groups.jsonl``).
3. Per-term query weights (``term_weights.npy``): the teacher's mean query-side weight of each
   vocabulary id over the queries containing it; ids no query contains get the teacher's weight
   for a one-token query, rescaled to the same median. Multiplying a passage's teacher weights by
   these turns SPLADE's ``q . d`` into something a binary TILDEv2 query can reproduce.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilde.io import read_collection, read_queries, read_run
from tilde.text import TextProcessor
from tilde.train.teacher import SparseVectors, SpladeTeacher
from tilde.train.teacher_docs import encode_collection

logger = logging.getLogger(__name__)

__all__ = ["PrepareSummary", "parse_collection_spec", "prepare"]


@dataclass(frozen=True)
class PrepareSummary:
    output: Path
    passages: int
    queries: int
    groups: int
    seconds: float

    def format(self) -> str:
        return (
            f"prepared {self.groups} distillation groups ({self.queries} queries) over {self.passages} passages "
            f"into {self.output} in {self.seconds:.1f} s"
        )


def parse_collection_spec(spec: str) -> tuple[Path, Path | None]:
    """``FILE`` or ``FILE@RUN`` (only the passages retrieved in RUN)."""
    path, _, run = spec.partition("@")
    return Path(path), (Path(run) if run else None)


def _name(path: Path, taken: set[str]) -> str:
    base = path.parent.name or path.stem
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}-{i}"
    taken.add(name)
    return name


def _encode_queries(
    teacher: SpladeTeacher, text: TextProcessor, texts: list[str], batch_size: int = 64
) -> SparseVectors:
    cls_id, sep_id = text.special_id("[CLS]"), text.special_id("[SEP]")
    inputs = [[cls_id, *text.token_ids(t)[:62].tolist(), sep_id] for t in texts]
    batches = [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
    rows = list(teacher.encode(batches, pad_id=text.special_id("[PAD]")))
    return SparseVectors.from_rows([str(i) for i in range(len(texts))], rows)


def term_weights(teacher: SpladeTeacher, text: TextProcessor, queries: list[str], qvecs: SparseVectors) -> np.ndarray:
    vocab = text.vocab_size
    total = np.zeros(vocab, np.float64)
    count = np.zeros(vocab, np.int64)
    for i, q in enumerate(queries):
        ids = np.unique(text.query_ids(q))
        if ids.size:
            total[ids] += qvecs.lookup(i, ids)
            count[ids] += 1
    seen = count > 0
    real = np.where(seen, total / np.maximum(count, 1), 0.0)
    cls_id, sep_id, pad = text.special_id("[CLS]"), text.special_id("[SEP]"), text.special_id("[PAD]")
    single = np.zeros(vocab, np.float64)
    inputs = [[cls_id, t, sep_id] for t in range(vocab)]
    for start in range(0, vocab, 512):
        batch = inputs[start : start + 512]
        for j, (ids, w) in enumerate(teacher.encode([batch], pad_id=pad)):
            t = start + j
            hit = ids == t
            single[t] = float(w[hit][0]) if hit.any() else 0.0
    both = seen & (single > 0)
    ratio = float(np.median(real[both] / single[both])) if both.any() else 1.0
    out = np.where(seen, real, single * ratio)
    stop = text.stop_ids
    out[stop] = 0.0
    return out.astype(np.float32)


def prepare(
    collections: list[str],
    queries: list[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    teacher_path: str | None = None,
    depth: int = 30,
    expansion_top_k: int = 200,
    head_dtype: str = "bfloat16",
    progress: bool = True,
) -> PrepareSummary:
    import bm25s

    started = time.perf_counter()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    teacher = SpladeTeacher(teacher_path, head_dtype=head_dtype)
    text = TextProcessor.load(teacher.path)
    taken: set[str] = set()
    pool_pids: list[str] = []
    pool_text: list[str] = []
    vec_parts: list[SparseVectors] = []
    expanded: list[str] = []
    for spec in collections:
        path, run = parse_collection_spec(spec)
        wanted = {e.docid for v in read_run(run).values() for e in v} if run is not None else None
        folder = out / "teacher" / _name(path, taken)
        if not (folder / "docs.npz").is_file() or not (folder / "expanded.jsonl").is_file():
            encode_collection(
                path,
                folder,
                teacher=teacher,
                text=text,
                pids=wanted,
                expansion_top_k=expansion_top_k,
                progress=progress,
            )
        vec_parts.append(SparseVectors.load(folder / "docs.npz"))
        expanded.append(str(folder / "expanded.jsonl"))
        for p in read_collection(path):
            if wanted is None or p.pid in wanted:
                pool_pids.append(p.pid)
                pool_text.append(p.text or "")
    vectors = SparseVectors.from_rows(
        [str(k) for v in vec_parts for k in v.keys], [v.row(i) for v in vec_parts for i in range(len(v))]
    )
    row_of = {str(k): i for i, k in enumerate(vectors.keys.tolist())}

    qs = [q for f in queries for q in read_queries(f)]
    logger.info("BM25 over %d passages for %d queries", len(pool_pids), len(qs))
    retriever = bm25s.BM25(k1=0.9, b=0.4)
    retriever.index(bm25s.tokenize(pool_text, stopwords="en", show_progress=False), show_progress=False)
    docs, _ = retriever.retrieve(
        bm25s.tokenize([q.text for q in qs], stopwords="en", show_progress=False),
        k=min(depth, len(pool_pids)),
        show_progress=False,
        n_threads=1,
    )
    qvecs = _encode_queries(teacher, text, [q.text for q in qs])
    rows = []
    for i, q in enumerate(qs):
        qd = qvecs.dense(i, text.vocab_size)
        pids = [pool_pids[int(j)] for j in docs[i]]
        scores = []
        for pid in pids:
            ids, w = vectors.row(row_of[pid])
            scores.append(float(np.dot(qd[ids], w)))
        order = np.argsort(-np.asarray(scores), kind="stable")
        if len(text.query_ids(q.text)) == 0 or scores[int(order[0])] <= 0:
            continue
        rows.append(
            {
                "qid": q.qid,
                "query": q.text,
                "pids": [pids[j] for j in order],
                "scores": [round(scores[j], 5) for j in order],
            }
        )
    from tilde.io import write_jsonl

    write_jsonl(out / "groups.jsonl", rows)
    tw = term_weights(teacher, text, [q.text for q in qs], qvecs)
    np.save(out / "term_weights.npy", tw)
    vectors.save(out / "docs.npz")
    meta = {
        "collections": collections,
        "queries": [str(q) for q in queries],
        "depth": depth,
        "expansion_top_k": expansion_top_k,
        "teacher": str(teacher.path),
        "head_dtype": head_dtype,
        "expanded": expanded,
        "bm25": {"k1": 0.9, "b": 0.4, "impl": "bm25s", "stopwords": "en"},
    }
    (out / "prepare.json").write_text(json.dumps(meta, indent=1), "utf-8")
    return PrepareSummary(out, len(pool_pids), len(qs), len(rows), time.perf_counter() - started)
