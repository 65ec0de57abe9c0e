"""``tilde export anserini``: a tilde index as Anserini ``JsonVectorCollection`` files, and
optionally the Lucene impact index Anserini builds from them.

Layout of the output directory::

    manifest.json                    format "tilde-impact", source index, quantization factor, counts
    tokenizer.json                   the index's tokenizer: queries are tokenised with it
    collection/part-00000.jsonl[.gz] {"id": ..., "contents": "", "vector": {"token": impact, ...}}
    lucene/                          with --build: IndexCollection -impact -pretokenized

One JSON object per line, ``json.dumps`` spelling (``", "`` and ``": "`` separators, non-ASCII
kept as UTF-8), tokens in vocabulary-id order; ``contents`` is empty (the tilde index holds no
text) and tokens whose impact rounds to 0 are left out (see :mod:`tilde.export.quantize`).
Rows are split into ``shards`` contiguous ranges, one file each, so that Anserini can index
them in parallel (``-threads``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from tilde.export.output import ExportSummary, Progress, output_dir, write_manifest
from tilde.export.quantize import DEFAULT_FACTOR, quantize
from tilde.export.source import ExportError, ExportSource
from tilde.first_stage.lucene import LuceneBuildSummary, _run_java
from tilde.io import atomic_path, open_text

__all__ = ["COLLECTION_DIR", "IMPACT_FORMAT", "LUCENE_DIR", "build_impact_index", "export_anserini",
           "read_impact_manifest"]

IMPACT_FORMAT = "tilde-impact"
COLLECTION_DIR = "collection"
LUCENE_DIR = "lucene"
TOKENIZER = "tokenizer.json"


def _write_rows(f: IO[Any], source: ExportSource, start: int, stop: int, factor: float,
                summary: ExportSummary, progress: Progress) -> None:
    toks = source.json_tokens
    for block in source.blocks(start, stop):
        impacts = quantize(block.weights, factor)
        keep = impacts > 0
        summary.dropped += int((~keep).sum())
        lines = []
        for i, docid in enumerate(block.docids):
            if docid.split() != [docid]:  # Anserini's TREC runs are whitespace-separated columns
                raise ExportError(f"docid {docid!r} contains whitespace; Anserini's run files could not carry it")
            lo, hi = int(block.offsets[i]), int(block.offsets[i + 1])
            k = keep[lo:hi]
            ids = block.tokens[lo:hi][k].tolist()
            qs = impacts[lo:hi][k].tolist()
            if not ids:
                summary.empty += 1
            summary.postings += len(ids)
            vector = ", ".join(f"{toks[t]}: {q}" for t, q in zip(ids, qs))
            lines.append(f'{{"id": {json.dumps(docid, ensure_ascii=False)}, "contents": "", "vector": {{{vector}}}}}\n')
        f.write("".join(lines))
        summary.passages += len(block.docids)
        progress.update(len(block.docids))


def _shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, shards + 1).round().astype(np.int64).tolist()
    return list(zip(edges[:-1], edges[1:]))


def export_anserini(
    index: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    factor: float = DEFAULT_FACTOR,
    shards: int = 1,
    gzip: bool = False,
    build: bool = False,
    threads: int = 1,
    store_raw: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportSummary:
    """Write the JsonVectorCollection of ``index`` into ``output`` (atomically); with ``build``,
    also run Anserini's IndexCollection on it (needs Java 11+ and the Anserini jar)."""
    if shards < 1:
        raise ExportError(f"--shards must be at least 1, not {shards}")
    quantize(np.zeros(0), factor)  # validates the factor before anything is written
    source = ExportSource.open(index)
    if build:  # fail before the export, not after it
        from tilde.first_stage.lucene import find_anserini_jar, find_java

        find_anserini_jar()
        find_java()
    summary = ExportSummary("Anserini JsonVectorCollection", Path(output))
    bar = Progress(len(source), progress)
    try:
        with output_dir(output, overwrite) as tmp:
            coll = tmp / COLLECTION_DIR
            coll.mkdir()
            suffix = ".jsonl.gz" if gzip else ".jsonl"
            bounds = _shard_bounds(len(source), shards)
            for s, (lo, hi) in enumerate(bounds):
                with open_text(coll / f"part-{s:05d}{suffix}", "wt") as f:
                    _write_rows(f, source, lo, hi, factor, summary, bar)
            summary.files = len(bounds)
            summary.bytes_written = sum(p.stat().st_size for p in coll.iterdir())
            shutil.copyfile(source.index.tokenizer_path, tmp / TOKENIZER)
            fields: dict[str, Any] = {
                "format": IMPACT_FORMAT, "format_version": 1, "engine": "anserini-jsonvector",
                "quantization": {"method": "round(weight * factor)", "factor": float(factor)},
                "source_index": source.identity(), "num_docs": summary.passages,
                "num_postings": summary.postings, "dropped_postings": summary.dropped,
                "empty_docs": summary.empty, "shards": len(bounds), "gzip": gzip, "lucene": False,
            }
            bar.close()
            summary.finish()  # the export's own time; the Lucene build reports its own
            if build:
                built = _build(coll, tmp / LUCENE_DIR, summary.passages, threads, store_raw)
                final = LuceneBuildSummary(Path(output) / LUCENE_DIR, built.docs, built.bytes_on_disk, built.seconds)
                summary.extra.append(final.format())
                fields["lucene"] = True
            write_manifest(tmp, fields)
    finally:
        bar.close()
    return summary


def _build(collection: Path, lucene: Path, docs: int, threads: int, store_raw: bool) -> LuceneBuildSummary:
    t0 = time.perf_counter()
    args = ["io.anserini.index.IndexCollection", "-collection", "JsonVectorCollection",
            "-input", str(collection), "-index", str(lucene),
            "-generator", "DefaultLuceneDocumentGenerator", "-impact", "-pretokenized",
            "-threads", str(max(1, threads))]
    if store_raw:
        args.append("-storeRaw")
    _run_java(args, "impact indexing")
    size = sum(p.stat().st_size for p in lucene.rglob("*") if p.is_file())
    return LuceneBuildSummary(lucene, docs, size, time.perf_counter() - t0)


def build_impact_index(export: str | os.PathLike[str], *, threads: int = 1,
                       store_raw: bool = False) -> LuceneBuildSummary:
    """Build (or rebuild) ``<export>/lucene`` from an existing export; the old one is replaced
    only once the new one is complete."""
    folder = Path(export)
    manifest = read_impact_manifest(folder)
    target = folder / LUCENE_DIR
    with atomic_path(folder / "lucene.new") as tmp:
        summary = _build(folder / COLLECTION_DIR, tmp, int(manifest.get("num_docs", 0)), threads, store_raw)
    if target.exists():
        shutil.rmtree(target)
    os.replace(folder / "lucene.new", target)
    manifest["lucene"] = True
    write_manifest(folder, {k: v for k, v in manifest.items() if k != "tilde_version"})
    return LuceneBuildSummary(target, summary.docs, summary.bytes_on_disk, summary.seconds)


def read_impact_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise ExportError(f"{folder}: no manifest.json; not a `tilde export anserini` directory")
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != IMPACT_FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise ExportError(f"{folder}: format {fmt!r}, not a `tilde export anserini` directory ({IMPACT_FORMAT!r})")
    return data
