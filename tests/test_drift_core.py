"""core.drift and core.performance on small real frames: profiles, scores, period selection, batch rows, the outcome
join (from a use case's module file), classification and regression performance and their decay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core import drift, performance
from airflow_mlops.core.evaluation import Evaluation

ROOT = Path(__file__).resolve().parents[1]


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


def test_the_period_is_the_event_time_not_the_wall_clock():
    log = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2026-11-25T10:00"] * 4, utc=True),
            "row_id": ["20130301T05-a-1", "20130331T23-b-2", "20130401T00-c-3", "20130215T10-d-4"],
        }
    )
    march = pd.Timestamp("2013-03-01", tz="UTC"), pd.Timestamp("2013-04-01", tz="UTC")
    assert drift.select_period(log, *march).empty  # no event time, and no rule to read one from the id
    by_id = {"id_column": "row_id", "id_time_format": "%Y%m%dT%H"}
    assert drift.select_period(log, *march, **by_id)["row_id"].tolist() == ["20130301T05-a-1", "20130331T23-b-2"]
    # A logged event time (an input_* datetime column, found by itself) wins over the time in the id.
    log["input_when"] = pd.to_datetime(["2013-03-01T05:30", None, "2013-03-31T23:59", None], utc=True)
    picked = drift.select_period(log, *march, **by_id)
    assert picked["row_id"].tolist() == ["20130301T05-a-1", "20130331T23-b-2", "20130401T00-c-3"]
    assert drift.select_period(log, *march)["row_id"].tolist() == ["20130301T05-a-1", "20130401T00-c-3"]
    # Named explicitly, another column is read instead.
    log["when"] = pd.to_datetime(["2013-02-01", "2013-03-02", "2013-03-03", "2013-03-04"], utc=True)
    assert drift.select_period(log, *march, event_column="when")["row_id"].tolist() == [
        "20130331T23-b-2",
        "20130401T00-c-3",
        "20130215T10-d-4",
    ]


def test_the_batch_rows_come_from_the_partition_label_rows_and_id_keyed_views():
    labels = pd.DataFrame(
        {"row_id": ["a", "b", "c"], "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC"), "zone": ["n", "s", "n"]}
    ).assign(target=[1.0, 2.0, 3.0], zone_slot=["n@0", "s@0", "n@0"])
    by_id = pd.DataFrame({"row_id": ["c", "a", "z"], "x1": [30.0, 10.0, 99.0], "unused": [0, 0, 0]})
    by_slot = pd.DataFrame({"zone_slot": ["n@0", "s@0"], "x2": [5.0, 6.0]})
    files = {drift.LABELS_FILE: labels, "row_view": by_id, "zone_view": by_slot}
    out = drift.batch_frame(files, id_column="row_id", label="target", features=["zone", "x1", "x2"])
    assert list(out.columns) == ["row_id", "zone", "target", "x1"]  # x2 needs a point-in-time join: left out
    assert out["row_id"].tolist() == ["a", "b", "c"] and out["x1"].fillna(-1).tolist() == [10.0, -1, 30.0]
    assert drift.batch_frame({"row_view": by_id}, id_column="row_id", label="target", features=["x1"]) is None


def test_a_period_is_judged_on_its_traffic_else_on_its_batch(profile):
    columns = drift.MonitoredColumns(id="row_id", label="y", prediction=drift.PREDICTION)
    features = ["carrier", "distance", "sched_hour", "temp"]
    settings = drift.DriftSettings(min_rows=1_000)
    batch = _frame(3_000, seed=7).drop(columns=[drift.PREDICTION]).assign(distance=lambda f: f["distance"] * 2)
    assessed = drift.assess_period(profile, _frame(3_000, seed=6), batch, settings, features=features, columns=columns)
    summary = drift.period_summary(assessed, settings)
    assert (summary["status"], summary["source"], summary["drifted_columns"]) == ("ok", "traffic", [])
    assert summary["batch"]["drifted_columns"] == ["distance"]
    metrics = drift.summary_metrics(summary)
    assert metrics["drift_rows"] == 3_000 and set(metrics) >= {
        "drift_share",
        "drift_score.distance",
        "prediction_drift",
    }
    assert drift.report_columns(assessed, _Kinds(), drift.PREDICTION)["numeric"][-1] == drift.PREDICTION

    few = drift.assess_period(profile, _frame(100, seed=8), batch, settings, features=features, columns=columns)
    summary = drift.period_summary(few, settings)
    assert (summary["source"], summary["drifted_columns"], summary["rows"]) == ("batch", ["distance"], 3_000)
    assert summary["prediction_drift"] == summary["traffic"]["prediction_drift"] is not None  # still the traffic's

    empty = drift.assess_period(profile, _frame(0, seed=9), None, settings, features=features, columns=columns)
    assert drift.period_summary(empty, settings)["status"] == "no_data"


class _Kinds:
    categorical = ("carrier",)
    numeric = ("distance", "sched_hour", "temp")


def test_the_reference_sample_names_its_predictions_as_the_traffic_does():
    frame = _frame(2_000, seed=10).assign(row_id=lambda f: [f"r{i}" for i in range(len(f))], y=1, period="2024-01")

    class Config(_Kinds):
        features = [*_Kinds.categorical, *_Kinds.numeric]
        month_column = "period"

    columns = drift.MonitoredColumns(id="row_id", label="y", prediction="score")
    profile, sample = drift.build_reference(
        frame, frame[drift.PREDICTION].to_numpy(), config=Config(), columns=columns, settings=SETTINGS, sample_size=500
    )
    assert profile.prediction.name == "score" and profile.label_rate == 1.0
    assert list(sample.columns) == ["row_id", "y", "period", *Config.features, "score"] and len(sample) == 500


# -- outcomes ---------------------------------------------------------------------------------------------------
def _ctx(frames: dict[str, pd.DataFrame], **params):
    from airflow_mlops.usecase import FeatureContext

    return FeatureContext(period="2024-01", frames={"2024-01": frames}, params=params)


EVENTS = pd.DataFrame({"key": ["a", "b", "c", "d"], "value": [3.0, 12.0, None, 7.0]})


def test_outcomes_come_from_the_use_case_module_file(tmp_path):
    module = tmp_path / "usecase.py"
    module.write_text(
        "def outcomes(ctx):\n"
        "    events = ctx.current['events']\n"
        "    done = events[events['value'].notna()]\n"
        "    return done.assign(row_id=done['key'].str.upper(), big=(done['value'] > ctx.params['limit']).astype(int))\n"
    )
    out = performance.load_outcomes(module, _ctx({"events": EVENTS}, limit=5), id_column="row_id", label="big")
    assert out.to_dict("list") == {"row_id": ["A", "B", "D"], "big": [0, 1, 1]}


def test_without_outcomes_the_label_rows_are_the_outcomes(tmp_path):
    module = tmp_path / "rows.py"
    module.write_text(
        "def label_rows(ctx):\n"
        "    events = ctx.current['events']\n"
        "    return events.rename(columns={'key': 'row_id', 'value': 'y'}).assign(other=1)\n"
    )
    out = performance.load_outcomes(module, _ctx({"events": EVENTS}), id_column="row_id", label="y")
    assert out.to_dict("list") == {"row_id": ["a", "b", "d"], "y": [3.0, 12.0, 7.0]}  # no label: no outcome


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        pytest.param("x = 1\n", "UserCodeError", "no function label_rows", id="neither-function"),
        pytest.param("def outcomes(ctx, extra):\n    pass\n", "UserCodeError", "1 positional", id="wrong-arity"),
        pytest.param("def outcomes(ctx):\n    return [1]\n", "OutcomesError", "DataFrame, not list", id="not-a-frame"),
        pytest.param(
            "import pandas as pd\ndef outcomes(ctx):\n    return pd.DataFrame({'row_id': ['a']})\n",
            "OutcomesError",
            "no column y",
            id="no-label",
        ),
        pytest.param(
            "import pandas as pd\ndef outcomes(ctx):\n    return pd.DataFrame({'row_id': ['a', 'a'], 'y': [1, 0]})\n",
            "OutcomesError",
            "1 ids twice, e.g. a",
            id="id-twice",
        ),
    ],
)
def test_a_broken_outcomes_module_is_named_in_the_error(tmp_path, body, error, match):
    from airflow_mlops.usecase import UserCodeError

    module = tmp_path / "broken.py"
    module.write_text(body)
    expected = {"UserCodeError": UserCodeError, "OutcomesError": performance.OutcomesError}[error]
    with pytest.raises(expected, match=match) as raised:
        performance.load_outcomes(module, _ctx({}), id_column="row_id", label="y")
    assert "broken.py" in str(raised.value)


@pytest.mark.skipif(not (ROOT / "examples" / "flight_delay" / "usecase.py").exists(), reason="no flight example")
def test_the_flight_example_outcomes_use_the_feature_stage_id_and_skip_cancelled():
    flights = pd.DataFrame(
        {
            "time_hour": pd.to_datetime(["2013-01-01T10:00Z", "2013-01-01T11:00Z", "2013-01-02T05:00Z"]),
            "minute": [15, 0, 30],
            "carrier": ["ua", "AA", "DL"],
            "flight": [1545, 7, 9],
            "origin": ["EWR", "JFK", "LGA"],
            "dest": ["IAH", "MIA", "ATL"],
            "arr_delay": [20.0, 15.0, np.nan],
        }
    )
    module = ROOT / "examples" / "flight_delay" / "usecase.py"
    ctx = _ctx({"flights": flights}, threshold_minutes=15)
    out = performance.load_outcomes(module, ctx, id_column="flight_id", label="is_late")
    assert sorted(zip(out["flight_id"], out["is_late"], strict=True)) == [
        ("20130101T10-UA-1545", 1),
        ("20130101T11-AA-7", 0),
    ]


def test_join_keeps_the_newest_prediction_per_id():
    log = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2026-01-01T00:00", "2026-01-01T00:05", "2026-01-01T00:01"], utc=True),
            "row_id": ["A", "A", "B"],
            drift.PREDICTION: [0.1, 0.9, 0.5],
        }
    )
    joined = performance.join_outcomes(log, pd.DataFrame({"row_id": ["A"], "y": [1]}), id_column="row_id", label="y")
    assert joined.frame[drift.PREDICTION].tolist() == [0.9] and joined.frame["y"].dtype == "int64"
    assert (joined.predictions, joined.unique_ids, joined.without_outcome) == (3, 2, 1)
    values = performance.join_outcomes(
        log, pd.DataFrame({"row_id": ["A", "B"], "y": [1.5, 2.0]}), id_column="row_id", label="y"
    )
    assert values.frame["y"].tolist() == [2.0, 1.5] and values.frame["y"].dtype == "float64"  # a regression label


# -- performance ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("metric", "live", "holdout", "expected"),
    [
        ("roc_auc", 0.70, 0.75, 0.05),
        ("log_loss", 0.55, 0.50, 0.05),
        ("brier", 0.15, 0.18, -0.03),
        ("rmse", 2.5, 2.0, 0.5),
        ("mae", 1.0, 1.5, -0.5),
        ("r2", 0.6, 0.8, 0.2),
    ],
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


def test_settings_take_the_task_metrics_and_refuse_another_task_metrics():
    assert performance.PerformanceSettings.from_config({}, task="regression").metrics == ("rmse", "mae", "r2")
    assert performance.PerformanceSettings.from_config({"performance": {"slice_columns": ["zone"]}}).slice_columns == (
        "zone",
    )
    with pytest.raises(ValueError, match="unknown regression metrics"):
        performance.PerformanceSettings.from_config({"performance": {"metrics": ["roc_auc"]}}, task="regression")
    with pytest.raises(ValueError, match="unknown task"):
        performance.PerformanceSettings(task="ranking")


def _regression_frame(n: int, seed: int, noise: dict[str, float]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    zone = np.where(np.arange(n) % 4 == 0, "east", "west")
    y = rng.normal(10, 3, n)
    scale = pd.Series(zone).map(noise).to_numpy()
    return pd.DataFrame({"zone": zone, "y": y, "score": y + rng.normal(0, 1, n) * scale})


def test_regression_performance_is_rmse_mae_r2_overall_and_per_slice():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    settings = performance.PerformanceSettings(
        task="regression", metrics=("rmse", "mae", "r2"), slice_columns=("zone",), min_rows=100, min_slice_size=100
    )
    holdout_frame = _regression_frame(4_000, seed=1, noise={"east": 1.0, "west": 1.0})
    holdout = performance.evaluate_regression(holdout_frame, holdout_frame["score"], label="y", slices=["zone"])
    live_frame = _regression_frame(4_000, seed=2, noise={"east": 3.0, "west": 1.0})  # the east got worse
    result = performance.measure(live_frame, "score", label="y", threshold=None, holdout=holdout, settings=settings)

    y, p = live_frame["y"], live_frame["score"]
    rmse = float(np.sqrt(mean_squared_error(y, p)))
    assert result.live.overall["rmse"] == pytest.approx(rmse)
    assert result.live.overall["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert result.live.overall["r2"] == pytest.approx(r2_score(y, p))
    assert result.decay["rmse"] == pytest.approx(rmse - holdout.overall["rmse"]) and result.decay["rmse"] > 0
    assert result.decay["r2"] == pytest.approx(holdout.overall["r2"] - r2_score(y, p)) and result.decay["r2"] > 0
    summary = result.summary()
    assert summary["worst_slice_decay"]["rmse"]["slice"] == "zone=east"
    assert result.slice_decay["zone=west"]["rmse"] == pytest.approx(
        result.live.slices["zone"]["west"]["rmse"] - holdout.slices["zone"]["west"]["rmse"]
    )
    assert result.slice_decay["zone=east"]["rmse"] > 1 > abs(result.slice_decay["zone=west"]["rmse"])
    metrics = result.metrics()
    assert metrics["live_rows"] == 4_000 and metrics["decay_rmse"] == pytest.approx(result.decay["rmse"])
    assert metrics["worst_slice_decay_rmse"] == summary["worst_slice_decay"]["rmse"]["decay"]


def test_regression_r2_is_undefined_on_a_constant_label():
    out = performance.regression_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 4.0])
    assert out["r2"] is None and out["mae"] == pytest.approx(1.0) and out["rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert performance.regression_metrics([], [])["rmse"] is None


def test_the_holdout_rows_of_the_reference_sample():
    sample = pd.DataFrame({"period": ["2024-01", "2024-02", "2024-02"], "y": [1, 0, 1]})
    rows = performance.holdout_rows(sample, ["2024-02"], period_column="period", label="y")
    assert rows["y"].tolist() == [0, 1]
    assert performance.holdout_rows(sample, [], period_column="period", label="y") is None
    assert performance.holdout_rows(sample, ["2023-12"], period_column="period", label="y") is None


def test_assess_reads_the_logged_threshold_and_reports_a_missing_holdout():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 600)
    log = pd.DataFrame(
        {"row_id": [f"r{i}" for i in range(600)], "p": np.clip(y * 0.4 + rng.random(600) * 0.6, 0, 1)}
    ).assign(threshold=[0.5] * 599 + [0.7])
    joined = performance.join_outcomes(
        log, pd.DataFrame({"row_id": log["row_id"], "y": y}), id_column="row_id", label="y"
    )
    columns = drift.MonitoredColumns(id="row_id", label="y", prediction="p")
    settings = performance.PerformanceSettings(min_rows=100)
    result, summary = performance.assess(
        joined, log, columns=columns, default_threshold=0.35, holdout=None, settings=settings
    )
    assert (summary["status"], summary["threshold"], summary["rows"]) == ("no_holdout", 0.7, 600)
    assert "no hold-out" in summary["reason"] and summary["decay"] == {"roc_auc": None, "log_loss": None, "brier": None}
    assert result.live.threshold == 0.7 and result.live.overall["roc_auc"] > 0.7
    regression = drift.MonitoredColumns(id="row_id", label="y", prediction="p", task="regression")
    _, summary = performance.assess(
        joined,
        log,
        columns=regression,
        default_threshold=0.35,
        holdout={"overall": {"rmse": 0.1, "mae": 0.1, "r2": 0.9}},
        settings=performance.PerformanceSettings(task="regression", metrics=("rmse", "mae", "r2")),
    )
    assert summary["status"] == "ok" and summary["threshold"] is None and summary["decay"]["rmse"] > 0
