"""Concatenate the outputs of ``tilde expand --shard i/n`` into the unsharded output.

Shard ``i`` holds rows ``[i*N//n, (i+1)*N//n)``, so the shards in index order, byte for byte,
are the output of one unsharded run. Before writing, every shard's sidecars are checked: same
expansion settings, same collection, all ``n`` shards present once, contiguous rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tilde.expand.parts import PartStats, copy_files, job_sidecar_path
from tilde.index.build import expansion_meta_path
from tilde.index.writer import remove_stale_temp_files
from tilde.io import atomic_path, atomic_write_text, open_text

logger = logging.getLogger(__name__)

__all__ = ["ShardError", "concat_shards"]


class ShardError(ValueError):
    """The given files are not a complete, consistent set of shards of one expansion."""


def _read_json(path: Path, what: str, shard: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ShardError(f"{shard}: no {path.name} beside it; is it the output of a finished `tilde expand`?")
    data = json.loads(path.read_text("utf-8"))
    if not isinstance(data, dict):
        raise ShardError(f"{path}: not a {what} object")
    return data


def concat_shards(
    shards: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *, overwrite: bool = False
) -> PartStats:
    """Write the shards' concatenation (in shard order, whatever order they are given in) to
    ``output`` with merged sidecars; returns the merged statistics."""
    if not shards:
        raise ShardError("no shard files given")
    out = Path(output)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    # Temporary files of a concatenation that was killed (SIGKILL, power loss) into this output.
    remove_stale_temp_files(out.parent, [out.name, expansion_meta_path(out).name, job_sidecar_path(out).name])
    entries = []
    for name in shards:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such shard file")
        if path.resolve() == out.resolve():
            raise ShardError(f"{path} is both a shard and the output")
        meta = _read_json(expansion_meta_path(path), "settings", path)
        job = _read_json(job_sidecar_path(path), "job", path)
        entries.append((job["shard"], meta, job, path))
    entries.sort(key=lambda e: int(e[0]["index"]))
    first_shard, first_meta, first_job, first_path = entries[0]
    count = int(first_shard["count"])
    for shard, meta, job, path in entries:
        if meta != first_meta:
            diff = sorted(k for k in set(meta) | set(first_meta) if meta.get(k) != first_meta.get(k))
            raise ShardError(f"{path} and {first_path} were expanded with different settings ({', '.join(diff)})")
        same = ("collection", "collection_bytes", "collection_mtime_ns")
        if any(job.get(k) != first_job.get(k) for k in same) or shard["total"] != first_shard["total"]:
            raise ShardError(f"{path} and {first_path} come from different collections (or versions of one)")
        if int(shard["count"]) != count:
            raise ShardError(f"{path} is shard {shard['index']}/{shard['count']}, {first_path} one of {count}")
    indexes = [int(s["index"]) for s, *_ in entries]
    if indexes != list(range(count)):
        missing = sorted(set(range(count)) - set(indexes))
        repeated = sorted({i for i in indexes if indexes.count(i) > 1})
        raise ShardError(f"need shards 0..{count - 1} once each: missing {missing}, repeated {repeated}")
    total = int(first_shard["total"])
    if entries[0][0]["start"] != 0 or entries[-1][0]["stop"] != total:
        raise ShardError(f"the shards do not cover rows 0..{total} of the collection")
    for (a, *_), (b, *_) in zip(entries, entries[1:]):
        if a["stop"] != b["start"]:
            raise ShardError(f"shards {a['index']} and {b['index']} are not contiguous ({a['stop']} != {b['start']})")
    stats = PartStats()
    for _, _, job, _ in entries:
        stats = stats.plus(PartStats.from_dict(job["stats"]))
    sidecar = {
        **{k: first_job[k] for k in ("collection", "collection_bytes", "collection_mtime_ns")},
        "shard": {"index": 0, "count": 1, "start": 0, "stop": total, "total": total},
        "stats": asdict(stats),
    }
    with atomic_path(out) as tmp:
        with open_text(tmp, "wb") as f:
            copy_files([path for *_, path in entries], f)
        atomic_write_text(expansion_meta_path(out), json.dumps(first_meta, indent=2, sort_keys=True) + "\n")
        atomic_write_text(job_sidecar_path(out), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    logger.info("concatenated %d shards (%d passages) into %s", count, stats.passages, out)
    return stats
