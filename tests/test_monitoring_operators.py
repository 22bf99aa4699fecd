"""Monitoring operators against real backends: MLflow (SQLite), the lake (tmp), Evidently (workspace in tmp).

A champion is trained on a sample of January–March 2013 (training_fixtures). The inference log gets, through the
serving stage's own writer, predictions of that champion for:
* May 2013: other January–March flights (same distribution as the reference) stamped as May departures;
* June 2013: the same flights with ``distance`` shifted (a planted drift);
* April 2013: the real April flights, whose outcomes arrive with the validated April batch and its committed
  feature partition (label rows, a view keyed by the flight id, a view keyed by a time slot).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from features_fixtures import seed_validated
from training_fixtures import build_frame, run_pipeline, task_context, write_configs, write_snapshot

pytestmark = pytest.mark.slow

MODEL = "flight_delay_test"
MONITORING_YAML = """
prediction_column: probability_late
id_time_format: "%Y%m%dT%H"
reference: {bins: 20, max_categories: 100, sample_rows: 3000}
drift:
  method: psi
  threshold: 0.1
  min_rows: 500
  report_max_rows: 5000
  quality: {max_missing_increase: 0.1}
prediction_drift: {threshold: 0.1}
performance: {metrics: [roc_auc, log_loss, brier], slice_columns: [carrier, origin], min_rows: 500, min_slice_size: 300}
policy:
  drift_share: 0.5
  feature_drift: {distance: 0.2}
  prediction_drift: 0.5
  performance_decay: {overall: {roc_auc: 0.2}}
  cooldown_days: 45
  cap: {period: year, max: 4}
mlflow: {experiment_name: mlops-monitoring-test}
evidently: {project: monitoring-test}
"""


def _restamp(frame: pd.DataFrame, month: str) -> pd.DataFrame:
    """The same flights, departing in ``month`` (unique ids; features untouched)."""
    out = frame.copy()
    start = pd.Timestamp(f"{month}-01", tz="UTC")
    departures = start + pd.to_timedelta(np.arange(len(out)) % (28 * 24), unit="h")
    out["event_timestamp"] = departures
    out["flight_id"] = (
        departures.strftime("%Y%m%dT%H")
        + "-"
        + out["carrier"]
        + "-"
        + pd.Series(np.arange(len(out)), index=out.index).astype(str)
    )
    return out


def _seed_features(lake, frame: pd.DataFrame, month: str) -> None:
    """Commit ``features/<month>/`` as the feature stage does: label rows, a view keyed by the row id, and a view
    keyed by a time slot (which the batch side cannot join without a point-in-time join)."""
    views = {
        "labels": frame[["flight_id", "event_timestamp", "carrier", "origin", "is_late", "month"]],
        "flight_features": frame[
            ["flight_id", "event_timestamp", "dest", "sched_hour", "weekday", "distance", "plane_age", "plane_seats"]
        ].assign(plane_known=frame["plane_known"]),
        "origin_weather": frame[["origin", "event_timestamp", "temp"]]
        .assign(weather_slot=lambda f: f["origin"] + "@" + f["event_timestamp"].dt.strftime("%Y%m%dT%H"))
        .drop_duplicates("weather_slot"),
    }
    target = lake.path("features", month)
    records = [
        lake.write_file(target / f"{name}.parquet", view.to_parquet(index=False), rows=len(view))
        for name, view in views.items()
    ]
    lake.write_manifest(target, records, month=month)


def _log_rows(frame: pd.DataFrame, proba: np.ndarray, features: list[str], version: str) -> list[dict]:
    now = pd.Timestamp.now(tz="UTC")
    rows = []
    for i, (rec, p) in enumerate(zip(frame.to_dict("records"), proba, strict=True)):
        row = {
            "request_id": f"r{i}",
            "batch_id": "b",
            "timestamp": now,
            "flight_id": rec["flight_id"],
            "input_carrier": rec["carrier"],
            "input_origin": rec["origin"],
            "input_dest": rec["dest"],
            "input_flight": 1,
            "input_scheduled_departure": rec["event_timestamp"],
            "input_tailnum": None,
        }
        row.update({f: rec[f] for f in features})
        row.update(
            {
                "defaults_used": "",
                "probability_late": float(p),
                "late": bool(p >= 0.35),
                "threshold": 0.35,
                "model_name": MODEL,
                "model_version": version,
                "latency_ms": 1.0,
            }
        )
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLOPS_MLFLOW_ARTIFACTS", (root / "artifacts").as_uri())
        mp.setenv("MLOPS_LAKE", (root / "lake").as_uri())
        mp.setenv("MLOPS_EVIDENTLY_WORKSPACE", str(root / "evidently"))
        mp.setenv("MLOPS_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
        import mlflow

        from airflow_mlops.core import training
        from airflow_mlops.core.inference_log import LakePartWriter
        from airflow_mlops.hooks.lake import LakeHook

        lake = LakeHook()
        lake.ensure_zones()
        full = build_frame((1, 2, 3))
        in_snapshot = full.sample(frac=0.3, random_state=0)
        rest = full.drop(in_snapshot.index).sample(n=3000, random_state=1)
        paths = write_configs(root / "config")
        (root / "config" / "monitoring.yaml").write_text(MONITORING_YAML)
        paths["monitoring"] = str(root / "config" / "monitoring.yaml")
        out = run_pipeline(write_snapshot(lake, in_snapshot.reset_index(drop=True)), paths, "manual__champion")
        assert out["promoted"] != "skipped", out["gate"]
        config = training.load_config(paths["config"])
        model = mlflow.sklearn.load_model(f"models:/{MODEL}/1")

        def score(frame):
            return training.predict_proba(model, frame, config)

        same = _restamp(rest, "2013-05")
        shifted = _restamp(rest, "2013-06").assign(distance=lambda f: f["distance"] * 1.7 + 300)
        april_all = build_frame((4,))
        # The feature stage's and the serving log's key: "<UTC hour %Y%m%dT%H>-<carrier>-<flight>".
        parts = april_all["flight_id"].str.split("-", n=1)
        april_all["flight_id"] = parts.str[0].str.slice(0, 11) + "-" + parts.str[1]
        april = april_all.sample(n=4000, random_state=2)
        writer = LakePartWriter(lake)
        for frame in (same, shifted, april):
            writer(_log_rows(frame, score(frame), config.features, "1"))
        seed_validated(lake, "2013-04")
        _seed_features(lake, april_all, "2013-04")
        yield {
            "root": root,
            "lake": lake,
            "paths": paths,
            "config": config,
            "april": april,
            "april_all": april_all,
            "rest": rest,
            "score": score,
            "writer": writer,
        }


def _op(cls, stack, **kwargs):
    return cls(
        task_id=kwargs.pop("task_id", "check"),
        registered_model_name=MODEL,
        config_path=stack["paths"]["monitoring"],
        **kwargs,
    )


def _run(op, run_id="manual__m"):
    context = task_context(op.task_id, run_id)
    context["outlet_events"] = defaultdict(lambda: SimpleNamespace(extra=None))
    return op.execute(context), context


@pytest.fixture(scope="module")
def same_month(stack):
    from airflow_mlops.operators.monitoring import DriftCheckOperator

    return _run(_op(DriftCheckOperator, stack, month="2013-05"))


def test_no_drift_on_a_same_distribution_split(stack, same_month):
    result, context = same_month
    assert (result["status"], result["source"]) == ("ok", "traffic")
    # The May traffic: the restamped flights, and the real April flights logged that depart in May in UTC (April
    # 30's evening, New York time).
    may = stack["april"]["event_timestamp"].between(
        pd.Timestamp("2013-05-01", tz="UTC"), pd.Timestamp("2013-06-01", tz="UTC"), inclusive="left"
    )
    assert result["rows"] == len(stack["rest"]) + int(may.sum())
    assert result["drifted_columns"] == [], result["scores"]
    assert result["prediction_drift"] < 0.1
    assert result["batch"] == {"rows": 0}  # no validated May in this lake
    key = context["ti"].xcom["report_key"]
    assert key == result["report_key"] == f"reports/monitoring/drift/2013-05/{MODEL}-v1.html"
    assert (
        stack["lake"].path(key).read_text().lstrip().lower().startswith("<!doctype html")
        or "<html" in stack["lake"].path(key).read_text()[:500].lower()
    )


@pytest.fixture(scope="module")
def shifted_month(stack, same_month):
    from airflow_mlops.operators.monitoring import REFERENCE_ZONE, DriftCheckOperator

    manifest = stack["lake"].read_manifest(stack["lake"].path(REFERENCE_ZONE, MODEL, "1"))
    result, _ = _run(_op(DriftCheckOperator, stack, month="2013-06"))
    return result, manifest


def test_a_planted_shift_is_detected_and_the_reference_is_reused(stack, shifted_month):
    from airflow_mlops.operators.monitoring import REFERENCE_ZONE

    result, manifest = shifted_month
    assert "distance" in result["drifted_columns"], result["scores"]
    assert result["scores"]["distance"] > 0.2
    assert stack["lake"].read_manifest(stack["lake"].path(REFERENCE_ZONE, MODEL, "1")) == manifest  # not rebuilt

    from airflow_mlops.hooks.evidently_workspace import EvidentlyHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    assert len(EvidentlyHook().list_runs("monitoring-test")) >= 2
    client = MlflowHook().client
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["drift_score.distance"] == pytest.approx(result["scores"]["distance"])
    assert run.data.tags["mlops.monitoring.version"] == "1"
    champion_model_id = client.get_model_version(MODEL, "1").model_id
    history = client.get_metric_history(result["mlflow_run_id"], "drift_share")
    assert history[-1].step == 201306 and history[-1].model_id == champion_model_id
    assert "mlops.monitoring.drift.2013-06" in client.get_model_version(MODEL, "1").tags


def test_a_column_with_no_value_this_month_is_reported_not_fatal(stack, same_month):
    """Seen in the year replay: a month of traffic where no answered flight had a wind gust. Evidently cannot
    score the drift of an empty column; the check reports it as a quality issue and scores the others."""
    from airflow_mlops.operators.monitoring import DriftCheckOperator

    july = _restamp(stack["rest"], "2013-07")
    proba = stack["score"](july)
    stack["writer"](_log_rows(july.assign(wind_gust=np.nan), proba, stack["config"].features, "1"))
    result, _ = _run(_op(DriftCheckOperator, stack, month="2013-07"))
    assert (result["status"], result["source"]) == ("ok", "traffic")
    assert any("wind_gust" in issue for issue in result["quality_issues"]), result["quality_issues"]
    assert "distance" not in result["drifted_columns"]  # the other columns are scored as before
    assert stack["lake"].path(result["report_key"]).exists()


def test_the_evidently_report_leaves_an_empty_column_out_of_drift_only():
    from airflow_mlops.hooks.evidently_workspace import EvidentlyHook

    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {"a": rng.normal(size=500), "gust": rng.normal(size=500), "c": rng.choice(list("xyz"), 500)}
    )
    snapshot = EvidentlyHook.drift_report(
        reference, reference.assign(gust=np.nan), categorical=["c"], numeric=["a", "gust"], method="psi", threshold=0.1
    )
    names = [m["metric_name"] for m in snapshot.dict()["metrics"]]
    assert [n for n in names if n.startswith("ValueDrift")] == [
        "ValueDrift(column=c,method=psi,threshold=0.1)",
        "ValueDrift(column=a,method=psi,threshold=0.1)",
    ]
    assert "MissingValueCount(column=gust)" in names and snapshot._metadata["not_scored"] == "gust"


def test_the_regression_report_scores_the_same_rmse_as_the_check():
    from airflow_mlops.core.performance import regression_metrics
    from airflow_mlops.hooks.evidently_workspace import EvidentlyHook

    rng = np.random.default_rng(0)
    y = rng.normal(10, 3, 400)
    frame = pd.DataFrame({"y": y, "score": y + rng.normal(0, 1, 400)})
    current = frame.iloc[200:]
    snapshot = EvidentlyHook.performance_report("regression", frame.iloc[:200], current, target="y", prediction="score")
    values = {m["metric_name"].split("(")[0]: m.get("value") for m in snapshot.dict()["metrics"]}
    assert values["RMSE"] == pytest.approx(regression_metrics(current["y"], current["score"])["rmse"])


def test_the_batch_side_is_the_partition_label_rows_with_the_id_keyed_views(stack):
    from airflow_mlops.core import drift
    from airflow_mlops.operators.drift_check import DriftCheckOperator

    op = _op(DriftCheckOperator, stack)
    champion = op.champion()
    columns = op.columns(champion)
    assert (columns.id, columns.label, columns.prediction, columns.task) == (
        "flight_id",
        "is_late",
        "probability_late",
        "classification",
    )
    frame = op.batch_features("2013-04", champion["config"].features, columns)
    assert {"carrier", "origin", "dest", "distance", "sched_hour", "weekday", "plane_age", "is_late"} <= set(
        frame.columns
    )
    assert "temp" not in frame.columns and len(frame) == len(stack["april_all"])  # the slot-keyed view is left out
    profile, _ = op.reference(champion, drift.DriftSettings.from_config(op.config), columns)
    result = drift.compare(
        profile,
        frame,
        drift.DriftSettings(),
        columns=["carrier", "origin", "distance"],
        prediction_column=None,
        label="is_late",
    )
    assert result.label_rate == pytest.approx(stack["april_all"]["is_late"].mean())
    assert result.reference_label_rate is not None

    checked, _ = _run(_op(DriftCheckOperator, stack, month="2013-04"))
    assert (checked["status"], checked["source"]) == ("ok", "traffic")
    assert checked["batch"]["rows"] == len(stack["april_all"]) and checked["batch"]["label_rate"] == pytest.approx(
        result.label_rate
    )


@pytest.fixture(scope="module")
def april_performance(stack):
    from airflow_mlops.operators.monitoring import PerformanceCheckOperator

    return _run(_op(PerformanceCheckOperator, stack, month="2013-04"))


def test_performance_joins_outcomes_and_compares_with_the_holdout(stack, april_performance):
    from airflow_mlops.operators.monitoring import PerformanceCheckOperator

    result, context = april_performance
    assert result["status"] == "ok", result
    in_april = stack["april"]["event_timestamp"] < pd.Timestamp("2013-05-01", tz="UTC")
    assert result["rows"] == int(in_april.sum())  # every logged April flight has its outcome in the partition
    assert result["live"]["roc_auc"] > 0.6 and abs(result["decay"]["roc_auc"]) < 0.1
    assert set(result["holdout"]) >= {"roc_auc", "log_loss", "brier"}
    assert context["ti"].xcom["report_key"] == f"reports/monitoring/performance/2013-04/{MODEL}-v1.html"

    none, _ = _run(_op(PerformanceCheckOperator, stack, month="2013-05"))
    assert none["status"] == "no_outcomes"  # no May partition: outcomes unknown, not a failure


LABEL_ROWS_MODULE = """
import pandas as pd


def label_rows(ctx):
    flights = ctx.current["flights"]
    done = flights[flights["arr_delay"].notna()]
    hour = pd.to_datetime(done["time_hour"], utc=True).dt.strftime("%Y%m%dT%H")
    ids = hour + "-" + done["carrier"].astype(str).str.upper() + "-" + done["flight"].astype("int64").astype(str)
    return pd.DataFrame({"flight_id": ids, "is_late": (done["arr_delay"] > ctx.params["threshold_minutes"]).astype(int)})
"""


@pytest.mark.parametrize("module", ["label_rows_in_tmp_path", "flight_example"])
def test_performance_outcomes_from_a_use_case_module(stack, april_performance, tmp_path, module):
    """The same outcomes from the use case's own functions on the validated batch: ``label_rows`` of a module
    written here (no ``outcomes``: its fallback), or the example's ``outcomes``."""
    from airflow_mlops.operators.performance_check import PerformanceCheckOperator

    if module == "flight_example":
        path = ROOT / "examples" / "flight_delay" / "usecase.py"
        if not path.exists():
            pytest.skip("no flight example")
    else:
        path = tmp_path / "usecase.py"
        path.write_text(LABEL_ROWS_MODULE)
    op = _op(
        PerformanceCheckOperator,
        stack,
        month="2013-04",
        module_file=str(path),
        feature_params={"threshold_minutes": 15},
    )
    result, _ = _run(op, run_id=f"manual__{module}")
    expected = april_performance[0]
    assert (result["status"], result["rows"], result["live"]) == ("ok", expected["rows"], expected["live"])


def test_a_broken_use_case_module_fails_without_retry(stack, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.operators.performance_check import PerformanceCheckOperator

    path = tmp_path / "broken.py"
    path.write_text("import pandas as pd\n\ndef outcomes(ctx):\n    return pd.DataFrame({'flight_id': ['x']})\n")
    op = _op(PerformanceCheckOperator, stack, month="2013-04", module_file=str(path))
    with pytest.raises(AirflowFailException, match="broken.py: outcomes\\(ctx\\) returned no column is_late"):
        _run(op)


def test_no_champion_skips(stack):
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_mlops.operators.monitoring import DriftCheckOperator

    op = DriftCheckOperator(
        task_id="d", month="2013-05", registered_model_name="nobody", config_path=stack["paths"]["monitoring"]
    )
    with pytest.raises(AirflowSkipException, match="no champion model yet"):
        _run(op)


def test_policy_emits_once_per_interval_and_skips_otherwise(stack, same_month, shifted_month):
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_mlops.assets import RETRAIN_REQUESTED
    from airflow_mlops.operators.monitoring import POLICY_ZONE, RetrainingPolicyOperator

    shifted = shifted_month[0]

    def policy(summary, try_number):
        op = RetrainingPolicyOperator(
            task_id="retraining_policy", drift=summary, performance=None, config_path=stack["paths"]["monitoring"]
        )
        context = task_context("retraining_policy", "manual__p", try_number=try_number)
        context["outlet_events"] = defaultdict(lambda: SimpleNamespace(extra=None))
        try:
            return op.execute(context), context
        except AirflowSkipException:
            return None, context

    decision, context = policy(shifted, 1)
    assert decision is not None and decision["retrain"], decision
    extra = context["outlet_events"][RETRAIN_REQUESTED].extra
    assert extra["month"] == "2013-06" and extra["model"] == MODEL and extra["champion_version"] == "1"
    assert extra["interval_start"].startswith("2013-06-01") and any("distance" in r for r in extra["reasons"])

    again, context = policy(shifted, 2)  # a retry of the same check
    assert again is None and context["outlet_events"][RETRAIN_REQUESTED].extra is None
    assert context["ti"].xcom["decision"]["suppressed_by"] == "dedupe"

    quiet, context = policy(same_month[0], 1)
    assert quiet is None and context["outlet_events"][RETRAIN_REQUESTED].extra is None
    assert context["ti"].xcom["decision"]["suppressed_by"] is None  # no trigger (and May is within the cooldown anyway)
    stored = sorted(p.name for p in stack["lake"].path(POLICY_ZONE, MODEL).iterdir() if not p.name.startswith("."))
    assert stored == ["20130501T000000--20130601T000000.json", "20130601T000000--20130701T000000.json"]


def test_policy_bootstraps_the_first_model_without_a_champion(stack, tmp_path):
    """No champion: the checks skip, the policy asks for the first model once enough months are validated."""
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_mlops.assets import RETRAIN_REQUESTED
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.monitoring import RetrainingPolicyOperator

    config = tmp_path / "monitoring.yaml"
    config.write_text(
        MONITORING_YAML.replace(
            "cap: {period: year, max: 4}", "cap: {period: year, max: 4}\n  bootstrap: {min_months: 2}"
        )
    )
    lake = LakeHook(root_url=(tmp_path / "lake").as_uri())
    lake.ensure_zones()

    def policy(month, try_number=1):
        op = RetrainingPolicyOperator(
            task_id="retraining_policy",
            drift=None,
            performance=None,
            month=month,
            registered_model_name="nobody_yet",
            config_path=str(config),
            lake_root=lake.root_url,
        )
        context = task_context("retraining_policy", f"asset_triggered__{month}", try_number=try_number)
        context["outlet_events"] = defaultdict(lambda: SimpleNamespace(extra=None))
        try:
            return op.execute(context), context
        except AirflowSkipException as skipped:
            return str(skipped), context

    seed_validated(lake, "2013-04")
    waiting, context = policy("2013-04")
    assert "the first model needs 2" in waiting and context["outlet_events"][RETRAIN_REQUESTED].extra is None

    seed_validated(lake, "2013-05")
    decision, context = policy("2013-05")
    assert decision["retrain"] and decision["triggers"][0].startswith("bootstrap"), decision
    extra = context["outlet_events"][RETRAIN_REQUESTED].extra
    assert extra["model"] == "nobody_yet" and extra["month"] == "2013-05" and extra["champion_version"] is None

    retried, context = policy("2013-05", try_number=2)
    assert "never twice" in retried and context["outlet_events"][RETRAIN_REQUESTED].extra is None


def test_policy_skips_when_a_champion_exists_but_the_checks_did_not_run(stack):
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_mlops.operators.monitoring import RetrainingPolicyOperator

    op = RetrainingPolicyOperator(
        task_id="retraining_policy",
        drift=None,
        month="2013-05",
        registered_model_name=MODEL,
        config_path=stack["paths"]["monitoring"],
    )
    with pytest.raises(AirflowSkipException, match="checks were skipped"):
        _run(op)
