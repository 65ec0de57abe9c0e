"""Writing an index: per-passage pooling, resumable chunk files, and the final atomic assembly.

A build streams passages into fixed-size chunks under ``<output>/.partial/``; each chunk is one
``.npz`` written atomically, so a crash loses at most the chunk in progress and a re-run resumes
after the last complete one. :func:`finalize` turns the chunks into the memory-mappable arrays
and writes the manifest last.
"""

from __future__ import annotations

import json
import logging
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
)
from tilde.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["ChunkStore", "DuplicateDocidError", "finalize", "pool_postings"]

PARTIAL = ".partial"
QUERY_DIR = "query"  # the ONNX query encoders (tilde.encoders), when the index ships them


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

    def __init__(self, output: Path, identity: Mapping[str, Any]) -> None:
        self.output = Path(output)
        self.dir = self.output / PARTIAL
        self.identity = dict(identity)
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self.dir / "job.json"
        wanted = json.dumps(self.identity, sort_keys=True, indent=2)
        if state.exists():
            found = json.loads(state.read_text("utf-8"))
            if found != json.loads(wanted):
                diff = sorted(k for k in set(found) | set(self.identity) if found.get(k) != self.identity.get(k))
                raise IndexFormatError(
                    f"{self.output} holds an unfinished build of a different job (differs in: "
                    f"{', '.join(diff)}). Re-run with the same arguments to resume, or pass "
                    f"--overwrite to start over."
                )
        else:
            atomic_write_text(state, wanted)

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


def _open_npy(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


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
) -> Manifest:
    """Assemble chunk data into the final arrays in ``out`` and write the manifest last.

    ``manifest`` supplies identity fields; counts, dtypes and docid layout are filled in here.
    Arrays are written to temporary names and renamed, so a crash leaves no half-written file
    under a final name, and no manifest until everything else is in place."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the directory is not an index
    if tokenizer is not None:  # a ``tokenizers.Tokenizer``: queries must use the one the weights belong to
        with atomic_path(out / TOKENIZER) as tmp:
            tokenizer.save(str(tmp))
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

    with atomic_path(out / OFFSETS) as t_off, atomic_path(out / TOKENS) as t_tok, atomic_path(out / WEIGHTS) as t_w:
        offsets = _open_npy(Path(t_off), np.int64, (n + 1,))
        tokens = _open_npy(Path(t_tok), np.dtype(token_dtype), (p,))
        weights = _open_npy(Path(t_w), np.dtype(weight_dtype), (p,))
        offsets[0] = 0
        row = pos = 0
        for c in chunks:
            lengths, k = c["lengths"], len(c["lengths"])
            offsets[row + 1 : row + 1 + k] = pos + np.cumsum(lengths)
            m = int(lengths.sum())
            tokens[pos : pos + m] = c["tokens"]
            if scale is None:
                weights[pos : pos + m] = c["weights"]
            else:
                q = np.rint(c["weights"].astype(np.float32) / scale)
                weights[pos : pos + m] = np.clip(q, 0, 255).astype(np.uint8)
            row, pos = row + k, pos + m
        for arr in (offsets, tokens, weights):
            arr.flush()
        del offsets, tokens, weights
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
    else:
        from tilde.index.dense import DENSE_FILE

        (out / DENSE_FILE).unlink(missing_ok=True)
        dense_meta = None
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
    )
    atomic_write_text(out / MANIFEST, final.to_json())
    logger.info("wrote index %s: %d passages, %d postings", out, n, p)
    return final


def remove_index_files(out: Path) -> None:
    from tilde.index.dense import DENSE_FILE

    for name in (MANIFEST, OFFSETS, TOKENS, WEIGHTS, DOCIDS, DOCIDS_SORTED, DOCIDS_ORDER, DENSE_FILE):
        (Path(out) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(out) / QUERY_DIR, ignore_errors=True)
