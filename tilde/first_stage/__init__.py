"""First-stage retrieval: the embedded BM25 engine (bm25s, no Java) and the optional Lucene
backend (Anserini's jar from the Pyserini wheel, run as a subprocess).

Importing this package imports neither bm25s nor Java: each engine imports what it needs when
it builds, loads or searches.
"""

from tilde.first_stage.analyzer import Analyzer
from tilde.first_stage.bm25 import (
    BM25BuildSummary,
    BM25Index,
    BM25IndexError,
    BM25Manifest,
    build_bm25_index,
    read_bm25_manifest,
)

__all__ = [
    "Analyzer",
    "BM25BuildSummary",
    "BM25Index",
    "BM25IndexError",
    "BM25Manifest",
    "build_bm25_index",
    "read_bm25_manifest",
]
