"""``tilde index merge``: join shard indexes (``tilde index --shard i/n``) into one.

Shards are ordered by their shard number, so the merged index equals an unsharded build of the
same collection byte for byte."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from tilde.index.format import MANIFEST, TOKENIZER, IndexFormatError, Manifest
from tilde.index.reader import TildeIndex
from tilde.index.writer import finalize, remove_index_files
from tilde.io import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["merge_indexes"]

# Fields every shard must agree on: mixing them would give one index with two meanings.
_SAME = ("vocab_size", "vocab_sha256", "model_sha256", "max_passage_tokens", "weight_dtype", "expansion")


def merge_indexes(
    shards: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    weight_dtype: str = "float16",
    overwrite: bool = False,
) -> Manifest:
    if not shards:
        raise ValueError("no shard directories given")
    opened = [TildeIndex.open(s) for s in shards]
    first = opened[0].manifest
    for idx in opened[1:]:
        for name in _SAME:
            if getattr(idx.manifest, name) != getattr(first, name):
                raise IndexFormatError(
                    f"{idx.path} differs from {opened[0].path} in {name}; these shards cannot be merged"
                )
    if first.weight_dtype != "float16":
        raise IndexFormatError("merge needs float16 shards (quantise while merging with --weights uint8)")
    infos = [i.manifest.shard for i in opened]
    if all(s is not None for s in infos):
        opened.sort(key=lambda i: i.manifest.shard["index"])  # type: ignore[index]
        counts = {s["count"] for s in infos if s is not None}
        got = [i.manifest.shard["index"] for i in opened]  # type: ignore[index]
        if len(counts) != 1 or got != list(range(counts.pop())):
            raise IndexFormatError(f"shards {got} do not form a complete set 0..n-1 of one sharded build")
    elif any(s is not None for s in infos):
        raise IndexFormatError("cannot merge shards of a sharded build with stand-alone indexes")
    out = Path(output)
    if (out / MANIFEST).exists():
        if not overwrite:
            raise IndexFormatError(f"{out} already holds an index; pass --overwrite to replace it")
        remove_index_files(out)

    def chunks() -> Iterator[dict[str, np.ndarray]]:
        for idx in opened:
            docids = np.array([idx.docid(r) for r in range(len(idx))], dtype=np.str_)
            yield {
                "docids": docids,
                "lengths": np.diff(np.asarray(idx.offsets)),
                "tokens": np.asarray(idx.tokens),
                "weights": np.asarray(idx.weights),
            }

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / TOKENIZER) as tmp:
        tmp.write_bytes((opened[0].path / TOKENIZER).read_bytes())
    manifest = replace(first, shard=None, files=None)
    return finalize(list(chunks()), out, manifest, weight_dtype=weight_dtype, extra_files=[TOKENIZER])
