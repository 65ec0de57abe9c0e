"""What every export shares: the atomic output directory, progress on stderr, and the closing
summary (passages, seconds, passages/s)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilde import __version__
from tilde.export.source import ExportError
from tilde.io import atomic_path

__all__ = ["ExportSummary", "Progress", "output_dir", "write_manifest"]

MANIFEST = "manifest.json"


@contextlib.contextmanager
def output_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """A temporary directory beside ``path`` that replaces it when the block succeeds (and is
    removed when it fails): a reader never sees a half-written export."""
    out = Path(path)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    old: Path | None = None
    with atomic_path(out) as tmp:
        tmp.mkdir()
        yield tmp
        if out.exists():  # os.replace cannot replace a non-empty directory: move it aside first
            old = out.with_name(f".old-{tmp.name}")
            os.replace(out, old)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_manifest(folder: Path, fields: dict[str, Any]) -> None:
    data = {**fields, "tilde_version": __version__}
    (folder / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class Progress:
    """Passages written, on stderr: tqdm when installed and enabled, else nothing."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm comes with the [index] extra; the export does not need it
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, unit="psg", dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class ExportSummary:
    what: str
    output: Path
    passages: int = 0
    postings: int = 0  # written
    dropped: int = 0  # postings left out (impact 0, or weight 0)
    empty: int = 0  # passages with nothing left
    files: int = 0
    bytes_written: int = 0
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    extra: list[str] = field(default_factory=list)

    def finish(self) -> ExportSummary:
        self.seconds = time.perf_counter() - self.started
        return self

    @property
    def passages_per_s(self) -> float:
        return self.passages / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        line = (f"exported {self.passages} passages ({self.empty} with no postings left) as {self.what} -> "
                f"{self.output}: {self.postings} postings ({self.dropped} dropped), {self.files} files, "
                f"{self.bytes_written / 1e6:.1f} MB, {self.seconds:.1f} s, {self.passages_per_s:.0f} passages/s")
        return "; ".join([line, *self.extra])
