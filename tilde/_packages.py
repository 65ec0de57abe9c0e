"""Where the service package lives: the repository keeps it in a top-level ``service/`` folder
beside ``tilde/``; the wheel installs that folder as ``tilde.service`` (pyproject's package-dir),
so that no top-level ``service`` (or ``eval``) package lands in site-packages."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

__all__ = ["service_module", "service_package"]

_ROOT = Path(__file__).resolve().parent.parent


def _checkout() -> bool:
    """True in a source checkout (``service/`` and ``pyproject.toml`` beside ``tilde/``)."""
    return (_ROOT / "pyproject.toml").is_file() and (_ROOT / "service" / "__init__.py").is_file()


def service_package() -> str:
    """``service`` where a checkout's folder is importable as such (the repository root on
    ``sys.path``: ``python -m``, the tests), else ``tilde.service`` (a wheel, or an editable install
    run through the ``tilde`` script, whose ``sys.path`` holds no repository root)."""
    if _checkout() and importlib.util.find_spec("service") is not None:
        return "service"
    return "tilde.service"


def service_module(name: str = "") -> ModuleType:
    """``<service package>.<name>`` (see :func:`service_package`)."""
    base = service_package()
    return importlib.import_module(f"{base}.{name}" if name else base)
