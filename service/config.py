"""Service and server configuration: frozen dataclasses, filled from flags or ``TILDE_*`` env vars.

``ServiceConfig`` is what :func:`service.app.create_app` needs (index, model, limits, policy);
``ServerConfig`` is what gunicorn needs (bind address, workers, worker class). Every field can
be set from the environment as ``TILDE_<FIELD>`` (e.g. ``TILDE_MAX_DOCUMENTS=5000``), which is how
``tilde serve`` hands its flags to gunicorn workers and how a container is configured.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from tilde.rank import MISSING_POLICIES
from tilde.text import MAX_QUERY_CHARS

__all__ = ["ENV_PREFIX", "METERS", "WORKER_CLASSES", "ConfigError", "ServerConfig", "ServiceConfig", "from_env"]

ENV_PREFIX = "TILDE_"
METERS = ("auto", "rapl", "cpu", "none")
WORKER_CLASSES = ("sync", "gthread")

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing or out of range."""


@dataclass(frozen=True)
class ServiceConfig:
    """What the Flask app needs. Limits are per request."""

    index: str = ""  # index directory (required to serve)
    model: str | None = None  # TILDEv2 checkpoint for documents that carry text but are not in the index
    tokenizer: str | None = None  # default: the tokenizer stored with the index
    bm25: str | None = None  # BM25 index for /v1/search (default: <index>/bm25 when it exists)
    missing: str = "error"  # unknown ids: "error" (422, strict), "skip", or "zero"; a request may override
    feedback: str = "index"  # pseudo-relevance feedback: "index" (what the model recommends), "off", or D,T,W
    mode: str = "index"  # scoring mode (tilde.rank.scoring): "index" (what the index recommends), tokens, mlm, ...
    dense_model: str | None = None  # impact indexes with vectors: the bi-encoder for texts (default: found)
    max_body_bytes: int = 16 * 1024 * 1024  # 413 beyond this
    max_documents: int = 10_000  # candidates per query
    max_batch_queries: int = 256  # queries per /v1/rerank/batch request
    max_encode: int = 32  # documents encoded on the fly per request (needs a model)
    max_text_chars: int = 20_000  # characters per document text
    max_query_chars: int = MAX_QUERY_CHARS
    meter: str = "auto"  # energy meter: auto (RAPL if readable, else CPU time), rapl, cpu, none
    watts_per_core: float = 0.0  # CPU-time meter figure; 0 means TILDE_WATTS_PER_CORE or the default
    eager: bool = True  # load the index in create_app; False: call state.load() later (/ready is 503 until then)
    check_model: bool = True  # refuse a model whose weights differ from the ones the index was built with
    torch_threads: int = 1  # intra-op threads for on-the-fly encoding (workers already use the cores)

    def __post_init__(self) -> None:
        if self.missing not in MISSING_POLICIES:
            raise ConfigError(f"missing must be one of {', '.join(MISSING_POLICIES)}, not {self.missing!r}")
        if self.feedback != "index":
            from tilde.rank.feedback import feedback_arg

            try:
                feedback_arg(self.feedback)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.mode != "index":
            from tilde.rank.scoring import parse_scoring

            try:
                if not self.mode.startswith("fused") or ":" in self.mode:
                    parse_scoring(self.mode)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.meter not in METERS:
            raise ConfigError(f"meter must be one of {', '.join(METERS)}, not {self.meter!r}")
        for name in ("max_body_bytes", "max_documents", "max_batch_queries", "max_text_chars", "max_query_chars",
                     "torch_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.max_encode < 0 or self.watts_per_core < 0:
            raise ConfigError("max_encode and watts_per_core must be >= 0")

    def limits(self) -> dict[str, int]:
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_documents": self.max_documents,
            "max_batch_queries": self.max_batch_queries,
            "max_encode": self.max_encode if self.model else 0,
            "max_text_chars": self.max_text_chars,
            "max_query_chars": self.max_query_chars,
        }


@dataclass(frozen=True)
class ServerConfig:
    """What gunicorn needs. Binds to loopback unless told otherwise."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    # sync: a worker accepts a connection only when idle, so requests spread over the workers and
    # never queue behind one another in a busy process (the GIL makes a worker one core). gthread
    # keeps connections alive (~0.2 ms less CPU per request) but a connection stays with the worker
    # that accepted it: with few client connections, measured, all of them often land on one worker
    # and throughput halves (benchmarks/service_load.py --matrix prints the per-worker CPU split).
    worker_class: str = "sync"
    threads: int = 1  # per worker, gthread only
    preload: bool = True  # open the index once in the master and fork (shared page cache either way)
    access_log: str = ""  # "" = off (the default: keeps logging off the hot path), "-" = stderr, or a file
    log_level: str = "warning"
    timeout: int = 30  # seconds a worker may be silent before the master restarts it
    graceful_timeout: int = 20  # seconds in-flight requests get after SIGTERM
    keepalive: int = 5  # seconds an idle keep-alive connection is held (gthread)
    backlog: int = 2048

    def __post_init__(self) -> None:
        if self.worker_class not in WORKER_CLASSES:
            raise ConfigError(f"worker class must be one of {', '.join(WORKER_CLASSES)}, not {self.worker_class!r}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be 0..65535, not {self.port}")
        if self.workers < 1 or self.threads < 1:
            raise ConfigError("workers and threads must be >= 1")
        if self.worker_class == "sync" and self.threads > 1:
            # gunicorn would silently switch to gthread; say so instead
            raise ConfigError(f"{self.threads} threads per worker need worker class gthread (sync serves one request "
                              f"at a time per worker)")

    @property
    def bind(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse(raw: str, default: Any, name: str) -> Any:
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected {type(default).__name__}") from None
    return raw if raw != "" or default is not None else None


def from_env(cls: type[T], environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build ``cls`` from ``TILDE_<FIELD>`` variables; ``overrides`` (not None) take precedence."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    assert dataclasses.is_dataclass(cls)
    for f in fields(cls):
        if overrides.get(f.name) is not None:
            values[f.name] = overrides[f.name]
            continue
        key = ENV_PREFIX + f.name.upper()
        if key in env:
            values[f.name] = _parse(env[key], f.default, key)
    return cls(**values)


def to_env(config: ServiceConfig | ServerConfig) -> dict[str, str]:
    """The ``TILDE_*`` variables that reproduce ``config`` (for handing it to worker processes)."""
    out: dict[str, str] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        out[ENV_PREFIX + f.name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return out
