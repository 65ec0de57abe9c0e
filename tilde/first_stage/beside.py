"""The first stages ``tilde build`` writes beside a TILDEv2 index, so that ``tilde serve`` has
``/v1/search`` without another command:

* ``<index>/bm25``: the embedded BM25 index of the same collection (with the passage texts);
* ``<index>/inverted``: the index's own weights inverted (:mod:`tilde.first_stage.inverted`),
  the in-process impact first stage, listed in the index manifest's ``files`` (so ``tilde index
  verify`` checks its digests).

Each is written atomically and skipped when already current, so an interrupted ``tilde build``
re-run picks up where it stopped. Each function returns one line for the build summary.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from tilde.first_stage.bm25 import DEFAULT_B, DEFAULT_K1, MANIFEST, build_bm25_index
from tilde.io import FormatError, atomic_write_text

__all__ = ["BM25_DIR", "bm25_beside", "bm25_is_current", "complete_impact_index", "inverted_beside"]

BM25_DIR = "bm25"


def bm25_is_current(collection: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds the default embedded BM25 index (with texts) of ``collection``
    as it is now (same path, size and modification time)."""
    from tilde.first_stage.analyzer import Analyzer

    path = Path(folder) / MANIFEST
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return False
    coll = Path(collection)
    st = coll.stat()
    return bool(
        isinstance(data, dict)
        and data.get("collection") == {"path": str(coll.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        and data.get("k1") == DEFAULT_K1 and data.get("b") == DEFAULT_B
        and data.get("analyzer") == Analyzer().to_dict()
        and (data.get("extra") or {}).get("texts")
    )


def bm25_beside(collection: str | os.PathLike[str], index_dir: str | os.PathLike[str],
                overwrite: bool = False) -> str:
    """Build ``<index_dir>/bm25`` from ``collection`` unless it is current (``overwrite``: always)."""
    out = Path(index_dir) / BM25_DIR
    if not overwrite and bm25_is_current(collection, out):
        return f"BM25 index: {out} is current, reused"
    Path(index_dir).mkdir(parents=True, exist_ok=True)
    try:
        summary = build_bm25_index(collection, out, overwrite=True)
    except FormatError as exc:  # token ids (an expansion file), not text: nothing to index for BM25
        return f"BM25 index: not built ({exc})"
    return summary.format()


def complete_impact_index(index_dir: str | os.PathLike[str], collection: str | os.PathLike[str],
                          settings: Mapping[str, Any]) -> bool:
    """True when ``index_dir`` holds a finished impact index of ``collection`` (the same passage
    ids in the same order) with ``settings``' model, top-k and length: a re-run of ``tilde build``
    may then keep it and only bring the first stages up to date. False (rebuild, or refuse
    without --overwrite) whenever anything differs or cannot be read."""
    from tilde.index.format import MANIFEST as INDEX_MANIFEST
    from tilde.index.format import IndexFormatError
    from tilde.index.reader import TildeIndex
    from tilde.io import read_collection

    if not (Path(index_dir) / INDEX_MANIFEST).is_file():
        return False
    try:
        idx = TildeIndex.open(index_dir)
    except IndexFormatError:
        return False
    impact = dict(idx.manifest.impact or {})
    if (idx.manifest.weighting != "impact" or idx.manifest.shard is not None
            or idx.manifest.model != str(settings.get("model")) or impact.get("top_k") != settings.get("top_k")
            or impact.get("max_length") != settings.get("max_length")):
        return False
    try:
        pids = [p.pid for p in read_collection(collection)]
    except (OSError, ValueError):
        return False
    return len(pids) == len(idx) and all(idx.docid(r) == pid for r, pid in enumerate(pids))


def inverted_beside(index_dir: str | os.PathLike[str]) -> str:
    """Write ``<index_dir>/inverted`` (unless current) and list its files in the index manifest
    (rewritten atomically: a crash in between leaves a valid index that inverts in memory)."""
    from tilde.first_stage.inverted import INVERTED_DIR, read_inverted_index, write_inverted_index
    from tilde.index.format import MANIFEST as INDEX_MANIFEST
    from tilde.index.format import IndexFormatError, file_entries
    from tilde.index.reader import TildeIndex

    root = Path(index_dir)
    idx = TildeIndex.open(root)
    folder = root / INVERTED_DIR
    t0 = time.perf_counter()
    try:
        read_inverted_index(folder, idx)
        state = "current, reused"
    except IndexFormatError:
        write_inverted_index(idx, folder)
        state = "written"
    m = idx.manifest
    if m.files is not None:
        files = {k: v for k, v in m.files.items() if not k.startswith(INVERTED_DIR + "/")}
        files.update(file_entries(root, [INVERTED_DIR]))
        if files != dict(m.files):
            atomic_write_text(root / INDEX_MANIFEST, replace(m, files=dict(sorted(files.items()))).to_json())
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return f"impact first stage: {folder} {state} ({size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)"
