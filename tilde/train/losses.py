"""Losses over TILDEv2 scores: the reference's in-batch cross-entropy, and distillation from a
teacher's scores (margin-MSE, KL) or its per-token document weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "group_loss", "token_loss"]

LOSSES = ("ce", "margin-mse", "kl")


def group_loss(
    scores: torch.Tensor, teacher: torch.Tensor | None, group_size: int, kind: str, temperature: float = 1.0
) -> torch.Tensor:
    """``ce``: ``scores`` is [Q, Q * G] (every query against every passage in the batch), the
    positive of query i at column i * G — the reference's loss with in-batch negatives.
    ``margin-mse`` / ``kl``: ``scores`` and ``teacher`` are [Q, G], column 0 the teacher's best."""
    if kind == "ce":
        labels = torch.arange(scores.shape[0], device=scores.device) * group_size
        return F.cross_entropy(scores, labels)
    if teacher is None:
        raise ValueError(f"{kind} needs teacher scores")
    if kind == "margin-mse":
        return F.mse_loss(scores[:, :1] - scores[:, 1:], teacher[:, :1] - teacher[:, 1:])
    if kind == "kl":
        return F.kl_div(
            F.log_softmax(scores / temperature, dim=-1),
            F.log_softmax(teacher / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
    raise ValueError(f"loss must be one of {LOSSES}, not {kind!r}")


def token_loss(weights: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the student's per-position weights and the teacher's, over the
    positions the index keeps."""
    v = valid.to(weights.dtype)
    return ((weights - targets) ** 2 * v).sum() / v.sum().clamp(min=1.0)
