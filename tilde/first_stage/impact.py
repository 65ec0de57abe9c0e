"""The learned TILDEv2 weights as a first stage: Anserini's impact search over the Lucene index
that ``tilde export anserini --build`` writes.

Queries are encoded exactly as the re-ranker encodes them (tokenizer only, as TILDEv2 and
OpenSearch's neural-sparse "doc-only" mode do): WordPiece with the export's ``tokenizer.json``,
stop ids dropped, **not** de-duplicated. The token strings, space-separated with repeats kept,
go to ``io.anserini.search.SearchCollection -impact -pretokenized``, whose whitespace analyser
leaves them as they are and whose bag-of-words query boosts a repeated token by its count. A
passage's score is therefore ``sum over query tokens of round(factor * weight)``: the quantised
TILDEv2 score, an integer (divide by the export's factor for TILDEv2 units), which
:meth:`LuceneImpact.search_run` returns exactly. Java and the jar are
found and run as for the Lucene BM25 backend (:mod:`tilde.first_stage.lucene`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tilde.first_stage.lucene import _run_java
from tilde.io import RunEntry, open_text, read_run
from tilde.text import TextProcessor

__all__ = ["LuceneImpact"]


@dataclass
class LuceneImpact:
    """Impact search over an exported Lucene index; batch-oriented (one JVM start per call)."""

    path: Path
    num_docs: int
    factor: float
    last_java_cpu_s: float = 0.0  # CPU seconds of the JVM in the last search_run

    @classmethod
    def load(cls, export_dir: str | os.PathLike[str]) -> LuceneImpact:
        from tilde.export.anserini import LUCENE_DIR, TOKENIZER, read_impact_manifest

        path = Path(export_dir)
        manifest = read_impact_manifest(path)
        if not manifest.get("lucene") or not (path / LUCENE_DIR).is_dir():
            raise FileNotFoundError(f"{path}: no Lucene index; run `tilde export anserini --build --output {path}`")
        if not (path / TOKENIZER).is_file():
            raise FileNotFoundError(f"{path}: no {TOKENIZER} (damaged export)")
        return cls(path, int(manifest.get("num_docs", 0)), float(manifest["quantization"]["factor"]))

    def __len__(self) -> int:
        return self.num_docs

    @cached_property
    def text(self) -> TextProcessor:
        from tilde.export.anserini import TOKENIZER

        return TextProcessor.load(self.path / TOKENIZER)

    def query_tokens(self, text: str) -> list[str]:
        """The re-ranker's query tokens as strings, repeats kept, in order."""
        vocab = self.text.vocab
        return [vocab[int(i)] for i in self.text.query_ids(text)]

    def search_run(self, queries: Iterable[tuple[str, str]], k: int = 1000,
                   threads: int = 1) -> dict[str, list[RunEntry]]:
        """``{qid: hits}`` for ``(qid, text)`` pairs, Lucene impact scores (integers) best first;
        queries with no token left (only stop words) map to ``[]``, as do queries nothing matches."""
        from tilde.export.anserini import LUCENE_DIR

        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        pairs = [(qid, " ".join(self.query_tokens(text))) for qid, text in queries]
        for qid, _ in pairs:
            if not qid or qid.split() != [qid]:
                raise ValueError(f"query id {qid!r} is empty or contains whitespace")
        asked = [(qid, tokens) for qid, tokens in pairs if tokens]
        self.last_java_cpu_s = 0.0
        if not asked:
            return {qid: [] for qid, _ in pairs}
        with tempfile.TemporaryDirectory(prefix="tilde-impact-") as scratch:
            topics = Path(scratch) / "topics.tsv"
            runfile = Path(scratch) / "run.trec"
            with open_text(topics, "wt") as f:
                for qid, tokens in asked:
                    f.write(f"{qid}\t{tokens}\n")
            self.last_java_cpu_s = _run_java(
                ["io.anserini.search.SearchCollection", "-index", str(self.path / LUCENE_DIR),
                 "-topics", str(topics), "-topicReader", "TsvString", "-output", str(runfile),
                 "-impact", "-pretokenized", "-hits", str(k), "-threads", str(max(1, threads))], "impact search")
            run = read_run(runfile, fmt="trec") if runfile.is_file() else {}
        # Anserini's ScoreTiesAdjusterReranker rounds scores to 4 decimals and lowers the n-th
        # tied hit by n * 1e-6 (to order ties by docid); impacts are integers, so rounding gives
        # the exact sums back (the ranking stays Anserini's).
        return {qid: [RunEntry(e.docid, float(round(e.score))) for e in run.get(qid, [])] for qid, _ in pairs}
