"""gunicorn settings and hooks, from ``TILDE_*`` env vars (see ``service.config.ServerConfig``).

Used by ``tilde serve`` and usable directly::

    TILDE_INDEX=idx gunicorn -c python:service.gunicorn_conf service.wsgi:app

SIGTERM is gunicorn's graceful stop: the master closes its listening socket and the workers
finish in-flight requests (up to ``graceful_timeout``) and exit; the default worker
(``service.worker.TildeWorker``) first serves every connection already in the listen backlog.
The access log is off unless ``TILDE_ACCESS_LOG`` is set (it never shows the Authorization header).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from .config import WORKER_CLASS_PATHS, ServerConfig, ServiceConfig, from_env

logger = logging.getLogger(__name__)


def settings(server: ServerConfig) -> dict[str, Any]:
    """gunicorn settings for ``server`` (names as in gunicorn's config file)."""
    return {
        "bind": [server.bind],
        "workers": server.workers,
        "worker_class": WORKER_CLASS_PATHS.get(server.worker_class, server.worker_class),
        "threads": server.threads_per_worker,
        "preload_app": server.preload,
        "accesslog": server.access_log or None,
        "errorlog": "-",
        "loglevel": server.log_level,
        "timeout": server.timeout,
        "graceful_timeout": server.graceful_timeout,
        "keepalive": server.keepalive,
        "backlog": server.backlog,
        "limit_request_line": server.limit_request_line,
        "limit_request_fields": server.limit_request_fields,
        "limit_request_field_size": server.limit_request_field_size,
        "proc_name": "tilde",
        # Bodies are written with sendall, never os.sendfile: the tilde worker sends a response's
        # headers with its first body write (service.worker.DeadlineSocket), which sendfile would
        # overtake (the app never serves files anyway).
        "sendfile": False,
        # The heartbeat file is touched on every request loop; on tmpfs that never waits for a disk.
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        # gunicorn >= 25 opens a control socket at a fixed per-user path by default, which two
        # servers on one machine would fight over; nothing here uses it.
        "control_socket_disable": True,
    }


def post_worker_init(worker: Any) -> None:
    """In each worker: finish loading (the model, when the master preloaded only the index)."""
    from .app import get_state

    state = get_state(worker.wsgi)
    config: ServiceConfig = state.config
    if config.model:
        import torch

        torch.set_num_threads(config.torch_threads)
    state.load()
    # Page-table entries of a shared file mapping are not copied on fork: map every page of the
    # index in each worker now, or its first requests pay ~1 us per first-touched page (measured:
    # p99 3.0 ms over a fresh process's first 500 queries vs 1.1 ms after; prefault of a 1M
    # passage index: 30 ms).
    if state.engine is not None:
        state.engine.reranker.index.prefault()


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, last thing before it exits: skip the interpreter's teardown (collecting a
    large heap takes about a second on a busy machine and delays a SIGTERM stop for nothing:
    the index is read-only, metrics files are shared memory the kernel keeps)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def child_exit(server: Any, worker: Any) -> None:
    from .metrics import mark_process_dead

    mark_process_dead(worker.pid)


# Module-level settings, for `gunicorn -c python:service.gunicorn_conf` (names an older gunicorn
# does not know are ignored by it).
globals().update(settings(from_env(ServerConfig)))
