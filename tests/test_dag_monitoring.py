"""The flight_delay example's monitoring DAG (from the use-case factory) with ``dag.test()``: a drifted month asks
for a retrain exactly once, however often it is checked.

Everything it reads is made here, in this test's own MLflow store and lake: a champion of the use case's registered
model (a small model of the example's features, trained on a sample of January–March 2013), and November traffic
in the use case's inference log, as the serving stage logs it, whose features are shifted far from the reference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import FLIGHTS, asset_event_extras, load_dag, task_states
from training_fixtures import build_frame, make_champion

pytestmark = pytest.mark.slow

TASKS = ("drift_check", "performance_check", "retraining_policy")
MONTH = "2013-11"
#: The model features moved by three of their standard deviations (plus one) in the November traffic.
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


def _log_rows(frame: pd.DataFrame, proba: np.ndarray, features: list[str], model: str, version: str) -> list[dict]:
    """Inference-log rows as the serving stage writes them (``core.inference_log.log_records``): the request's
    fields as ``input_*``, its event time, the use case's id, the model features, the prediction."""
    start = pd.Timestamp(f"{MONTH}-01", tz="UTC")
    departures = start + pd.to_timedelta(np.arange(len(frame)) % (28 * 24), unit="h")
    now = pd.Timestamp.now(tz="UTC")
    rows = []
    for i, rec in enumerate(frame.to_dict("records")):
        rows.append(
            {
                "request_id": f"{MONTH}-{i}",
                "batch_id": f"{MONTH}-{i}",
                "timestamp": now,
                "input_carrier": rec["carrier"],
                "input_origin": rec["origin"],
                "input_dest": rec["dest"],
                "input_scheduled_departure": departures[i],
                "event_timestamp": departures[i],
                "flight_id": f"{departures[i]:%Y%m%dT%H}-{rec['carrier']}-{i}",
                **{name: rec[name] for name in features},
                "defaults_used": "",
                "prediction": float(proba[i]),
                "label": int(proba[i] >= 0.35),
                "threshold": 0.35,
                "model_name": model,
                "model_version": version,
                "latency_ms": 1.0,
            }
        )
    return rows


@pytest.fixture
def champion(airflow_db, usecase_lake, mlflow_store, tmp_path, monkeypatch):
    """The use case's champion (version 1, made in this test's MLflow store) and its drifted November traffic."""
    import mlflow

    from airflow_mlops.core import training
    from airflow_mlops.core.inference_log import LakePartWriter
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.usecase import config as usecase_config

    monkeypatch.setenv("MLOPS_EVIDENTLY_WORKSPACE", str(tmp_path / "evidently"))
    name = usecase_config.load(FLIGHTS).registered_model_name
    hook = MlflowHook()
    assert hook.alias_version(name, "champion") is None  # a fresh store: this test makes the champion
    champion = make_champion(usecase_lake, tmp_path / "config", name, run_id="manual__monitoring_champion")
    paths, made = champion["paths"], champion["made"]
    version = hook.alias_version(name, "champion")
    assert version == made["promoted"]["to_version"] == "1"

    config = training.load_config(paths["config"])
    hook.activate()
    model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    traffic = build_frame((1, 2, 3), sample=0.05, seed=9)
    for column in SHIFTED:
        traffic[column] = traffic[column] + 3 * traffic[column].std() + 1
    proba = training.predict_proba(model, traffic, config)
    LakePartWriter(usecase_lake)(_log_rows(traffic, proba, list(config.features), name, version))
    return {"name": name, "version": version, "features": list(config.features), "traffic_rows": len(traffic)}


def _retrain_events(run) -> list[dict]:
    """The extras of the ``retrain_requested`` events this run emitted."""
    return asset_event_extras("flight_delay.retrain_requested", run)


def _xcom(run, task_id: str):
    return run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def test_a_drifted_month_requests_one_retrain_exactly_once(champion):
    run = load_dag("flight_delay_monitoring").test(run_conf={"period": MONTH})
    states = task_states(run)
    assert all(states[(t, -1)] == "success" for t in TASKS), states

    drift = _xcom(run, "drift_check")
    assert (drift["status"], drift["source"], drift["month"]) == ("ok", "traffic", MONTH)
    assert drift["rows"] == champion["traffic_rows"]
    assert set(SHIFTED) <= set(drift["drifted_columns"]), drift["drifted_columns"]
    share = len(drift["drifted_columns"]) / len(champion["features"])
    assert drift["drift_share"] == pytest.approx(share, abs=1e-4)  # reported to 4 decimals

    (event,) = _retrain_events(run)
    assert event["model"] == champion["name"] and event["champion_version"] == champion["version"]
    assert event["month"] == MONTH and event["interval_start"].startswith(f"{MONTH}-01")
    assert any("drift share" in r for r in event["reasons"]), event["reasons"]

    # the same interval checked again: never a second request
    again = load_dag("flight_delay_monitoring").test(run_conf={"period": MONTH})
    states = task_states(again)
    assert states[("drift_check", -1)] == "success" and states[("retraining_policy", -1)] == "skipped", states
    assert _retrain_events(again) == []
