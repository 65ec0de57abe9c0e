"""``tilde build``: the whole offline job, expansion then indexing, resumable as a whole.

The output directory is the index; the expansion lives beside it as ``expanded.jsonl`` (with
its ``.meta.json`` and ``.job.json`` sidecars), so it can be inspected or re-indexed with another
TILDEv2 model. Re-running the same command continues whichever stage was unfinished: the
expansion resumes from its parts, a finished and matching expansion is reused, the index build
resumes from its chunks, and a finished matching build is reported as complete.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilde.expand.base import DEFAULT_MAX_LENGTH, DEFAULT_TOP_K
from tilde.expand.job import ExpandSummary, expand_collection, remove_output
from tilde.expand.parts import JobMismatchError, diff_keys, job_sidecar_path
from tilde.index.build import BuildSummary, ChunkEngine, build_index, expansion_meta_path
from tilde.index.format import MANIFEST, Manifest
from tilde.index.writer import PARTIAL, remove_index_files
from tilde.io import collection_identity
from tilde.metering import Recorder, default_meter
from tilde.text import TextProcessor

logger = logging.getLogger(__name__)

__all__ = ["EXPANDED", "PipelineSummary", "build_pipeline"]

EXPANDED = "expanded.jsonl"


@dataclass(frozen=True)
class PipelineSummary:
    output: Path
    expansion: ExpandSummary | None  # None: no expansion asked for, or reused from an earlier run
    index: BuildSummary | None  # None: the index was already complete
    reused: tuple[str, ...]  # stages found finished and reused

    def format(self) -> str:
        lines = [f"{stage}: already complete, reused" for stage in self.reused]
        if self.expansion is not None:
            lines.append(self.expansion.format())
        if self.index is not None:
            lines.append(self.index.format())
        lines.append(f"build complete: {self.output}")
        return "\n".join(lines)


def _stop(stop_after: tuple[str, int] | None, stage: str) -> int | None:
    return stop_after[1] if stop_after is not None and stop_after[0] == stage else None


def _check_expanded(expanded: Path, meta: dict[str, Any], collection: Path) -> bool:
    """True when ``expanded`` is a finished expansion of ``collection`` with ``meta``; False
    when there is none yet; raises when there is a different one."""
    if not expanded.exists():
        return False
    meta_path, job_path = expansion_meta_path(expanded), job_sidecar_path(expanded)
    if not (meta_path.is_file() and job_path.is_file()):
        raise JobMismatchError(f"{expanded} exists without its sidecars; pass --overwrite to rebuild")
    found = json.loads(meta_path.read_text("utf-8"))
    if found != meta:
        raise JobMismatchError(
            f"{expanded} was expanded with other settings (differs in: {', '.join(diff_keys(found, meta))}); "
            f"pass --overwrite to rebuild"
        )
    job = json.loads(job_path.read_text("utf-8"))
    wanted = collection_identity(collection)
    if any(job.get(k) != v for k, v in wanted.items()) or job.get("shard", {}).get("count") != 1:
        raise JobMismatchError(f"{expanded} was expanded from another collection (or version); pass --overwrite")
    return True


def build_pipeline(
    collection: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    model: str,
    expander: str | None,
    expander_kind: str = "auto",
    expander_tokenizer: str | None = None,
    tokenizer: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 32,
    chunk_batches: int = 64,
    device: str = "cpu",
    dtype: str = "auto",
    weight_dtype: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
    recorder: Recorder | None = None,
    stop_after: tuple[str, int] | None = None,
    engine: ChunkEngine | None = None,
) -> PipelineSummary:
    """Expand ``collection`` with ``expander`` (None: no expansion) and index the result with the
    TILDEv2 ``model`` into ``output``. ``stop_after=("expand"|"index", chunks)`` simulates an
    interruption of that stage (tests). ``engine`` runs the index stage's chunks (Ray)."""
    from tilde.expand.loading import load_expander

    coll, out = Path(collection), Path(output)
    if not coll.is_file():
        raise FileNotFoundError(f"{coll}: no such collection file")
    expanded = out / EXPANDED
    if overwrite:
        remove_index_files(out)
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        remove_output(expanded)
    out.mkdir(parents=True, exist_ok=True)
    recorder = recorder or Recorder(default_meter(scope="process"), keep=False)
    index_text = TextProcessor.load(tokenizer if tokenizer is not None else model)

    reused: list[str] = []
    expansion: ExpandSummary | None = None
    meta: dict[str, Any] | None = None
    index_input = coll
    if expander is not None:
        exp = load_expander(
            expander, expander_kind, tokenizer=expander_tokenizer, top_k=top_k, max_length=max_length,
            device=device, dtype=dtype,
        )
        if exp.settings.vocab_sha256 != index_text.vocab_hash:
            raise ValueError(
                f"the expander's tokenizer ({expander}) and the TILDEv2 model's ({tokenizer or model}) have "
                f"different vocabularies; expansion ids would mean other tokens to the index"
            )
        meta = exp.settings.to_meta("ids")
        if _check_expanded(expanded, meta, coll):
            reused.append("expansion")
        else:
            expansion = expand_collection(
                exp, coll, expanded, batch_size=batch_size, chunk_batches=chunk_batches, progress=progress,
                recorder=recorder, stop_after_chunks=_stop(stop_after, "expand"),
            )
        del exp
        gc.collect()  # the expansion model is no longer needed; free it before loading the next one
        index_input = expanded

    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        manifest = Manifest.from_json(manifest_path.read_text("utf-8"), str(manifest_path))
        if manifest.expansion != meta or manifest.model != str(model):
            raise JobMismatchError(
                f"{out} holds an index built with another model or expansion; pass --overwrite to rebuild"
            )
        reused.append("index")
        return PipelineSummary(output=out, expansion=expansion, index=None, reused=tuple(reused))
    index = build_index(
        model, index_input, out, tokenizer=tokenizer, batch_size=batch_size, chunk_batches=chunk_batches,
        device=device, weight_dtype=weight_dtype, progress=progress, recorder=recorder,
        stop_after_chunks=_stop(stop_after, "index"), command="tilde build", engine=engine,
    )
    return PipelineSummary(output=out, expansion=expansion, index=index, reused=tuple(reused))
