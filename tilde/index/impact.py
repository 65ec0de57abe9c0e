"""The one-pass impact build: an MLM (splade-tiny) expands a passage and weighs every stored
token in the same forward pass, optionally with a bi-encoder's passage vector beside it.

For a passage encoded ``[CLS] passage [SEP]`` (truncated to ``max_length``), the weight of
vocabulary id ``v`` is SPLADE's ``max over positions of log(1 + ReLU(logit[pos, v]))``. The model
input is padded to a width that depends on the passage alone (:func:`pad_width`: 128, doubling up
to ``max_length``), so the build and the service, which batch passages differently, give a
passage bit-identical weights, and a short passage costs no more under a long ``max_length``.
A row stores:

- the passage's own tokens (stop ids and special tokens dropped, as a TILDEv2 index does), and
- its expansion: the ``top_k`` best-scoring ids (counted before filtering, as the reference's
  ``--topk``), minus ids already in the model input and the reference "bad ids",

each with that weight, cast to float16; ids whose weight is 0 (or rounds to 0) are not stored.
There is no second encoder pass: the weights *are* the expander's scores. The manifest says so
(``weighting: "impact"``) and records the settings (``impact``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from tilde.index.build import BuildJob, BuildSummary, ChunkEngine, Postings, _passage_ids, run_build, stop_id_mask
from tilde.index.format import Manifest
from tilde.io import Passage
from tilde.metering import Recorder
from tilde.text import TextProcessor

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_IMPACT_TOP_K", "PAD_BASE", "build_impact_index", "export_query_encoders", "impact_job",
           "impact_postings", "pad_width", "refresh_query_encoders"]

DEFAULT_IMPACT_TOP_K = 200


# The narrowest padded width of the model input (see pad_width).
PAD_BASE = 128
# Model input positions per forward pass (rows x padded width): bounds the memory of the MLM
# head's intermediate (about 0.5 GB at 4,096 positions for a 30,522-id vocabulary).
PASS_POSITIONS = 4096


def pad_width(n: int, max_length: int, padding: str = "buckets") -> int:
    """The padded width of a model input of ``n`` ids (special tokens included): with ``padding``
    "buckets" (indexes written since max_length 512 became the default) the smallest of 128, 256,
    512, ... that holds it, capped at ``max_length``; with "max_length" (older indexes) always
    ``max_length``. A width depends on the passage alone, never on what it is batched with."""
    if padding == "max_length":
        return max_length
    if padding != "buckets":
        raise ValueError(f"impact padding must be buckets or max_length, not {padding!r}")
    width = min(PAD_BASE, max_length)
    while width < n and width < max_length:
        width = min(2 * width, max_length)
    return width


def impact_postings(expander: Any, passages: Sequence[Sequence[int]], stop_mask: np.ndarray,
                    padding: str = "buckets") -> list[Postings]:
    """Per passage (WordPiece ids without special tokens): sorted stored ids (uint32) and their
    float16 impact weights, from one forward pass of ``expander`` (a :class:`MlmExpander`) over
    passages padded to their :func:`pad_width` (grouped by width, at most
    :data:`PASS_POSITIONS` positions a pass)."""
    if not passages:
        return []
    rows = [expander.input_ids(p) for p in passages]
    groups: dict[int, list[int]] = {}
    for r, row in enumerate(rows):
        groups.setdefault(pad_width(len(row), expander.max_length, padding), []).append(r)
    out: list[Postings | None] = [None] * len(rows)
    for width, members in sorted(groups.items()):
        step = max(1, PASS_POSITIONS // width)
        for start in range(0, len(members), step):
            part = members[start : start + step]
            for r, post in zip(part, _impact_pass(expander, [rows[r] for r in part], width, stop_mask)):
                out[r] = post
    return [p for p in out if p is not None]


def _impact_pass(expander: Any, rows: list[list[int]], width: int, stop_mask: np.ndarray) -> list[Postings]:
    """One forward pass over model inputs ``rows``, each padded to ``width``."""
    import torch

    input_ids = torch.full((len(rows), width), expander.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[r, : len(row)] = 1
    with torch.inference_mode():
        best, _ = expander.score(input_ids.to(expander.device), mask.to(expander.device))
        best = best.float()
        values, top = torch.topk(best, expander.top_k, dim=1)
        excluded = expander._bad.unsqueeze(0).repeat(len(rows), 1)
        excluded.scatter_(1, input_ids.to(expander.device), True)
        keep = ~excluded.gather(1, top) & (values > 0)
        weights = torch.log1p(torch.relu(best)).cpu().numpy()
    top_np, keep_np = top.cpu().numpy(), keep.cpu().numpy()
    out: list[Postings] = []
    for r, row in enumerate(rows):
        own = np.asarray(row[1:-1], dtype=np.int64)
        own = np.unique(own[~stop_mask[own]])
        ids = np.union1d(own, top_np[r][keep_np[r]].astype(np.int64))
        w16 = weights[r][ids].astype(np.float16)
        nz = w16 > 0
        out.append((ids[nz].astype(np.uint32), w16[nz]))
    return out


def _encoder_meta(folder: Path) -> dict[str, Any]:
    import json

    from tilde.encoders.spec import sha256_file

    meta_path = folder / "encoder.json"
    meta = json.loads(meta_path.read_text("utf-8")) if meta_path.is_file() else {}
    return {"kind": meta.get("kind"), "quantization": meta.get("quantization"),
            "sha256": sha256_file(folder / "model.onnx")}


def export_query_encoders(out: Path, model: str, dense_model: str | None, dense_int8: bool = False) -> dict[str, Any]:
    """Export (or keep, when already there with the same settings) the ONNX query encoders of an
    impact index into ``out/query/{mlm,dense}``; returns the manifest's ``query_encoders``."""
    import json

    from tilde.encoders.export import export_dense_encoder, export_mlm_query_encoder
    from tilde.index.writer import QUERY_DIR

    found: dict[str, Any] = {}
    targets: list[tuple[str, str, Any, bool]] = [("mlm", model, export_mlm_query_encoder, False)]
    if dense_model is not None:
        targets.append(("dense", dense_model, export_dense_encoder, dense_int8))
    for kind, source, export, quantize in targets:
        folder = out / QUERY_DIR / kind
        meta_path = folder / "encoder.json"
        current = json.loads(meta_path.read_text("utf-8")) if meta_path.is_file() else None
        if current is None or bool(current.get("quantization")) != quantize:  # a resumed build keeps an export
            export(source, folder, quantize=quantize)
        found[kind] = {"path": f"{QUERY_DIR}/{kind}", **_encoder_meta(folder)}
    return found


def refresh_query_encoders(index: Path, model: str, dense_model: str | None, dense_int8: bool = False,
                           scoring: Mapping[str, Any] | None = None) -> bool:
    """Bring a finished impact index's query side to these settings (its query encoders, e.g. an
    int8 dense one, and, when given, the scoring it recommends) without touching its postings or
    vectors; True when the manifest changed."""
    from dataclasses import replace

    from tilde.index.format import MANIFEST
    from tilde.io import atomic_write_text

    path = Path(index) / MANIFEST
    manifest = Manifest.from_json(path.read_text("utf-8"), str(path))
    found = export_query_encoders(Path(index), model, dense_model, dense_int8=dense_int8)
    rec = dict(scoring) if scoring is not None else manifest.scoring
    if dict(manifest.query_encoders or {}) == found and manifest.scoring == rec:
        return False
    from tilde.index.format import file_entries
    from tilde.index.writer import QUERY_DIR

    files = {k: v for k, v in dict(manifest.files or {}).items() if not k.startswith(QUERY_DIR + "/")}
    files.update(file_entries(Path(index), [QUERY_DIR]))
    atomic_write_text(path, replace(manifest, query_encoders=found, scoring=rec,
                                    files=dict(sorted(files.items()))).to_json())
    return True


def build_impact_index(
    model: str,
    collection: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    top_k: int = DEFAULT_IMPACT_TOP_K,
    max_length: int = 128,
    dense_model: str | None = None,
    dense_codec: str = "fp16",
    dense_max_length: int | None = None,
    query_encoders: bool = True,
    dense_query_int8: bool = False,
    scoring: Mapping[str, Any] | None = None,
    tokenizer: str | None = None,
    batch_size: int = 32,
    chunk_batches: int = 64,
    shard: tuple[int, int] = (0, 1),
    device: str = "cpu",
    dtype: str = "auto",
    weight_dtype: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
    recorder: Recorder | None = None,
    stop_after_chunks: int | None = None,
    command: str = "tilde build",
    engine: ChunkEngine | None = None,
) -> BuildSummary:
    """Index ``collection`` with the impact weights of the MLM ``model`` (and, with
    ``dense_model``, a bi-encoder vector per passage); resumable and shardable like
    :func:`tilde.index.build.build_index`. With ``query_encoders``, the ONNX query encoders the
    scoring modes need are exported into the index (``query/mlm``, ``query/dense``), so the
    query side needs nothing but the index directory."""
    factory = partial(impact_job, model, top_k=top_k, max_length=max_length, dense_model=dense_model,
                      dense_codec=dense_codec, dense_max_length=dense_max_length, query_encoders=query_encoders,
                      dense_query_int8=dense_query_int8, scoring=scoring, tokenizer=tokenizer, device=device,
                      dtype=dtype)
    job, text = factory()
    return run_build(job, text, collection, output, batch_size=batch_size, chunk_batches=chunk_batches,
                     shard=shard, weight_dtype=weight_dtype, overwrite=overwrite, progress=progress,
                     recorder=recorder, stop_after_chunks=stop_after_chunks, command=command, engine=engine,
                     job_factory=factory)


def impact_job(
    model: str,
    *,
    top_k: int = DEFAULT_IMPACT_TOP_K,
    max_length: int = 128,
    dense_model: str | None = None,
    dense_codec: str = "fp16",
    dense_max_length: int | None = None,
    query_encoders: bool = True,
    dense_query_int8: bool = False,
    scoring: Mapping[str, Any] | None = None,
    tokenizer: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
) -> tuple[BuildJob, TextProcessor]:
    """The impact build job (the models loaded on ``device``) and its tokenizer."""
    from tilde.expand.loading import load_expander
    from tilde.expand.mlm import MlmExpander

    expander = load_expander(model, "mlm", tokenizer=tokenizer, top_k=top_k, max_length=max_length,
                             device=device, dtype=dtype)
    assert isinstance(expander, MlmExpander)
    text = expander.text
    stop_mask = stop_id_mask(text)
    dense_enc = None
    if dense_model is not None:
        from tilde.encoders.dense_torch import DensePassageEncoder

        dense_enc = DensePassageEncoder(dense_model, device=device, max_length=dense_max_length)

    def encode_batch(batch: list[Passage], where: str) -> tuple[list[Postings], np.ndarray | None]:
        ids = [_passage_ids(p, text, text.vocab_size, where) for p in batch]
        postings = impact_postings(expander, ids, stop_mask)
        if dense_enc is None:
            return postings, None
        texts = [p.text for p in batch]
        if any(t is None for t in texts):
            raise ValueError(f"{where}: the dense pass needs passage text, but the collection holds token ids "
                             "(build from the raw collection, or pass --dense none)")
        return postings, dense_enc.encode([str(t) for t in texts], batch_size=len(texts))

    settings = expander.settings
    impact = {"model": settings.model, "model_sha256": settings.model_sha256, "top_k": top_k,
              "max_length": max_length, "padding": "buckets", "dtype": settings.dtype}
    identity: dict[str, Any] = {"weighting": "impact", **impact}
    dense_info: dict[str, Any] | None = None
    if dense_enc is not None:
        from tilde.encoders.spec import weights_sha256

        dense_info = {"model": str(dense_model), "model_sha256": weights_sha256(Path(dense_enc.spec.transformer_dir)),
                      "codec": dense_codec, "max_length": dense_enc.max_length, "pooling": dense_enc.spec.pooling,
                      "normalize": bool(dense_enc.spec.normalize)}
        identity["dense"] = dense_info
    manifest = Manifest(
        vocab_size=text.vocab_size,
        vocab_sha256=text.vocab_hash,
        model=str(model),
        model_sha256=settings.model_sha256,
        max_passage_tokens=max_length,
        weighting="impact",
        impact=impact,
        dense=dense_info,
        scoring=dict(scoring) if scoring else None,
    )

    def export_encoders(out: Path) -> Mapping[str, Any]:
        if not query_encoders:
            return {}
        return {"query_encoders": export_query_encoders(out, model, dense_model, dense_int8=dense_query_int8)}

    job = BuildJob(encode_batch, identity, manifest, before_finalize=export_encoders, dense_codec=dense_codec)
    return job, text


