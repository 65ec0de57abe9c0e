"""The ``tilde expand`` job: expand a collection (or a shard of it) into the reference JSONL.

Output lines are ``{"pid": "...", "psg": [ids]}`` (``json.dumps`` defaults, the bytes the
reference script writes): the passage ids without ``[CLS]``, its ``[SEP]``, then the expansion
ids, best first. ``output_format="text"`` writes the decoded passage and expansion instead, as
the reference's ``--store_raw`` does, for inspection.

Resumable (parts under ``<output>.partial/``), shardable (``shard=(i, n)`` takes rows
``[i*N//n, (i+1)*N//n)`` so concatenated shards equal the unsharded output), metered. The
settings go to ``<output>.meta.json``, which ``tilde index`` copies into its manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tilde.expand.base import Expander, Expansion
from tilde.expand.parts import PartStats, PartStore, copy_files, job_sidecar_path, partial_dir
from tilde.expand.scan import scan_collection
from tilde.index.build import expansion_meta_path
from tilde.index.writer import remove_stale_temp_files
from tilde.io import (
    FormatError,
    Passage,
    atomic_path,
    atomic_write_text,
    collection_identity,
    count_lines,
    open_text,
    read_collection,
)
from tilde.metering import Recorder, default_meter

logger = logging.getLogger(__name__)

__all__ = ["OUTPUT_FORMATS", "ExpandSummary", "expand_collection", "remove_output"]

OUTPUT_FORMATS = ("ids", "text")


@dataclass(frozen=True)
class ExpandSummary:
    output: Path
    stats: PartStats  # the whole output (resumed parts included)
    expanded_now: int  # passages expanded by this run
    seconds: float  # this run
    joules: float  # this run
    method: str
    resumed_from: int
    max_length: int

    @property
    def passages_per_s(self) -> float:
        return self.expanded_now / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        s = self.stats
        return (
            f"expanded {s.passages} passages into {self.output}: {self.seconds:.1f} s, "
            f"{self.passages_per_s:.1f} passages/s, {s.mean_terms:.1f} expansion terms added on average, "
            f"{self.joules:.1f} J ({self.joules / max(self.expanded_now, 1):.4f} J/passage, {self.method}); "
            f"{s.truncated} passages truncated to {self.max_length} tokens, {s.no_terms} with no expansion term"
            + (f"; resumed after {self.resumed_from} passages" if self.resumed_from else "")
        )


def remove_output(output: Path) -> None:
    """Delete an expansion output, its sidecars and any unfinished parts."""
    for path in (output, expansion_meta_path(output), job_sidecar_path(output)):
        path.unlink(missing_ok=True)
    shutil.rmtree(partial_dir(output), ignore_errors=True)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the index extra
        return None
    return tqdm(total=total, initial=initial, unit="psg", disable=not enabled, dynamic_ncols=True)


def _line(pid: str, e: Expansion, expander: Expander, output_format: str) -> str:
    if output_format == "ids":
        return json.dumps({"pid": pid, "psg": e.ids}) + "\n"
    # The reference's --store_raw layout: decoded passage, [SEP], decoded expansion.
    tok = expander.text.tokenizer
    passage = tok.decode(list(e.passage), skip_special_tokens=True)
    terms = tok.decode(list(e.terms), skip_special_tokens=True)
    return json.dumps({"pid": pid, "psg": passage + "[SEP]" + terms}) + "\n"


def expand_collection(
    expander: Expander,
    collection: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    chunk_batches: int = 64,
    shard: tuple[int, int] = (0, 1),
    output_format: str = "ids",
    overwrite: bool = False,
    progress: bool = True,
    recorder: Recorder | None = None,
    stop_after_chunks: int | None = None,
) -> ExpandSummary:
    """Expand every passage of ``collection`` (shard ``i`` of ``n``) into ``output``.

    Re-running after a crash resumes after the last finished chunk and produces the same bytes
    as an uninterrupted run. ``stop_after_chunks`` simulates an interruption (tests). Raises
    before any model work when the slice has a malformed line or a repeated pid."""
    if batch_size < 1 or chunk_batches < 1:
        raise ValueError("batch size and chunk size must be positive")
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, not {output_format!r}")
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= i < n")
    coll, out = Path(collection), Path(output)
    if not coll.is_file():
        raise FileNotFoundError(f"{coll}: no such collection file")
    if expansion_meta_path(coll).is_file():
        raise ValueError(f"{coll} is already an expansion output ({expansion_meta_path(coll).name} beside it)")
    if out.resolve() == coll.resolve():
        raise ValueError("--output must differ from --collection")
    if overwrite:
        remove_output(out)
    elif out.exists():
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A run killed while concatenating (SIGKILL, power loss) leaves its temporary files behind;
    # only this job's are removed (other shards may be writing beside it).
    remove_stale_temp_files(out.parent, [out.name, expansion_meta_path(out).name, job_sidecar_path(out).name])
    remove_stale_temp_files(partial_dir(out))

    recorder = recorder or Recorder(default_meter(scope="process"), keep=False)
    started = time.perf_counter()
    joules0 = recorder.meter.read()
    total = count_lines(coll)
    start, stop = i * total // n, (i + 1) * total // n
    with recorder.measure("scan", items=stop - start):
        scan_collection(coll, start, stop)

    identity = collection_identity(coll)
    meta = expander.settings.to_meta(output_format)
    chunk_size = batch_size * chunk_batches
    store = PartStore(
        out,
        {**identity, "expansion": meta, "shard": [i, n], "start": start, "stop": stop,
         "batch_size": batch_size, "chunk_size": chunk_size},
    )
    done = store.completed()
    resume_row = min(start + done * chunk_size, stop)
    bar = _progress(stop - start, resume_row - start, progress)
    vocab_size = expander.text.vocab_size

    def passages() -> Iterator[Passage]:
        for row, p in enumerate(read_collection(coll)):
            if row >= stop:
                break
            if row >= resume_row:
                yield p

    def token_ids(batch: Sequence[Passage]) -> list[list[int]]:
        texts = [p.text or "" for p in batch if p.ids is None]
        encoded = iter(expander.text.tokenizer.encode_batch(texts, add_special_tokens=False) if texts else [])
        ids: list[list[int]] = []
        for p in batch:
            if p.ids is None:
                ids.append(next(encoded).ids)
                continue
            if p.ids and max(p.ids) >= vocab_size:
                raise FormatError(
                    f"token id {max(p.ids)} is outside the vocabulary ({vocab_size})", path=coll, line=p.line
                )
            ids.append(list(p.ids))
        return ids

    k, written = done, 0
    lines: list[str] = []
    counts = [0, 0, 0]  # this chunk's expansion terms, truncated passages, passages without terms
    batch: list[Passage] = []

    def flush_batch() -> None:
        with recorder.measure("tokenize", items=len(batch)):
            ids = token_ids(batch)
        with recorder.measure("expand", items=len(batch)):
            expansions = expander.expand(ids)
        for p, e in zip(batch, expansions):
            lines.append(_line(p.pid, e, expander, output_format))
            counts[0] += len(e.terms)
            counts[1] += e.truncated
            counts[2] += not e.terms
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    def flush_chunk() -> None:
        nonlocal k, written
        store.write(k, lines, PartStats(len(lines), *counts))
        k, written = k + 1, written + 1
        lines.clear()
        counts[:] = [0, 0, 0]

    try:
        for p in passages():
            batch.append(p)
            if len(batch) == batch_size:
                flush_batch()
                if len(lines) == chunk_size:
                    flush_chunk()
                    if stop_after_chunks is not None and written >= stop_after_chunks:
                        raise KeyboardInterrupt("stopped after the requested number of chunks")
        if batch:
            flush_batch()
        if lines:
            flush_chunk()
    finally:
        if bar is not None:
            bar.close()

    totals = store.stats()
    if totals.passages != stop - start:
        raise RuntimeError(f"internal error: {totals.passages} passages expanded, {stop - start} expected")
    with recorder.measure("write", items=totals.passages), atomic_path(out) as tmp:
        with open_text(tmp, "wb") as f:
            copy_files(store.parts(), f)
        # Sidecars before the output appears under its name: an output never lacks its settings.
        atomic_write_text(expansion_meta_path(out), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        sidecar = {
            **identity,
            "shard": {"index": i, "count": n, "start": start, "stop": stop, "total": total},
            "stats": asdict(totals),
        }
        atomic_write_text(job_sidecar_path(out), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    store.remove()
    return ExpandSummary(
        output=out,
        stats=totals,
        expanded_now=stop - resume_row,
        seconds=time.perf_counter() - started,
        joules=recorder.meter.read() - joules0,
        method=recorder.method,
        resumed_from=resume_row - start,
        max_length=expander.max_length,
    )
