"""Teacher passes over a collection, done once and cached: sparse SPLADE document vectors
(``docs.npz``) and the expanded collection they imply (``expanded.jsonl``: passage ids, [SEP],
then the top teacher terms absent from the passage, best first — the MLM/SPLADE expansion).

Resumable: vectors are written in chunks (``docs.part-NNNNN.npz``) and finished chunks are
skipped on a re-run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilde.io import Passage, read_collection, write_jsonl
from tilde.text import TextProcessor, expansion_bad_ids
from tilde.train.teacher import SparseVectors, SpladeTeacher

logger = logging.getLogger(__name__)

__all__ = ["TeacherDocs", "encode_collection", "expansion_ids"]

TEACHER_MAX_TOKENS = 192  # the student's passage window (tilde.model.MAX_PASSAGE_TOKENS)
KEEP_TERMS = 1024  # per passage: enough for a top-200 expansion plus every passage term


@dataclass(frozen=True)
class TeacherDocs:
    vectors: Path
    expanded: Path
    passages: int
    seconds: float


def expansion_ids(
    passage_ids: np.ndarray, ids: np.ndarray, weights: np.ndarray, bad: np.ndarray, top_k: int
) -> list[int]:
    """TILDE's expansion recipe on a teacher vector: the ``top_k`` highest-weighted vocabulary
    ids, minus bad ids and ids already in the passage, kept in descending weight order."""
    order = np.argsort(-weights, kind="stable")[:top_k]
    cand = ids[order]
    keep = ~np.isin(cand, passage_ids) & ~np.isin(cand, bad)
    return cand[keep].astype(int).tolist()


def _passages(collection: Path, pids: set[str] | None) -> list[Passage]:
    return [p for p in read_collection(collection) if pids is None or p.pid in pids]


def encode_collection(
    collection: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    teacher: SpladeTeacher,
    text: TextProcessor,
    pids: Iterable[str] | None = None,
    expansion_top_k: int = 200,
    batch_size: int = 16,
    chunk_size: int = 512,
    progress: bool = True,
) -> TeacherDocs:
    """Teacher vectors + expanded JSONL for ``collection`` (restricted to ``pids`` when given)."""
    from tqdm import tqdm

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    passages = _passages(Path(collection), set(pids) if pids is not None else None)
    cls_id, sep_id, pad_id = text.special_id("[CLS]"), text.special_id("[SEP]"), text.special_id("[PAD]")
    token_ids = [text.token_ids(p.text or "") if p.ids is None else np.asarray(p.ids, np.int32) for p in passages]
    bar = tqdm(total=len(passages), unit="psg", disable=not progress, dynamic_ncols=True, desc="teacher")
    parts: list[Path] = []
    for c, start in enumerate(range(0, len(passages), chunk_size)):
        part = out / f"docs.part-{c:05d}.npz"
        parts.append(part)
        chunk = list(range(start, min(start + chunk_size, len(passages))))
        if part.is_file():
            bar.update(len(chunk))
            continue
        inputs = [[cls_id, *token_ids[i][: TEACHER_MAX_TOKENS - 2].tolist(), sep_id] for i in chunk]
        batches = [inputs[j : j + batch_size] for j in range(0, len(inputs), batch_size)]
        rows = []
        for row in teacher.encode(batches, pad_id=pad_id, top_k=KEEP_TERMS):
            rows.append(row)
            bar.update(1)
        SparseVectors.from_rows([passages[i].pid for i in chunk], rows).save(part)
    bar.close()
    loaded = [SparseVectors.load(p) for p in parts]
    rows = [v.row(i) for v in loaded for i in range(len(v))]
    vectors = SparseVectors.from_rows([str(k) for v in loaded for k in v.keys], rows)
    vectors.save(out / "docs.npz")
    bad = expansion_bad_ids(text.vocab)
    records = []
    for i, p in enumerate(passages):
        ids, w = vectors.row(i)
        base = token_ids[i]
        records.append(
            {"pid": p.pid, "psg": [*base.tolist(), sep_id, *expansion_ids(base, ids, w, bad, expansion_top_k)]}
        )
    write_jsonl(out / "expanded.jsonl", records)
    meta = {"expander": "splade-mlm", "teacher": str(teacher.path), "top_k": expansion_top_k, "order": "weight-desc"}
    (out / "expanded.jsonl.meta.json").write_text(json.dumps(meta, indent=1), "utf-8")
    for part_file in parts:
        part_file.unlink()
    return TeacherDocs(out / "docs.npz", out / "expanded.jsonl", len(passages), time.perf_counter() - started)
