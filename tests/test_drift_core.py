"""core.drift and core.performance on small real frames: profiles, scores, period selection, the outcome join."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core import drift, performance
from airflow_mlops.core.evaluation import Evaluation


def _frame(n: int, seed: int, shift: float = 0.0, carriers=("UA", "AA", "DL", "B6")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "carrier": rng.choice(carriers, n, p=[0.4, 0.3, 0.2, 0.1][: len(carriers)] if len(carriers) == 4 else None),
            "distance": rng.lognormal(6.5, 0.5, n) + shift,
            "sched_hour": rng.integers(5, 23, n).astype(float),
            "temp": rng.normal(50, 15, n),
            drift.PREDICTION: rng.beta(2, 5, n),
        }
    )


@pytest.fixture(scope="module")
def profile() -> drift.ReferenceProfile:
    ref = _frame(20_000, seed=0)
    return drift.build_profile(
        ref,
        categorical=["carrier"],
        numeric=["distance", "sched_hour", "temp"],
        predictions=ref[drift.PREDICTION],
        bins=20,
    )


SETTINGS = drift.DriftSettings(method="psi", threshold=0.1, min_rows=100)


def test_profile_roundtrips_through_json(profile):
    again = drift.ReferenceProfile.from_dict(json.loads(profile.to_json()))
    assert again.to_dict() == profile.to_dict()
    assert abs(sum(profile.columns["distance"].shares) - 1) < 1e-9
    assert profile.columns["carrier"].categories[0] == "UA"


@pytest.mark.parametrize("method", drift.METHODS)
def test_same_distribution_does_not_drift(profile, method):
    result = drift.compare(profile, _frame(5_000, seed=1), drift.DriftSettings(method=method, threshold=0.1))
    assert result.drifted_columns == [], result.summary()
    assert result.prediction is not None and not result.prediction.drifted


@pytest.mark.parametrize(
    ("change", "column"),
    [
        pytest.param(lambda f: f.assign(distance=f["distance"] * 1.6), "distance", id="numeric-scaled"),
        pytest.param(lambda f: f.assign(temp=f["temp"] + 25), "temp", id="numeric-shifted"),
        pytest.param(
            lambda f: f.assign(carrier=np.where(np.arange(len(f)) % 2 == 0, "WN", f["carrier"])),
            "carrier",
            id="new-category",
        ),
        pytest.param(lambda f: f.assign(**{drift.PREDICTION: f[drift.PREDICTION] ** 0.3}), None, id="predictions"),
    ],
)
def test_a_planted_shift_is_detected_in_that_column_only(profile, change, column):
    result = drift.compare(profile, change(_frame(5_000, seed=2)), SETTINGS)
    if column is None:
        assert result.drifted_columns == [] and result.prediction.drifted
    else:
        assert result.drifted_columns == [column], result.summary()
        assert result.drift_share == pytest.approx(1 / 4)


def test_unseen_categories_and_missing_values_are_quality_issues(profile):
    cur = _frame(2_000, seed=3)
    cur.loc[:999, "temp"] = np.nan
    cur.loc[:499, "carrier"] = "ZZ"
    summary = drift.compare(profile, cur, SETTINGS).summary(0.1)
    assert any(i.startswith("temp: missing 50.0%") for i in summary["quality_issues"]), summary
    assert any(i.startswith("carrier: 25.0% values unseen") for i in summary["quality_issues"]), summary


def test_an_all_missing_column_counts_as_drifted(profile):
    cur = _frame(1_000, seed=4).assign(temp=np.nan)
    result = drift.compare(profile, cur, SETTINGS)
    assert "temp" in result.drifted_columns and result.columns["temp"].note == "no values"


def test_too_few_rows_are_flagged_not_judged(profile):
    assert not drift.compare(profile, _frame(50, seed=5), SETTINGS).enough_rows


def test_unknown_method_and_columns_are_refused(profile):
    with pytest.raises(ValueError, match="unknown drift method"):
        drift.DriftSettings(method="ks")
    with pytest.raises(ValueError, match="without a reference profile"):
        drift.compare(profile, _frame(10, seed=0).assign(x=1), SETTINGS, columns=["x"])


def test_the_period_is_the_flights_departure_not_the_wall_clock():
    log = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2026-11-25T10:00"] * 4, utc=True),
            "flight_id": ["20130301T05-UA-1", "20130331T23-UA-2", "20130401T00-UA-3", "20130215T10-UA-4"],
        }
    )
    picked = drift.select_period(log, pd.Timestamp("2013-03-01", tz="UTC"), pd.Timestamp("2013-04-01", tz="UTC"))
    assert picked["flight_id"].tolist() == ["20130301T05-UA-1", "20130331T23-UA-2"]
    # A logged scheduled departure wins over the hour in the id.
    log["input_scheduled_departure"] = pd.to_datetime(["2013-03-01T05:30", None, "2013-03-31T23:59", None], utc=True)
    picked = drift.select_period(log, pd.Timestamp("2013-03-01", tz="UTC"), pd.Timestamp("2013-04-01", tz="UTC"))
    assert picked["flight_id"].tolist() == ["20130301T05-UA-1", "20130331T23-UA-2", "20130401T00-UA-3"]


# -- performance ------------------------------------------------------------------------------------------------
def test_outcomes_use_the_feature_stage_flight_id_and_skip_cancelled():
    flights = pd.DataFrame(
        {
            "time_hour": pd.to_datetime(["2013-01-01T10:00Z", "2013-01-01T11:00Z", "2013-01-02T05:00Z"]),
            "carrier": ["ua", "AA", "DL"],
            "flight": [1545, 7, 9],
            "arr_delay": [20.0, 15.0, np.nan],
        }
    )
    out = performance.outcomes_from_flights(flights, threshold_minutes=15)
    assert out["flight_id"].tolist() == ["20130101T10-UA-1545", "20130101T11-AA-7"]
    assert out["is_late"].tolist() == [1, 0]


def test_join_keeps_the_newest_prediction_per_flight():
    log = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2026-01-01T00:00", "2026-01-01T00:05", "2026-01-01T00:01"], utc=True),
            "flight_id": ["A", "A", "B"],
            drift.PREDICTION: [0.1, 0.9, 0.5],
        }
    )
    joined = performance.join_outcomes(log, pd.DataFrame({"flight_id": ["A"], "is_late": [1]}))
    assert joined.frame[drift.PREDICTION].tolist() == [0.9]
    assert (joined.predictions, joined.unique_flights, joined.without_outcome) == (3, 2, 1)


@pytest.mark.parametrize(
    ("metric", "live", "holdout", "expected"),
    [("roc_auc", 0.70, 0.75, 0.05), ("log_loss", 0.55, 0.50, 0.05), ("brier", 0.15, 0.18, -0.03)],
)
def test_decay_is_positive_when_worse_whatever_the_direction(metric, live, holdout, expected):
    assert performance.decay({metric: live}, {metric: holdout}, [metric])[metric] == pytest.approx(expected)


def test_measure_compares_slices_big_enough_on_both_sides():
    rng = np.random.default_rng(0)
    n = 4_000
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame(
        {
            "carrier": np.where(np.arange(n) < 3_800, "UA", "AA"),
            "is_late": y,
            drift.PREDICTION: np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1),
        }
    )
    holdout = Evaluation(
        overall={"roc_auc": 0.99, "log_loss": 0.2, "brier": 0.05, "n": 10_000},
        slices={"carrier": {"UA": {"roc_auc": 0.99, "n": 5_000}, "AA": {"roc_auc": 0.99, "n": 100}}},
    )
    result = performance.measure(
        frame,
        drift.PREDICTION,
        label="is_late",
        threshold=0.5,
        holdout=holdout,
        settings=performance.PerformanceSettings(slice_columns=("carrier",), min_slice_size=300),
    )
    summary = result.summary()
    assert summary["decay"]["roc_auc"] > 0.05
    assert list(summary["slice_decay"]) == ["carrier=UA"]  # AA: too small on both sides
    assert summary["worst_slice_decay"]["roc_auc"]["slice"] == "carrier=UA"
