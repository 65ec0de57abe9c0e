"""What one service process holds: the index and tokenizer (loaded once), the optional
on-the-fly encoder, the metering recorder and the Prometheus metrics."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from tilde import __version__
from tilde.metering import DEFAULT_WATTS_PER_CORE, CpuTimeMeter, EnergyMeter, Hooks, NullMeter, RaplMeter, Recorder
from tilde.rank import Reranker
from tilde.rank.feedback import feedback_arg

from .config import ConfigError, ServiceConfig
from .encoder import TextEncoder
from .engine import Engine
from .metrics import ServiceMetrics

logger = logging.getLogger(__name__)

__all__ = ["ServiceState", "build_meter"]


def build_meter(config: ServiceConfig) -> EnergyMeter:
    """The configured meter; per-thread CPU time when estimating, so each request (one thread)
    is charged for its own CPU only."""
    if config.meter == "none":
        return NullMeter()
    if config.meter == "rapl" or (config.meter == "auto" and RaplMeter.available()):
        if not RaplMeter.available():
            raise ConfigError("meter rapl: no readable RAPL counter (energy_uj is root-only on Linux >= 5.10)")
        return RaplMeter()
    return CpuTimeMeter(config.watts_per_core or DEFAULT_WATTS_PER_CORE, scope="thread")


class ServiceState:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        hooks = Hooks()
        hooks.add(self.metrics.on_measurement)
        # keep=False: bounded memory in a long-running process; global hooks still receive everything.
        self.recorder = Recorder(build_meter(config), hooks=hooks, keep=False)
        self.engine: Engine | None = None
        self.encoder: TextEncoder | None = None
        # The /v1/search first stage: a BM25Index, or the index's own weights (ImpactIndex) with
        # first_stage "impact". ``bm25`` is the same object under the name app.py reads.
        self.first_stage: Any = None
        self.bm25: Any = None
        self.text_store: Any = None  # a BM25Index that keeps the passages' texts: .texts(docids)
        self.load_seconds: float | None = None
        self.error: str | None = None
        self.gate: Any = None  # service.limits.Gate, set by create_app
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.engine is not None and (not self.config.model or self.encoder is not None)

    def load(self, encoder: bool = True) -> None:
        """Open the index and tokenizer, compile the kernel; then the model if one is configured
        (``encoder=False`` defers it: a gunicorn master must not start torch threads before forking)."""
        with self._lock:
            if self.engine is None:
                if not self.config.index:
                    raise ConfigError("no index configured (set --index or TILDE_INDEX)")
                t0 = time.perf_counter()
                c = self.config
                reranker = Reranker.load(
                    c.index, tokenizer=c.tokenizer, missing=c.missing, feedback=feedback_arg(c.feedback),
                    scoring=c.mode,
                )
                reranker.warmup()
                self.engine = Engine(reranker, None, self.config.max_encode_tokens, self.config.max_chunks_per_doc)
                self._load_first_stage(reranker)
                self.load_seconds = time.perf_counter() - t0
                logger.info("pid %d: index %s open (%d passages) in %.3f s", os.getpid(), self.config.index,
                            len(reranker.index), self.load_seconds)
            if encoder:
                self._load_encoder()

    def _load_first_stage(self, reranker: Reranker) -> None:
        """The first stage behind /v1/search: BM25 (--bm25, else <index>/bm25 when it exists), or
        with ``first_stage = "impact"`` the index's own weights (<index>/inverted, else inverted
        in memory at start). A BM25 index that keeps texts serves return_documents either way."""
        from tilde.first_stage import BM25Index

        kind = self.config.first_stage  # bm25 or impact (ServiceConfig checks it)
        path = self.config.bm25
        if path is None and (Path(self.config.index) / "bm25" / "manifest.json").is_file():
            path = str(Path(self.config.index) / "bm25")
        bm25 = BM25Index.load(path) if path is not None else None
        if bm25 is not None and bm25.has_texts:
            self.text_store = bm25
        if kind == "impact":
            from tilde.first_stage.inverted import ImpactIndex

            self.first_stage = ImpactIndex.load(reranker.index, text=reranker.text)
        else:
            self.first_stage = bm25
        if self.first_stage is not None:
            self.first_stage.search("warmup", 1)  # compile and page in, like the re-ranking kernel
        self.bm25 = self.first_stage

    def _load_encoder(self) -> None:
        if not self.config.model or self.encoder is not None:
            return
        assert self.engine is not None
        rr = self.engine.reranker
        enc = TextEncoder(self.config.model, rr.text, rr.index, threads=self.config.torch_threads,
                          check=self.config.check_model, dense_model=self.config.dense_model,
                          cache_size=self.config.encode_cache)
        enc.warmup()
        self.encoder = enc
        self.engine = Engine(rr, enc, self.config.max_encode_tokens, self.config.max_chunks_per_doc)
        logger.info("pid %d: model %s loaded for on-the-fly encoding", os.getpid(), self.config.model)

    def info(self, expose_paths: bool = False) -> dict[str, Any]:
        """What /info shows. Without ``expose_paths`` no absolute path and no pid: file names
        only (enough to tell which index and model are served, nothing about the host)."""
        c = self.config

        def where(path: Any) -> str | None:
            if path is None or path == "":
                return None
            return str(path) if expose_paths else Path(str(path)).name

        out: dict[str, Any] = {
            "service": "tilde",
            "version": __version__,
            "ready": self.ready,
            "missing_policy": c.missing,
            "feedback": None,
            "limits": c.limits(),
            "formats": ["application/json", "application/msgpack"],
            "meter": {"method": self.recorder.method},
            "auth": "api-key" if c.keys() else "none",
            "model": {"encoder": where(c.model), "encoder_loaded": self.encoder is not None,
                      "encoder_sha256": self.encoder.sha256 if self.encoder else None,
                      # word pieces of one passage (a longer text is cut into chunks of this size)
                      "chunk_pieces": self.encoder.window if self.encoder else None,
                      "encode_cache": self.encoder.cache.stats() if self.encoder else None},
            "index": None,
            "first_stage": None,
        }
        if self.first_stage is not None:
            fs = self.first_stage
            out["first_stage"] = {"engine": getattr(fs, "engine", "bm25"), "path": where(getattr(fs, "path", "")),
                                  "endpoint": "/v1/search"}
        if self.engine is not None:
            idx = self.engine.reranker.index
            fb = self.engine.reranker.feedback
            out["feedback"] = fb.to_dict() if fb is not None else None
            out["scoring"] = {"mode": str(self.engine.reranker.scoring),
                              "signals": list(self.engine.reranker.scoring.signals),
                              "recommended": str(self.engine.reranker.recommended)}
            m = idx.manifest
            out["model"].update({"index_model": where(m.model), "index_model_sha256": m.model_sha256})
            out["index"] = {
                "path": where(idx.path),
                "passages": m.num_passages,
                "postings": m.num_postings,
                "postings_per_passage": m.num_postings / m.num_passages if m.num_passages else 0.0,
                "token_dtype": m.token_dtype,
                "weight_dtype": m.weight_dtype,
                "docid_kind": m.docid_kind,
                "vocab_size": m.vocab_size,
                "format_version": m.format_version,
                "tilde_version": m.tilde_version,
                "expansion": m.expansion,
                "weighting": m.weighting,
                "dense": None if m.dense is None else {k: m.dense.get(k) for k in ("dim", "codec", "model")},
                "query_encoders": sorted((m.query_encoders or {}).keys()),
                "open_seconds": self.load_seconds,
            }
        if expose_paths:
            out["pid"] = os.getpid()
        return out

