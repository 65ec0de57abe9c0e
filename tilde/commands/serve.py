"""tilde serve --index DIR [--model M] [--host H] [--port P] [--workers N]: the REST service on gunicorn.

Every flag falls back to a ``TILDE_*`` env var (``--max-documents`` ↔ ``TILDE_MAX_DOCUMENTS``), then
to the default. Binds to 127.0.0.1 unless told otherwise; with ``--api-key`` (or ``TILDE_API_KEYS``,
``--api-key-file``) every endpoint but /health and /ready needs ``Authorization: Bearer <key>``.
SIGTERM stops gracefully (in-flight and already-queued requests finish); SIGINT/Ctrl-C stops quickly.
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
    p.add_argument("--first-stage", choices=("bm25", "impact"),
                   help="first stage of POST /v1/search (env TILDE_FIRST_STAGE): bm25 (default) or impact (the "
                        "index's own weights searched in process: <index>/inverted, which tilde build writes)")
    p.add_argument("--host", help="address to bind (env TILDE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (env TILDE_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes sharing the memory-mapped index (default 2)")
    p.add_argument("--worker-class", choices=("tilde", "sync", "gthread"),
                   help="gunicorn worker class (default tilde: threads with read deadlines, JSON transport errors, "
                        "no reset on SIGTERM; sync and gthread are gunicorn's own, for comparison)")
    p.add_argument("--threads", type=int, help="threads per worker: connections read or served at once "
                                               "(default 24; 1 for sync)")
    p.add_argument("--keepalive", type=int, help="seconds an idle connection is kept open (default 5; 0: close after "
                                                 "each response)")
    p.add_argument("--keepalive-requests", type=int,
                   help="responses on one connection before the server closes it, so that connections re-spread "
                        "over the workers (default 100; 0: no limit)")
    p.add_argument("--header-timeout", type=float, help="seconds a client gets to send its headers (default 10)")
    p.add_argument("--body-timeout", type=float, help="seconds a client gets to send its body (default 30)")
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
    p.add_argument("--max-encode", type=int, help="texts encoded on the fly per request (default 1024)")
    p.add_argument("--max-encode-tokens", type=int,
                   help="model input tokens encoded on the fly per request, chunks and a 16-token charge per passage "
                        "included (default 18432: 128 texts of 128 tokens)")
    p.add_argument("--max-chunks-per-doc", type=int,
                   help="passages a long text is cut into by default (default 10; a request's max_chunks_per_doc wins)")
    p.add_argument("--encode-cache", type=int, help="encoded passages kept per worker (LRU; default 4096, 0: off)")
    p.add_argument("--max-body-bytes", type=int, help="request body limit (default 16 MiB)")
    p.add_argument("--max-candidates", type=int, help="candidates per request, summed over a batch (default 100000)")
    p.add_argument("--max-work", type=int, help="scoring work per request: candidates x distinct query tokens "
                                                "(default 20000000)")
    p.add_argument("--max-response-bytes", type=int, help="estimated response size limit (default 32 MiB)")
    p.add_argument("--max-query-chars-total", type=int, help="query characters per request, summed over a batch "
                                                             "(default 100000)")
    p.add_argument("--max-query-encodes", type=int, help="query-encoder passes (mlm/dense modes) per request "
                                                         "(default 64)")
    p.add_argument("--deadline", type=float, help="seconds a request may take once its body is read; then a JSON 503 "
                                                  "(default 10)")
    p.add_argument("--max-queue", type=int, help="requests a worker lets wait while busy; more get 429 (default 8)")
    p.add_argument("--api-key", action="append", help="require Authorization: Bearer KEY (repeatable; env "
                                                      "TILDE_API_KEYS, comma-separated)")
    p.add_argument("--api-key-file", help="a file of API keys, one per line (env TILDE_API_KEY_FILE)")
    p.add_argument("--expose-paths", action="store_true", default=None,
                   help="/info shows absolute paths and the worker pid (default: file names only)")
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
        first_stage=args.first_stage, max_encode_tokens=args.max_encode_tokens,
        max_chunks_per_doc=args.max_chunks_per_doc, encode_cache=args.encode_cache,
        missing=args.missing, feedback=args.feedback, mode=args.mode, dense_model=args.dense_model,
        max_documents=args.max_documents, max_batch_queries=args.max_batch_queries, max_encode=args.max_encode,
        max_body_bytes=args.max_body_bytes, meter=args.meter, max_candidates=args.max_candidates,
        max_work=args.max_work, max_response_bytes=args.max_response_bytes, deadline=args.deadline,
        max_query_chars_total=args.max_query_chars_total, max_query_encodes=args.max_query_encodes,
        max_queue=args.max_queue, api_keys=",".join(args.api_key) if args.api_key else None,
        api_key_file=args.api_key_file, expose_paths=args.expose_paths,
    )
    server = from_env(
        ServerConfig, host=args.host, port=args.port, workers=args.workers, worker_class=args.worker_class,
        threads=args.threads, preload=args.preload, access_log=args.access_log, log_level=args.log_level,
        timeout=args.timeout, graceful_timeout=args.graceful_timeout, keepalive=args.keepalive,
        keepalive_requests=args.keepalive_requests,
        header_timeout=args.header_timeout, body_timeout=args.body_timeout,
    )
    # The worker class reads its read deadlines from the environment it inherits.
    os.environ["TILDE_HEADER_TIMEOUT"] = str(server.header_timeout)
    os.environ["TILDE_BODY_TIMEOUT"] = str(server.body_timeout)
    os.environ["TILDE_KEEPALIVE_REQUESTS"] = str(server.keepalive_requests)
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
        index_models = service_module("encoder").index_models

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
    keys = service.keys()
    if not keys and server.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tilde serve: WARNING: listening on {server.host} without an API key: anyone who can reach the port "
              f"can use the service; pass --api-key (or TILDE_API_KEYS / --api-key-file)", file=sys.stderr)
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
        threads = server.threads_per_worker
        kind = f"{server.worker_class} x {threads} threads" if threads > 1 else server.worker_class
        auth = f"API key required ({len(keys)} key(s))" if keys else "no API key"
        print(f"tilde serve: http://{server.bind} ready ({server.workers} {kind} worker(s), {mode}; "
              f"index {service.index}{', model ' + service.model if service.model else ''}; scoring "
              f"{scoring_label}; {auth})", file=sys.stderr, flush=True)

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
