"""First-stage query kernels: sum the weights of the query terms' postings, keep the top k.

:func:`accumulate` reads float weights (BM25's precomputed ones); :func:`accumulate_codes`
reads integer weight codes through a table (the TILDEv2/impact index's float16 or uint8 codes,
inverted by :mod:`tilde.first_stage.inverted`) and sums in float64, as the re-ranking kernel
does, so a first-stage score equals the re-ranker's ``tokens`` score exactly.

Pure functions of arrays (no I/O, no globals). Accumulation is numba-compiled with
``cache=True``, so a new process (a CLI run, a service worker) loads the machine code from
numba's cache instead of compiling for ~10 s as bm25s' own retrieval kernels do.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["accumulate", "accumulate_codes", "top_k"]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def accumulate(
    data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, term_ids: np.ndarray, num_docs: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` of every document matching at least one of ``term_ids``.

    ``data``/``indices``/``indptr`` are the CSC arrays (term t's postings are
    ``indptr[t]:indptr[t+1]``); a repeated term id counts as often as it occurs. Rows come in the
    order they were first reached. Every weight is > 0, so a zero accumulator means "not seen".
    """
    acc = np.zeros(num_docs, dtype=np.float32)
    total = 0
    for t in term_ids:
        total += indptr[t + 1] - indptr[t]
    touched = np.empty(total, dtype=np.int64)
    n = 0
    for t in term_ids:
        for j in range(indptr[t], indptr[t + 1]):
            r = indices[j]
            if acc[r] == 0.0:
                touched[n] = r
                n += 1
            acc[r] += data[j]
    rows = touched[:n]
    return rows, acc[rows]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def accumulate_codes(
    codes: np.ndarray, table: np.ndarray, indices: np.ndarray, indptr: np.ndarray, term_ids: np.ndarray,
    num_docs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`accumulate` over weight codes: posting ``j`` weighs ``table[codes[j]]``, summed in
    float64 (exact for float16 weights: the sum does not depend on the order of the terms).

    Postings weighing 0 (a quantised weight that rounds to 0) count nothing; a term id outside
    ``indptr`` counts nothing (the caller's vocabulary may be larger). A row or code outside
    ``num_docs`` or ``table`` (a damaged file) raises ValueError, never reads out of bounds.
    """
    acc = np.zeros(num_docs, dtype=np.float64)
    n_terms = indptr.shape[0] - 1
    n_codes = table.shape[0]
    total = 0
    for t in term_ids:
        if 0 <= t < n_terms:
            total += indptr[t + 1] - indptr[t]
    touched = np.empty(total, dtype=np.int64)
    n = 0
    for t in term_ids:
        if t < 0 or t >= n_terms:
            continue
        for j in range(indptr[t], indptr[t + 1]):
            r = indices[j]
            c = codes[j]
            if r < 0 or r >= num_docs or c >= n_codes:
                raise ValueError("inverted posting outside the index or the weight table")
            w = table[c]
            if w == 0.0:
                continue
            if acc[r] == 0.0:
                touched[n] = r
                n += 1
            acc[r] += w
    rows = touched[:n]
    return rows, acc[rows]


def top_k(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(rows, scores)``, by score descending, ties by row ascending.

    Deterministic at the cut too: of several documents tied with the k-th score, the lowest rows
    are kept (argpartition alone would keep an arbitrary subset).
    """
    n = int(rows.size)
    if n > k:
        thr = np.partition(scores, n - k)[n - k]  # the k-th largest score
        above = np.flatnonzero(scores > thr)
        tied = np.flatnonzero(scores == thr)
        tied = tied[np.argsort(rows[tied], kind="stable")][: k - above.size]
        keep = np.concatenate([above, tied])
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))
    return rows[order], scores[order]
