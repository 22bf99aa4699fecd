"""docs/tutorial.md, run: a use case made with ``python -m airflow_mlops new`` goes through the whole loop.

In a temporary projects folder: ``new`` + ``check`` (the CLI, in a subprocess), the use case's five DAGs parsed
from ``dags/`` (``MLOPS_PROJECTS``), its first days landed (one by hand as an upstream would, one with the replay
CLI, the others with ``replay.land``), then ``dag.test()`` of ``<name>_ingest_validate`` (one run for every batch
waiting), ``<name>_features``, ``<name>_monitoring`` (no champion: the bootstrap asks for the first model) and
``<name>_training`` (gate → register → infra validation in a real serving process → promote → deploy starts the
real serving process). Then real HTTP to the endpoint, the next day's traffic, its batch, and its monitoring run.

Everything is the template's synthetic data (``demo_batches``); every expected number is derived from it or from
the use case's config. The serving processes are stopped at the end (and checked gone).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from conftest import ROOT, task_states
from loop_fixtures import dag as _dag
from loop_fixtures import days as _days
from loop_fixtures import loop_environment, stop_serving
from loop_fixtures import state as _state
from loop_fixtures import xcom as _xcom

pytestmark = pytest.mark.slow

NAME = "shop_sales"
STAGES = ("ingest_validate", "features", "monitoring", "training", "rollback")
TRAINING_TASKS = (
    "training_set",
    "train_model",
    "evaluate_challenger",
    "model_gate",
    "register_model",
    "infra_validate",
    "promote_model",
    "deploy_model",
)


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m <args>`` with the test's Python (the project's .venv), as the tutorial runs it."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env or os.environ.copy(), capture_output=True, text=True
    )


@pytest.fixture
def project(tmp_path, airflow_db, mlflow_store, monkeypatch):
    """``new`` + ``check`` in a temporary projects folder; the environment pointed at temporary state (projects,
    MLOPS_HOME, lake, Feast, MLflow, a free serving port); the serving processes stopped afterwards."""
    projects = tmp_path / "projects"
    created = _cli("airflow_mlops", "new", NAME, "--into", str(projects), cwd=tmp_path)
    assert created.returncode == 0, created.stdout + created.stderr
    folder = projects / NAME
    assert f"created {folder}" in created.stdout
    checked = _cli("airflow_mlops", "check", str(folder), cwd=tmp_path)
    assert (checked.returncode, checked.stdout.strip()) == (0, f"ok {NAME}"), checked.stdout + checked.stderr

    port = loop_environment(monkeypatch, tmp_path, projects, NAME)
    try:
        yield folder
    finally:
        stop_serving(folder, port, tmp_path / "home")


def test_a_new_use_case_goes_through_the_whole_loop(project, tmp_path):
    import httpx
    import mlflow
    import pandas as pd

    from airflow_mlops.core import training
    from airflow_mlops.hooks.bentoml_process import embedded_token
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.usecase import config
    from airflow_mlops_dev import replay, traffic
    from airflow_mlops_dev.replay_source import demo_frames

    uc = config.load(project)
    assert uc.name == NAME and uc.source.period == "day"
    lake = LakeHook(root_url=config.lake_url(uc))
    assert lake.root_url == f"{(tmp_path / 'lake').as_uri()}/{NAME}"

    # -- the five DAGs appear (dags/mlops.py over MLOPS_PROJECTS), no import error ---------------------------------
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    assert {uc.dag_id(stage) for stage in STAGES} <= set(bag.dag_ids), bag.dag_ids

    # -- land enough days for a first model ------------------------------------------------------------------------
    # The training set needs features.min_periods days; the newest model.holdout_periods of them are the hold-out.
    min_periods, holdout = int(uc.features["min_periods"]), int(uc.model["holdout_periods"])
    assert min_periods > holdout
    days = _days(uc.source.schedule_first, min_periods)
    serving_day = _days(days[-1], 2)[1]
    batches = {day: demo_frames(day, uc)["sales.csv"] for day in [*days, serving_day]}

    # 1. by hand, as an upstream system: the file, then an (empty) _SUCCESS marker.
    landing = lake.path("landing", days[0])
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "sales.csv").write_bytes(batches[days[0]].to_csv(index=False).encode())
    (landing / "_SUCCESS").write_bytes(b"")
    # 2. with the replay's command line (the template's demo_batches), as the tutorial shows.
    landed = _cli("airflow_mlops_dev.replay", "land", days[1], "--usecase", str(project), "--no-ring", cwd=tmp_path)
    assert landed.returncode == 0, landed.stdout + landed.stderr
    assert f"rows={len(batches[days[1]])}" in landed.stdout
    # 3. the others with the same function.
    for day in days[2:]:
        replay.land(day, usecase=project, ring=False)

    # -- ingest + validate: one run takes every batch waiting -------------------------------------------------------
    run = _dag(uc.dag_id("ingest_validate")).test()
    states = task_states(run)
    assert _state(run) == "success", states
    assert states == {("ingest_batch", -1): "success", **{("validate_batch", i): "success" for i in range(len(days))}}
    assert lake.committed_periods("validated", "day") == days
    for day in days:
        manifest = lake.read_manifest(lake.path("validated", day))
        assert manifest["files"]["sales.parquet"]["rows"] == len(batches[day])

    # -- features: every validated day without features (the run's day and those left behind) ---------------------
    run = _dag(uc.dag_id("features")).test(logical_date=datetime.fromisoformat(days[-1]).replace(tzinfo=UTC))
    states = task_states(run)
    assert _state(run) == "success", states
    assert _xcom(run, "build_features")["periods"] == days
    built = _xcom(run, "training_set")
    label_rows = sum(int(batches[day]["sales"].notna().sum()) for day in days)
    assert (built["periods"], built["rows"]) == (days, label_rows)

    # -- no champion: the monitoring run's retraining policy asks for the first model (bootstrap) --------------------
    run = _dag(uc.dag_id("monitoring")).test(run_conf={"period": days[-1]})
    states = task_states(run)
    assert states == {
        ("drift_check", -1): "skipped",
        ("performance_check", -1): "skipped",
        ("retraining_policy", -1): "success",
    }, states
    decision = _xcom(run, "retraining_policy", "decision")
    assert decision["retrain"] is True and any("bootstrap" in r for r in decision["reasons"]), decision

    # -- training: first model judged on the gate's floors → register → infra validation → promote → deploy --------
    hook = MlflowHook()
    model = uc.registered_model_name
    assert hook.alias_version(model, "champion") is None
    run = _dag(uc.dag_id("training")).test()
    states = task_states(run)
    assert _state(run) == "success", states
    assert all(states[(task, -1)] == "success" for task in TRAINING_TASKS), states
    assert _xcom(run, "training_set")["sha256"] == built["sha256"]
    gate = _xcom(run, "model_gate")
    assert gate["approved"] and gate["champion_version"] is None, gate
    assert any("first model" in r for r in gate["reasons"]), gate["reasons"]
    candidate = _xcom(run, "evaluate_challenger")["candidate"]  # the newest holdout_periods days, scored
    assert candidate["n"] == sum(int(batches[day]["sales"].notna().sum()) for day in days[-holdout:])
    assert candidate["r2"] >= uc.gate["absolute"]["r2"]["min"], candidate
    assert hook.alias_version(model, "champion") == "1"
    assert hook.client.get_model_version(model, "1").tags["mlops.infra_validation.approved"] == "true"
    deployed = _xcom(run, "deploy_model")
    assert (deployed["action"], deployed["version"], deployed["usecase"]) == ("started", "1", NAME), deployed
    url = config.serving_url(uc)
    assert deployed["url"] == url

    # -- real HTTP: one request, a batch (the next day's traffic), a bad field ---------------------------------------
    stores = sorted(batches[serving_day]["store"])
    compact = serving_day.replace("-", "")
    with httpx.Client(base_url=url, timeout=30.0) as http:
        one = http.post("/predict", json={"rows": [{"store": stores[2].lower(), "date": serving_day}]})
        assert one.status_code == 200, one.text
        (body,) = one.json()
        assert (body["id"], body["model_name"], body["model_version"]) == (f"{stores[2]}@{compact}", model, "1")
        # A regression: no label, no threshold; the view knew the store's row (built from the day before).
        assert (body["label"], body["threshold"], body["defaults_used"]) == (None, None, [])

        rows = [{"store": store, "date": serving_day} for store in stores]
        answered = traffic.send(url, traffic.requests_from_frame(pd.DataFrame(rows), uc), period=serving_day)
        assert (answered.answered, answered.refused, answered.failed) == (len(stores), 0, 0), answered
        assert answered.versions == {"1": len(stores)}
        batch = http.post("/predict_batch", json={"rows": rows[:3]})
        assert batch.status_code == 200, batch.text
        predictions = batch.json()["predictions"]
        assert [p["id"] for p in predictions] == [f"{s}@{compact}" for s in stores[:3]]
        assert predictions[2]["prediction"] == pytest.approx(body["prediction"])

        bad = http.post("/predict", json={"rows": [{"store": "S 01!", "date": serving_day}]})
        assert bad.status_code == 400, bad.text
        (detail,) = bad.json()["detail"]
        assert (
            detail["loc"] == ["rows", 0, "store"]
            and uc.serving["request"]["fields"]["store"]["pattern"] in detail["msg"]
        )
        assert traffic.wait_logged(url, token=embedded_token())["pending"] == 0
    logged = 1 + len(stores) + 3  # predictions of the serving day; the refused one is not logged

    # The served value is the champion's prediction on the feature row the batch of the day before built.
    previous = lake.read_manifest(lake.path("features", days[-1]))["files"]["store_history.parquet"]
    view = pd.read_parquet(previous["uri"].removeprefix("file://")).set_index("store_day")
    row = (
        view.loc[[body["id"]]]
        .reset_index(drop=True)
        .assign(store=stores[2], day_of_week=date.fromisoformat(serving_day).weekday())
    )
    hook.activate()
    champion = mlflow.sklearn.load_model(f"models:/{model}/1")
    frame = training.features_frame(row, uc.training_config())
    assert body["prediction"] == pytest.approx(float(champion.predict(frame)[0]), rel=1e-9)

    # -- the serving day's batch arrives (its outcomes), then its monitoring run -----------------------------------
    replay.land(serving_day, usecase=project, ring=False)
    run = _dag(uc.dag_id("ingest_validate")).test(run_conf={"period": serving_day})
    assert _state(run) == "success", task_states(run)
    run = _dag(uc.dag_id("features")).test(run_conf={"period": serving_day})
    assert _state(run) == "success", task_states(run)
    assert _xcom(run, "build_features")["periods"] == [serving_day]

    run = _dag(uc.dag_id("monitoring")).test(run_conf={"period": serving_day})
    states = task_states(run)
    assert states[("drift_check", -1)] == "success" and states[("performance_check", -1)] == "success", states
    drift = _xcom(run, "drift_check")
    assert (drift["month"], drift["champion_version"]) == (serving_day, "1")
    assert drift["traffic"]["rows"] == logged and drift["batch"]["rows"] == len(batches[serving_day])
    assert drift["report_key"].startswith(f"reports/monitoring/drift/{serving_day}/")
    performance = _xcom(run, "performance_check")
    assert (performance["month"], performance["rows"]) == (serving_day, len(stores)), performance  # one per id
    assert set(performance["live"]) >= {"rmse", "mae", "r2"}, performance
    decision = _xcom(run, "retraining_policy", "decision")
    assert decision["champion_version"] == "1" and decision["interval_key"], decision
    assert states[("retraining_policy", -1)] == ("success" if decision["retrain"] else "skipped"), states
    records = {p.name for p in lake.path("monitoring", "policy", model).iterdir()}
    assert len(records) == 2, records  # the bootstrap's day and the serving day
