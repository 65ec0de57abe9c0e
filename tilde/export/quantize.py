"""Integer impacts for Lucene impact indexes, quantised as Pyserini's impact collections are.

Anserini's ``JsonVectorCollection`` reads each vector weight with Jackson's ``asInt()`` and
writes the token that many times (Anserini 0.25.0, ``JsonVectorCollection.Document``); with
``-impact`` the score of a term is its frequency times the query term's boost
(``ImpactSimilarity``). Weights must therefore be integers. Pyserini's impact collections
turn float weights into integers by rounding ``weight * 100``: "As SPLADE weights are given in
fp16, they have been converted to integer by taking the round of weight*100"
(castorini/pyserini, ``docs/experiments-spladev2.md``). We do the same with a configurable
factor: ``q = round(weight * factor)``, Python's ``round`` on the float64 product (ties to
even; ``numpy.rint`` is the same rule, vectorised). Tokens whose impact rounds to 0 are dropped:
they add nothing to any score, and Anserini would write them zero times anyway.

A query token repeated ``c`` times becomes a term query with boost ``c`` (Anserini's
``BagOfWordsQueryGenerator`` counts repeated analysed tokens), so the Lucene score of a passage
is ``sum over query tokens (not de-duplicated) of q(token)``: an integer, exact in float32 up to
2**24, equal to ``factor * tilde_score`` up to at most ``0.5`` per query token.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_FACTOR", "quantize"]

DEFAULT_FACTOR = 100.0


def quantize(weights: np.ndarray, factor: float = DEFAULT_FACTOR) -> np.ndarray:
    """``round(weight * factor)`` as int64, element-wise (ties to even, as Python's ``round``)."""
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"quantization factor must be a positive number, not {factor!r}")
    return np.rint(np.asarray(weights, dtype=np.float64) * float(factor)).astype(np.int64)
