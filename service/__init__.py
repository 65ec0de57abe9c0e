"""The tilde REST re-ranking service: a Flask app (``create_app``) served by gunicorn.

The app needs flask, msgpack and prometheus_client (the ``[service]`` extra); ``tilde`` itself
never imports this package. Names are re-exported lazily so that ``service.config`` can be read
before prometheus_client is imported (its multiprocess mode is fixed at import time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.app import create_app, get_state
    from service.config import ServerConfig, ServiceConfig

__all__ = ["ServerConfig", "ServiceConfig", "create_app", "get_state"]

_WHERE = {"create_app": "service.app", "get_state": "service.app",
          "ServerConfig": "service.config", "ServiceConfig": "service.config"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'service' has no attribute {name!r}")
