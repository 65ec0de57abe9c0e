"""The wheel's package list (pyproject.toml): every folder of tilde/ that is a package ships, and
service/ and eval/ ship inside the tilde namespace, never as top-level packages."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]


def test_every_tilde_package_is_listed() -> None:
    listed = set(_setuptools()["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tilde").rglob("__init__.py")}
    assert found - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"


def test_service_and_eval_install_inside_tilde() -> None:
    st = _setuptools()
    assert st["package-dir"]["tilde.service"] == "service" and st["package-dir"]["tilde.eval"] == "eval"
    assert not [p for p in st["packages"] if p.split(".")[0] != "tilde"]


def test_service_modules_import_relatively() -> None:
    """Inside service/ and eval/, absolute self-imports would break under tilde.service / tilde.eval."""
    for folder in ("service", "eval"):
        for path in (ROOT / folder).glob("*.py"):
            text = path.read_text("utf-8")
            assert f"from {folder}." not in text and f"import {folder}." not in text, path
