"""``tilde export opensearch``: a tilde index as bulk NDJSON for OpenSearch / Elasticsearch, with
a ``rank_features`` field of token -> weight, the index mapping, and the query bodies that
reproduce the TILDEv2 score.

Files::

    mapping.json           {"mappings": {"properties": {"id": keyword, FIELD: rank_features}}}
    bulk-00000.ndjson[.gz] {"index": {"_index": NAME, "_id": ID}}
                           {"id": ID, FIELD: {"token": weight, ...}}
    tokenizer.json         the index's tokenizer (queries are tokenised with it)
    manifest.json          format "tilde-opensearch", source index, counts, field and escaping rule

Weights are written as the shortest decimal that reads back as the stored float (``repr`` of the
float16 value, or of the float32 ``q * scale`` of a uint8 index), so the exported map holds
exactly the weights the re-ranker scores with. Zero weights are left out (``rank_features``
accepts only positive values; a zero adds nothing to a score).

**Feature names.** Elasticsearch refuses dots in ``rank_features`` feature names (elastic/
elasticsearch#93756: a dot would read as an object path, and ``rank_feature`` queries address a
feature as ``FIELD.feature``). WordPiece pieces such as ``##.`` do contain dots, so every feature
name is escaped, injectively: ``%`` becomes ``%25``, then ``.`` becomes ``%2E``. Every other
token is written unchanged. Query bodies apply the same rule (:func:`escape_feature`).

**Scoring.** OpenSearch's ``neural_sparse`` query with ``query_tokens`` ORs one
``FeatureField.newLinearQuery(field, token, weight)`` per token (opensearch-project/
neural-search, ``NeuralSparseQueryBuilder.doToQuery``), i.e. ``score = sum weight * S``;
Elasticsearch's ``rank_feature`` query with the ``linear`` function scores ``boost * S``, summed
by a ``bool``/``should``. With the query tokens counted (a repeated token weighs its count, as
the re-ranker sums over non-de-duplicated tokens), both give ``sum over query tokens of S``:
the TILDEv2 score. ``S`` is the *indexed* value, which Lucene's ``FeatureField`` keeps to 9
significant bits (the float's top 16 bits; :func:`feature_value` reproduces it), so engine
scores equal the re-ranker's to within 2**-8 relative per token, and exactly in
:func:`score_from_doc` over the exported weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from tilde.export.output import ExportSummary, Progress, output_dir, write_manifest
from tilde.export.source import ExportError, ExportSource
from tilde.io import open_text
from tilde.text import TextProcessor

__all__ = [
    "OPENSEARCH_FORMAT",
    "elasticsearch_query",
    "escape_feature",
    "export_opensearch",
    "feature_value",
    "mapping",
    "neural_sparse_query",
    "query_token_counts",
    "score_from_doc",
    "unescape_feature",
]

OPENSEARCH_FORMAT = "tilde-opensearch"
DEFAULT_FIELD = "tilde"
DEFAULT_INDEX_NAME = "tilde"
MAX_ID_BYTES = 512  # Elasticsearch and OpenSearch refuse longer _id values


def escape_feature(token: str) -> str:
    """A token as a rank_features feature name: ``%`` -> ``%25``, then ``.`` -> ``%2E``."""
    return token.replace("%", "%25").replace(".", "%2E")


def unescape_feature(name: str) -> str:
    return name.replace("%2E", ".").replace("%25", "%")


def mapping(field: str = DEFAULT_FIELD) -> dict[str, Any]:
    """The index mapping (``PUT /NAME`` body): docid as keyword, weights as rank_features."""
    return {"mappings": {"properties": {"id": {"type": "keyword"}, field: {"type": "rank_features"}}}}


def _check_name(value: str, what: str) -> None:
    if not value or "." in value or value.startswith("_") or value != value.strip():
        raise ExportError(f"{what} {value!r}: must be non-empty, without dots, surrounding spaces or a leading _")


def _write_rows(f: IO[Any], source: ExportSource, lo: int, hi: int, name: str, field: str,
                features: list[str], summary: ExportSummary, bar: Progress) -> None:
    head_name = json.dumps(name)
    fld = json.dumps(field)
    for block in source.blocks(lo, hi):
        keep = block.weights > 0
        summary.dropped += int((~keep).sum())
        # repr of a Python float: the shortest decimal that reads back as the same double, and
        # float16 / float32 values are doubles exactly.
        values = block.weights.astype(np.float64)
        lines = []
        for i, docid in enumerate(block.docids):
            if len(docid.encode("utf-8")) > MAX_ID_BYTES:
                raise ExportError(f"docid {docid[:40]!r}... is longer than {MAX_ID_BYTES} bytes, the _id limit")
            a, b = int(block.offsets[i]), int(block.offsets[i + 1])
            k = keep[a:b]
            ids = block.tokens[a:b][k].tolist()
            ws = values[a:b][k].tolist()
            if not ids:
                summary.empty += 1
            summary.postings += len(ids)
            did = json.dumps(docid, ensure_ascii=False)
            body = ", ".join(f"{features[t]}: {w!r}" for t, w in zip(ids, ws))
            lines.append(f'{{"index": {{"_index": {head_name}, "_id": {did}}}}}\n'
                         f'{{"id": {did}, {fld}: {{{body}}}}}\n')
        f.write("".join(lines))
        summary.passages += len(block.docids)
        bar.update(len(block.docids))


def export_opensearch(
    index: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    index_name: str = DEFAULT_INDEX_NAME,
    field: str = DEFAULT_FIELD,
    docs_per_file: int = 10_000,
    gzip: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportSummary:
    """Write bulk NDJSON files (``docs_per_file`` documents each, for bulk requests of a few MB)
    plus ``mapping.json`` into ``output``, atomically."""
    _check_name(field, "field name")
    if not index_name or index_name != index_name.lower() or any(c in index_name for c in ' "*\\<|,>/?#:'):
        raise ExportError(f"index name {index_name!r}: must be lowercase, without spaces or any of \"*\\<|,>/?#:")
    if docs_per_file < 1:
        raise ExportError(f"--docs-per-file must be at least 1, not {docs_per_file}")
    source = ExportSource.open(index)
    features = [json.dumps(escape_feature(t), ensure_ascii=False) for t in source.vocab]
    summary = ExportSummary("OpenSearch bulk NDJSON", Path(output))
    bar = Progress(len(source), progress)
    try:
        with output_dir(output, overwrite) as tmp:
            suffix = ".ndjson.gz" if gzip else ".ndjson"
            n = len(source)
            starts = list(range(0, n, docs_per_file)) or [0]
            for s, lo in enumerate(starts):
                with open_text(tmp / f"bulk-{s:05d}{suffix}", "wt") as f:
                    _write_rows(f, source, lo, min(lo + docs_per_file, n), index_name, field, features, summary, bar)
            summary.files = len(starts)
            summary.bytes_written = sum(p.stat().st_size for p in tmp.iterdir())
            (tmp / "mapping.json").write_text(json.dumps(mapping(field), indent=2) + "\n", encoding="utf-8")
            shutil.copyfile(source.index.tokenizer_path, tmp / "tokenizer.json")
            write_manifest(tmp, {
                "format": OPENSEARCH_FORMAT, "format_version": 1, "index_name": index_name, "field": field,
                "feature_escaping": "'%' -> '%25', then '.' -> '%2E'", "source_index": source.identity(),
                "num_docs": summary.passages, "num_postings": summary.postings,
                "dropped_postings": summary.dropped, "empty_docs": summary.empty, "files": summary.files,
                "gzip": gzip,
            })
    finally:
        bar.close()
    return summary.finish()


# --------------------------------------------------------------------------------------------
# the query side


def query_token_counts(text: str, processor: TextProcessor) -> dict[str, int]:
    """The re-ranker's query tokens (WordPiece, stop ids dropped, not de-duplicated) as
    ``{token: count}`` in first-occurrence order."""
    vocab = processor.vocab
    return dict(Counter(vocab[int(i)] for i in processor.query_ids(text)))


def neural_sparse_query(text: str, processor: TextProcessor, field: str = DEFAULT_FIELD,
                        size: int = 1000) -> dict[str, Any]:
    """OpenSearch search body: ``neural_sparse`` with ``query_tokens`` = token counts, which
    scores ``sum over query tokens of the passage's weight``: the TILDEv2 score."""
    tokens = {escape_feature(t): float(c) for t, c in query_token_counts(text, processor).items()}
    if not tokens:  # only stop words: TILDEv2 scores every passage 0; match nothing
        return {"size": size, "query": {"match_none": {}}}
    return {"size": size, "query": {"neural_sparse": {field: {"query_tokens": tokens}}}}


def elasticsearch_query(text: str, processor: TextProcessor, field: str = DEFAULT_FIELD,
                        size: int = 1000) -> dict[str, Any]:
    """Elasticsearch (or OpenSearch) search body: a ``bool``/``should`` of ``rank_feature``
    queries with the ``linear`` function, each boosted by its token's count."""
    counts = query_token_counts(text, processor)
    if not counts:
        return {"size": size, "query": {"match_none": {}}}
    should = [{"rank_feature": {"field": f"{field}.{escape_feature(t)}", "linear": {}, "boost": float(c)}}
              for t, c in counts.items()]
    return {"size": size, "query": {"bool": {"should": should}}}


def feature_value(weight: float | np.ndarray) -> np.ndarray:
    """The value Lucene's ``FeatureField`` indexes for ``weight``: the float32's top 16 bits
    (``Float.floatToIntBits(w) >>> 15`` as the term frequency), i.e. truncated to 9 significant
    bits. This is the ``S`` that rank_feature / neural_sparse scores multiply."""
    bits = np.asarray(weight, dtype=np.float32).view(np.uint32)
    return ((bits >> np.uint32(15)) << np.uint32(15)).view(np.float32)


def score_from_doc(doc_features: Mapping[str, float], token_counts: Mapping[str, int],
                   engine: bool = False) -> float:
    """The score a search body built above gives one exported document: ``sum count * weight``
    over the query tokens, in float64 (``engine``: with the values Lucene indexes,
    :func:`feature_value`; Lucene itself sums in float32, so its score may differ by an ulp)."""
    total = 0.0
    for t, c in token_counts.items():
        w = doc_features.get(escape_feature(t))
        if w is not None:
            total += c * (float(feature_value(w)) if engine else float(w))
    return total
