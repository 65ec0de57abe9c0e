"""Where the service package lives: the repository keeps it in a top-level ``service/`` folder
beside ``tilde/``; the wheel installs that folder as ``tilde.service`` (pyproject's package-dir),
so that no top-level ``service`` (or ``eval``) package lands in site-packages."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

__all__ = ["service_module"]

_ROOT = Path(__file__).resolve().parent.parent


def _checkout() -> bool:
    """True in a source checkout (``service/`` and ``pyproject.toml`` beside ``tilde/``)."""
    return (_ROOT / "pyproject.toml").is_file() and (_ROOT / "service" / "__init__.py").is_file()


def service_module(name: str = "") -> ModuleType:
    """``service.<name>`` from a checkout, ``tilde.service.<name>`` from an installed wheel."""
    base = "service" if _checkout() else "tilde.service"
    return importlib.import_module(f"{base}.{name}" if name else base)
