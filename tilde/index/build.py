"""The ``tilde index`` job: encode a collection with a TILDEv2 model into an index directory.

Resumable (chunks under ``<output>/.partial``), shardable (``shard=(i, n)`` takes a contiguous
slice of the collection so merged shards equal an unsharded build byte for byte), metered.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from tilde.index.format import MANIFEST, IndexFormatError, Manifest
from tilde.index.writer import PARTIAL, ChunkStore, finalize, pool_postings, remove_index_files
from tilde.io import FormatError, Passage, collection_identity, count_lines, read_collection
from tilde.metering import Recorder, default_meter
from tilde.text import TextProcessor

logger = logging.getLogger(__name__)

__all__ = ["BuildJob", "BuildSummary", "ChunkEngine", "build_index", "encode_chunk", "expansion_meta_path",
           "parse_shard", "run_build", "stop_id_mask", "tildev2_job"]


def expansion_meta_path(collection: str | os.PathLike[str]) -> Path:
    """Sidecar where the expansion job records its settings; the index manifest copies them."""
    return Path(str(collection) + ".meta.json")


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), not {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


@dataclass(frozen=True)
class BuildSummary:
    output: Path
    passages: int
    postings: int
    bytes_on_disk: int
    seconds: float
    joules: float
    method: str
    empty_passages: int
    resumed_from: int  # passages found finished in the chunks of an earlier, interrupted run
    encoded_now: int = -1  # passages this run encoded (-1: all of them)

    @property
    def done_now(self) -> int:
        return self.passages if self.encoded_now < 0 else self.encoded_now

    @property
    def passages_per_s(self) -> float:
        """Passages this run encoded per second (resumed passages cost nothing and do not count)."""
        return self.done_now / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_posting(self) -> float:
        return self.bytes_on_disk / self.postings if self.postings else 0.0

    def format(self) -> str:
        return (
            f"indexed {self.passages} passages ({self.empty_passages} with no postings) into {self.output}: "
            f"{self.postings} postings, {self.bytes_per_posting:.2f} bytes/posting (postings arrays), "
            f"{self.seconds:.1f} s, {self.passages_per_s:.1f} passages/s, {self.joules:.1f} J "
            f"({self.joules / max(self.done_now, 1):.4f} J/passage, {self.method})"
            + (
                f"; resumed: {self.resumed_from} of {self.passages} passages were already encoded, "
                f"{self.done_now} encoded now"
                if self.resumed_from else ""
            )
        )


def _passage_ids(p: Passage, text: TextProcessor, vocab_size: int, where: str) -> list[int]:
    if p.ids is not None:
        ids = list(p.ids)
        if ids and max(ids) >= vocab_size:
            raise FormatError(
                f"{where}:{p.line}: token id {max(ids)} is outside the tokenizer's vocabulary ({vocab_size})"
            )
        return ids
    return text.token_ids(p.text or "").tolist()


def _progress(total: int, initial: int, enabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the index extra
        return None
    return tqdm(total=total, initial=initial, unit="psg", disable=not enabled, dynamic_ncols=True)


def model_feedback(config: Any, where: str) -> dict[str, Any] | None:
    """The query-time feedback a model recommends (``tilde_feedback`` in its config.json),
    checked; None for models that do not (every reference checkpoint)."""
    rec = getattr(config, "tilde_feedback", None)
    if rec is None:
        return None
    from tilde.rank.feedback import Feedback

    if not isinstance(rec, dict):
        raise ValueError(f"{where}: tilde_feedback in config.json must be an object, not {rec!r}")
    return Feedback.from_dict(rec, where=f"{where}: tilde_feedback").to_dict()


def build_index(
    model: str | None,
    collection: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    tokenizer: str | None = None,
    batch_size: int = 32,
    chunk_batches: int = 64,
    shard: tuple[int, int] = (0, 1),
    device: str = "cpu",
    weight_dtype: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
    recorder: Recorder | None = None,
    stop_after_chunks: int | None = None,
    command: str = "tilde index",
    engine: ChunkEngine | None = None,
) -> BuildSummary:
    """Encode ``collection`` with TILDEv2 ``model`` and write a memory-mappable index to ``output``.

    Re-running after a crash resumes after the last complete chunk and yields the same bytes as
    an uninterrupted build (same batches, same arithmetic). ``stop_after_chunks`` simulates an
    interruption (tests). ``engine`` runs the chunks elsewhere (:mod:`tilde.index.ray_engine`)."""
    from tilde.models import resolve_model

    model = resolve_model(model)
    factory = partial(tildev2_job, model, tokenizer=tokenizer, device=device)
    job, text = factory()
    return run_build(job, text, collection, output, batch_size=batch_size, chunk_batches=chunk_batches,
                     shard=shard, weight_dtype=weight_dtype, overwrite=overwrite, progress=progress,
                     recorder=recorder, stop_after_chunks=stop_after_chunks, command=command, engine=engine,
                     job_factory=factory)


def tildev2_job(model: str, *, tokenizer: str | None = None, device: str = "cpu") -> tuple[BuildJob, TextProcessor]:
    """The TILDEv2 build job (the model loaded on ``device``) and its tokenizer."""
    import torch

    from tilde.model import MAX_PASSAGE_TOKENS, encode, load_model, passage_input_ids, weights_hash

    text = TextProcessor.load(tokenizer if tokenizer is not None else model)
    net = load_model(model, device=device)
    model_sha = weights_hash(net)
    cls_id, sep_id, pad_id = text.special_id("[CLS]"), text.special_id("[SEP]"), text.special_id("[PAD]")
    stop_mask = stop_id_mask(text)

    def encode_batch(batch: list[Passage], where: str) -> tuple[list[Postings], np.ndarray | None]:
        inputs = [passage_input_ids(_passage_ids(p, text, text.vocab_size, where), cls_id, sep_id) for p in batch]
        with torch.inference_mode():
            weights = encode(net, inputs, pad_id=pad_id)
        return [pool_postings(np.asarray(ids), w, stop_mask) for ids, w in zip(inputs, weights)], None

    manifest = Manifest(
        vocab_size=text.vocab_size,
        vocab_sha256=text.vocab_hash,
        model=str(model),
        model_sha256=model_sha,
        max_passage_tokens=MAX_PASSAGE_TOKENS,
        feedback=model_feedback(net.config, where=str(model)),
    )
    job = BuildJob(encode_batch, {"model_sha256": model_sha, "max_passage_tokens": MAX_PASSAGE_TOKENS}, manifest)
    return job, text


Postings = tuple[np.ndarray, np.ndarray]


def stop_id_mask(text: TextProcessor) -> np.ndarray:
    """True for the ids an index never stores: the reference stop ids (special tokens included)."""
    mask = np.zeros(text.vocab_size, dtype=np.bool_)
    mask[text.stop_ids] = True
    return mask


@dataclass(frozen=True)
class BuildJob:
    """What a build encodes with: ``encode(batch, where)`` turns passages into postings (and,
    optionally, dense vectors [batch, dim]); ``identity`` is what determines that output (a
    resumed build must match it); ``manifest`` carries the identity fields of the result.
    ``before_finalize(output)`` writes extra files (query encoders) before the manifest."""

    encode: Callable[[list[Passage], str], tuple[list[Postings], np.ndarray | None]]
    identity: Mapping[str, Any]
    manifest: Manifest
    before_finalize: Callable[[Path], Mapping[str, Any]] | None = None
    dense_codec: str = "fp16"


# One chunk's encoded content: its docids, postings and (optionally) dense vectors.
ChunkResult = tuple[list[str], list[Postings], np.ndarray | None]
# Builds the job again where the chunks are encoded (a picklable callable: a Ray actor calls it once).
JobFactory = Callable[[], tuple[BuildJob, TextProcessor]]


def encode_chunk(
    job: BuildJob, passages: list[Passage], batch_size: int, where: str,
    recorder: Recorder | None = None, on_batch: Callable[[int], None] | None = None,
) -> ChunkResult:
    """The work of one chunk, wherever it runs: consecutive batches of ``batch_size`` passages
    through ``job.encode`` (so every engine feeds the model the same batches)."""
    docids: list[str] = []
    postings: list[Postings] = []
    dense: list[np.ndarray] = []
    for s in range(0, len(passages), batch_size):
        batch = passages[s : s + batch_size]
        with recorder.measure("encode", items=len(batch)) if recorder is not None else nullcontext():
            post, vectors = job.encode(batch, where)
        docids.extend(p.pid for p in batch)
        postings.extend(post)
        if vectors is not None:
            dense.append(vectors)
        if on_batch is not None:
            on_batch(len(batch))
    return docids, postings, np.concatenate(dense) if dense else None


class ChunkEngine:
    """Runs the chunk work somewhere else than this process (:class:`tilde.index.ray_engine.RayEngine`).

    ``encode_chunks`` receives the chunks still to do as ``(k, passages)`` in order and yields
    ``(k, result, joules)`` in the same order, ``joules`` being energy spent outside this
    process (the meter of this process counts the rest); ``progress(n)`` reports passages done."""

    def encode_chunks(
        self, factory: JobFactory, job: BuildJob, chunks: Iterable[tuple[int, list[Passage]]], *,
        batch_size: int, where: str, recorder: Recorder, progress: Callable[[int], None],
    ) -> Iterator[tuple[int, ChunkResult, float]]:
        raise NotImplementedError


def _chunked(passages: Iterable[Passage], size: int, first: int) -> Iterator[tuple[int, list[Passage]]]:
    k, chunk = first, []
    for p in passages:
        chunk.append(p)
        if len(chunk) == size:
            yield k, chunk
            k, chunk = k + 1, []
    if chunk:
        yield k, chunk


def run_build(
    job: BuildJob,
    text: TextProcessor,
    collection: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    chunk_batches: int = 64,
    shard: tuple[int, int] = (0, 1),
    weight_dtype: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
    recorder: Recorder | None = None,
    stop_after_chunks: int | None = None,
    command: str = "tilde index",
    engine: ChunkEngine | None = None,
    job_factory: JobFactory | None = None,
) -> BuildSummary:
    """The resumable, shardable, metered chunk loop shared by every kind of index build.
    ``command`` is what an unfinished build's hint tells the user to re-run.

    With ``engine``, the chunks are encoded by it (each worker rebuilds the job with
    ``job_factory``) and written here, the same files as a local build writes."""
    if engine is not None and job_factory is None:
        raise ValueError("an engine needs the job_factory that builds the job where the chunks are encoded")
    if batch_size < 1 or chunk_batches < 1:
        raise ValueError("batch size and chunk size must be positive")
    if weight_dtype not in ("float16", "uint8"):
        raise ValueError(f"--weights must be float16 or uint8, not {weight_dtype!r}")
    coll = Path(collection)
    if not coll.is_file():
        raise FileNotFoundError(f"{coll}: no such collection file")
    out = Path(output)
    if (out / MANIFEST).exists():
        if not overwrite:
            raise IndexFormatError(f"{out} already holds an index; pass --overwrite to replace it")
        remove_index_files(out)
    if overwrite:
        shutil.rmtree(out / PARTIAL, ignore_errors=True)

    recorder = recorder or Recorder(default_meter(scope="process"), keep=False)
    started = time.perf_counter()
    joules0 = recorder.meter.read()
    meta_path = expansion_meta_path(coll)
    expansion = json.loads(meta_path.read_text("utf-8")) if meta_path.is_file() else None
    if expansion and expansion.get("vocab_sha256") not in (None, text.vocab_hash):
        raise IndexFormatError(
            f"{coll} was expanded with another vocabulary ({meta_path} says sha256 "
            f"{str(expansion['vocab_sha256'])[:12]}, the tokenizer has {text.vocab_hash[:12]}): "
            f"its token ids would mean other words. Expand again with this model's tokenizer."
        )

    total = count_lines(coll)
    if total == 0:
        raise FormatError(f"{coll}: the collection is empty (no passages to index)")
    i, n = shard
    start, stop = i * total // n, (i + 1) * total // n
    if start == stop:
        raise ValueError(f"shard {i}/{n} of {coll} is empty ({total} passages for {n} shards)")
    chunk_size = batch_size * chunk_batches
    identity = {
        **collection_identity(coll),
        **job.identity,
        "vocab_sha256": text.vocab_hash,
        "shard": [i, n],
        "batch_size": batch_size,
        "chunk_size": chunk_size,
    }
    store = ChunkStore(out, identity, command=command)
    done_chunks = store.completed()
    resume_row = min(start + done_chunks * chunk_size, stop)
    bar = _progress(stop - start, min(resume_row, stop) - start, progress)

    def passages() -> Iterator[Passage]:
        for row, p in enumerate(read_collection(coll)):
            if row >= stop:
                break
            if row >= resume_row:
                yield p

    def advance(n: int) -> None:
        if bar is not None:
            bar.update(n)

    chunks = _chunked(passages(), chunk_size, first=done_chunks)
    encoded: Iterator[tuple[int, ChunkResult, float]]
    if engine is None:
        encoded = ((k, encode_chunk(job, c, batch_size, str(coll), recorder, advance), 0.0) for k, c in chunks)
    else:
        assert job_factory is not None
        encoded = engine.encode_chunks(job_factory, job, chunks, batch_size=batch_size, where=str(coll),
                                       recorder=recorder, progress=advance)
    written_chunks = 0
    outside_joules = 0.0
    try:
        for k, (docids, postings, dense), joules in encoded:
            store.write(k, docids, postings, dense=dense)
            outside_joules += joules
            written_chunks += 1
            if stop_after_chunks is not None and written_chunks >= stop_after_chunks:
                raise KeyboardInterrupt("stopped after the requested number of chunks")
    except BaseException:
        if store.completed() == 0:
            store.remove()  # nothing finished: leave no unfinished build behind to trip up the re-run
        raise
    finally:
        close = getattr(encoded, "close", None)
        if close is not None:
            close()  # an engine's generator shuts its workers down
        if bar is not None:
            bar.close()
    if store.completed() == 0:
        store.remove()
        raise FormatError(f"{coll}: no passages in rows {start}..{stop} of the collection (nothing to index)")

    extra_fields: Mapping[str, Any] = job.before_finalize(out) if job.before_finalize is not None else {}
    manifest = replace(
        job.manifest,
        expansion=expansion if job.manifest.expansion is None else job.manifest.expansion,
        shard={"index": i, "count": n, "start": start, "stop": stop, "total": total} if n > 1 else None,
        **extra_fields,
    )
    final = finalize(store.chunks(), out, manifest, weight_dtype=weight_dtype, tokenizer=text.tokenizer,
                     dense_codec=job.dense_codec)
    store.remove()
    seconds = time.perf_counter() - started
    offsets = np.load(out / "offsets.npy", mmap_mode="r")
    empty = int(np.count_nonzero(np.diff(offsets) == 0))
    size = sum((out / f).stat().st_size for f in ("tokens.npy", "weights.npy"))
    return BuildSummary(
        output=out,
        passages=final.num_passages,
        postings=final.num_postings,
        bytes_on_disk=size,
        seconds=seconds,
        joules=recorder.meter.read() - joules0 + outside_joules,
        method=recorder.method,
        empty_passages=empty,
        resumed_from=resume_row - start,
        encoded_now=stop - resume_row,
    )
