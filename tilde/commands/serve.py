"""tilde serve --index DIR [--model M] [--host H] [--port P] [--workers N]: the REST service on gunicorn.

Every flag falls back to a ``TILDE_*`` env var (``--max-documents`` ↔ ``TILDE_MAX_DOCUMENTS``), then
to the default. Binds to 127.0.0.1 unless told otherwise. SIGTERM stops gracefully (in-flight
requests finish); SIGINT/Ctrl-C stops quickly.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", help="index directory (env TILDE_INDEX)")
    p.add_argument("--model", help="TILDEv2 model for documents that carry text but are not in the index "
                                   "(env TILDE_MODEL; default: the embedded default model when the index was "
                                   "built with it, else none and such documents follow --missing; 'none': off)")
    p.add_argument("--tokenizer", help="tokenizer (default: the one stored with the index)")
    p.add_argument("--bm25", help="BM25 index for POST /v1/search (env TILDE_BM25; default: <index>/bm25 if present)")
    p.add_argument("--host", help="address to bind (env TILDE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (env TILDE_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes sharing the memory-mapped index (default 2)")
    p.add_argument("--worker-class", choices=("sync", "gthread"),
                   help="gunicorn worker class (default sync; gthread keeps connections alive)")
    p.add_argument("--threads", type=int, help="threads per worker, gthread only (default 1)")
    p.add_argument("--preload", action=argparse.BooleanOptionalAction, default=None,
                   help="open the index in the master and fork (default), or open it in each worker")
    p.add_argument("--missing", choices=("error", "skip", "zero"),
                   help="default policy for candidates not in the index (default error: 422)")
    p.add_argument("--feedback", help="query-time pseudo-relevance feedback: index (default: what the index's model "
                   "recommends), off, or DOCS,TERMS,WEIGHT (env TILDE_FEEDBACK)")
    p.add_argument("--mode", help="scoring mode: index (default: what the index recommends), tokens, mlm, dense, "
                   "fused, fused:mlm=0.3,dense=0.6,... (env TILDE_MODE); a request may pass its own \"mode\"")
    p.add_argument("--dense-model", help="impact indexes with vectors: the bi-encoder for texts encoded on the fly "
                   "(env TILDE_DENSE_MODEL; default: the one the index was built with, when found)")
    p.add_argument("--max-documents", type=int, help="candidates per query (default 10000)")
    p.add_argument("--max-batch-queries", type=int, help="queries per batch request (default 256)")
    p.add_argument("--max-encode", type=int, help="texts encoded on the fly per request (default 32)")
    p.add_argument("--max-body-bytes", type=int, help="request body limit (default 16 MiB)")
    p.add_argument("--meter", choices=("auto", "rapl", "cpu", "none"), help="energy meter (default auto)")
    p.add_argument("--access-log", help="access log: '-' for stderr or a file (default: off)")
    p.add_argument("--log-level", help="gunicorn log level (default warning)")
    p.add_argument("--timeout", type=int, help="worker timeout, seconds (default 30)")
    p.add_argument("--graceful-timeout", type=int, help="seconds in-flight requests get after SIGTERM (default 20)")


def _gunicorn_app(options: dict[str, Any], hooks: dict[str, Callable[..., Any]], loader: Callable[[], Any]) -> Any:
    from gunicorn.app.base import BaseApplication

    class TildeGunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {**options, **hooks}.items():
                if value is not None and key in self.cfg.settings:  # skip settings this gunicorn lacks
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return loader()

    return TildeGunicorn(prog="tilde serve")


def main(args: argparse.Namespace) -> int:
    from tilde.cli import CommandError

    # Env first: prometheus_client picks its multiprocess mode when imported, and the tokenizer
    # must not use its thread pool in a process that forks.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tilde._packages import service_module

    config = service_module("config")
    ServerConfig, ServiceConfig, from_env = config.ServerConfig, config.ServiceConfig, config.from_env

    service = from_env(
        ServiceConfig, index=args.index, model=args.model, tokenizer=args.tokenizer, bm25=args.bm25,
        missing=args.missing, feedback=args.feedback, mode=args.mode, dense_model=args.dense_model,
        max_documents=args.max_documents, max_batch_queries=args.max_batch_queries, max_encode=args.max_encode,
        max_body_bytes=args.max_body_bytes, meter=args.meter,
    )
    server = from_env(
        ServerConfig, host=args.host, port=args.port, workers=args.workers, worker_class=args.worker_class,
        threads=args.threads, preload=args.preload, access_log=args.access_log, log_level=args.log_level,
        timeout=args.timeout, graceful_timeout=args.graceful_timeout,
    )
    if not service.index:
        raise CommandError("no index: pass --index DIR (or set TILDE_INDEX)")
    if not os.path.isdir(service.index):
        raise CommandError(f"{service.index}: no such index directory")
    from tilde.index.reader import TildeIndex

    manifest = TildeIndex.open(service.index).manifest  # O(1) checks: a bad index stops here, also without preload
    if service.model == "none":
        service = dataclasses.replace(service, model=None)
    elif service.model is None and manifest.weighting == "impact":
        # An impact index gets its own MLM (and bi-encoder) for on-the-fly encoding, when found here.
        from service.encoder import index_models

        mlm, dense = index_models(TildeIndex.open(service.index))
        if mlm is not None and (dense is not None or manifest.dense is None):
            service = dataclasses.replace(service, model=mlm, dense_model=service.dense_model or dense)
            print(f"tilde serve: texts not in the index are encoded as the index was: impact weights from {mlm}"
                  + (f", vectors from {dense}" if dense else "") + " (--model none turns this off)", file=sys.stderr)
        else:
            print("tilde serve: the index's encoders were not found on this machine: texts not in the index follow "
                  "--missing (pass --model / --dense-model to encode them)", file=sys.stderr)
    elif service.model is None:
        # An index built with the embedded default model gets it for on-the-fly encoding too.
        from tilde.models import DEFAULT_MODEL, default_model_path

        if Path(manifest.model).name == DEFAULT_MODEL:
            service = dataclasses.replace(service, model=str(default_model_path()))
            print(f"tilde serve: no --model given: texts not in the index are encoded with the embedded default "
                  f"{DEFAULT_MODEL}, as the index was (--model none turns this off)", file=sys.stderr)
    metrics_dir = None
    if server.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="tilde-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    gunicorn_conf = service_module("gunicorn_conf")
    create_app = service_module("app").create_app

    def loader() -> Any:
        # With preload this runs once in the master (fail fast: a bad index or model stops here, before
        # any worker starts); otherwise in every worker after the fork.
        app = create_app(service)
        # The app's objects live as long as the process: move them out of the collector's sight, so
        # forked workers do not copy pages just to update GC headers, and exit does not walk them.
        gc.freeze()
        return app

    from tilde.rank.scoring import Scoring, parse_scoring

    recommended = Scoring.from_dict(manifest.scoring) if manifest.scoring else Scoring("tokens")
    scoring_label = (f"{recommended} (as the index recommends)" if service.mode == "index"
                     else str(parse_scoring(service.mode, recommended)))

    def when_ready(arbiter: Any) -> None:
        mode = "index preloaded in the master" if server.preload else "index opened per worker"
        kind = f"{server.worker_class} x {server.threads} threads" if server.worker_class == "gthread" else "sync"
        print(f"tilde serve: http://{server.bind} ready ({server.workers} {kind} worker(s), {mode}; "
              f"index {service.index}{', model ' + service.model if service.model else ''}; scoring "
              f"{scoring_label})", file=sys.stderr, flush=True)

    hooks: dict[str, Callable[..., Any]] = {
        "post_worker_init": gunicorn_conf.post_worker_init,
        "child_exit": gunicorn_conf.child_exit,
        "worker_exit": gunicorn_conf.worker_exit,
        "when_ready": when_ready,
    }
    try:
        _gunicorn_app(gunicorn_conf.settings(server), hooks, loader).run()
    except SystemExit as exc:  # the arbiter exits through sys.exit, also on a clean SIGTERM stop
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 1
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
