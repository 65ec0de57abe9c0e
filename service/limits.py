"""Bounded work per request: the cost budget, the deadline and the admission gate.

* :func:`check_budget` is the one budget function: given a request's queries (already
  tokenized) it refuses, before anything is scored, a request whose candidates, query characters,
  scoring work (candidates x distinct query tokens), texts to encode or estimated response size
  exceed the configured limits: 413 for the response size, 422 otherwise, the code
  ``over_budget`` and a message naming the limit (all limits are in ``/info`` and the OpenAPI).
* :class:`Deadline`: a request must be answered ``deadline`` seconds after its body was read;
  stages check it between steps (``StageClock.lap``) and past it the answer is a JSON 503
  (``deadline_exceeded``), long before the WSGI server's worker timeout. Each step is bounded by
  the budget, so the overrun is too.
* :class:`Gate`: a worker scores ``concurrency`` requests at a time; up to ``max_queue`` more wait
  (within their deadline), and beyond that a request is answered 429 with ``Retry-After`` at
  once instead of queueing without bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from .errors import ApiError

if TYPE_CHECKING:
    from .config import ServiceConfig
    from .schemas import RerankRequest

__all__ = ["RESULT_BYTES", "Deadline", "Gate", "check_budget", "estimate_response_bytes"]

# Bytes one result takes in JSON besides its id: {"index":1234,"id":,"relevance_score":12.345678901234567}
RESULT_BYTES = 64


class Deadline:
    __slots__ = ("at", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self, stage: str = "") -> None:
        if time.monotonic() > self.at:
            raise self.error(stage)

    def error(self, stage: str = "") -> ApiError:
        where = f" (at {stage})" if stage else ""
        return ApiError(503, f"the request was not answered within its deadline of {self.seconds:g} s{where}; "
                             f"send fewer candidates or shorter queries, or retry later", "deadline_exceeded",
                        {"Retry-After": "1"})


class Gate:
    """Per-process admission: ``slots`` requests at a time, ``queue`` more may wait."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = slots
        self.queue = queue
        self._sem = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.waiting = 0

    @contextmanager
    def slot(self, deadline: Deadline) -> Iterator[None]:
        if not self._sem.acquire(blocking=False):
            with self._lock:
                if self.waiting >= self.queue:
                    raise ApiError(429, f"the server is busy: {self.slots} request(s) being scored and {self.waiting} "
                                        f"waiting in this worker (max_queue {self.queue}); retry after 1 s",
                                   "too_many_requests", {"Retry-After": "1"})
                self.waiting += 1
            try:
                got = self._sem.acquire(timeout=max(deadline.left(), 0.0))
            finally:
                with self._lock:
                    self.waiting -= 1
            if not got:
                raise deadline.error("waiting for a free worker")
        try:
            yield
        finally:
            self._sem.release()


def estimate_response_bytes(req: RerankRequest) -> int:
    """An upper estimate of the JSON bytes of one query's results (msgpack is smaller)."""
    n = len(req)
    shown = n if req.top_n is None else min(req.top_n, n)
    if shown == 0:
        return 0
    if req.ids is not None:
        if req.int_ids:
            id_bytes = 20 * shown
        else:
            lengths = [len(d) if type(d) is str else 20 for d in req.ids]
            # escaping can double a character (\" or \\); 6 bytes for \uXXXX is rare enough to ignore
            id_bytes = 2 * (sum(lengths) if shown == n else max(lengths) * shown) + 2 * shown
        echo = (id_bytes + 10 * shown) if req.return_documents else 0
        return RESULT_BYTES * shown + id_bytes + echo
    docs = req.documents or ()
    per = [2 * (len(d.id) if type(d.id) is str else 20) + 2
           + ((2 * len(d.text or "") + 40) if req.return_documents else 0) for d in docs]
    total = sum(per) if shown == n else max(per) * shown
    return RESULT_BYTES * shown + total


def check_budget(
    reqs: Sequence[RerankRequest], query_ids: Sequence[np.ndarray] | None, config: ServiceConfig,
    query_encodes: int = 0,
) -> None:
    """Refuse, naming the limit, a request (its ``reqs``; a batch has several) that would exceed
    the budget. ``query_ids``: each query's token ids (``None``: only the checks that need no
    tokenization, which must pass before tokenizing). Texts to encode on the fly are bounded by
    ``max_encode`` (checked by the engine, which knows which documents are not in the index)
    times ``max_text_chars``. ``query_encodes``: query-encoder passes the request's scoring mode
    needs (mlm/dense: a model forward per query and encoder)."""
    where = "this batch" if len(reqs) > 1 else "this request"
    if query_ids is None:
        candidates = sum(len(r) for r in reqs)
        if candidates > config.max_candidates:
            raise _over(422, f"{where} has {candidates} candidates; the limit is {config.max_candidates} per request "
                             f"(max_candidates, summed over a batch's queries)")
        chars = sum(len(r.query) for r in reqs)
        if chars > config.max_query_chars_total:
            raise _over(422, f"{where} has {chars} query characters; the limit is {config.max_query_chars_total} "
                             f"per request (max_query_chars_total)")
        if query_encodes > config.max_query_encodes:
            raise _over(422, f"{where} needs {query_encodes} query-encoder passes (its scoring mode encodes every "
                             f"query); the limit is {config.max_query_encodes} per request (max_query_encodes): "
                             f"send fewer queries per batch, or mode tokens")
        size = sum(estimate_response_bytes(r) for r in reqs)
        if size > config.max_response_bytes:
            raise _over(413, f"the response to {where} would be about {size} bytes; the limit is "
                             f"{config.max_response_bytes} (max_response_bytes): send top_n, or fewer candidates")
        return
    work = 0
    for r, q in zip(reqs, query_ids):
        work += len(r) * max(int(np.unique(q).size) if q.size > 1 else int(q.size), 1)
    if work > config.max_work:
        raise _over(422, f"{where} needs {work} units of scoring work (candidates x distinct query tokens); the limit "
                         f"is {config.max_work} (max_work): send fewer candidates or shorter queries")


def _over(status: int, message: str) -> ApiError:
    return ApiError(status, message, "over_budget")
