"""The seattle_weather example (examples/seattle_weather) through the whole loop, as the DAG processor runs it.

A copy of the example in a temporary projects folder (``MLOPS_PROJECTS``), its config shrunk so the loop needs few
days (see ``SHRUNK``); real daily batches of the packaged data (``demo_batches``) landed as an upstream does (the
file, then the ``_SUCCESS`` marker with its sha256, through ``LakeHook``), one of them broken with the example's own
corruption (``CORRUPTIONS``). Then ``dag.test()`` of ``seattle_weather_ingest_validate`` (the broken day
quarantined with its validation result and Data Docs, the others published), ``seattle_weather_features``,
``seattle_weather_training`` (train → gate → register → infra validation → promote → deploy starts the real serving
process on a free port), real HTTP to the endpoint day by day (a prediction of the day's maximum, a bad field
refused), each served day's batch (its outcome) through ingest and features, and ``seattle_weather_monitoring`` of
the served days (drift, live performance, the retraining policy's decision).

Every expected number is derived from the packaged data or the copy's config. The serving processes are stopped at
the end (and checked gone).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import pytest

from conftest import ROOT, task_states
from loop_fixtures import dag, days, loop_environment, state, stop_serving, xcom

pytestmark = pytest.mark.slow

NAME = "seattle_weather"
EXAMPLE = ROOT / "examples" / NAME
#: The first model's days: the first TRAIN_DAYS of the packaged data (2012-01-01 .. 2012-02-14).
FIRST_DAY = "2012-01-01"
TRAIN_DAYS = 45
#: The day landed broken (its index in the first days): a gap the features and the training set leave out.
BROKEN_AT = 20
#: The days served after the first model, then monitored with their outcomes.
SERVED_DAYS = 3
#: The copy's config, shrunk so the loop needs weeks, not the example's years (dotted key → value). The rest is the
#: example's own: its suite, features (29 lookback days), estimator, gate bounds, request schema and policy.
SHRUNK = {
    # A training set from the landed days (the example asks for 60 of the 730 of its window).
    "features.min_periods": TRAIN_DAYS - 5,
    # The newest 10 days are the hold-out (the example: 30, a month's spread).
    "model.holdout_periods": 10,
    # Leaves for 34 training rows (the example's 20 fit its 700: on 34 rows no tree could split, the model was the
    # training mean and failed the gate's RMSE ceiling on this February hold-out).
    "model.params.min_samples_leaf": 8,
    # A check covers the served days (the example: 28 days, judged from 21 predictions).
    "monitoring.window_periods": SERVED_DAYS,
    "monitoring.drift.min_rows": SERVED_DAYS,
    "monitoring.performance.min_rows": SERVED_DAYS,
    # The infrastructure validation's latency sample (the example: 50 requests).
    "serving.infra_validation.latency_requests": 5,
}
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


def _shrink(config_file, changes: dict) -> dict:
    """Set ``changes`` (dotted keys, each already in the file) in a copied ``mlops.yaml``; returns the new config."""
    import yaml

    config = yaml.safe_load(config_file.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        assert leaf in node, dotted
        node[leaf] = value
    config_file.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return config


def _land(lake, day: str, files: dict[str, bytes]) -> dict:
    """Land a batch as an upstream does: the files, then the ``_SUCCESS`` marker listing their sha256."""
    from airflow_mlops.core.batches import SUCCESS_MARKER, count_csv_rows

    folder = lake.path("landing", day)
    records = {
        name: lake.write_file(folder / name, data, rows=count_csv_rows(data)).to_dict() for name, data in files.items()
    }
    lake.write_file(folder / SUCCESS_MARKER, json.dumps({"files": records}).encode(), rows=len(records))
    return records


@pytest.fixture
def project(tmp_path, airflow_db, mlflow_store, monkeypatch):
    """The example copied into a temporary projects folder, its config shrunk; the environment pointed at temporary
    state; the serving processes stopped afterwards."""
    projects = tmp_path / "projects"
    folder = projects / NAME
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    _shrink(folder / "mlops.yaml", SHRUNK)
    port = loop_environment(monkeypatch, tmp_path, projects, NAME)
    try:
        yield folder
    finally:
        stop_serving(folder, port, tmp_path / "home")


def test_the_seattle_weather_example_goes_through_the_whole_loop(project, tmp_path):
    import httpx
    import mlflow
    import pandas as pd

    from airflow_mlops.core import training
    from airflow_mlops.core.batches import batch_hash
    from airflow_mlops.hooks.bentoml_process import embedded_token
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.usecase import config
    from airflow_mlops.usecase.checks import check
    from airflow_mlops.usecase.user_code import load_module

    assert check(project) == []
    uc = config.load(project)
    assert (uc.name, uc.source.period, uc.task) == (NAME, "day", "regression")
    module = load_module(uc.module_file)
    lake = LakeHook(root_url=config.lake_url(uc))
    assert lake.root_url == f"{(tmp_path / 'lake').as_uri()}/{NAME}"
    holdout, min_periods = int(uc.model["holdout_periods"]), int(uc.features["min_periods"])

    # -- land the first days from the packaged data, one of them broken as the demo breaks it ----------------------
    landed = days(FIRST_DAY, TRAIN_DAYS)
    broken = landed[BROKEN_AT]
    good = [day for day in landed if day != broken]
    assert len(good) >= min_periods > holdout
    batches = {day: module.demo_batches(day)[module.FILE] for day in landed}
    kind = next(iter(module.CORRUPTIONS))  # the demo's default breakage: a 60 °C maximum
    for day in landed:
        files = {module.FILE: batches[day].to_csv(index=False).encode()}
        if day == broken:
            module.CORRUPTIONS[kind](files, {module.FILE: batches[day]})
            broken_records = _land(lake, day, files)
        else:
            _land(lake, day, files)

    # -- ingest + validate: one run takes every day waiting; the broken one is quarantined, the others published ----
    run = dag(uc.dag_id("ingest_validate")).test()
    states = task_states(run)
    assert state(run) == "failed", states  # the broken day failed its suite: the run says so
    validations = sorted(s for (task, _), s in states.items() if task == "validate_batch")
    assert states[("ingest_batch", -1)] == "success", states
    assert validations == ["failed"] + ["success"] * len(good), states
    assert lake.committed_periods("validated", "day") == good
    for day in good:
        manifest = lake.read_manifest(lake.path("validated", day))
        assert manifest["files"]["observations.parquet"]["rows"] == len(batches[day]) == 1
    assert not lake.path("validated", broken).exists()
    digest = batch_hash({name: record["sha256"] for name, record in broken_records.items()})
    quarantined = lake.path("quarantine", broken, digest[:12])
    assert {p.name for p in quarantined.iterdir()} == {
        "_manifest.json",
        module.FILE,
        "validation_result.json",
        "data_docs.html",
    }
    (suite,) = lake.read_manifest(quarantined)["validation"]["suites"]
    assert suite["success"] is False
    assert [(f["expectation"], f["column"]) for f in suite["failed"]] == [
        ("expect_column_values_to_be_between", "temp_max")
    ]
    result = json.loads((quarantined / "validation_result.json").read_bytes())
    assert result["success"] is False
    assert {r["meta"]["batch_markers"]["batch_sha256"] for r in result["results"].values()} == {digest}
    assert "Great Expectations" in (quarantined / "data_docs.html").read_text()
    assert lake.path("reports", "data_docs", suite["docs_page"]).exists()  # the Data Docs site, in the lake

    # -- features: every validated day (the broken one is a gap), then the training set ------------------------------
    run = dag(uc.dag_id("features")).test(logical_date=datetime.fromisoformat(good[-1]).replace(tzinfo=UTC))
    states = task_states(run)
    assert state(run) == "success", states
    assert xcom(run, "build_features")["periods"] == good
    built = xcom(run, "training_set")
    label_rows = sum(int(batches[day]["temp_max"].notna().sum()) for day in good)  # one label row per good day
    assert (built["periods"], built["rows"]) == (good, label_rows)

    # -- training: the first model judged on the gate's floors → register → infra validation → promote → deploy ------
    hook = MlflowHook()
    model = uc.registered_model_name
    assert hook.alias_version(model, "champion") is None
    run = dag(uc.dag_id("training")).test()
    states = task_states(run)
    assert state(run) == "success", states
    assert all(states[(task, -1)] == "success" for task in TRAINING_TASKS), states
    assert xcom(run, "training_set")["sha256"] == built["sha256"]
    gate = xcom(run, "model_gate")
    assert gate["approved"] and gate["champion_version"] is None, gate
    assert any("first model" in r for r in gate["reasons"]), gate["reasons"]
    candidate = xcom(run, "evaluate_challenger")["candidate"]  # the newest holdout_periods days, scored
    assert candidate["n"] == holdout
    assert candidate["mean_label"] == pytest.approx(
        sum(float(batches[day]["temp_max"].iloc[0]) for day in good[-holdout:]) / holdout, abs=0.01
    )
    bounds = uc.gate["absolute"]
    assert candidate["rmse"] <= bounds["rmse"]["max"] and candidate["mae"] <= bounds["mae"]["max"], candidate
    assert candidate["r2"] >= bounds["r2"]["min"], candidate
    assert hook.alias_version(model, "champion") == "1"
    assert hook.client.get_model_version(model, "1").tags["mlops.infra_validation.approved"] == "true"
    deployed = xcom(run, "deploy_model")
    url = config.serving_url(uc)
    assert deployed["url"] == url and (deployed["action"], deployed["version"], deployed["usecase"]) == (
        "started",
        "1",
        NAME,
    ), deployed

    # -- real HTTP: tomorrow's maximum for each served day, one bad field; each day's batch then arrives ------------
    served = days(good[-1], SERVED_DAYS + 1)[1:]
    answers = {}
    with httpx.Client(base_url=url, timeout=30.0) as http:
        for day in served:
            answer = http.post("/predict", json={"rows": [{"date": day, "station": " sea "}]})
            assert answer.status_code == 200, answer.text
            (answers[day],) = answer.json()
            compact = day.replace("-", "")
            assert (answers[day]["id"], answers[day]["model_version"]) == (f"SEA@{compact}", "1"), answers[day]
            # A regression: a number, no label, no threshold; the view knew the day's row (the day before's batch).
            assert isinstance(answers[day]["prediction"], float), answers[day]
            assert (answers[day]["label"], answers[day]["threshold"], answers[day]["defaults_used"]) == (None, None, [])
            if day == served[0]:
                bad = http.post("/predict", json={"rows": [{"date": day, "station": "PDX"}]})
                assert bad.status_code == 400, bad.text
                (detail,) = bad.json()["detail"]
                assert detail["loc"] == ["rows", 0, "station"] and "PDX" in detail["msg"], detail
                first_row = _feature_row(lake, module, uc, good[-1], day)
            flushed = http.post("/admin/flush_log", json={}, headers={"X-MLOPS-Token": embedded_token()})
            assert flushed.status_code == 200 and flushed.json()["pending"] == 0, flushed.text
            # The day ends: its observations (the prediction's outcome) land and go through the line.
            batches[day] = module.demo_batches(day)[module.FILE]
            _land(lake, day, {module.FILE: batches[day].to_csv(index=False).encode()})
            run = dag(uc.dag_id("ingest_validate")).test(run_conf={"period": day})
            assert state(run) == "success", task_states(run)
            run = dag(uc.dag_id("features")).test(run_conf={"period": day})
            assert state(run) == "success", task_states(run)
            assert xcom(run, "build_features")["periods"] == [day]

    # The served value is the champion's prediction on the feature row the batch of the day before built.
    hook.activate()
    champion = mlflow.sklearn.load_model(f"models:/{model}/1")
    frame = training.features_frame(first_row, uc.training_config())
    assert answers[served[0]]["prediction"] == pytest.approx(float(champion.predict(frame)[0]), rel=1e-9)

    # -- monitoring of the served days: predictions joined with their outcomes, then the retraining policy ---------
    run = dag(uc.dag_id("monitoring")).test(run_conf={"period": served[-1]})
    states = task_states(run)
    assert states[("drift_check", -1)] == "success" and states[("performance_check", -1)] == "success", states
    drift = xcom(run, "drift_check")
    assert (drift["month"], drift["periods"], drift["champion_version"]) == (served[-1], served, "1"), drift
    assert drift["traffic"]["rows"] == drift["batch"]["rows"] == len(served), drift  # the refused one is not logged
    assert drift["traffic"]["enough_rows"] and set(drift["scores"]) == set(uc.model_features), drift
    assert drift["report_key"].startswith(f"reports/monitoring/drift/{served[-1]}/"), drift
    performance = xcom(run, "performance_check")
    errors = pd.Series([answers[d]["prediction"] - float(batches[d]["temp_max"].iloc[0]) for d in served])
    assert (performance["rows"], performance["without_outcome"]) == (len(served), 0), performance
    assert performance["live"]["n"] == len(served) and performance["enough_rows"], performance
    assert performance["live"]["mae"] == pytest.approx(float(errors.abs().mean()), abs=1e-4), performance
    assert performance["live"]["rmse"] == pytest.approx(float((errors**2).mean() ** 0.5), abs=1e-4), performance
    assert performance["holdout"]["rmse"] == pytest.approx(candidate["rmse"], abs=1e-4), performance
    decision = xcom(run, "retraining_policy", "decision")
    assert (decision["month"], decision["champion_version"]) == (served[-1], "1"), decision
    assert isinstance(decision["retrain"], bool) and decision["reasons"] and decision["interval_key"], decision
    assert states[("retraining_policy", -1)] == ("success" if decision["retrain"] else "skipped"), states
    records = [p.name for p in lake.path("monitoring", "policy", model).iterdir()]
    assert len(records) == 1, records  # the served days' interval: the policy's ledger, in the lake


def _feature_row(lake, module, uc, built_by: str, day: str):
    """The feature row a request for ``day`` reads: the view row the batch of ``built_by`` (the day before) wrote,
    with the request's own row features (``entity_keys``: the calendar of ``day``)."""
    import pandas as pd

    from airflow_mlops.usecase import FeatureContext

    record = lake.read_manifest(lake.path("features", built_by))["files"][f"{module.VIEW}.parquet"]
    view = pd.read_parquet(record["uri"].removeprefix("file://"))
    request = pd.DataFrame({"date": [day], "event_timestamp": [pd.Timestamp(day, tz="UTC")]})
    ctx = FeatureContext(period="", params=uc.features.get("params"), config=uc)
    keys = module.entity_keys(request, ctx)
    return keys.merge(view, on=module.KEY, how="left", validate="one_to_one")
