"""The monitoring DAG with ``dag.test()``: a drifted month asks for a retrain exactly once, however often it is checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, load_dag, task_states
from training_fixtures import build_frame, run_pipeline, write_snapshot

pytestmark = pytest.mark.slow

TASKS = ("drift_check", "performance_check", "retraining_policy")
SHIFTED = [
    "distance",
    "temp",
    "dewp",
    "humid",
    "wind_speed",
    "pressure",
    "visib",
    "plane_age",
    "plane_seats",
    "sched_hour",
]


def _write_log(lake, frame, proba, features, version, month):
    from airflow_mlops.core.inference_log import LakePartWriter

    start = pd.Timestamp(f"{month}-01", tz="UTC")
    departures = start + pd.to_timedelta(np.arange(len(frame)) % (28 * 24), unit="h")
    ids = (
        departures.strftime("%Y%m%dT%H")
        + "-"
        + frame["carrier"].to_numpy()
        + "-"
        + pd.Index(np.arange(len(frame))).astype(str)
    )
    now = pd.Timestamp.now(tz="UTC")
    rows = []
    for i, rec in enumerate(frame[features].to_dict("records")):
        rows.append(
            {
                "request_id": f"{month}-{i}",
                "timestamp": now,
                "flight_id": ids[i],
                "input_scheduled_departure": departures[i],
                **rec,
                "probability_late": float(proba[i]),
                "late": bool(proba[i] >= 0.35),
                "threshold": 0.35,
                "model_name": "m",
                "model_version": version,
            }
        )
    LakePartWriter(lake)(rows)


@pytest.fixture(scope="module")
def champion(airflow_db):
    """A champion of the repo's model in the session's MLflow (made here if no other test made one)."""
    import mlflow

    from airflow_mlops.core import training
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    lake = LakeHook()
    lake.ensure_zones()
    paths = {
        "config": str(ROOT / "include" / "config" / "training.yaml"),
        "policy": str(ROOT / "include" / "config" / "gate_policy.yaml"),
    }
    config = training.load_config(paths["config"])
    hook = MlflowHook()
    if hook.alias_version(config.registered_model_name, "champion") is None:
        run_pipeline(
            write_snapshot(lake, build_frame((1, 2, 3), sample=0.3, seed=0)), paths, "manual__monitoring_champion"
        )
    version = hook.alias_version(config.registered_model_name, "champion")
    assert version is not None
    hook.activate()
    model = mlflow.sklearn.load_model(f"models:/{config.registered_model_name}/{version}")
    traffic = build_frame((1, 2, 3), sample=0.05, seed=9)
    shifted = traffic.copy()
    for column in SHIFTED:
        shifted[column] = shifted[column] + 3 * shifted[column].std() + 1
    _write_log(lake, shifted, training.predict_proba(model, shifted, config), config.features, version, "2013-11")
    return {"name": config.registered_model_name, "version": version}


def _retrain_events(month: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.extra)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "retrain_requested")
        ).all()
    return [r[0] for r in rows if (r[0] or {}).get("month") == month]


def test_a_drifted_month_requests_one_retrain_exactly_once(champion):
    dag = load_dag("mlops_monitoring")

    run = dag.test(run_conf={"month": "2013-11"})
    states = task_states(run)
    assert all(states[(t, -1)] == "success" for t in TASKS), states
    events = _retrain_events("2013-11")
    assert len(events) == 1, events
    assert events[0]["model"] == champion["name"] and events[0]["champion_version"] == champion["version"]
    assert events[0]["interval_start"].startswith("2013-11-01") and any(
        "drift share" in r for r in events[0]["reasons"]
    )

    again = dag.test(run_conf={"month": "2013-11"})  # the same interval checked again: never a second request
    states = task_states(again)
    assert states[("drift_check", -1)] == "success" and states[("retraining_policy", -1)] == "skipped", states
    assert len(_retrain_events("2013-11")) == 1
