"""Writing an index: per-passage pooling, resumable chunk files, and the final atomic assembly.

A build streams passages into fixed-size chunks under ``<output>/.partial/``; each chunk is one
``.npz`` written atomically, so a crash loses at most the chunk in progress and a re-run resumes
after the last complete one. :func:`finalize` turns the chunks into the memory-mappable arrays
and writes the manifest last.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from tilde.index.format import (
    DOCIDS,
    DOCIDS_ORDER,
    DOCIDS_SORTED,
    MANIFEST,
    OFFSETS,
    TOKENIZER,
    TOKENS,
    WEIGHTS,
    IndexFormatError,
    Manifest,
    docid_kind,
    file_entries,
)
from tilde.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["ChunkStore", "DuplicateDocidError", "finalize", "pool_postings", "remove_stale_temp_files"]

PARTIAL = ".partial"
QUERY_DIR = "query"  # the ONNX query encoders (tilde.encoders), when the index ships them
COMMAND = "command"  # in .partial: which command started the build (named in the resume hint)

# Names ``tilde.io.atomic_path`` gives its temporary files: ".tmp-<12 hex>.<target name>".
_TEMP = re.compile(r"^\.tmp-[0-9a-f]{12}\.")


def remove_stale_temp_files(folder: Path, targets: Iterable[str] | None = None) -> int:
    """Delete temporary files that a killed job left in ``folder`` (an ``atomic_path`` cleans up
    after exceptions, not after SIGKILL or power loss). With ``targets``, only those for these
    final names (another job may be writing other files in the same folder). Returns the count."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    wanted = None if targets is None else set(targets)
    removed = 0
    for entry in folder.iterdir():
        if not _TEMP.match(entry.name) or (wanted is not None and entry.name[18:] not in wanted):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("removed %d temporary file(s) of an interrupted run from %s", removed, folder)
    return removed


class DiskFullError(OSError):
    """No space left while writing the index (reported as one line by the CLI)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _check_disk_full(exc: OSError, out: Path) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(
            exc.errno, f"{out}: no space left on the device while writing the index; free space and re-run "
            f"the same command (finished chunks are kept)"
        ) from None


class DuplicateDocidError(IndexFormatError):
    """The collection holds the same docid more than once."""


def pool_postings(ids: np.ndarray, weights: np.ndarray, stop_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop stop/special positions and keep the max weight per distinct token id.

    The reference stores every occurrence and max-pools at query time; pooling here gives the
    same scores with a smaller index. Returns (sorted unique ids, float16 weights); the max is
    taken after the float16 cast, exactly as the reference compares stored float16 values.
    """
    ids = np.asarray(ids, dtype=np.int64)
    keep = ~stop_mask[ids]
    ids = ids[keep]
    w16 = np.asarray(weights, dtype=np.float32)[keep].astype(np.float16)
    if ids.size == 0:
        return ids.astype(np.uint32), w16
    order = np.lexsort((-w16.astype(np.float32), ids))  # by id, then weight descending
    ids, w16 = ids[order], w16[order]
    first = np.ones(ids.size, dtype=np.bool_)
    first[1:] = ids[1:] != ids[:-1]
    return ids[first].astype(np.uint32), w16[first]


class ChunkStore:
    """Resumable chunk files of a build in progress, tied to the job that created them.

    ``identity`` describes the job (collection, model, shard, batch and chunk sizes): resuming
    with a different job would splice incompatible chunks together, so it is refused."""

    def __init__(self, output: Path, identity: Mapping[str, Any], command: str = "tilde index") -> None:
        self.output = Path(output)
        self.dir = self.output / PARTIAL
        self.identity = dict(identity)
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.dir)
        remove_stale_temp_files(self.output)
        state = self.dir / "job.json"
        wanted = json.dumps(self.identity, sort_keys=True, indent=2)
        if state.exists() and self.completed() == 0:
            # A job that finished no chunk (e.g. stopped by a malformed line) has nothing to keep:
            # whatever it was, the new job starts afresh instead of asking for --overwrite.
            state.unlink()
        if state.exists():
            try:
                found = json.loads(state.read_text("utf-8"))
            except (ValueError, UnicodeDecodeError):
                found = {"unreadable job.json": True}
            if found != json.loads(wanted):
                diff = sorted(k for k in set(found) | set(self.identity) if found.get(k) != self.identity.get(k))
                raise IndexFormatError(
                    f"{self.output} holds an unfinished build of a different job (differs in: "
                    f"{', '.join(diff)}). Re-run with the same arguments to resume, or pass "
                    f"--overwrite to start over."
                )
        else:
            atomic_write_text(state, wanted)
        atomic_write_text(self.dir / COMMAND, command + "\n")

    def _path(self, k: int) -> Path:
        return self.dir / f"chunk-{k:08d}.npz"

    def completed(self) -> int:
        """Number of consecutive complete chunks from 0 (later ones are ignored)."""
        k = 0
        while self._path(k).exists():
            k += 1
        return k

    def write(
        self,
        k: int,
        docids: Sequence[str],
        postings: Sequence[tuple[np.ndarray, np.ndarray]],
        dense: np.ndarray | None = None,
    ) -> None:
        lengths = np.array([len(t) for t, _ in postings], dtype=np.int64)
        tokens = np.concatenate([t for t, _ in postings]) if postings else np.zeros(0, np.uint32)
        weights = np.concatenate([w for _, w in postings]) if postings else np.zeros(0, np.float16)
        arrays: dict[str, np.ndarray] = {}
        if dense is not None:
            if len(dense) != len(docids):
                raise ValueError(f"{len(dense)} dense vectors for {len(docids)} passages")
            arrays["dense"] = np.asarray(dense, dtype=np.float32)
        arrays.update(docids=np.array(list(docids), dtype=np.str_), lengths=lengths,
                      tokens=tokens.astype(np.uint32), weights=weights.astype(np.float16))
        with atomic_path(self._path(k)) as tmp, open(tmp, "wb") as fh:
            cast(Any, np.savez)(fh, **arrays)  # mypy: a **dict might fill allow_pickle

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        for k in range(self.completed()):
            with np.load(self._path(k)) as z:
                yield {name: z[name] for name in z.files}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_npy_header(fh: Any, dtype: np.dtype, length: int) -> None:
    """The .npy header of a 1-D array (as ``np.save`` writes it); the data follows."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
    np.lib.format.write_array_header_1_0(fh, header)


def _write_array(out: Path, name: str, arr: np.ndarray) -> None:
    with atomic_path(out / name) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def _docid_arrays(docids: list[str]) -> tuple[str, np.ndarray]:
    kind = docid_kind(docids)
    if kind == "int":
        return kind, np.array([int(d) for d in docids], dtype=np.int64)
    encoded = [d.encode("utf-8") for d in docids]
    width = max((len(e) for e in encoded), default=1) or 1
    # S rather than U: U pads every character to 4 bytes, S stores UTF-8 bytes.
    return kind, np.array(encoded, dtype=f"S{width}")


def _check_duplicates(ids: np.ndarray, order: np.ndarray, raw: list[str]) -> None:
    sorted_ids = ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
        examples = []
        for i in dup[:5]:
            rows = sorted((int(order[i]), int(order[i + 1])))
            examples.append(f"{raw[rows[0]]!r} (passages {rows[0] + 1} and {rows[1] + 1})")
        raise DuplicateDocidError(
            f"{dup.size} duplicate docid(s) in the collection, e.g. {', '.join(examples)}. "
            f"Docids must be unique; remove the duplicates and re-run (finished chunks are kept)."
        )


def write_docids(out: Path, docids: list[str]) -> tuple[str, bool]:
    """Write docids.npy (and the sorted lookup pair when ids are not ascending)."""
    kind, ids = _docid_arrays(docids)
    if kind == "int" and np.array_equal(ids, np.arange(ids.size)):
        # MS MARCO pids are exactly the row numbers: store nothing, look up by arithmetic.
        for name in (DOCIDS, DOCIDS_SORTED, DOCIDS_ORDER):
            (out / name).unlink(missing_ok=True)
        return "range", True
    order = np.argsort(ids, kind="stable")
    _check_duplicates(ids, order, docids)
    ascending = bool(np.all(order == np.arange(order.size)))
    _write_array(out, DOCIDS, ids)
    if not ascending:
        _write_array(out, DOCIDS_SORTED, ids[order])
        _write_array(out, DOCIDS_ORDER, order.astype(np.int64))
    else:
        for name in (DOCIDS_SORTED, DOCIDS_ORDER):
            (out / name).unlink(missing_ok=True)
    return kind, ascending


def finalize(
    chunks: Iterable[Mapping[str, np.ndarray]] | Sequence[Mapping[str, np.ndarray]],
    out: Path,
    manifest: Manifest,
    weight_dtype: str = "float16",
    tokenizer: Any = None,
    dense_codec: str = "fp16",
    extra_files: Sequence[str] = (),
) -> Manifest:
    """Assemble chunk data into the final arrays in ``out`` and write the manifest last.

    ``manifest`` supplies identity fields; counts, dtypes, docid layout and the file list are
    filled in here. Arrays are written to temporary names and renamed, so a crash leaves no
    half-written file under a final name, and no manifest until everything else is in place.

    The manifest's ``files`` records size and digest of every file written here, plus
    ``extra_files``: paths relative to ``out`` (files, or folders: every file below them) that
    the caller placed there before calling, e.g. a copied tokenizer or another scoring mode's
    arrays. ``tilde index verify`` checks every listed file; ``open()`` their sizes."""
    out = Path(out)
    try:
        if (out / QUERY_DIR).is_dir() and QUERY_DIR not in extra_files:  # query encoders shipped in the index
            extra_files = [*extra_files, QUERY_DIR]
        return _finalize(chunks, out, manifest, weight_dtype, tokenizer, extra_files, dense_codec)
    except OSError as exc:
        _check_disk_full(exc, out)
        raise


def _finalize(
    chunks: Iterable[Mapping[str, np.ndarray]] | Sequence[Mapping[str, np.ndarray]],
    out: Path,
    manifest: Manifest,
    weight_dtype: str,
    tokenizer: Any,
    extra_files: Sequence[str],
    dense_codec: str = "fp16",
) -> Manifest:
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the directory is not an index
    remove_stale_temp_files(out)
    written = [OFFSETS, TOKENS, WEIGHTS]
    if tokenizer is not None:  # a ``tokenizers.Tokenizer``: queries must use the one the weights belong to
        with atomic_path(out / TOKENIZER) as tmp:
            tokenizer.save(str(tmp))
        written.append(TOKENIZER)
    chunks = list(chunks) if not isinstance(chunks, list) else chunks
    n = sum(len(c["lengths"]) for c in chunks)
    p = int(sum(int(c["lengths"].sum()) for c in chunks))
    max_token = max((int(c["tokens"].max()) for c in chunks if c["tokens"].size), default=0)
    token_dtype = "uint16" if max(max_token, manifest.vocab_size - 1) < 65536 else "uint32"
    scale: float | None = None
    if weight_dtype == "uint8":
        top = max((float(c["weights"].astype(np.float32).max()) for c in chunks if c["weights"].size), default=0.0)
        scale = top / 255.0 if top > 0 else 1.0
    elif weight_dtype != "float16":
        raise ValueError(f"weight dtype must be float16 or uint8, not {weight_dtype!r}")

    # Plain sequential writes, not a writable memmap: writing through a memmap onto a full disk
    # ends the process with SIGBUS, a write() gets ENOSPC (reported as one line).
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[0] = 0
    with atomic_path(out / TOKENS) as t_tok, atomic_path(out / WEIGHTS) as t_w, \
            open(t_tok, "wb") as f_tok, open(t_w, "wb") as f_w:
        _write_npy_header(f_tok, np.dtype(token_dtype), p)
        _write_npy_header(f_w, np.dtype(weight_dtype), p)
        row = pos = 0
        for c in chunks:
            lengths, k = c["lengths"], len(c["lengths"])
            offsets[row + 1 : row + 1 + k] = pos + np.cumsum(lengths)
            m = int(lengths.sum())
            f_tok.write(np.ascontiguousarray(c["tokens"][:m], dtype=token_dtype).tobytes())
            if scale is None:
                w = np.ascontiguousarray(c["weights"][:m], dtype=np.float16)
            else:
                w = np.clip(np.rint(c["weights"][:m].astype(np.float32) / scale), 0, 255).astype(np.uint8)
            f_w.write(w.tobytes())
            row, pos = row + k, pos + m
        f_tok.flush()
        f_w.flush()
        _write_array(out, OFFSETS, offsets)
    docids = [str(d) for c in chunks for d in c["docids"]]
    kind, ascending = write_docids(out, docids)
    dense_meta = manifest.dense
    with_dense = [("dense" in c) for c in chunks]
    if any(with_dense):
        if not all(with_dense):
            raise IndexFormatError(f"{out}: some chunks have dense vectors and some do not; rebuild with --overwrite")
        from tilde.index.dense import DENSE_FILE, write_dense

        with atomic_path(out / DENSE_FILE) as tmp:
            meta = write_dense(tmp, np.concatenate([c["dense"] for c in chunks]), codec=dense_codec)
        dense_meta = {**(dict(dense_meta) if dense_meta else {}), **meta}
        written.append(DENSE_FILE)
    else:
        from tilde.index.dense import DENSE_FILE

        (out / DENSE_FILE).unlink(missing_ok=True)
        dense_meta = None
    if kind != "range":
        written += [DOCIDS] if ascending else [DOCIDS, DOCIDS_SORTED, DOCIDS_ORDER]
    files = file_entries(out, [*written, *(x for x in extra_files if x not in written)])
    final = replace(
        manifest,
        num_passages=n,
        num_postings=p,
        token_dtype=token_dtype,
        weight_dtype=weight_dtype,
        weight_scale=scale,
        docid_kind=kind,
        docids_sorted=ascending,
        dense=dense_meta,
        files=files,
    )
    atomic_write_text(out / MANIFEST, final.to_json())
    logger.info("wrote index %s: %d passages, %d postings", out, n, p)
    return final


def remove_index_files(out: Path) -> None:
    from tilde.index.dense import DENSE_FILE

    for name in (MANIFEST, OFFSETS, TOKENS, WEIGHTS, DOCIDS, DOCIDS_SORTED, DOCIDS_ORDER, DENSE_FILE):
        (Path(out) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(out) / QUERY_DIR, ignore_errors=True)
