"""Turning caller-supplied docids into the index's integer keys, fast.

A 1,000-candidate request arrives as 1,000 Python strings; ``np.array(ids, dtype=np.int64)``
costs ~120 us and still accepts non-canonical forms ("007", " 7"). Joining them into one buffer
and parsing it in a compiled loop costs ~15 us and checks canonical form at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

__all__ = ["as_id_sequence", "int_keys", "str_keys"]

_MAX_DIGITS = 18  # < 2**63 always; longer ids cannot be in an int64-keyed index


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _parse(buf: np.ndarray, keys: np.ndarray, ok: np.ndarray) -> bool:
    """Parse newline-separated canonical decimals; False if the buffer holds another count."""
    n = keys.shape[0]
    size = buf.shape[0]
    pos = 0
    for k in range(n):
        start = pos
        value = 0
        good = True
        while pos < size and buf[pos] != 10:
            c = buf[pos]
            if c < 48 or c > 57:
                good = False
            elif pos - start < _MAX_DIGITS:
                value = value * 10 + (c - 48)
            pos += 1
        digits = pos - start
        if digits == 0 or digits > _MAX_DIGITS or (digits > 1 and buf[start] == 48):
            good = False
        keys[k] = value if good else -1
        ok[k] = good
        if k < n - 1:
            if pos >= size:
                return False
            pos += 1  # the separator
    return pos == size


def _slow(docids: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    n = len(docids)
    keys = np.full(n, -1, dtype=np.int64)
    ok = np.zeros(n, dtype=np.bool_)
    for i, d in enumerate(docids):
        if isinstance(d, (bool, np.bool_)):
            continue  # True is an int in Python, never a docid
        if isinstance(d, (int, np.integer)):
            if 0 <= int(d) < 10**_MAX_DIGITS:
                keys[i], ok[i] = int(d), True
        elif isinstance(d, str) and d.isascii() and d.isdigit() and (d == "0" or d[0] != "0") and len(d) <= _MAX_DIGITS:
            keys[i], ok[i] = int(d), True
    return keys, ok


def as_id_sequence(docids: Sequence[object] | np.ndarray) -> Sequence[object]:
    """A numpy array of ids as a list of Python values (a 1-D array only: a matrix of ids is an
    error, not a flat list); anything else unchanged."""
    if isinstance(docids, np.ndarray):
        if docids.ndim != 1:
            raise ValueError(f"ids must be a 1-D sequence, not an array of shape {docids.shape}")
        if docids.dtype.kind == "S":
            return [b.decode("utf-8", "replace") for b in docids.tolist()]
        return docids.tolist()  # type: ignore[no-any-return]
    return docids


def _integer_type(t: type) -> bool:
    return issubclass(t, (int, np.integer)) and not issubclass(t, (bool, np.bool_))


def int_keys(docids: Sequence[object] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 keys, convertible mask) for ids given as canonical decimal strings or ints
    (Python or numpy integers, or a 1-D numpy array of either)."""
    if isinstance(docids, np.ndarray) and docids.ndim == 1 and docids.dtype.kind == "i":
        keys = docids.astype(np.int64)
        ok = (keys >= 0) & (keys < 10**_MAX_DIGITS)
        return np.where(ok, keys, -1), ok
    docids = as_id_sequence(docids)
    n = len(docids)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.bool_)
    if type(docids[0]) is not str and all(_integer_type(t) and t is not np.uint64 for t in set(map(type, docids))):
        # Integers need no canonical-form check: one conversion (bool is excluded: its type is
        # bool, not int; numpy's uint64 could wrap in the cast and takes the slow path).
        try:
            keys = np.array(docids, dtype=np.int64)
        except OverflowError:
            return _slow(docids)
        ok = (keys >= 0) & (keys < 10**_MAX_DIGITS)
        return np.where(ok, keys, -1), ok
    try:
        joined = "\n".join(docids)  # type: ignore[arg-type]
    except TypeError:
        return _slow(docids)  # ints or mixed types
    keys = np.empty(n, dtype=np.int64)
    ok = np.empty(n, dtype=np.bool_)
    if not _parse(np.frombuffer(joined.encode("utf-8"), dtype=np.uint8), keys, ok):
        return _slow(docids)  # an id contained a newline
    return keys, ok


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _split(buf: np.ndarray, out: np.ndarray, ok: np.ndarray) -> bool:
    """Copy newline-separated ids into the rows of ``out`` (zero padded); an id longer than a row
    or ending in NUL (numpy's S type strips trailing NULs) is not convertible. False if the
    buffer holds another count."""
    n, width = out.shape
    size = buf.shape[0]
    pos = 0
    for k in range(n):
        j = 0
        last = 1
        while pos < size and buf[pos] != 10:
            c = buf[pos]
            if j < width:
                out[k, j] = c
            j += 1
            last = c
            pos += 1
        good = j <= width and last != 0
        if not good:
            for m in range(min(j, width)):
                out[k, m] = 0
        ok[k] = good
        if k < n - 1:
            if pos >= size:
                return False
            pos += 1
    return pos == size


def str_keys(docids: Sequence[object] | np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(``|S<width>`` UTF-8 keys, convertible mask) for string-keyed indexes: one join and one
    compiled pass instead of encoding 1,000 ids one by one (~150 us)."""
    docids = as_id_sequence(docids)
    n = len(docids)
    out = np.zeros((n, width), dtype=np.uint8)
    ok = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return out.view(f"S{width}").ravel(), ok
    try:
        joined = "\n".join(docids)  # type: ignore[arg-type]
    except TypeError:
        joined = "\n".join(str(d) for d in docids)  # ints given for string ids: compare their text
    if not _split(np.frombuffer(joined.encode("utf-8"), dtype=np.uint8), out, ok):
        out[:] = 0  # an id contained a newline: start over, encoding one by one
        ok[:] = False
        for i, d in enumerate(docids):
            e = str(d).encode("utf-8")
            if len(e) <= width and not e.endswith(b"\x00"):
                out[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
                ok[i] = True
    return out.view(f"S{width}").ravel(), ok
