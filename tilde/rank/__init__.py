"""Online scoring: the array kernel and the ``Reranker`` around it (numpy + numba + tokenizers)."""

from tilde.rank.kernel import prepare_query, score_rows
from tilde.rank.reranker import MISSING_POLICIES, Reranker, RerankResult, ScoredDoc, UnknownDocidError

__all__ = [
    "MISSING_POLICIES",
    "RerankResult",
    "Reranker",
    "ScoredDoc",
    "UnknownDocidError",
    "prepare_query",
    "score_rows",
]
