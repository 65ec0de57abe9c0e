"""Service and server configuration: frozen dataclasses, filled from flags or ``TILDE_*`` env vars.

``ServiceConfig`` is what :func:`service.app.create_app` needs (index, model, limits, policy);
``ServerConfig`` is what gunicorn needs (bind address, workers, worker class). Every field can
be set from the environment as ``TILDE_<FIELD>`` (e.g. ``TILDE_MAX_DOCUMENTS=5000``), which is how
``tilde serve`` hands its flags to gunicorn workers and how a container is configured.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from tilde.rank import MISSING_POLICIES
from tilde.text import MAX_QUERY_CHARS

__all__ = ["ENV_PREFIX", "METERS", "WORKER_CLASSES", "ConfigError", "ServerConfig", "ServiceConfig", "from_env"]

ENV_PREFIX = "TILDE_"
METERS = ("auto", "rapl", "cpu", "none")
FIRST_STAGES = ("bm25", "impact")
# "tilde": service.worker.TildeWorker, gthread with read deadlines, JSON transport errors and a
# backlog drain on SIGTERM (chosen by measurement: see service.worker and the README).
WORKER_CLASSES = ("tilde", "sync", "gthread")
# (this package is "service" in the repository and "tilde.service" when installed)
WORKER_CLASS_PATHS = {"tilde": __name__.rpartition(".")[0] + ".worker.TildeWorker"}

T = TypeVar("T")
_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]+$")


class ConfigError(ValueError):
    """A configuration value is missing or out of range."""


@dataclass(frozen=True)
class ServiceConfig:
    """What the Flask app needs. Limits are per request."""

    index: str = ""  # index directory (required to serve)
    model: str | None = None  # TILDEv2 checkpoint for documents that carry text but are not in the index
    tokenizer: str | None = None  # default: the tokenizer stored with the index
    bm25: str | None = None  # BM25 index for /v1/search (default: <index>/bm25 when it exists)
    # /v1/search's first stage: "bm25" (the BM25 index above) or "impact" (the index's own
    # weights searched in process: <index>/inverted, else inverted in memory at start)
    first_stage: str = "bm25"
    missing: str = "error"  # unknown ids: "error" (422, strict), "skip", or "zero"; a request may override
    feedback: str = "index"  # pseudo-relevance feedback: "index" (what the model recommends), "off", or D,T,W
    mode: str = "index"  # scoring mode (tilde.rank.scoring): "index" (what the index recommends), tokens, mlm, ...
    dense_model: str | None = None  # impact indexes with vectors: the bi-encoder for texts (default: found)
    max_body_bytes: int = 16 * 1024 * 1024  # 413 beyond this
    max_documents: int = 10_000  # candidates per query
    max_batch_queries: int = 256  # queries per /v1/rerank/batch request
    # Texts encoded on the fly (needs a model) are budgeted in model input tokens, counted after
    # chunking, each passage charged 16 more (service.engine.PASSAGE_COST_TOKENS): the default
    # admits 128 texts of 128 tokens (the common "re-rank my 100 retrieved chunks"), encoded in
    # about 4.7 s on one core with the default recipe (27 texts/s), within the deadline; 576 texts
    # of 16 tokens take about as long (benchmarks/encode_texts.py; the README has the figures).
    max_encode: int = 1024  # documents encoded on the fly per request
    max_encode_tokens: int = 18_432  # model input tokens ([CLS], [SEP] and the per-passage charge included)
    max_chunks_per_doc: int = 10  # default passages a long text is cut into (a request's max_chunks_per_doc wins)
    encode_cache: int = 4096  # passages kept encoded (LRU, per worker; 0: off), about 3 KB each
    max_text_chars: int = 20_000  # characters per document text
    max_query_chars: int = MAX_QUERY_CHARS
    # Cost budget per request (a batch counts all its queries), checked before any scoring; each
    # bound is measured in benchmarks/service_limits.py so that the worst request the defaults
    # allow finishes in well under 2 s on 2 cores.
    max_candidates: int = 100_000  # candidates summed over a batch's queries
    max_query_chars_total: int = 100_000  # query characters summed over a batch (tokenization)
    max_work: int = 20_000_000  # sum over queries of candidates x distinct query tokens (scoring)
    max_response_bytes: int = 32 * 1024 * 1024  # estimated response size, refused before scoring
    max_query_encodes: int = 64  # query-encoder passes (mlm, dense modes: one per query and encoder) per request
    deadline: float = 10.0  # seconds from a request's body read to its answer; JSON 503 past it
    concurrency: int = 1  # re-ranking requests one worker process scores at a time
    max_queue: int = 8  # requests a worker lets wait for a scoring slot; more get 429 + Retry-After
    api_keys: str = field(default="", repr=False)  # comma-separated keys: Authorization: Bearer <key>
    api_key_file: str | None = None  # a file of keys, one per line ('#' comments)
    expose_paths: bool = False  # /info shows absolute paths and the worker pid
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
        if self.first_stage not in FIRST_STAGES:
            raise ConfigError(f"first_stage must be one of {', '.join(FIRST_STAGES)}, not {self.first_stage!r}")
        if self.meter not in METERS:
            raise ConfigError(f"meter must be one of {', '.join(METERS)}, not {self.meter!r}")
        for name in ("max_body_bytes", "max_documents", "max_batch_queries", "max_text_chars", "max_query_chars",
                     "torch_threads", "max_candidates", "max_query_chars_total", "max_work", "max_response_bytes",
                     "concurrency", "max_query_encodes", "max_chunks_per_doc"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, not {getattr(self, name)}")
        if min(self.max_encode, self.max_encode_tokens, self.encode_cache, self.max_queue, self.watts_per_core) < 0:
            raise ConfigError("max_encode, max_encode_tokens, encode_cache, max_queue and watts_per_core must be >= 0")
        if not self.deadline > 0:
            raise ConfigError(f"deadline must be > 0 seconds, not {self.deadline}")
        self.keys()  # a malformed key or an unreadable key file stops the start, not the first request

    def keys(self) -> tuple[str, ...]:
        """The API keys (from ``api_keys`` and ``api_key_file``); empty: no authentication."""
        raw = [k.strip() for k in self.api_keys.split(",")]
        if self.api_key_file:
            try:
                text = open(self.api_key_file, encoding="utf-8").read()
            except OSError as exc:
                raise ConfigError(f"api key file {self.api_key_file}: {exc.strerror or exc}") from None
            except UnicodeDecodeError:
                raise ConfigError(f"api key file {self.api_key_file}: not UTF-8 text") from None
            raw += [line.split("#", 1)[0].strip() for line in text.splitlines()]
        keys = tuple(k for k in raw if k)
        for k in keys:
            # RFC 6750 b64token characters; never echo the key itself
            if len(k) < 8 or not _KEY.match(k):
                raise ConfigError(f"an API key must be 8 or more characters of A-Z a-z 0-9 -._~+/= "
                                  f"(one has {len(k)} characters)")
        return keys

    def limits(self) -> dict[str, int | float]:
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_documents": self.max_documents,
            "max_batch_queries": self.max_batch_queries,
            "max_encode": self.max_encode if self.model else 0,
            "max_encode_tokens": self.max_encode_tokens if self.model else 0,
            "max_chunks_per_doc": self.max_chunks_per_doc,
            "max_text_chars": self.max_text_chars,
            "max_query_chars": self.max_query_chars,
            "max_candidates": self.max_candidates,
            "max_query_chars_total": self.max_query_chars_total,
            "max_work": self.max_work,
            "max_response_bytes": self.max_response_bytes,
            "max_query_encodes": self.max_query_encodes,
            "deadline_seconds": self.deadline,
            "concurrency": self.concurrency,
            "max_queue": self.max_queue,
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
    #
    # Default "tilde" (gthread + read deadlines, service.worker): slow or idle clients hold a
    # blocked thread for at most header_timeout/body_timeout, never the worker. Measured with 8
    # clients trickling 1 byte/s (benchmarks/service_load.py --slow-clients): sync served 2 probes
    # in 40 s and had its workers killed; gthread x 4 stalled probes for 17 s; x 16 answered all.
    # Keep-alive is on (5 s, as uvicorn's default): a new TCP connection per request was most of
    # a 1,000-candidate request's cost. A kept-alive connection stays with the worker that
    # accepted it, so after keepalive_requests responses the worker closes it (as nginx does) and
    # the client's reconnection lands on whichever worker accepts first: the split stays even.
    worker_class: str = "tilde"
    threads: int = 0  # per worker (tilde, gthread): connections read or served at once; 0: 24 (1 for sync)
    preload: bool = True  # open the index once in the master and fork (shared page cache either way)
    access_log: str = ""  # "" = off (the default: keeps logging off the hot path), "-" = stderr, or a file
    log_level: str = "warning"
    timeout: int = 30  # seconds a worker may be silent before the master restarts it
    graceful_timeout: int = 20  # seconds in-flight requests get after SIGTERM
    keepalive: int = 5  # seconds an idle keep-alive connection is held (tilde, gthread); 0: close after each
    keepalive_requests: int = 100  # responses on one kept-alive connection before it is closed (tilde); 0: no limit
    header_timeout: float = 10.0  # seconds a client gets to send the request line and headers (tilde)
    body_timeout: float = 30.0  # seconds a client gets to send the body (tilde)
    limit_request_line: int = 8190  # bytes; longer is a 414
    limit_request_fields: int = 100  # header fields; more (or one over limit_request_field_size) is a 431
    limit_request_field_size: int = 8190
    backlog: int = 2048

    def __post_init__(self) -> None:
        if self.worker_class not in WORKER_CLASSES:
            raise ConfigError(f"worker class must be one of {', '.join(WORKER_CLASSES)}, not {self.worker_class!r}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be 0..65535, not {self.port}")
        if self.workers < 1 or self.threads < 0:
            raise ConfigError("workers must be >= 1 and threads >= 0")
        if self.worker_class == "sync" and self.threads > 1:
            # gunicorn would silently switch to gthread; say so instead
            raise ConfigError(f"{self.threads} threads per worker need worker class tilde or gthread (sync serves "
                              f"one request at a time per worker)")
        if self.keepalive < 0 or self.keepalive_requests < 0:
            raise ConfigError("keepalive and keepalive_requests must be >= 0")
        if not (self.header_timeout > 0 and self.body_timeout > 0):
            raise ConfigError("header_timeout and body_timeout must be > 0 seconds")

    @property
    def threads_per_worker(self) -> int:
        return self.threads or (1 if self.worker_class == "sync" else 24)

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
