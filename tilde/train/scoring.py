"""Differentiable TILDEv2 scoring, the training-time twin of :mod:`tilde.rank.kernel`.

A passage's score for a query is the sum over the query's tokens (stop ids dropped, duplicates
kept, every weight 1) of the passage's max weight for that token id, 0 when absent — exactly
what the index + re-ranker compute, so a loss on these scores optimises the shipped ranking.
"""

from __future__ import annotations

import torch

__all__ = ["exact_match_scores", "group_scores"]


def exact_match_scores(
    doc_weights: torch.Tensor,
    doc_ids: torch.Tensor,
    doc_valid: torch.Tensor,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
) -> torch.Tensor:
    """Scores of every query against every passage, shape [Q, D].

    ``doc_weights`` [D, L] are ReLU outputs (>= 0), ``doc_ids`` [D, L] the input ids, ``doc_valid``
    [D, L] marks positions the index would keep (not padding, special or stop ids); ``query_ids``
    [Q, LQ] padded, ``query_mask`` [Q, LQ] 1 for real query tokens."""
    weights = doc_weights * doc_valid.to(doc_weights.dtype)
    match = query_ids[:, :, None, None] == doc_ids[None, None, :, :]  # Q, LQ, D, L
    # Weights are >= 0, so max over matching positions (0 when none) is a masked max.
    per_token = (match.to(weights.dtype) * weights[None, None]).amax(dim=-1)  # Q, LQ, D
    return (per_token * query_mask[:, :, None].to(weights.dtype)).sum(dim=1)


def group_scores(cart: torch.Tensor, group_size: int) -> torch.Tensor:
    """From [Q, Q * G] in-batch scores, each query's own group, shape [Q, G]."""
    q = cart.shape[0]
    index = torch.arange(q, device=cart.device)[:, None] * group_size + torch.arange(group_size, device=cart.device)
    return cart.gather(1, index)
