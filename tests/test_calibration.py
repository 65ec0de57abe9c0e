"""The calibrated score: the logistic, its fit, and which scorings it applies to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tilde.rank.calibration import calibrated_scores, calibration_for, fit_logistic
from tilde.rank.scoring import Scoring


def test_calibrated_scores_is_the_logistic_without_overflow() -> None:
    s = np.array([-1e6, -3.0, 0.0, 2.5, 1e6])
    p = calibrated_scores(s, {"a": 2.0, "b": -1.0})
    with np.errstate(over="ignore"):
        naive = 1 / (1 + np.exp(-(2.0 * s - 1.0)))
    np.testing.assert_allclose(p, naive, rtol=1e-12, atol=0)
    assert np.isfinite(p).all() and (np.diff(p) >= 0).all()


def test_fit_recovers_the_generating_logistic() -> None:
    rng = np.random.default_rng(7)
    s = rng.normal(0, 2, 200_000)
    y = (rng.random(s.size) < calibrated_scores(s, {"a": 1.5, "b": -0.7})).astype(np.float64)
    fit = fit_logistic(s, y)
    assert fit["a"] == pytest.approx(1.5, abs=0.03)
    assert fit["b"] == pytest.approx(-0.7, abs=0.03)


def test_fit_on_separable_data_stays_finite_and_ordered() -> None:
    fit = fit_logistic(np.array([0.0, 0.1, 0.9, 1.0]), np.array([0, 0, 1, 1]))
    assert np.isfinite(list(fit.values())).all() and fit["a"] > 0


@pytest.mark.parametrize("labels", [np.array([0, 2]), np.array([])])
def test_fit_refuses_bad_labels(labels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        fit_logistic(np.zeros(labels.size), labels)


def test_calibration_applies_only_to_the_fusion_it_was_fitted_for() -> None:
    rec = Scoring("fused", {"mlm": 0.5, "dense": 0.5},
                  calibration={"fused": {"a": 3, "b": -2}, "mlm": {"a": 1, "b": 0}})
    assert calibration_for(rec, rec) == {"a": 3, "b": -2}
    assert calibration_for(rec, Scoring("mlm")) == {"a": 1, "b": 0}
    assert calibration_for(rec, Scoring("fused", {"mlm": 0.4, "dense": 0.6})) is None
    assert calibration_for(rec, Scoring("dense")) is None


def test_scoring_round_trips_calibration_and_refuses_bad_params() -> None:
    rec = Scoring("fused", {"mlm": 1.0}, calibration={"fused": {"a": 3.0, "b": -2.0}})
    assert Scoring.from_dict(rec.to_dict()).calibration == rec.calibration
    assert rec == Scoring("fused", {"mlm": 1.0})  # calibration is data, not part of the mode
    for bad in ({"fused": {"a": 1}}, {"nope": {"a": 1, "b": 2}}, {"mlm": {"a": float("nan"), "b": 0}}):
        with pytest.raises(ValueError):
            Scoring.from_dict({"mode": "mlm", "calibration": bad})


def test_fused_calibration_needs_the_same_dense_feedback() -> None:
    rec = Scoring("fused", {"dense": 1.0}, calibration={"fused": {"a": 1, "b": 0}},
                  dense_feedback={"docs": 3, "weight": 1.0})
    assert calibration_for(rec, Scoring("fused", {"dense": 1.0}, dense_feedback={"docs": 3, "weight": 1.0}))
    assert calibration_for(rec, Scoring("fused", {"dense": 1.0})) is None


def test_eval_calibrate_refuses_test_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eval.calibrate import main

    (tmp_path / "dl19").mkdir()
    (tmp_path / "dl19" / "passages.tsv").write_text("1\tx\n")
    (tmp_path / "scifact").mkdir()
    assert main(["--data", str(tmp_path / "dl19")]) == 2
    assert main(["--data", str(tmp_path / "scifact"), "--split", "test"]) == 2
    assert "is a test set" in capsys.readouterr().err


def test_expected_calibration_error() -> None:
    from eval.calibrate import expected_calibration_error

    p = np.array([0.05] * 20 + [0.95] * 20)
    y = np.array([1] + [0] * 19 + [1] * 19 + [0], dtype=np.float64)  # 5% and 95% relevant: calibrated
    assert expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(np.full(10, 0.9), np.zeros(10)) == pytest.approx(0.9)
