"""Fusion of scoring signals: a pure function over score arrays, its weights and its
normalisation as data (the separation Pyserini's hybrid searcher keeps)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["NORMALIZATIONS", "fuse", "minmax", "zscore"]


def minmax(scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``(s - min) / (max - min)`` over the entries in ``mask`` (all by default); entries outside
    the mask, and every entry when all masked scores are equal, become 0."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.ones(s.shape, dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
    out = np.zeros(s.shape, dtype=np.float64)
    if not m.any():
        return out
    lo, hi = float(s[m].min()), float(s[m].max())
    if hi > lo:
        out[m] = (s[m] - lo) / (hi - lo)
    return out


def zscore(scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``(s - mean) / std`` over the entries in ``mask``; 0 outside it, and everywhere when the
    masked scores are all equal."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.ones(s.shape, dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
    out = np.zeros(s.shape, dtype=np.float64)
    if not m.any():
        return out
    sd = float(s[m].std())
    if sd > 0:
        out[m] = (s[m] - float(s[m].mean())) / sd
    return out


NORMALIZATIONS = {"minmax": minmax, "zscore": zscore}


def fuse(
    signals: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    mask: np.ndarray | None = None,
    normalization: str = "minmax",
) -> tuple[np.ndarray, tuple[str, ...]]:
    """``sum_s w_s * norm(s) / sum_s w_s`` over the signals that are both weighted and present.

    Returns the fused scores (0 outside ``mask``) and the names of the signals used, in the order
    of ``weights``. Dividing by the weights' sum keeps the fused score in [0, 1] whichever signals
    took part."""
    norm = NORMALIZATIONS.get(normalization)
    if norm is None:
        raise ValueError(f"unknown normalization {normalization!r} (known: {', '.join(NORMALIZATIONS)})")
    used = tuple(name for name, w in weights.items() if float(w) > 0 and name in signals)
    if not used:
        raise ValueError("no weighted signal to fuse")
    total = sum(float(weights[name]) for name in used)
    first = np.asarray(signals[used[0]])
    out = np.zeros(first.shape, dtype=np.float64)
    for name in used:
        out += (float(weights[name]) / total) * norm(signals[name], mask)
    if mask is not None:
        out[~np.asarray(mask, dtype=np.bool_)] = 0.0
    return out, used
