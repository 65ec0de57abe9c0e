"""Training examples and their files.

- **Groups** (JSONL, one query per line): ``{"qid", "query", "pos": [pid...], "neg": [pid...]}``
  for supervised training (one positive + negatives per step), or ``{"qid", "query", "pids":
  [...], "scores": [...]}`` for distillation (teacher scores over a candidate list). ``query``
  is text; ``query_ids`` (token ids) may be given instead.
- **Passages**: any collection :func:`tilde.io.read_collection` reads — plain text, or the
  expansion output (token ids), so training sees exactly what indexing will see.
- **Token targets**: teacher document vectors (:class:`tilde.train.teacher.SparseVectors`),
  optionally scaled by per-term query weights (what the teacher's query side would give).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilde.io import FormatError, RunEntry, iter_jsonl, read_collection
from tilde.model import MAX_PASSAGE_TOKENS, passage_input_ids
from tilde.text import TextProcessor
from tilde.train.teacher import SparseVectors

__all__ = ["Group", "PassageStore", "TokenTargets", "groups_from_qrels", "read_groups", "write_groups"]


@dataclass(frozen=True)
class Group:
    """One query's training material: ``pids[0]`` is the positive in supervised groups; in
    distillation groups ``scores`` (teacher) are given for every pid."""

    qid: str
    query_ids: tuple[int, ...]
    pids: tuple[str, ...]
    scores: tuple[float, ...] | None = None
    positives: int = 1


def read_groups(path: str | os.PathLike[str], text: TextProcessor) -> list[Group]:
    groups = []
    for lineno, obj in iter_jsonl(path):
        qid = str(obj.get("qid", lineno))
        if "query_ids" in obj:
            qids = tuple(int(t) for t in text.drop_stop_ids(np.asarray(obj["query_ids"], dtype=np.int64)))
        elif "query" in obj:
            qids = tuple(int(t) for t in text.query_ids(str(obj["query"])))
        else:
            raise FormatError("a group needs 'query' or 'query_ids'", path=path, line=lineno)
        if "pids" in obj:
            pids = tuple(str(p) for p in obj["pids"])
            scores = obj.get("scores")
            if scores is not None and len(scores) != len(pids):
                raise FormatError("'scores' and 'pids' differ in length", path=path, line=lineno)
            groups.append(Group(qid, qids, pids, tuple(float(s) for s in scores) if scores is not None else None))
        elif "pos" in obj and "neg" in obj:
            pos, neg = [str(p) for p in obj["pos"]], [str(p) for p in obj["neg"]]
            if not pos or not neg:
                raise FormatError("a supervised group needs at least one 'pos' and one 'neg'", path=path, line=lineno)
            groups.append(Group(qid, qids, tuple(pos + neg), None, positives=len(pos)))
        else:
            raise FormatError("a group needs 'pids' (+ 'scores') or 'pos' + 'neg'", path=path, line=lineno)
    return groups


def write_groups(path: str | os.PathLike[str], rows: Iterable[dict[str, object]]) -> int:
    from tilde.io import write_jsonl

    return write_jsonl(path, rows)


def groups_from_qrels(
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    run: dict[str, list[RunEntry]],
    text: TextProcessor,
    min_grade: int = 1,
    depth: int = 100,
) -> list[Group]:
    """Supervised groups: judged-relevant passages as positives, the run's other top-``depth``
    passages (BM25 or any first stage) as negatives. Queries without both are skipped."""
    groups = []
    for qid, qtext in queries.items():
        judged = qrels.get(qid, {})
        pos = [pid for pid, g in judged.items() if g >= min_grade]
        neg = [e.docid for e in run.get(qid, [])[:depth] if judged.get(e.docid, 0) < min_grade]
        q = tuple(int(t) for t in text.query_ids(qtext))
        if pos and neg and q:
            groups.append(Group(qid, q, tuple(pos + neg), None, positives=len(pos)))
    return groups


class PassageStore:
    """pid -> model input ids (``[CLS] ids [SEP]``, truncated as at indexing time)."""

    def __init__(self, inputs: dict[str, list[int]]) -> None:
        self._inputs = inputs

    @classmethod
    def load(
        cls,
        paths: Sequence[str | os.PathLike[str]],
        text: TextProcessor,
        wanted: set[str] | None = None,
        max_len: int = MAX_PASSAGE_TOKENS,
    ) -> PassageStore:
        cls_id, sep_id = text.special_id("[CLS]"), text.special_id("[SEP]")
        inputs: dict[str, list[int]] = {}
        for path in paths:
            for p in read_collection(path):
                if wanted is not None and p.pid not in wanted:
                    continue
                ids = list(p.ids) if p.ids is not None else text.token_ids(p.text or "").tolist()
                inputs[p.pid] = passage_input_ids(ids, cls_id, sep_id, max_len)
        return cls(inputs)

    def __contains__(self, pid: str) -> bool:
        return pid in self._inputs

    def __getitem__(self, pid: str) -> list[int]:
        try:
            return self._inputs[pid]
        except KeyError:
            raise KeyError(f"passage {pid!r} is in the training groups but not in the passage files") from None

    def __len__(self) -> int:
        return len(self._inputs)

    def pids(self) -> list[str]:
        return sorted(self._inputs)


class TokenTargets:
    """Per-position targets for token-level distillation: the teacher's document weight of the
    token at that position, times an optional per-term query weight (so the binary TILDEv2 query
    side reproduces the teacher's ``q . d`` on exactly matching terms)."""

    def __init__(self, vectors: SparseVectors, term_weights: np.ndarray | None = None) -> None:
        self.vectors = vectors
        self.term_weights = term_weights
        self._row = {str(k): i for i, k in enumerate(vectors.keys.tolist())}

    @classmethod
    def load(cls, vectors: str | os.PathLike[str], term_weights: str | os.PathLike[str] | None = None) -> TokenTargets:
        tw = np.load(term_weights).astype(np.float32) if term_weights is not None else None
        return cls(SparseVectors.load(vectors), tw)

    def __contains__(self, pid: str) -> bool:
        return pid in self._row

    def targets(self, pid: str, input_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(input_ids, dtype=np.int64)
        out = self.vectors.lookup(self._row[pid], ids)
        if self.term_weights is not None:
            out = out * self.term_weights[ids]
        return out


def save_term_weights(path: Path, weights: np.ndarray, meta: dict[str, object]) -> None:
    np.save(path, weights.astype(np.float32))
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=1), "utf-8")
