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
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tilde import __version__

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "IndexFormatError",
    "Manifest",
    "docid_kind",
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
        return manifest
