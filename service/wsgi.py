"""WSGI entry point for any WSGI server: ``gunicorn -c python:service.gunicorn_conf service.wsgi:app``.

Configured by ``TILDE_*`` env vars (``TILDE_INDEX`` at least); ``tilde serve`` is the usual way in.
"""

from __future__ import annotations

from .app import create_app
from .config import ServiceConfig, from_env

app = create_app(from_env(ServiceConfig))
