"""Prometheus metrics for the service, fed by the metering hooks and the WSGI wrapper.

Each app owns a registry (so several apps can live in one process, as in tests). Under gunicorn
with several workers, ``tilde serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker starts:
every worker then writes its values to a memory-mapped file there and ``/metrics`` (answered by
whichever worker gets the request) merges all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from tilde.metering import Measurement

__all__ = ["REQUEST_BUCKETS", "STAGE_BUCKETS", "ServiceMetrics", "mark_process_dead", "multiprocess_dir"]

# Sub-millisecond resolution: a re-ranking request takes about a millisecond.
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
                   0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))
STAGE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                 0.05, 0.1, 0.5, 1.0, float("inf"))


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def mark_process_dead(pid: int) -> None:
    """Called by the gunicorn master when a worker exits (multiprocess mode only)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class ServiceMetrics:
    """Request duration by endpoint, requests by status, per-stage durations, energy by stage."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("tilde_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.duration = Histogram("tilde_request_duration_seconds", "Time in the app per request (WSGI call)",
                                  ["endpoint"], buckets=REQUEST_BUCKETS, registry=r)
        self.stage = Histogram("tilde_stage_duration_seconds",
                               "Time per request stage (parse, tokenize, lookup, score, encode, sort, serialize)",
                               ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.energy = Counter("tilde_stage_energy_joules", "Energy attributed to each stage by the meter",
                              ["stage", "method"], registry=r)
        self.request_energy = Counter("tilde_request_energy_joules", "Energy of re-ranking requests (handler span)",
                                      ["method"], registry=r)
        self.queries = Counter("tilde_queries", "Queries re-ranked", registry=r)
        self.candidates = Counter("tilde_candidates", "Candidates scored", ["source"], registry=r)
        # labels() takes a lock and a dict lookup; the label sets are few, so keep the children.
        self._children: dict[tuple[str, ...], object] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> object:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_measurement(self, m: Measurement) -> None:
        """Metering hook: every measured stage feeds the stage histogram and energy counters."""
        if m.stage == "request":
            self._child(self.request_energy, m.method).inc(m.joules)  # type: ignore[attr-defined]
            return
        self._child(self.stage, m.stage).observe(m.seconds)  # type: ignore[attr-defined]
        if m.joules:
            self._child(self.energy, m.stage, m.method).inc(m.joules)  # type: ignore[attr-defined]

    def observe_request(self, endpoint: str, method: str, status: str, seconds: float) -> None:
        self._child(self.requests, endpoint, method, status).inc()  # type: ignore[attr-defined]
        self._child(self.duration, endpoint).observe(seconds)  # type: ignore[attr-defined]

    def observe_work(self, queries: int, indexed: int, encoded: int) -> None:
        self.queries.inc(queries)
        self._child(self.candidates, "index").inc(indexed)  # type: ignore[attr-defined]
        if encoded:
            self._child(self.candidates, "encoded").inc(encoded)  # type: ignore[attr-defined]

    def exposition(self) -> tuple[bytes, str]:
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
