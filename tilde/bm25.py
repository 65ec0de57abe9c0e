"""``tilde.bm25``: the embedded BM25 first stage under its short name.

>>> from tilde.bm25 import BM25Index, build_bm25_index
>>> build_bm25_index("collection.tsv", "collection.bm25", k1=0.9, b=0.4)
>>> BM25Index.load("collection.bm25").search("what is a tilde", k=100)  # [(docid, score), ...]

See :mod:`tilde.first_stage.bm25` for the index format and :mod:`tilde.first_stage.analyzer` for
the tokenisation.
"""

from tilde.first_stage.analyzer import Analyzer
from tilde.first_stage.bm25 import BM25Index, BM25IndexError, BM25Manifest, build_bm25_index

__all__ = ["Analyzer", "BM25Index", "BM25IndexError", "BM25Manifest", "build_bm25_index"]
