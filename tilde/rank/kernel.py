"""The scoring kernel: a pure function of arrays (no I/O, no model, no globals).

score(row) = sum over query tokens q (with multiplicity) of weight(row, q), 0 when absent.

Each candidate costs one random jump into the postings (memory latency dominates), then a
merge of the few sorted query tokens against the row's sorted tokens, using a binary search that
only ever moves forward. Weights are read as integer codes through a float32 table, so float16
and uint8 indexes share this loop; sums are float64 like the reference (exact for float16).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["prepare_query", "score_rows", "score_rows_dense"]


def prepare_query(query_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct query ids and how often each occurs (repeats count in the score)."""
    uniq, counts = np.unique(np.asarray(query_ids, dtype=np.int64), return_counts=True)
    return uniq, counts.astype(np.float64)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def score_rows(
    offsets: np.ndarray,
    tokens: np.ndarray,
    codes: np.ndarray,
    table: np.ndarray,
    rows: np.ndarray,
    q_ids: np.ndarray,
    q_counts: np.ndarray,
) -> np.ndarray:
    """Scores of ``rows`` (row -1 scores 0.0; the caller applies the unknown-id policy)."""
    n = rows.shape[0]
    lo_a = np.empty(n, dtype=np.int64)
    hi_a = np.empty(n, dtype=np.int64)
    for i in range(n):
        r = rows[i]
        if r >= 0:
            lo_a[i] = offsets[r]
            hi_a[i] = offsets[r + 1]
        else:
            lo_a[i] = 0
            hi_a[i] = 0
    # Touch each row's postings once with independent loads before scoring: the CPU keeps many
    # of these cache misses in flight at once, whereas the binary searches below are chains of
    # dependent loads. Measured on a 1M-passage index: 0.55 ms -> 0.32 ms per 1,000 candidates.
    touched = 0
    for i in range(n):
        lo = lo_a[i]
        hi = hi_a[i]
        if hi > lo:
            touched += tokens[lo] + tokens[(lo + hi) >> 1] + tokens[hi - 1]
    out = np.zeros(n, dtype=np.float64)
    nq = q_ids.shape[0]
    for i in range(n):
        lo = lo_a[i]
        hi = hi_a[i]
        s = 0.0
        for j in range(nq):
            if lo >= hi:
                break
            q = q_ids[j]
            a = lo
            b = hi
            while a < b:  # lower bound of q in tokens[lo:hi]
                m = (a + b) >> 1
                if tokens[m] < q:
                    a = m + 1
                else:
                    b = m
            if a < hi and tokens[a] == q:
                s += q_counts[j] * table[codes[a]]
                a += 1
            lo = a  # query ids are sorted: later ones lie further right
        out[i] = s
    if touched == -1:  # never true; keeps the compiler from removing the touch loop
        out[0] += 0.0
    return out


@numba.njit(cache=True, nogil=True, boundscheck=False)
def score_rows_dense(
    offsets: np.ndarray,
    tokens: np.ndarray,
    codes: np.ndarray,
    table: np.ndarray,
    rows: np.ndarray,
    ids: np.ndarray,
    weights: np.ndarray,
    vocab_size: int,
) -> np.ndarray:
    """The same sum as :func:`score_rows` for many weighted query tokens (feedback expansions):
    one pass over each row's postings against a dense weight table instead of a binary search per
    token. Matches are added in ascending token order, as :func:`score_rows` does, so the two give
    bit-identical sums."""
    qw = np.zeros(vocab_size, dtype=np.float64)
    for j in range(ids.shape[0]):
        qw[ids[j]] = weights[j]
    n = rows.shape[0]
    out = np.zeros(n, dtype=np.float64)
    # Branch-free: non-expansion tokens add exactly 0.0 (measured 0.32 vs 0.40 ms per 1,000
    # cached rows with a branch). A touch-first loop as in score_rows did not help here.
    for i in range(n):
        r = rows[i]
        if r < 0:
            continue
        s = 0.0
        for k in range(offsets[r], offsets[r + 1]):
            s += qw[tokens[k]] * table[codes[k]]
        out[i] = s
    return out

