"""The monitoring window (``monitoring.window_periods``): a check of period p covers the window of periods ending
with p — its interval, its traffic, its batch rows and its outcomes. Core functions, then the operators' reads on a
real lake (tmp) with the seattle_weather example's own functions (daily batches, one row a day); no MLflow (the
champion is not needed to read a window).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from airflow_mlops.core import drift, performance
from airflow_mlops.core.batches import period_bounds
from airflow_mlops.core.drift import MonitoredColumns

from conftest import ROOT
from features_fixtures import seed_validated

SEATTLE = ROOT / "examples" / "seattle_weather"
COLUMNS = MonitoredColumns(id="day_id", label="temp_max_next", task="regression")


# -- core ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("period", "size", "periods", "start", "end"),
    [
        ("2013-03-05", 3, ("2013-03-03", "2013-03-04", "2013-03-05"), datetime(2013, 3, 3), datetime(2013, 3, 6)),
        ("2013-03-01", 2, ("2013-02-28", "2013-03-01"), datetime(2013, 2, 28), datetime(2013, 3, 2)),
        ("2013-03", 3, ("2013-01", "2013-02", "2013-03"), datetime(2013, 1, 1), datetime(2013, 4, 1)),
        ("2013-01", 2, ("2012-12", "2013-01"), datetime(2012, 12, 1), datetime(2013, 2, 1)),
    ],
)
def test_a_window_is_the_periods_ending_with_the_period_and_their_interval(period, size, periods, start, end):
    window = drift.monitoring_window(period, size)
    assert (window.period, window.periods) == (period, periods)
    assert (window.start, window.end) == (start.replace(tzinfo=UTC), end.replace(tzinfo=UTC))
    # The start is the oldest period's start; the end is the checked period's end.
    assert window.start == period_bounds(periods[0])[0] and window.end == period_bounds(period)[1]


def test_a_window_of_one_is_the_period_alone():
    window = drift.monitoring_window("2013-03-05")
    assert window.periods == ("2013-03-05",) and (window.start, window.end) == period_bounds("2013-03-05")
    assert drift.window_size({}) == 1 and drift.window_size({"window_periods": None}) == 1
    assert drift.window_size({"window_periods": 28}) == 28 and drift.window_size({"window_periods": "7"}) == 7


@pytest.mark.parametrize("value", [0, -2, 2.5, "a week", True, [3]])
def test_a_bad_window_names_the_key(value):
    with pytest.raises(ValueError, match="monitoring.window_periods"):
        drift.window_size({"window_periods": value})


def test_window_outcomes_concatenate_the_periods_in_order_and_keep_the_newest_outcome():
    parts = {
        "2013-03-05": pd.DataFrame({"day_id": ["c", "a"], "temp_max_next": [3.0, 10.0]}),
        "2013-03-03": pd.DataFrame({"day_id": ["a"], "temp_max_next": [1.0], "other": ["x"]}),
        "2013-03-04": pd.DataFrame({"day_id": ["b"], "temp_max_next": [2.0]}),
    }
    out = performance.window_outcomes(parts, id_column="day_id", label="temp_max_next")
    # Period order (03-03, 03-04, 03-05); "a" known twice: the later period's outcome (a correction) wins.
    assert out.to_dict("records") == [
        {"day_id": "b", "temp_max_next": 2.0},
        {"day_id": "c", "temp_max_next": 3.0},
        {"day_id": "a", "temp_max_next": 10.0},
    ]
    assert performance.window_outcomes({}, id_column="day_id", label="temp_max_next") is None


def test_window_batch_rows_concatenate_the_partitions_label_rows():
    def partition(ids: list[str], month: int) -> dict[str, pd.DataFrame]:
        return {"labels": pd.DataFrame({"day_id": ids, "month": [month] * len(ids), "temp_max_next": [1.0] * len(ids)})}

    parts = {
        "2013-03-04": partition(["b"], 3),
        "2013-03-03": partition(["a"], 3),
        "2013-03-05": {"view": pd.DataFrame()},
    }
    out = drift.window_batch_frame(parts, id_column="day_id", label="temp_max_next", features=["month"])
    assert out["day_id"].tolist() == ["a", "b"] and list(out.columns) == ["day_id", "month", "temp_max_next"]
    assert drift.window_batch_frame({}, id_column="day_id", label="temp_max_next", features=["month"]) is None


# -- the operators' reads ----------------------------------------------------------------------------------------
def _published(day: str) -> dict[str, pd.DataFrame]:
    """The day's batch as validated/ publishes it (the CSV read, ``date`` parsed as UTC, derived columns dropped)."""
    from airflow_mlops.core import validation
    from airflow_mlops.usecase import load_function

    module = SEATTLE / "usecase.py"
    frame = load_function(module, "demo_batches", arity=1)(day)["observations.csv"]
    read, _ = validation.read_frame_tolerant(frame.to_csv(index=False).encode(), "observations.csv")
    prepare = load_function(module, "prepare_validation", arity=1)
    prepared = validation.prepare_batch({"observations": read}, prepare, {"observations": "date"})
    return {name: validation.published_frame(f) for name, f in prepared.items()}


@pytest.fixture
def window_yaml(tmp_path) -> Path:
    """The seattle example's monitoring section with a window of three days."""
    import yaml

    from airflow_mlops.usecase import config

    monitoring = dict(config.load(SEATTLE).monitoring)
    monitoring["window_periods"] = 3
    path = tmp_path / "monitoring.yaml"
    path.write_text(yaml.safe_dump(monitoring))
    return path


def _op(cls, lake, **kwargs):
    return cls(task_id="check", usecase=str(SEATTLE), lake_root=lake.root_url, **kwargs)


def test_the_example_checks_a_window_of_28_days(lake):
    from airflow_mlops.operators.performance_check import PerformanceCheckOperator

    op = _op(PerformanceCheckOperator, lake)
    assert op.window_periods == 28
    window = op.window("2013-03-05")
    assert len(window.periods) == 28 and window.periods[0] == "2013-02-06" and window.periods[-1] == "2013-03-05"
    assert (window.start, window.end) == (datetime(2013, 2, 6, tzinfo=UTC), datetime(2013, 3, 6, tzinfo=UTC))


def test_a_bad_window_fails_the_check_without_retry(lake, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.operators.drift_check import DriftCheckOperator

    path = tmp_path / "bad.yaml"
    path.write_text("window_periods: 0\n")
    with pytest.raises(AirflowFailException, match="monitoring.window_periods must be at least 1"):
        _op(DriftCheckOperator, lake, config_path=str(path)).window("2013-03-05")


def test_performance_reads_the_outcomes_of_every_period_of_the_window(lake, window_yaml):
    """Three validated days: the outcomes of the three, concatenated, through the use case's own ``outcomes``; a
    day not validated yet leaves the others; a window with none has no outcomes (and says why)."""
    from airflow_mlops.operators.performance_check import PerformanceCheckOperator
    from airflow_mlops.usecase import load_function

    days = ["2013-03-03", "2013-03-04", "2013-03-05"]
    published = {day: _published(day) for day in [*days, "2013-03-02", "2013-03-06"]}
    for day, frames in published.items():
        seed_validated(lake, day, frames)
    op = _op(PerformanceCheckOperator, lake, config_path=str(window_yaml))
    window = op.window("2013-03-05")
    assert list(window.periods) == days

    found, reason = op.outcomes(list(window.periods), COLUMNS)
    assert reason is None
    observed = load_function(SEATTLE / "usecase.py", "packaged_observations", arity=0)().set_index("date")
    # The ids and labels expected, from the packaged data: a day's outcome is its maximum temperature.
    assert found["day_id"].tolist() == ["SEA@" + d.replace("-", "") for d in days]
    assert found["temp_max_next"].tolist() == [observed.loc[d, "temp_max"] for d in days]

    lake.remove_tree(lake.path("validated", "2013-03-04"))
    found, _ = op.outcomes(days, COLUMNS)
    assert found["day_id"].tolist() == ["SEA@20130303", "SEA@20130305"]
    none, reason = op.outcomes(["2014-01-01", "2014-01-02"], COLUMNS)
    assert none is None and "2014-01-01..2014-01-02" in reason


def test_drift_reads_the_batch_rows_of_every_period_of_the_window(lake, window_yaml):
    from airflow_mlops.operators.drift_check import DriftCheckOperator

    def seed_features(day: str) -> None:
        labels = pd.DataFrame(
            {"day_id": [f"SEA@{day.replace('-', '')}"], "month": [3], "day_of_year": [62], "temp_max_next": [9.0]}
        )
        target = lake.path("features", day)
        record = lake.write_file(target / "labels.parquet", labels.to_parquet(index=False), rows=1)
        lake.write_manifest(target, [record], period=day)

    for day in ("2013-03-02", "2013-03-03", "2013-03-05"):
        seed_features(day)
    op = _op(DriftCheckOperator, lake, config_path=str(window_yaml))
    window = op.window("2013-03-05")
    batch = op.batch_features(list(window.periods), ["month", "day_of_year"], COLUMNS)
    # 03-02 is outside the window, 03-04 has no partition.
    assert batch["day_id"].tolist() == ["SEA@20130303", "SEA@20130305"]
    assert op.batch_features(["2014-01-01"], ["month"], COLUMNS) is None


def test_the_traffic_of_a_check_is_the_windows(lake, window_yaml):
    """The inference log's predictions whose event time falls in the window's interval, not the day's alone."""
    from airflow_mlops.core.inference_log import LakePartWriter
    from airflow_mlops.operators.drift_check import DriftCheckOperator

    now = pd.Timestamp.now(tz="UTC")
    rows = [
        {
            "request_id": f"r{i}",
            "batch_id": "b",
            "timestamp": now,
            "day_id": f"SEA@201303{d:02d}",
            "input_date": pd.Timestamp(f"2013-03-{d:02d}", tz="UTC"),
            "prediction": float(d),
            "model_name": "seattle_weather",
            "model_version": "1",
        }
        for i, d in enumerate(range(1, 8))
    ]
    LakePartWriter(lake)(rows)
    op = _op(DriftCheckOperator, lake, config_path=str(window_yaml))
    window = op.window("2013-03-05")
    summary = {"interval_start": window.start.isoformat(), "interval_end": window.end.isoformat()}
    traffic = op.traffic(summary, COLUMNS)
    assert sorted(traffic["day_id"]) == ["SEA@20130303", "SEA@20130304", "SEA@20130305"]
