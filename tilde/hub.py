"""Hugging Face hub ids without a network: decide in about a second, not after 26 s of retries.

Before a hub id is handed to ``transformers``/``tokenizers``, :func:`resolve_hub_id` checks once
per process whether the hub can be reached (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``, then a
TCP connection to ``HF_ENDPOINT`` or the HTTPS proxy with a short timeout, ``TILDE_HUB_TIMEOUT``
seconds, default 3). When it cannot, a copy in the local hub cache is used by its path; with no
copy, :class:`HubUnavailableError` says so in one line. Needs only the standard library (the hub
client is imported only to look in its cache).
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

__all__ = ["HubUnavailableError", "hub_problem", "resolve_hub_id"]

_TRUE = {"1", "on", "yes", "true"}
_UNSET = "unset"
_problem: str | None = _UNSET


class HubUnavailableError(ValueError):
    """A hub id was given, the hub cannot be reached, and the local cache has no copy."""


def _target() -> tuple[str, int, str]:
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    https = url.scheme != "http"
    proxy = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")) if https else None
    proxy = proxy or os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy") or os.environ.get("ALL_PROXY")
    if proxy:
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return p.hostname or "", p.port or 3128, f"the proxy {p.hostname}:{p.port or 3128}"
    host = url.hostname or ""
    port = url.port or (443 if https else 80)
    return host, port, f"{host}:{port}"


def hub_problem() -> str | None:
    """Why the hub cannot be reached (None: it can). Checked once per process."""
    global _problem
    if _problem != _UNSET:
        return _problem
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        _problem = "HF_HUB_OFFLINE is set"
        return _problem
    host, port, label = _target()
    try:
        timeout = float(os.environ.get("TILDE_HUB_TIMEOUT", "3"))
    except ValueError:
        timeout = 3.0
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        _problem = None
    except OSError as exc:
        _problem = f"cannot connect to {label}: {exc.strerror or exc}"
    return _problem


def _cached_snapshot(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return str(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # the hub client raises several types for "not in the cache"
        return None


def resolve_hub_id(name: str, what: str = "model") -> str:
    """``name`` itself when the hub is reachable; the path of its cached copy when it is not;
    otherwise :class:`HubUnavailableError` at once. Call only for names that are hub ids (not
    existing paths)."""
    problem = hub_problem()
    if problem is None:
        return name
    cached = _cached_snapshot(name)
    if cached is not None:
        logger.warning("the Hugging Face hub is unreachable (%s): using the cached copy of %s at %s",
                       problem, name, cached)
        return cached
    raise HubUnavailableError(
        f"{what} {name!r} is a Hugging Face hub id, but the hub is unreachable ({problem}) and the local "
        f"hub cache has no copy of it: pass a local model directory, or download it once where the hub "
        f"is reachable"
    )
