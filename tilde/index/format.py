"""The on-disk index format: file names, the manifest, and the checks shared by writer and reader.

An index is a directory::

    manifest.json        format name/version, counts, dtypes, model and tokenizer identity
    offsets.npy          int64 [N+1]   row i's postings are [offsets[i], offsets[i+1])
    tokens.npy           uint16 [P]    token ids, strictly increasing within a row
    weights.npy          float16 [P]   max-pooled ReLU(tok_proj) weight of that token in that row
                         (or uint8 [P] with manifest weights.scale: weight = q * scale)
    docids.npy           int64 [N] or |S<w> [N]   external id of each row (absent when the ids
                         are exactly 0..N-1 in order, as MS MARCO pids: docid_kind "range")
    docids_sorted.npy    (only when docids are not ascending) the ids sorted ...
    docids_order.npy     ... and the row of each sorted id (int64), for searchsorted lookups
    tokenizer.json       the tokenizer the weights were computed with (queries must use it)
    dense.faiss          (optional) one bi-encoder vector per row, a faiss scalar-quantiser index
                         (tilde.index.dense; manifest ``dense``)
    query/mlm/, query/dense/   (optional) the ONNX query encoders the scoring modes need
                         (tilde.encoders; manifest ``query_encoders``)

The manifest is written last: a directory without one is an unfinished build, never an index.
It lists every file the build wrote (``files``: relative path -> size and SHA-256 digest,
sub-folders included): :meth:`TildeIndex.open` compares the sizes (a stat per file),
``tilde index verify`` the digests.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tilde import __version__

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "IndexFormatError",
    "Manifest",
    "docid_kind",
    "file_digest",
    "file_entries",
]

FORMAT_NAME = "tilde-index"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
OFFSETS = "offsets.npy"
TOKENS = "tokens.npy"
WEIGHTS = "weights.npy"
DOCIDS = "docids.npy"
DOCIDS_SORTED = "docids_sorted.npy"
DOCIDS_ORDER = "docids_order.npy"
TOKENIZER = "tokenizer.json"

# Bounds on manifest fields: beyond these a value is damage, not a setting (a 10^9-passage
# feedback list or a negative passage length would only ever come from a corrupted manifest).
MAX_VOCAB_SIZE = 2**32
MAX_PASSAGE_TOKENS_LIMIT = 65536
HASH = "sha256"  # with the SHA extensions of current x86 and ARM CPUs: 4x BLAKE2b here (802 vs 186 MiB/s)

# Canonical decimal integers only: "007" must stay a string id, or it would come back as "7".
_INT_ID = re.compile(r"^(0|[1-9][0-9]{0,17})$")


class IndexFormatError(ValueError):
    """An index directory is missing, damaged, of another format version, or does not fit the
    tokenizer/model it is used with."""


def docid_kind(docids: list[str]) -> str:
    """"int" when every id is a canonical non-negative decimal (MS MARCO pids), else "str"."""
    return "int" if all(_INT_ID.match(d) for d in docids) else "str"


@dataclass(frozen=True)
class Manifest:
    """Identity fields come first: a writer gives those, and ``finalize`` fills in the layout
    fields (counts, dtypes, docid layout) from the data it writes."""

    vocab_size: int
    vocab_sha256: str
    model: str  # name or path it was built from
    model_sha256: str
    tilde_version: str = __version__
    num_passages: int = 0
    num_postings: int = 0
    token_dtype: str = "uint16"  # "uint16" | "uint32"
    weight_dtype: str = "float16"  # "float16" | "uint8"
    docid_kind: str = "int"  # "int" | "str" | "range" (ids are 0..N-1 in row order: nothing stored)
    docids_sorted: bool = True  # True: docids.npy is ascending and doubles as the lookup array
    weight_scale: float | None = None  # uint8 only
    max_passage_tokens: int = 192
    expansion: Mapping[str, Any] | None = None  # settings recorded by the expansion job, if any
    shard: Mapping[str, int] | None = None  # {"index", "count", "start", "stop", "total"} for a shard
    # Query-time pseudo-relevance feedback the model recommends ({"docs", "terms", "weight"}, from
    # ``tilde_feedback`` in its config; tilde.rank.feedback). None: plain TILDEv2 scoring.
    feedback: Mapping[str, Any] | None = None
    # What the stored weights are: "tildev2" (ReLU(tok_proj) of a TILDEv2 model; the reference)
    # or "impact" (an MLM's own max-pooled log(1 + ReLU(logit)), written in the expansion pass;
    # ``impact`` then records its settings: model, top_k, max_length).
    weighting: str = "tildev2"
    impact: Mapping[str, Any] | None = None
    dense: Mapping[str, Any] | None = None  # tilde.index.dense: file, dim, codec, model, ...
    # {"mlm": {"path", "sha256", ...}, "dense": {...}}: encoders shipped inside the index directory.
    query_encoders: Mapping[str, Any] | None = None
    # The scoring the index recommends (tilde.rank.scoring.Scoring.to_dict); None: plain tokens.
    scoring: Mapping[str, Any] | None = None
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    # Every file of the index but the manifest: relative POSIX path -> {"size": bytes, "sha256":
    # hex digest}. None in indexes written before tilde recorded it (verify then checks the arrays only).
    files: Mapping[str, Mapping[str, Any]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IndexFormatError(f"{where}: manifest is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise IndexFormatError(f"{where}: not a tilde index (format is {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{where}: index format version {data.get('format_version')!r}; this tilde reads "
                f"version {FORMAT_VERSION}. Rebuild the index with `tilde index`."
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise IndexFormatError(f"{where}: manifest has unknown fields {unknown}")
        try:
            manifest = cls(**data)
        except TypeError as exc:
            raise IndexFormatError(f"{where}: manifest is incomplete ({exc})") from exc
        if manifest.token_dtype not in ("uint16", "uint32") or manifest.weight_dtype not in ("float16", "uint8"):
            raise IndexFormatError(f"{where}: unsupported dtypes {manifest.token_dtype}/{manifest.weight_dtype}")
        if manifest.weight_dtype == "uint8" and not manifest.weight_scale:
            raise IndexFormatError(f"{where}: uint8 weights without a scale")
        if manifest.weighting not in ("tildev2", "impact"):
            raise IndexFormatError(f"{where}: unknown weighting {manifest.weighting!r}")
        if manifest.docid_kind not in ("int", "str", "range"):
            raise IndexFormatError(f"{where}: unknown docid kind {manifest.docid_kind!r}")
        manifest._check_ranges(where)
        return manifest

    def _check_ranges(self, where: str) -> None:
        """Every field of a parsed manifest has the right type and a value in range."""

        def bad(name: str, value: Any, want: str) -> IndexFormatError:
            return IndexFormatError(f"{where}: {name} is {value!r}, expected {want}; the manifest is damaged")

        def count(name: str, lo: int, hi: int | None = None) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
                raise bad(name, v, f"an integer in [{lo}, {hi if hi is not None else 'inf'}]")

        count("vocab_size", 1, MAX_VOCAB_SIZE)
        count("num_passages", 0)
        count("num_postings", 0)
        count("max_passage_tokens", 1, MAX_PASSAGE_TOKENS_LIMIT)
        count("format_version", FORMAT_VERSION, FORMAT_VERSION)
        for name in ("vocab_sha256", "model", "model_sha256", "tilde_version"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, getattr(self, name), "a string")
        if not isinstance(self.docids_sorted, bool):
            raise bad("docids_sorted", self.docids_sorted, "true or false")
        if self.token_dtype == "uint16" and self.vocab_size > 65536:
            raise bad("token_dtype", self.token_dtype, f"uint32 for a vocabulary of {self.vocab_size}")
        if self.weight_dtype == "uint8":
            s = self.weight_scale
            if not isinstance(s, (int, float)) or isinstance(s, bool) or not (0 < s < math.inf):
                raise bad("weight_scale", s, "a positive finite number for uint8 weights")
        elif self.weight_scale is not None:
            raise bad("weight_scale", self.weight_scale, "null for float16 weights")
        for name in ("expansion", "shard", "feedback", "extra"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Mapping):
                raise bad(name, v, "an object or null")
        if self.feedback is not None:
            from tilde.rank.feedback import Feedback  # numba only; imported late: tilde.rank imports this module

            try:
                Feedback.from_dict(self.feedback, where="manifest feedback")
            except (ValueError, TypeError) as exc:
                raise IndexFormatError(f"{where}: {exc}; the manifest is damaged") from None
        if self.shard is not None:
            for key in ("index", "count", "start", "stop", "total"):
                v = self.shard.get(key)
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise bad(f"shard.{key}", v, "a non-negative integer")
        if self.files is not None:
            if not isinstance(self.files, Mapping):
                raise bad("files", self.files, "an object of file entries")
            for rel, entry in self.files.items():
                check_relpath(rel, where)
                if not isinstance(entry, Mapping):
                    raise bad(f"files[{rel!r}]", entry, "an object with size and digest")
                size, digest = entry.get("size"), entry.get(HASH)
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise bad(f"files[{rel!r}].size", size, "a non-negative integer")
                if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise bad(f"files[{rel!r}].{HASH}", digest, "64 hex digits")


def check_relpath(rel: Any, where: str) -> str:
    """A manifest file name must stay inside the index directory (no absolute path, no "..")."""
    p = PurePosixPath(rel) if isinstance(rel, str) else None
    if p is None or not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or rel == MANIFEST:
        raise IndexFormatError(f"{where}: file entry {rel!r} is not a relative path inside the index")
    return rel


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def file_entries(root: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Size and digest of each named file under ``root``; a named folder contributes every file
    below it (sorted, as POSIX relative paths). Hidden entries (``.tmp-*``, ``.partial``) are left out."""
    root = Path(root)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        path = root / name
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
        elif path.is_file():
            found = [path]
        else:
            raise FileNotFoundError(f"{path}: listed as an index file but not written")
        for p in found:
            rel = p.relative_to(root).as_posix()
            out[rel] = {"size": os.stat(p).st_size, HASH: file_digest(p)}
    return dict(sorted(out.items()))
