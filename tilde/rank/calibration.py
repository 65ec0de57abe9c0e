"""Calibrated scores: a 0-1 relevance score from a raw one, for callers that write thresholds.

Cohere's ``relevance_score`` lies in [0, 1] and users threshold it ("keep results above 0.5").
tilde's raw scores do not: a TILDEv2 sum of token weights, an MLM dot product and a cosine live
on different scales, and the fused score is min-max normalised per query. A calibrated score is
a logistic on the raw score of one mode,

    p = 1 / (1 + exp(-(a * s + b)))

with ``a`` and ``b`` fitted by maximum likelihood on judged candidates of a development set
(``python -m eval.calibrate``; TREC DL grades >= 2 count as relevant, its binary cut). The
parameters are data of the index (``scoring.calibration`` in its manifest, by mode); the fused
parameters hold only for the fusion they were fitted with (the index's recommended weights).

It is monotonic, so it never changes a ranking; it only makes a score readable as "the
fraction of candidates scored like this that were judged relevant on the fitting set". A
different collection shifts that fraction: the score is calibrated where it was fitted.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .scoring import Scoring

__all__ = ["calibrated_scores", "calibration_for", "fit_logistic"]


def calibrated_scores(scores: np.ndarray, params: Mapping[str, float]) -> np.ndarray:
    """``1 / (1 + exp(-(a * scores + b)))``, float64, computed without overflow."""
    z = float(params["a"]) * np.asarray(scores, dtype=np.float64) + float(params["b"])
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def calibration_for(recommended: Scoring, used: Scoring) -> Mapping[str, float] | None:
    """The index's logistic for scores made in ``used``, or None when it has none for it (a mode
    it was not fitted for, or a fusion with other weights than the recommended one)."""
    params = recommended.calibration.get(used.mode)
    if params is None:
        return None
    if used.mode == "fused" and used != recommended:  # other weights, normalisation or feedback
        return None
    return params


def fit_logistic(scores: np.ndarray, labels: np.ndarray, iterations: int = 100) -> dict[str, float]:
    """Maximum-likelihood ``a``, ``b`` of ``P(label=1 | s) = sigmoid(a * s + b)`` by Newton's
    method (a tiny ridge keeps separable data finite)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.shape != y.shape or s.size == 0:
        raise ValueError("fit_logistic needs as many labels as scores, and at least one")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be 0 or 1")
    X = np.stack([s, np.ones_like(s)], axis=1)
    w = np.array([0.0, np.log((y.mean() + 1e-9) / (1 - y.mean() + 1e-9))])
    ridge = 1e-6 * np.eye(2)
    for _ in range(iterations):
        p = calibrated_scores(s, {"a": w[0], "b": w[1]})
        grad = X.T @ (p - y) + ridge @ w
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"a": float(w[0]), "b": float(w[1])}
