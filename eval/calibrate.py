"""Fit the calibrated score (a logistic on each mode's raw score) on a development set.

    python -m eval.calibrate --data ../shared/data/dl21 [--data ../shared/data/scifact --split train]

Each ``--data`` is a TREC DL folder (its BM25 top-100) or a BEIR folder (embedded BM25 top-100
of ``--split``), indexed with the default recipe (cached, as the evaluation scripts do). Every
judged candidate is one example: its score in a mode, and whether it is relevant (grade >= 2 on
TREC DL, >= 1 on BEIR). Prints, per mode, the fitted ``a`` and ``b``, the base rate, the Brier
score and the expected calibration error (10 equal-width bins) of the fitted probabilities, and
the ``calibration`` object to put into the recipe's scoring (tilde.models.DEFAULT_RECIPE). Never
pass a test set (DL19, SciFact test) here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["expected_calibration_error", "main"]


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Mean |fraction relevant - mean probability| over equal-width probability bins, weighted
    by the bins' sizes."""
    edges = np.minimum((p * bins).astype(np.int64), bins - 1)
    err = 0.0
    for b in range(bins):
        sel = edges == b
        if sel.any():
            err += sel.sum() * abs(float(y[sel].mean()) - float(p[sel].mean()))
    return err / max(1, p.size)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, help="TREC DL or BEIR folder (repeatable)")
    p.add_argument("--split", default="train", help="BEIR split (default train)")
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from tilde.models import DEFAULT_RECIPE
    from tilde.rank.calibration import calibrated_scores, fit_logistic
    from tilde.rank.scoring import Scoring

    from .tune_fusion import _signals, is_test_set

    recipe = Scoring.from_dict(DEFAULT_RECIPE.scoring)
    modes = ("tokens", "mlm", "dense", "fused")
    examples: dict[str, list[np.ndarray]] = {m: [] for m in modes}
    labels: list[np.ndarray] = []
    for d in args.data:
        data = Path(d)
        if is_test_set(data, args.split):
            print(f"eval.calibrate: error: {data.name} is a test set; fit on DL21 / SciFact train", file=sys.stderr)
            return 2
        cut = 2 if (data / "passages.tsv").is_file() else 1  # TREC DL's binary cut; BEIR's qrels are 0/1
        with tempfile.TemporaryDirectory() as tmp:
            cands, sig, qrels = _signals(data, args.split, ["tokens", "mlm", "dense", str(recipe)], args.cache_dir,
                                         Path(tmp) / "bm25")
        for qid, ids in cands.items():
            judged = qrels.get(qid, {})
            pos = [i for i, d in enumerate(ids) if d in judged and sig[qid]["_known"][i]]
            if not pos:
                continue
            for m in modes:  # fused: the recipe's scoring, as the re-ranker scores it
                examples[m].append(sig[qid][str(recipe) if m == "fused" else m][pos])
            labels.append(np.array([judged[ids[i]] >= cut for i in pos], dtype=np.float64))
    y = np.concatenate(labels)
    print(f"{y.size} judged candidates on {', '.join(Path(d).name for d in args.data)}; relevant {y.mean():.3f}")
    out = {}
    for m in modes:
        s = np.concatenate(examples[m])
        params = fit_logistic(s, y)
        prob = calibrated_scores(s, params)
        brier = float(np.mean((prob - y) ** 2))
        print(f"{m:<7} a={params['a']:.6g} b={params['b']:.6g}  brier={brier:.4f} "
              f"(base rate {float(np.mean((y.mean() - y) ** 2)):.4f})  ece={expected_calibration_error(prob, y):.4f}")
        out[m] = {"a": round(params["a"], 6), "b": round(params["b"], 6)}
    print("calibration: " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
