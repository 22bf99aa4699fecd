"""Batch scoring (``<name>_scoring``): a validated period scored by the champion from the offline features into
``scores/<period>/``, then checked for drift and performance like online traffic.

Everything is made here, in this test's lake and MLflow store: the flight_delay example's February 2013 as its
validator publishes it, its feature partition (the use case's own functions) and Feast repository, and a champion
of the use case's registered model (``training_fixtures.make_champion``). The DAG is parsed from ``dags/`` and run
with ``dag.test()``; expected figures are derived from the lake and the model, not copied.
"""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from conftest import FLIGHTS, asset_event_extras, load_dag, task_states
from features_fixtures import load_spec, load_usecase, seed_validated
from training_fixtures import make_champion, task_context

PERIOD = "2013-02"
TASKS = ("score_batch", "drift_check", "performance_check")


def _xcom(run, task_id: str):
    return run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


@pytest.fixture
def features(airflow_db, usecase_lake, mlflow_store, tmp_path, monkeypatch):
    """The period validated, its features built and the Feast repository applied (no champion yet)."""
    from airflow_mlops.core import feature_build
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.usecase.config import lake_url

    monkeypatch.setenv("MLOPS_EVIDENTLY_WORKSPACE", str(tmp_path / "evidently"))
    monkeypatch.setenv("MLOPS_FEAST_HOME", str(tmp_path / "feast"))
    monkeypatch.setenv("FEAST_USAGE", "False")
    usecase = load_usecase(FLIGHTS)
    seed_validated(usecase_lake, PERIOD)
    feature_build.build_partition(usecase_lake, PERIOD, usecase, load_spec(FLIGHTS), logging.getLogger(__name__))
    feast = FeastHook(usecase.folder, lake_root=lake_url(usecase))
    feast.apply()
    return {"lake": usecase_lake, "feast": feast, "usecase": usecase}


def _expected(features: dict, version: str) -> tuple[pd.DataFrame, pd.Series]:
    """The period's label rows joined point-in-time (the training-set path) and the champion's scores of them."""
    import mlflow

    from airflow_mlops.core import training, training_set
    from airflow_mlops.core.serving_model import model_config_from_run
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    lake, name = features["lake"], features["usecase"].registered_model_name
    labels, _ = training_set.read_labels(lake, [PERIOD], logging.getLogger(__name__))
    rows = training_set.build_training_set(features["feast"], labels, load_spec(FLIGHTS))
    hook = MlflowHook()
    hook.activate()
    config = model_config_from_run(hook.client, hook.client.get_model_version(name, version).run_id)
    model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    scores = pd.Series(training.predict_scores(model, rows, config), index=rows[config.id_column].to_numpy())
    return rows, scores


def _scores(lake) -> pd.DataFrame:
    from airflow_mlops.core.inference_log import read_inference_log

    return read_inference_log(lake, zone="scores")


@pytest.mark.slow
def test_a_period_is_scored_once_per_batch_and_champion(features, tmp_path):
    from airflow_mlops.core.batches import period_bounds
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    lake, usecase = features["lake"], features["usecase"]
    name = usecase.registered_model_name
    make_champion(lake, tmp_path / "config", name, run_id="manual__scoring_champion_1")
    batch_sha = lake.read_manifest(lake.path("validated", PERIOD))["batch_sha256"]

    run = load_dag(usecase.dag_id("scoring")).test(run_conf={"period": PERIOD})
    assert all(task_states(run)[(t, -1)] == "success" for t in TASKS), task_states(run)
    scored = _xcom(run, "score_batch")
    rows, expected = _expected(features, "1")
    assert (scored["part"], scored["model_version"], scored["batch_sha256"]) == (f"v1-{batch_sha[:12]}", "1", batch_sha)
    assert (
        scored["rows"]
        == len(rows)
        == lake.read_manifest(lake.path("features", PERIOD))["files"]["labels.parquet"]["rows"]
    )
    assert scored["written"] is True and scored["superseded"] == []
    (event,) = asset_event_extras(f"{usecase.name}.scores", run)
    assert (event["period"], event["uri"], event["rows"]) == (PERIOD, scored["uri"], len(rows))

    folder = lake.path("scores", PERIOD, scored["part"])
    manifest = lake.read_manifest(folder)
    assert (manifest["model_name"], manifest["model_version"], manifest["batch_sha256"]) == (name, "1", batch_sha)
    assert manifest["rows"] == len(rows) and manifest["model_versions"] == ["1"]
    log = _scores(lake)
    assert len(log) == len(rows) and log["request_id"].is_unique
    assert set(log[usecase.id_column]) == set(rows[usecase.id_column])
    got = log.set_index(usecase.id_column)["prediction"]
    pd.testing.assert_series_equal(got.loc[expected.index], expected, check_names=False, rtol=1e-12)
    assert (log["label"] == (log["prediction"] >= log["threshold"])).all()
    assert (log["batch_id"] == batch_sha).all() and (log["model_version"] == "1").all()

    # The checks read the scores as traffic and publish apart from the online checks.
    # The checks count the scored rows whose event falls in the period, as they count online traffic (a label
    # row of the batch may happen just after the period's end, in UTC).
    start, end = period_bounds(PERIOD)
    in_period = int(rows["event_timestamp"].between(start, end, inclusive="left").sum())
    assert 0.9 * len(rows) < in_period <= len(rows)
    drift, performance = _xcom(run, "drift_check"), _xcom(run, "performance_check")
    assert (drift["status"], drift["scope"], drift["month"]) == ("ok", "batch", PERIOD), drift
    assert drift["traffic"]["rows"] == in_period
    assert drift["report_key"].startswith(f"reports/monitoring/batch_drift/{PERIOD}/")
    assert performance["rows"] == in_period and performance["scope"] == "batch", performance
    assert performance["report_key"].startswith(f"reports/monitoring/batch_performance/{PERIOD}/")
    assert not lake.path("reports", "monitoring", "drift").exists()
    assert not lake.path("monitoring", "policy").exists()  # the retraining policy's records: untouched
    hook = MlflowHook()
    tags = hook.client.get_model_version(name, "1").tags
    assert {f"mlops.monitoring.batch_drift.{PERIOD}", f"mlops.monitoring.batch_performance.{PERIOD}"} <= set(tags)
    assert not any(k.startswith(("mlops.monitoring.drift.", "mlops.monitoring.performance.")) for k in tags)
    online = usecase.monitoring["mlflow"]["experiment_name"]
    assert hook.client.get_experiment_by_name(online) is None  # the online history (MLOps page) is not fed
    batch_runs = hook.client.search_runs([hook.client.get_experiment_by_name(f"{online}-batch").experiment_id])
    assert {r.data.tags["mlops.monitoring.kind"] for r in batch_runs} == {"batch_drift", "batch_performance"}

    # A re-run (or a retry) of the same batch and champion: the same part, the same bytes, no row twice.
    data = (folder / "predictions.parquet").read_bytes()
    again = load_dag(usecase.dag_id("scoring")).test(run_conf={"period": PERIOD})
    assert task_states(again)[("score_batch", -1)] == "success"
    repeated = _xcom(again, "score_batch")
    assert (repeated["part"], repeated["written"], repeated["superseded"]) == (scored["part"], False, [])
    assert (folder / "predictions.parquet").read_bytes() == data
    assert len(_scores(lake)) == len(rows)

    # A new champion re-scores the period; its older part goes: each row still once.
    make_champion(lake, tmp_path / "config2", name, seed=1, run_id="manual__scoring_champion_2", force_bless=True)
    assert hook.alias_version(name, "champion") == "2"
    third = load_dag(usecase.dag_id("scoring")).test(run_conf={"period": PERIOD})
    assert task_states(third)[("score_batch", -1)] == "success"
    rescored = _xcom(third, "score_batch")
    assert (rescored["part"], rescored["superseded"]) == (f"v2-{batch_sha[:12]}", [scored["part"]])
    assert sorted(p.name for p in lake.path("scores", PERIOD).iterdir()) == [rescored["part"]]
    log = _scores(lake)
    assert len(log) == len(rows) and set(log["model_version"]) == {"2"}
    _, expected = _expected(features, "2")
    got = log.set_index(usecase.id_column)["prediction"]
    pd.testing.assert_series_equal(got.loc[expected.index], expected, check_names=False, rtol=1e-12)


@pytest.mark.slow
def test_a_period_without_its_batch_or_features_fails_once_naming_it(features):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.operators.batch_scoring import BatchScoreOperator

    usecase = features["usecase"]

    def score(period: str):
        operator = BatchScoreOperator(task_id="score_batch", usecase=str(usecase.folder), period=period)
        return operator.execute(task_context("score_batch"))

    with pytest.raises(
        AirflowFailException, match=rf"no validated batch for 2013-05 .*{usecase.dag_id('ingest_validate')}"
    ):
        score("2013-05")
    seed_validated(features["lake"], "2013-03")
    with pytest.raises(AirflowFailException, match=rf"no features for 2013-03 .*{usecase.dag_id('features')}"):
        score("2013-03")

    run = load_dag(usecase.dag_id("scoring")).test(run_conf={"period": "2013-05"})
    states = task_states(run)
    assert states[("score_batch", -1)] == "failed", states  # once: AirflowFailException, not up_for_retry
    assert run.get_task_instance("score_batch").try_number == 1
    assert states[("drift_check", -1)] == states[("performance_check", -1)] == "upstream_failed"


def test_the_scores_have_the_inference_logs_columns():
    """What ``core.inference_log.log_records`` writes for an answered request, but the request's ``input_*``
    fields; deterministic ids and time."""
    from types import SimpleNamespace

    from airflow_mlops.core.batch_scoring import BatchInputs, scored_frame
    from airflow_mlops.core.inference_log import log_records

    config = SimpleNamespace(task="classification", id_column="row_id", features=["a", "b"])
    rows = pd.DataFrame(
        {
            "row_id": ["r1", "r2"],
            "event_timestamp": pd.to_datetime(["2024-01-01T01:00", "2024-01-01T02:00"], utc=True),
            "a": ["x", "y"],
            "b": [1.0, 2.0],
        }
    )
    inputs = BatchInputs("2024-01-01", "ab" * 32, "2024-01-01-abab", "2024-01-02T00:00:00+00:00", "f" * 64)
    frame = scored_frame(
        rows, [0.2, 0.7], config=config, inputs=inputs, model_name="m", model_version="3", threshold=0.5
    )
    answer = SimpleNamespace(
        request_id="q", prediction=0.2, label=False, threshold=0.5, model_name="m", model_version="3", defaults_used=[]
    )
    (online,) = log_records(
        pd.DataFrame({"event_timestamp": rows["event_timestamp"][:1]}),
        ["r1"],
        [{"a": "x", "b": 1.0}],
        [answer],
        id_column="row_id",
        features=["a", "b"],
        batch_id=None,
        latency_ms=1.0,
    )
    assert list(frame.columns) == list(online)
    assert list(frame["request_id"]) == [f"{'ab' * 6}-0", f"{'ab' * 6}-1"]
    assert list(frame["label"]) == [False, True] and set(frame["model_version"]) == {"3"}
    assert (frame["timestamp"] == pd.Timestamp(inputs.validated_at)).all()
    assert frame["prediction"].tolist() == [0.2, 0.7]


@pytest.mark.slow
def test_a_run_of_the_clock_scores_the_newest_period_with_features(features):
    """No period and no asset event (the optional cron, or a bare manual run): the newest featured period, here
    2013-02; with no champion yet the run is skipped, naming it."""
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_mlops.operators.batch_scoring import BatchScoreOperator

    operator = BatchScoreOperator(task_id="score_batch", usecase=str(features["usecase"].folder))
    context = {**task_context("score_batch"), "triggering_asset_events": {}}
    assert operator.period_to_score(context) == PERIOD
    with pytest.raises(AirflowSkipException, match=f"{PERIOD} is not scored"):
        operator.execute(context)


def test_the_scoring_dag_runs_on_features_and_on_its_optional_clock(tmp_path):
    import yaml
    from airflow.sdk import AssetOrTimeSchedule
    from test_dag_integrity import copy_usecase

    from airflow_mlops.usecase import config, factory

    plain = factory.scoring_dag(config.load(FLIGHTS))
    assert not isinstance(plain.timetable, AssetOrTimeSchedule)
    assert plain.timetable.asset_condition.name == "flight_delay.features"
    folder = copy_usecase(tmp_path / "flight_delay_clocked", "flight_delay_clocked")
    raw = yaml.safe_load((folder / "mlops.yaml").read_text())
    raw["serving"]["batch_scoring"] = {"schedule_cron": "0 5 * * *"}
    (folder / "mlops.yaml").write_text(yaml.safe_dump(raw))
    clocked = factory.scoring_dag(config.load(folder))
    assert isinstance(clocked.timetable, AssetOrTimeSchedule)
    assert clocked.timetable.timetable.summary == "0 5 * * *"
    assert clocked.timetable.asset_condition.name == "flight_delay_clocked.features"
    raw["serving"]["batch_scoring"] = {"schedule_cron": "every day"}
    (folder / "mlops.yaml").write_text(yaml.safe_dump(raw))
    from airflow_mlops.core.serving_schemas import ServingSettings

    with pytest.raises(ValueError, match="batch_scoring.schedule_cron: 'every day' is not a five-field cron"):
        ServingSettings.from_usecase(config.load(folder))
