"""Scoring modes: which signals score a candidate, and how they are fused.

========  =====================================================================================
mode      score of a candidate
========  =====================================================================================
tokens    TILDEv2: the sum of the stored weights of the query's WordPiece tokens (stop ids
          dropped, repeats counted). The reference semantics; no network at query time.
mlm       ``q . d`` over the stored tokens, ``q`` the impact model's own query vector (max over
          positions of log(1 + ReLU(logit)), from its ONNX query encoder): a weighted *and
          expanded* query. Only meaningful on an index whose weighting is "impact".
dense     the inner product of a bi-encoder's query vector with the row's stored vector.
fused     ``sum_s w_s * norm(s) / sum_s w_s`` over the signals ``s`` with a weight (tokens, mlm,
          dense, and ``first_stage``: the score the caller's first stage gave), ``norm`` the
          per-query min-max normalisation over the candidates (:mod:`tilde.rank.fusion`). A signal
          the caller cannot supply (no first-stage score) drops out and the others are renormalised.
          With ``dense_feedback`` (``docs``, ``weight``), the dense signal is then recomputed with
          the query vector moved towards its best candidates (Rocchio pseudo-relevance feedback:
          ``q' = q + weight * mean(v_1..v_docs)`` over the ``docs`` best candidates by the first
          fused score) and the candidates fused again. Written ``fused:...;dense_feedback=3:1``.
========  =====================================================================================

An index recommends one (``scoring`` in its manifest, written by the build from the recipe it
used); every entry point uses that unless told otherwise, and every result names its mode and
signals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FIRST_STAGE", "MODES", "SIGNALS", "Scoring", "parse_scoring"]

MODES = ("tokens", "mlm", "dense", "fused")
FIRST_STAGE = "first_stage"
SIGNALS = ("tokens", "mlm", "dense", FIRST_STAGE)
NORMALIZATIONS = ("minmax", "zscore")


@dataclass(frozen=True)
class Scoring:
    mode: str = "tokens"
    # Fusion weights by signal (mode "fused" only).
    weights: Mapping[str, float] = field(default_factory=dict)
    normalization: str = "minmax"
    # Logistic calibration by mode ({"fused": {"a", "b"}}): tilde.rank.calibration. Data of the
    # index, not part of the mode: two scorings that differ only here score alike.
    calibration: Mapping[str, Mapping[str, float]] = field(default_factory=dict, compare=False)
    # Dense pseudo-relevance feedback of a fused mode: {"docs": int >= 1, "weight": float > 0}.
    dense_feedback: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"scoring mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {self.normalization!r}")
        if self.mode == "fused":
            if not self.weights:
                raise ValueError("fused scoring needs weights, e.g. fused:mlm=0.3,dense=0.6,first_stage=0.1")
            for name, w in self.weights.items():
                if name not in SIGNALS:
                    raise ValueError(f"unknown signal {name!r} in fusion weights (known: {', '.join(SIGNALS)})")
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= float(w) < float("inf"):
                    raise ValueError(f"fusion weight of {name} must be a finite number >= 0, not {w!r}")
            if not any(float(w) > 0 for name, w in self.weights.items() if name != FIRST_STAGE):
                raise ValueError("fused scoring needs a positive weight on at least one index signal")
        elif self.weights:
            raise ValueError(f"mode {self.mode!r} takes no fusion weights")
        if self.dense_feedback:
            fb = self.dense_feedback
            docs, weight = fb.get("docs"), fb.get("weight")
            if (set(fb) != {"docs", "weight"} or type(docs) is not int or not 1 <= docs <= 1000
                    or isinstance(weight, bool) or not isinstance(weight, (int, float))
                    or not 0 < float(weight) < float("inf")):
                raise ValueError(f"dense_feedback must be {{\"docs\": 1..1000, \"weight\": > 0}}, not {dict(fb)!r}")
            if self.mode != "fused" or float(self.weights.get("dense", 0)) <= 0:
                raise ValueError("dense_feedback needs a fused mode with a positive dense weight")
        for name, params in self.calibration.items():
            if name not in MODES:
                raise ValueError(f"calibration: unknown mode {name!r} (known: {', '.join(MODES)})")
            if not isinstance(params, Mapping) or set(params) != {"a", "b"} or not all(
                    not isinstance(v, bool) and isinstance(v, (int, float)) and abs(float(v)) < float("inf")
                    for v in params.values()):
                raise ValueError(f"calibration of {name} must be {{\"a\": number, \"b\": number}}, not {params!r}")

    @property
    def signals(self) -> tuple[str, ...]:
        """The index signals this mode computes (the first-stage score comes from the caller)."""
        if self.mode != "fused":
            return (self.mode,)
        return tuple(s for s in SIGNALS if s != FIRST_STAGE and float(self.weights.get(s, 0)) > 0)

    @property
    def uses_first_stage(self) -> bool:
        return self.mode == "fused" and float(self.weights.get(FIRST_STAGE, 0)) > 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "fused":
            out["weights"] = {k: float(v) for k, v in self.weights.items()}
            out["normalization"] = self.normalization
        if self.dense_feedback:
            out["dense_feedback"] = {"docs": int(self.dense_feedback["docs"]),
                                     "weight": float(self.dense_feedback["weight"])}
        if self.calibration:
            out["calibration"] = {m: {"a": float(p["a"]), "b": float(p["b"])} for m, p in self.calibration.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "scoring") -> Scoring:
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: must be an object, not {data!r}")
        unknown = sorted(set(data) - {"mode", "weights", "normalization", "calibration", "dense_feedback"})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}")
        try:
            return cls(mode=data.get("mode", "tokens"), weights=dict(data.get("weights") or {}),
                       normalization=data.get("normalization", "minmax"),
                       calibration=dict(data.get("calibration") or {}),
                       dense_feedback=dict(data.get("dense_feedback") or {}))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def __str__(self) -> str:
        if self.mode != "fused":
            return self.mode
        out = "fused:" + ",".join(f"{k}={float(v):g}" for k, v in self.weights.items())
        if self.dense_feedback:
            out += f";dense_feedback={int(self.dense_feedback['docs'])}:{float(self.dense_feedback['weight']):g}"
        return out


def parse_scoring(spec: str, recommended: Scoring | None = None) -> Scoring:
    """A ``--mode`` value: ``tokens``, ``mlm``, ``dense``, ``fused`` (the recommended weights, when
    the index recommends fused scoring) or ``fused:mlm=0.3,dense=0.6,first_stage=0.1``."""
    s = spec.strip().lower()
    if s.startswith("fused:"):
        spec_weights, _, extra = s[len("fused:"):].partition(";")
        feedback: dict[str, float] = {}
        if extra:
            name, eq, value = extra.partition("=")
            docs, colon, weight = value.partition(":")
            if name.strip() != "dense_feedback" or not eq or not colon:
                raise ValueError(f"after ';' a fused mode takes dense_feedback=DOCS:WEIGHT, not {extra!r}")
            try:
                feedback = {"docs": int(docs), "weight": float(weight)}
            except ValueError:
                raise ValueError(f"dense_feedback=DOCS:WEIGHT takes an integer and a number, not {value!r}") from None
        weights: dict[str, float] = {}
        for part in spec_weights.split(","):
            name, eq, value = part.partition("=")
            if not eq:
                raise ValueError(f"fusion weights look like mlm=0.3,dense=0.6, not {part!r}")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"fusion weight {part!r} is not a number") from None
        return Scoring("fused", weights, dense_feedback=feedback)
    if s == "fused":
        if recommended is not None and recommended.mode == "fused":
            return recommended
        raise ValueError("mode 'fused' needs weights (this index recommends none): fused:mlm=0.3,dense=0.6,...")
    return Scoring(s)
