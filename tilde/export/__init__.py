"""Exporting a tilde index to search engines, so that the learned TILDEv2 weights serve as a
first stage past one machine:

* :mod:`tilde.export.anserini` -- Anserini ``JsonVectorCollection`` (integer impacts,
  :mod:`tilde.export.quantize`) and the Lucene impact index built from it, searched by
  :mod:`tilde.first_stage.impact`;
* :mod:`tilde.export.opensearch` -- bulk NDJSON with a ``rank_features`` field, the mapping, and
  the query bodies that reproduce the TILDEv2 score.

Importing this package loads neither Java nor torch.
"""

from tilde.export.anserini import build_impact_index, export_anserini
from tilde.export.opensearch import elasticsearch_query, escape_feature, export_opensearch, neural_sparse_query
from tilde.export.quantize import quantize
from tilde.export.source import ExportError, ExportSource

__all__ = [
    "ExportError",
    "ExportSource",
    "build_impact_index",
    "elasticsearch_query",
    "escape_feature",
    "export_anserini",
    "export_opensearch",
    "neural_sparse_query",
    "quantize",
]
