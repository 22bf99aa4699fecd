"""The features DAG with ``dag.test()``: validated month → feature partition → Feast online store → training set."""

from __future__ import annotations

import pandas as pd
import pytest

from airflow_mlops.core import features as F

from conftest import load_dag, task_states
from features_fixtures import seed_validated

pytestmark = pytest.mark.slow
DAG_ID = "mlops_features"
TASKS = ("build_features", "apply_feature_repo", "materialize_features", "training_set")


@pytest.fixture
def feast_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_FEAST_HOME", str(tmp_path / "feast"))
    return tmp_path / "feast"


def _run(conf):
    run = load_dag(DAG_ID).test(run_conf=conf)
    return run, task_states(run)


def _xcom(run, task_id):
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id == task_id]
    return ti.xcom_pull(task_ids=task_id)


def test_dag_is_scheduled_on_validated_batches_and_publishes_features(airflow_db):
    dag = load_dag(DAG_ID)
    condition = dag.timetable.asset_condition
    assert [a.name for a in condition.objects] == ["validated_batch"]  # data-aware: no clock
    outlets = {t.task_id: [a.name for a in t.outlets] for t in dag.tasks}
    assert outlets["materialize_features"] == ["features"] and outlets["training_set"] == ["training_set"]
    assert all(t.retries == 2 for t in dag.tasks)


def test_month_to_online_store_and_training_set(airflow_db, lake, feast_home):
    for month in ("2013-01", "2013-02"):
        seed_validated(lake, month)
    run, states = _run({"month": "2013-02"})
    assert states == {(task, -1): "success" for task in TASKS}, states

    built = _xcom(run, "build_features")
    assert built["months"] == ["2013-02"] and built["interval_start"] == "2013-02-01T00:00:00+00:00"
    assert built["partitions"]["2013-02"]["rows"]["labels"] == 23_611
    materialized = _xcom(run, "materialize_features")
    assert materialized["interval_end"] == "2013-03-01T00:00:00+00:00"
    # February flights departing in February UTC (January's partition, with its late-evening Feb 1 UTC flights, was
    # not built in this lake)
    assert materialized["rows"]["flight_features"] == 24_797

    # the training-set contract, committed content-addressed in the lake
    result = _xcom(run, "training_set")
    assert result["months"] == ["2013-02"] and result["rows"] == 23_611
    assert result["uri"].endswith(f"training_sets/{result['sha256'][:12]}/training_set.parquet")
    manifest = lake.read_manifest(lake.path("training_sets", result["sha256"][:12]))
    assert manifest["sha256"] == result["sha256"] and manifest["months"] == ["2013-02"]
    assert result["manifest_uri"].endswith("_manifest.json")
    frame = pd.read_parquet(result["uri"].removeprefix("file://"))
    assert list(frame.columns) == F.load_spec().training_columns and len(frame) == result["rows"]
    assert frame["flight_id"].is_monotonic_increasing
    # history came from January (read from validated/ for the lookback), not only from February itself
    early = frame[frame["event_timestamp"] < pd.Timestamp("2013-02-01T15:00", tz="UTC")]
    assert (
        len(early) > 200 and early["carrier_flights_30d"].gt(0).all() and early["carrier_flights_30d"].median() > 1000
    )

    # the online store answers the month's flights (the slots of their own departures)
    from airflow_mlops.hooks.feast_store import FeastHook

    # (flights of late Feb 28 local time depart on March 1 UTC: outside this run's interval, not materialized)
    inside = frame[frame["event_timestamp"] < pd.Timestamp(materialized["interval_end"])]
    last = inside.sort_values("event_timestamp").iloc[-1]
    (outside,) = FeastHook().online_features(
        [
            frame.sort_values("event_timestamp")
            .iloc[-1][["flight_id", "carrier", "origin", "dest", "event_timestamp"]]
            .to_dict()
        ]
    )
    assert outside["plane_known"] == 0 and outside["sched_hour"] != outside["sched_hour"]  # unknown key: defaults
    (online,) = FeastHook().online_features(
        [last[["flight_id", "carrier", "origin", "dest", "event_timestamp"]].to_dict()]
    )
    assert online["sched_hour"] == last["sched_hour"] and online["distance"] == last["distance"]
    assert online["weather_known"] == 1 and online["carrier_flights_30d"] == last["carrier_flights_30d"] > 0
    assert online["temp"] == last["temp"] and online["route_flights_30d"] == last["route_flights_30d"]

    # a second run of the same month: partitions not rebuilt, same training set (same bytes, same address)
    again, states = _run({"month": "2013-02"})
    assert set(states.values()) == {"success"}
    assert _xcom(again, "build_features")["partitions"]["2013-02"]["rebuilt"] is False
    assert _xcom(again, "training_set")["sha256"] == result["sha256"]


def test_a_month_that_was_never_validated_fails_the_run(airflow_db, lake, feast_home):
    run, states = _run({"month": "2013-05"})
    assert states[("build_features", -1)] == "failed"
    assert states[("training_set", -1)] in ("upstream_failed", "skipped")
