"""The tilde REST re-ranking service: a Flask app (``create_app``) served by gunicorn.

The app needs flask, msgpack and prometheus_client (the ``[service]`` extra); ``tilde`` itself
never imports this package. Names are re-exported lazily so that ``service.config`` can be read
before prometheus_client is imported (its multiprocess mode is fixed at import time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app, get_state
    from .config import ServerConfig, ServiceConfig

__all__ = ["ServerConfig", "ServiceConfig", "create_app", "get_state"]

_WHERE = {"create_app": ".app", "get_state": ".app", "ServerConfig": ".config", "ServiceConfig": ".config"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'service' has no attribute {name!r}")
