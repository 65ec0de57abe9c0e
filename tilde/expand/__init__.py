"""Passage expansion: expanders (TILDE v1, MLM/SPLADE-style) and the resumable, shardable job
that writes the expansion JSONL ``tilde index`` reads.

Importing this package imports torch (the ``[index]`` extra); the query path never does.
"""

from tilde.expand.base import DEFAULT_MAX_LENGTH, DEFAULT_TOP_K, Expander, Expansion, ExpansionSettings
from tilde.expand.job import ExpandSummary, expand_collection
from tilde.expand.loading import EXPANDER_KINDS, load_expander
from tilde.expand.mlm import MlmExpander
from tilde.expand.parts import JobMismatchError, PartStats
from tilde.expand.pipeline import PipelineSummary, build_pipeline
from tilde.expand.scan import DuplicatePidError, scan_collection
from tilde.expand.shards import ShardError, concat_shards
from tilde.expand.tilde_v1 import TildeExpander

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_TOP_K",
    "EXPANDER_KINDS",
    "DuplicatePidError",
    "ExpandSummary",
    "Expander",
    "Expansion",
    "ExpansionSettings",
    "JobMismatchError",
    "MlmExpander",
    "PartStats",
    "PipelineSummary",
    "ShardError",
    "TildeExpander",
    "build_pipeline",
    "concat_shards",
    "expand_collection",
    "load_expander",
    "scan_collection",
]
