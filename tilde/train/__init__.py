"""Training TILDEv2 models: supervised (the reference's loss), distillation from a SPLADE
teacher (scores over candidate lists, per-token passage weights), and the data preparation
that builds such training sets from unlabelled passages and query texts."""

from tilde.train.data import Group, PassageStore, TokenTargets, groups_from_qrels, read_groups
from tilde.train.losses import LOSSES, group_loss, token_loss
from tilde.train.scoring import exact_match_scores, group_scores
from tilde.train.teacher import SparseVectors, SpladeTeacher, splade_tiny_path
from tilde.train.trainer import MODES, TrainConfig, TrainSummary, train

__all__ = [
    "LOSSES",
    "MODES",
    "Group",
    "PassageStore",
    "SparseVectors",
    "SpladeTeacher",
    "TokenTargets",
    "TrainConfig",
    "TrainSummary",
    "exact_match_scores",
    "group_loss",
    "group_scores",
    "groups_from_qrels",
    "read_groups",
    "splade_tiny_path",
    "token_loss",
    "train",
]
