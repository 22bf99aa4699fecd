"""The MLOps page of the Airflow UI for every use case, against a real MLflow store, a real lake and real Airflow.

``seed_usecases`` builds a projects folder with two use cases, the flights example (classification, monthly) and
``tests/usecases/tiny`` (regression, daily), and seeds a temporary MLflow store through the real operators: the
flights model is trained, gated, registered and promoted twice, then a candidate the gate rejects; the tiny model
once; each gets monitoring check runs (of its task's metrics) and the flights model a retraining decision in its
use case's lake. A third registered model belongs to no use case.

The in-process tests run the page's FastAPI app (and the lake reports app) with ``fastapi.testclient`` behind
Airflow's real auth manager (bearer tokens) and the use cases' rollback DAGs written to the test session's Airflow
DB. The ``e2e`` tests start the embedded Airflow with the factory's DAGs (``dags/mlops.py``) and drive the page over
HTTP and through headless Chromium; screenshots go to ``tests/artifacts/``. Every test sets up the state it
asserts on (the e2e rollback tests first put the champion where they need it).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import ROOT
from training_fixtures import (
    REGRESSION_CONFIG_YAML,
    REGRESSION_POLICY_YAML,
    TEST_CONFIG_YAML,
    TEST_POLICY_YAML,
    build_frame,
    regression_frame,
    run_pipeline,
    shuffle_labels,
    task_context,
    write_configs,
    write_snapshot,
)

FLIGHTS_EXAMPLE = ROOT / "examples" / "flight_delay"
TINY_USECASE = ROOT / "tests" / "usecases" / "tiny"
#: A registered model no use case declares (listed without the use-case parts).
ORPHAN = "model_without_usecase"
ARTIFACTS = ROOT / "tests" / "artifacts"
#: Monitoring checks of the flights model per month: drift share, prediction drift, live ROC AUC, live Brier.
FLIGHT_MONTHS = {
    "2013-04": (0.05, 0.02, 0.74, 0.16),
    "2013-05": (0.15, 0.08, 0.72, 0.17),
    "2013-06": (0.45, 0.31, 0.66, 0.19),
}
#: Monitoring checks of the tiny model per day: drift share, live RMSE, live MAE, live R².
TINY_DAYS = {"2024-03-04": (0.1, 1.1, 0.9, 0.93), "2024-03-05": (0.2, 1.6, 1.2, 0.88)}
E2E = pytest.mark.e2e
#: Real training runs and a migrated Airflow DB (the in-process tests); the e2e tests are also marked ``e2e``.
pytestmark = pytest.mark.slow


# -- the seed: two use cases, three registered models --------------------------------------------------------------
def _training_config(base: str, usecase: Any) -> str:
    """``base`` (a training.yaml) naming the use case's registered model and experiment."""
    config = yaml.safe_load(base)
    config.update(registered_model_name=usecase.registered_model_name, experiment_name=usecase.experiment_name)
    return yaml.safe_dump(config)


def _projects(root: Path, narrow_schedule: bool) -> Path:
    """A projects folder with a copy of the flights example (its schedule narrowed to one month if asked: a
    short catch-up once the ingest DAG is unpaused) and of the tiny regression use case."""
    projects = root / "projects"
    shutil.copytree(FLIGHTS_EXAMPLE, projects / FLIGHTS_EXAMPLE.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(TINY_USECASE, projects / TINY_USECASE.name, ignore=shutil.ignore_patterns("__pycache__"))
    if narrow_schedule:
        config_file = projects / FLIGHTS_EXAMPLE.name / "mlops.yaml"
        raw = yaml.safe_load(config_file.read_text())
        first = raw["source"]["schedule"]["first"]
        text = config_file.read_text()
        old = f'schedule: {{first: "{first}", last: "{raw["source"]["schedule"]["last"]}"}}'
        assert old in text, "the flights example's schedule line changed: update _projects"
        config_file.write_text(text.replace(old, f'schedule: {{first: "{first}", last: "{first}"}}'))
    return projects


def _log_checks(usecase: Any, config_path: Path, champion: dict, checks: dict[str, dict[str, dict]]) -> None:
    """Monitoring check runs as the monitoring operators log them: ``{period: {kind: metrics}}``."""
    from airflow_mlops.operators.monitoring import DriftCheckOperator, PerformanceCheckOperator

    operators = {
        "drift": DriftCheckOperator(task_id="drift_check", config_path=str(config_path)),
        "performance": PerformanceCheckOperator(task_id="performance_check", config_path=str(config_path)),
    }
    for period, kinds in checks.items():
        for kind, (metrics, report_key) in kinds.items():
            op = operators[kind]
            op.log_to_mlflow(
                task_context(op.task_id, f"manual__monitor_{period}", dag_id=usecase.dag_id("monitoring")),
                kind=kind,
                month=period,
                champion=champion,
                metrics=metrics,
                report_key=report_key,
                summary={"status": "ok", "month": period, **metrics},
            )


def _champion(name: str, version: str) -> dict[str, Any]:
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    mv = MlflowHook().client.get_model_version(name, version)
    return {"name": name, "version": version, "run_id": mv.run_id, "model_id": getattr(mv, "model_id", None)}


def seed_usecases(root: Path, narrow_schedule: bool = False) -> dict[str, Any]:
    """Seed the MLflow store and the lake the environment points at (``MLFLOW_TRACKING_URI``, ``MLOPS_LAKE``) and
    the projects folder ``<root>/projects`` (where ``MLOPS_PROJECTS`` must point); returns what was made."""
    import mlflow

    from airflow_mlops.core import retraining_policy as rp
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.hooks.monitoring_lake import MonitoringLakeHook
    from airflow_mlops.operators.monitoring import POLICY_ZONE, REPORTS_ZONE
    from airflow_mlops.usecase import config

    projects = _projects(root, narrow_schedule)
    assert config.projects_dir() == projects.resolve(), "MLOPS_PROJECTS must point at <root>/projects"
    flights = config.load(projects / FLIGHTS_EXAMPLE.name)
    tiny = config.load(projects / TINY_USECASE.name)
    assert flights.task == "classification" and tiny.task == "regression"

    # The flights model: v1 and v2 promoted, then a candidate trained on shuffled labels that the gate rejects.
    lake = LakeHook(root_url=config.lake_url(flights))
    lake.ensure_zones()
    frame = build_frame((1, 2, 3), sample=0.25, seed=0)
    paths = write_configs(root / "config-flights", _training_config(TEST_CONFIG_YAML, flights), TEST_POLICY_YAML)
    good = write_snapshot(lake, frame)
    first = run_pipeline(good, paths, "manual__ui_first")
    second = run_pipeline(good, paths, "manual__ui_second")
    bad = write_snapshot(lake, shuffle_labels(frame, keep_months=["2013-03"], seed=1))
    rejected = run_pipeline(bad, paths, "manual__ui_rejected")
    promotions = [first["promoted"], second["promoted"]]  # the flights model's ledger, oldest first
    flights_version = second["promoted"]["to_version"]  # the flights model's champion
    assert [p["to_version"] for p in promotions] == ["1", "2"], promotions  # a fresh store: the seed's own versions
    assert second["promoted"]["from_version"] == first["promoted"]["to_version"]
    assert rejected["gate"]["approved"] is False and rejected["registered"] == "skipped"
    assert rejected["gate"]["champion_version"] == flights_version  # judged against the seed's champion

    # The tiny model: one version, promoted.
    tiny_lake = LakeHook(root_url=config.lake_url(tiny))
    tiny_lake.ensure_zones()
    tiny_paths = write_configs(
        root / "config-tiny", _training_config(REGRESSION_CONFIG_YAML, tiny), REGRESSION_POLICY_YAML
    )
    tiny_run = run_pipeline(write_snapshot(tiny_lake, regression_frame(1500, seed=5)), tiny_paths, "manual__ui_tiny")
    assert tiny_run["promoted"]["to_version"] == "1", tiny_run["gate"]["reasons"]
    tiny_version = tiny_run["promoted"]["to_version"]

    # A model no use case declares: a version of the tiny model's run under another name, made champion by hand.
    hook = MlflowHook()
    hook.activate()
    orphan = mlflow.register_model(tiny_run["trained"]["model_uri"], ORPHAN)
    hook.client.set_registered_model_alias(ORPHAN, "champion", str(orphan.version))

    # Monitoring: each use case's checks in its monitoring experiment; the flights June drift check has a report.
    flights_champion = _champion(flights.registered_model_name, flights_version)
    tiny_champion = _champion(tiny.registered_model_name, tiny_version)
    report_key = f"{REPORTS_ZONE}/drift/2013-06/{flights.registered_model_name}-v{flights_version}.html"
    report_html = b"<html><body>June drift report</body></html>"
    lake.write_file(lake.path(report_key), report_html, rows=0)
    flight_checks = {}
    for month, (share, psi, auc, brier) in FLIGHT_MONTHS.items():
        drift = {"drift_share": share, "drifted_columns": 2.0, "drift_rows": 2000.0, "prediction_drift": psi}
        perf = {"live_rows": 1800.0, "live_roc_auc": auc, "live_brier": brier, "decay_roc_auc": 0.75 - auc}
        key = report_key if month == "2013-06" else None
        flight_checks[month] = {"drift": (drift, key), "performance": (perf, None)}
    tiny_checks = {}
    for day, (share, rmse, mae, r2) in TINY_DAYS.items():
        drift = {"drift_share": share, "drift_rows": 300.0}
        perf = {"live_rows": 280.0, "live_rmse": rmse, "live_mae": mae, "live_r2": r2, "decay_rmse": rmse - 1.0}
        tiny_checks[day] = {"drift": (drift, None), "performance": (perf, None)}
    for usecase, champion, checks in ((flights, flights_champion, flight_checks), (tiny, tiny_champion, tiny_checks)):
        monitoring_yaml = root / f"monitoring-{usecase.name}.yaml"
        monitoring_yaml.write_text(yaml.safe_dump(usecase.monitoring or {}))
        _log_checks(usecase, monitoring_yaml, champion, checks)

    # The retraining policy's decision on June, in the flights use case's lake (the real policy on the June check).
    policy = rp.RetrainingPolicy.from_dict(flights.monitoring["policy"])
    june_start, june_end = "2013-06-01T00:00:00+00:00", "2013-07-01T00:00:00+00:00"
    interval = rp.Interval.parse(june_start, june_end)
    share, psi = FLIGHT_MONTHS["2013-06"][:2]
    source = {"model": flights.registered_model_name, "month": "2013-06", "champion_version": flights_version}
    source.update(interval_start=june_start, interval_end=june_end)
    drift_summary = {"status": "ok", "drift_share": share, "prediction_drift": psi, "drifted_columns": ["dest"]}
    decision, record = rp.decide_interval(policy, interval, source, drift_summary, None, {})
    assert decision.retrain
    policy_lake = MonitoringLakeHook(root_url=config.lake_url(flights))
    policy_lake.write_record(policy_lake.path(POLICY_ZONE, flights.registered_model_name), interval.key, record)
    # A decision about the tiny model at the lake's root: not the tiny use case's lake, so never shown for it.
    root_lake = MonitoringLakeHook()
    root_lake.write_record(root_lake.path(POLICY_ZONE, tiny.registered_model_name), interval.key, record)

    return {
        "projects": projects,
        "flights": flights,
        "tiny": tiny,
        "rejected_run": rejected["gate"]["run_id"],
        "approved_runs": [second["gate"]["run_id"], first["gate"]["run_id"]],
        "tiny_run": tiny_run["trained"]["run_id"],
        # What the seed made, for the tests to expect: the flights model's versions (oldest first), its champion
        # and its promotions as the operator returned them; the tiny model's promotion; the orphan's version.
        "flights_versions": [p["to_version"] for p in promotions],
        "champion": flights_version,
        "promotions": promotions,
        "tiny_promotion": tiny_run["promoted"],
        "orphan_version": str(orphan.version),
        "report_key": report_key,
        "report_html": report_html,
        "june_decision": decision,
    }


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A fresh MLflow store, lake and projects folder for this module, seeded by ``seed_usecases``."""
    root = tmp_path_factory.mktemp("mlops-ui")
    db = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", db)
        patch.setenv("MLFLOW_REGISTRY_URI", db)
        patch.setenv("MLOPS_MLFLOW_ARTIFACTS", (root / "mlflow-artifacts").as_uri())
        patch.setenv("MLOPS_LAKE", (root / "lake").as_uri())
        patch.setenv("MLOPS_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
        patch.setenv("MLOPS_PROJECTS", str(root / "projects"))
        yield seed_usecases(root)


# -- in-process: the FastAPI apps behind Airflow's auth manager ----------------------------------------------------
def _sync_dags(dags: list[Any]) -> None:
    """Write ``dags`` to the Airflow DB as the DAG processor does (so a run of them can be triggered)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag) for dag in dags], {}, None, set(), session=session
        )


@pytest.fixture(scope="module")
def api(seeded, airflow_db) -> dict[str, Any]:
    """The page's app and the lake reports app (test clients), and bearer headers of an admin and a viewer; the
    use cases' rollback DAGs are in the Airflow DB."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    from airflow_mlops.lake_reports_app import create_app as create_lake_app
    from airflow_mlops.mlops_ui_app import create_app
    from airflow_mlops.usecase.factory import rollback_dag

    _sync_dags([rollback_dag(seeded["flights"]), rollback_dag(seeded["tiny"])])
    auth = init_auth_manager()

    def bearer(name: str, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {auth.generate_jwt(SimpleAuthManagerUser(username=name, role=role))}"}

    return {
        "ui": TestClient(create_app()),
        "lake": TestClient(create_lake_app()),
        "admin": bearer("admin", "ADMIN"),
        "viewer": bearer("viewer", "VIEWER"),
    }


def _get(api: dict, path: str, app: str = "ui") -> Any:
    response = api[app].get(path, headers=api["admin"])
    assert response.status_code == 200, response.text
    return response.json() if "json" in response.headers["content-type"] else response.text


def _holdout_of(run_id: str, task: str) -> dict[str, float]:
    """The hold-out metrics of ``task`` the run logged (as the evaluation step wrote them)."""
    from airflow_mlops.core.evaluation import metrics_for
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    logged = MlflowHook().client.get_run(run_id).data.metrics
    return {m: logged[f"holdout_{m}"] for m in metrics_for(task)}


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/"),
        ("GET", "/api/models"),
        ("GET", "/api/models/tiny"),
        ("GET", "/api/models/tiny/chart/drift.svg"),
        ("POST", "/api/models/tiny/rollback"),
        ("GET", "/models/tiny/versions/1/card"),
    ],
    ids=["page", "models", "model", "chart", "rollback", "card"],
)
def test_the_page_needs_a_signed_in_user(api, method, path):
    anonymous = api["ui"].request(method, path, json={"reason": "no login"} if method == "POST" else None)
    assert anonymous.status_code == 401, anonymous.text
    forged = api["ui"].request(method, path, headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 403


def test_every_registered_model_is_listed_with_its_use_case(api, seeded):
    flights, tiny = seeded["flights"], seeded["tiny"]
    models = {m["name"]: m for m in _get(api, "/api/models")["models"]}
    assert set(models) == {flights.registered_model_name, tiny.registered_model_name, ORPHAN}

    listed = models[flights.registered_model_name]
    assert (listed["usecase"], listed["task"]) == (flights.name, "classification")
    assert listed["champion"] == seeded["champion"] and listed["challenger"] == seeded["champion"]
    assert listed["last_gate"]["run_id"] == seeded["rejected_run"] and listed["last_gate"]["approved"] is False
    assert listed["last_gate"]["verdict"] == "REJECTED"

    listed = models[tiny.registered_model_name]
    assert (listed["usecase"], listed["task"]) == (tiny.name, "regression")
    assert listed["champion"] == seeded["tiny_promotion"]["to_version"] and listed["last_gate"]["verdict"] == "APPROVED"

    orphan = models[ORPHAN]
    assert orphan["usecase"] is None and orphan["task"] is None and orphan["champion"] == seeded["orphan_version"]


def test_each_model_shows_the_hold_out_metrics_of_its_task(api, seeded):
    from airflow_mlops.core.evaluation import metrics_for

    flights, tiny = seeded["flights"], seeded["tiny"]
    detail = _get(api, f"/api/models/{flights.registered_model_name}")
    champion = detail["champion"]
    assert detail["task"] == "classification" and champion["version"] == seeded["champion"]
    assert list(champion["holdout"]) == list(metrics_for("classification"))
    assert champion["holdout"] == _holdout_of(champion["run_id"], "classification")

    detail = _get(api, f"/api/models/{tiny.registered_model_name}")
    champion = detail["champion"]
    assert detail["task"] == "regression" and champion["run_id"] == seeded["tiny_run"]
    assert list(champion["holdout"]) == list(metrics_for("regression")) == ["rmse", "mae", "r2"]
    assert champion["holdout"] == _holdout_of(seeded["tiny_run"], "regression")

    # No use case: the task its champion's run recorded decides the metrics shown.
    orphan = _get(api, f"/api/models/{ORPHAN}")
    assert orphan["usecase"] is None and orphan["task"] == "regression"
    assert orphan["champion"]["holdout"] == _holdout_of(seeded["tiny_run"], "regression")
    assert [c["metric"] for c in orphan["monitoring_columns"]][2:4] == ["live_rmse", "live_mae"]


def test_the_detail_reads_gate_ledger_and_monitoring_of_the_model_s_use_case(api, seeded):
    flights = seeded["flights"]
    name = flights.registered_model_name
    detail = _get(api, f"/api/models/{name}")
    assert detail["usecase"]["name"] == flights.name and detail["usecase"]["lake_prefix"] == flights.name
    assert detail["usecase"]["dags"]["rollback"] == flights.dag_id("rollback")
    assert [v["version"] for v in detail["versions"]] == seeded["flights_versions"][::-1]  # newest first
    assert seeded["flights_versions"][-1] == seeded["champion"]
    assert detail["versions"][0]["aliases"] == ["challenger", "champion"]

    last, *earlier = detail["gate"]
    assert last["run_id"] == seeded["rejected_run"] and last["verdict"] == "REJECTED"
    assert last["checks"] and last["champion_version"] == seeded["champion"] and last["reasons"]
    assert [g["run_id"] for g in earlier] == seeded["approved_runs"]
    assert [g["verdict"] for g in earlier] == ["APPROVED", "APPROVED"]
    assert last["airflow"]["run_id"] == "manual__ui_rejected"

    # The ledger, newest first: the seed's promotions as the promote operator recorded them.
    moves = [(p["seq"], p["action"], p["from_version"], p["to_version"]) for p in reversed(seeded["promotions"])]
    assert [(e["seq"], e["action"], e["from_version"], e["to_version"]) for e in detail["ledger"]] == moves
    assert [m[1] for m in moves] == ["promote", "promote"] and moves[-1][2] is None  # the first had no champion
    assert [p["period"] for p in detail["monitoring"]] == sorted(FLIGHT_MONTHS)
    june = detail["monitoring"][-1]
    share, psi, auc, brier = FLIGHT_MONTHS["2013-06"]
    assert june["metrics"]["drift_share"] == pytest.approx(share)
    assert june["metrics"]["live_roc_auc"] == pytest.approx(auc)
    assert june["champion_version"] == seeded["champion"]
    assert june["reports"] == {"drift": f"../lake/{flights.name}/{seeded['report_key']}"}
    columns = [c["metric"] for c in detail["monitoring_columns"]]
    assert columns == ["drift_share", "prediction_drift", "live_roc_auc", "live_brier", "decay_roc_auc"]

    decision = seeded["june_decision"]
    assert june["retraining"] == {"retrain": True, "reasons": decision.reasons, "suppressed_by": None}
    assert detail["retraining"] == [{"period": "2013-06", **june["retraining"]}]
    assert all(p["retraining"] is None for p in detail["monitoring"][:-1])


def test_a_regression_model_s_monitoring_and_decisions_are_its_own(api, seeded):
    tiny = seeded["tiny"]
    detail = _get(api, f"/api/models/{tiny.registered_model_name}")
    assert [p["period"] for p in detail["monitoring"]] == sorted(TINY_DAYS)
    columns = [c["metric"] for c in detail["monitoring_columns"]]
    assert columns == ["drift_share", "prediction_drift", "live_rmse", "live_mae", "decay_rmse", "live_r2"]
    last = detail["monitoring"][-1]
    share, rmse, mae, r2 = TINY_DAYS[max(TINY_DAYS)]
    assert last["metrics"]["live_rmse"] == pytest.approx(rmse) and last["metrics"]["live_r2"] == pytest.approx(r2)
    # The decision seeded at the lake's root is not the tiny use case's lake: none is shown.
    assert detail["retraining"] == [] and all(p["retraining"] is None for p in detail["monitoring"])
    promoted = seeded["tiny_promotion"]
    assert [(e["seq"], e["to_version"]) for e in detail["ledger"]] == [(promoted["seq"], promoted["to_version"])]


@pytest.mark.parametrize(
    "model,series,periods",
    [("flights", "live_roc_auc", FLIGHT_MONTHS), ("tiny", "live_rmse", TINY_DAYS)],
    ids=["classification", "regression"],
)
def test_the_performance_chart_shows_the_live_metrics_of_the_task(api, seeded, model, series, periods):
    name = seeded[model].registered_model_name
    response = api["ui"].get(f"/api/models/{name}/chart/performance.svg", headers=api["admin"])
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
    svg = response.text
    assert svg.startswith("<svg") and svg.count(f'data-series="{series}"') == len(periods)
    assert all(period in svg for period in periods)
    other = "live_rmse" if series == "live_roc_auc" else "live_roc_auc"
    assert f'data-series="{other}"' not in svg


@pytest.mark.parametrize(
    "path", ["/api/models/no_such_model", "/api/models/tiny/chart/nope.svg"], ids=["unknown-model", "unknown-chart"]
)
def test_unknown_things_are_404(api, path):
    assert api["ui"].get(path, headers=api["admin"]).status_code == 404


def test_every_version_links_its_model_card_and_the_page_serves_it(api, seeded):
    import html

    import mlflow

    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.links import model_card_url
    from airflow_mlops.mlops_ui_app import URL_PREFIX

    flights, hook = seeded["flights"], MlflowHook()
    name = flights.registered_model_name
    detail = _get(api, f"/api/models/{name}")
    assert [v["version"] for v in detail["versions"]] == seeded["flights_versions"][::-1]
    for listed in detail["versions"]:
        assert f"{URL_PREFIX}/{listed['card']}" == model_card_url(name, listed["version"])
        attached = hook.client.get_model_version(name, listed["version"]).tags["mlops.model_card_html"]
        page = _get(api, f"/{listed['card']}")
        assert page == mlflow.artifacts.load_text(attached)
        assert f"{name} version {listed['version']}" in page and html.escape(flights.description) in page
    assert detail["champion"]["card"] == detail["versions"][0]["card"]
    markdown = api["ui"].get(f"/{detail['versions'][0]['card']}", params={"format": "markdown"}, headers=api["admin"])
    assert markdown.status_code == 200
    assert markdown.text.startswith(f"# Model card: {name} version {seeded['flights_versions'][-1]}")
    assert f"## Intended use\n\n{html.escape(flights.description, quote=False)}\n" in markdown.text
    # A version registered outside the pipeline has no card: no link, and the endpoint says so.
    (orphan,) = _get(api, f"/api/models/{ORPHAN}")["versions"]
    assert orphan["version"] == seeded["orphan_version"] and orphan["card"] is None
    card = f"/models/{ORPHAN}/versions/{seeded['orphan_version']}/card"
    assert api["ui"].get(card, headers=api["admin"]).status_code == 404


def test_each_use_case_s_reports_are_served_under_its_name(api, seeded):
    from airflow_mlops.hooks.lake import LakeHook

    flights = seeded["flights"]
    detail = _get(api, f"/api/models/{flights.registered_model_name}")
    href = detail["monitoring"][-1]["reports"]["drift"]  # relative to /mlops/ui/: ../lake/... is /mlops/lake/...
    served = api["lake"].get(href.removeprefix(".."), headers=api["admin"])
    assert served.status_code == 200 and served.content == seeded["report_html"]
    assert served.headers["content-type"].startswith("text/html")

    lake = LakeHook()  # MLOPS_LAKE: the lake's own reports/ zone is still served
    lake.write_file(lake.path("reports", "replay", "index.html"), b"<html>replay</html>", rows=0)
    assert api["lake"].get("/lake/reports/replay/index.html", headers=api["admin"]).content == b"<html>replay</html>"

    refused = [
        f"/lake/{flights.name}/training_sets/",  # a data zone of the use case
        f"/lake/{flights.name}/quarantine/2013-02/abc/flights.csv",  # quarantined data itself
        f"/lake/no_such_usecase/{seeded['report_key']}",  # not a use case of the projects folder
        f"/lake/{flights.name}/%2E%2E/{flights.name}/{seeded['report_key']}",
    ]
    for path in refused:
        assert api["lake"].get(path, headers=api["admin"]).status_code == 404, path
    assert api["lake"].get(href.removeprefix(".."), headers={}).status_code == 401


def test_report_links_carry_the_use_case_s_place_in_the_lake(seeded):
    from airflow_mlops import settings
    from airflow_mlops.links import lake_prefix, report_url
    from airflow_mlops.usecase import config

    flights = seeded["flights"]
    key = "reports/data_docs/validations/x/index.html"
    assert report_url(key, config.lake_url(flights)) == f"/mlops/lake/{flights.name}/{key}"
    assert report_url(key) == report_url(key, settings.lake_url()) == f"/mlops/lake/{key}"
    assert lake_prefix("s3://elsewhere/lake") is None and report_url(key, "s3://elsewhere/lake") == ""


def _report_task_class() -> type:
    """An operator with the report links that pushes a report key relative to its ``lake_root``, as the
    validation and monitoring operators do."""
    from airflow.sdk import BaseOperator

    from airflow_mlops.links import REPORT_XCOM_KEY, DataDocsLink
    from airflow_mlops.links_monitoring import MonitoringReportLink

    class ReportTask(BaseOperator):
        operator_extra_links = (DataDocsLink(), MonitoringReportLink())

        def __init__(self, *, key: str, lake_root: str | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.key, self.lake_root = key, lake_root

        def execute(self, context: Any) -> None:
            context["ti"].xcom_push(key=REPORT_XCOM_KEY, value=self.key)

    return ReportTask


def test_a_task_s_report_links_lead_into_its_use_case_s_lake(api, seeded):
    from datetime import datetime

    from airflow.models.xcom import XComModel
    from airflow.sdk import DAG
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_mlops.usecase import config

    flights = seeded["flights"]
    report_task = _report_task_class()
    with DAG(dag_id="ui_test_report_links", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        report_task(task_id="in_usecase", key=seeded["report_key"], lake_root=config.lake_url(flights))
        report_task(task_id="at_lake_root", key="reports/replay/index.html")
        report_task(task_id="elsewhere", key="reports/x.html", lake_root="s3://another-bucket/lake")
    _sync_dags([dag])
    run = dag.test()
    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag.dag_id, XComModel.run_id == run.run_id, XComModel.key.like("_link_%")
            )
        ).all()
        links = {(row.task_id, row.key): XComModel.deserialize_value(row) for row in rows}
    for link in ("_link_DataDocsLink", "_link_MonitoringReportLink"):
        assert links[("in_usecase", link)] == f"/mlops/lake/{flights.name}/{seeded['report_key']}"
        assert links[("at_lake_root", link)] == "/mlops/lake/reports/replay/index.html"
        assert links[("elsewhere", link)] == ""  # not under MLOPS_LAKE: nothing serves it


def test_rollback_triggers_the_use_case_s_rollback_dag(api, seeded):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    flights, tiny = seeded["flights"], seeded["tiny"]
    name = flights.registered_model_name
    previous = seeded["promotions"][-1]["from_version"]  # the champion before the seed's last promotion
    state = _get(api, f"/api/models/{name}")["rollback"]
    assert state["dag_id"] == flights.dag_id("rollback") and state["target"] == previous
    assert state["dag_exists"] is True and state["can_trigger"] is True

    response = api["ui"].post(f"/api/models/{name}/rollback", json={"reason": "drift in June"}, headers=api["admin"])
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["dag_id"] == flights.dag_id("rollback") and run["expected_target"] == previous
    assert run["triggering_user"] == "admin"
    with create_session() as session:
        stored = session.scalar(select(DagRun).where(DagRun.run_id == run["dag_run_id"]))
        assert stored.dag_id == flights.dag_id("rollback") and stored.triggering_user_name == "admin"
        assert stored.conf == {"to_version": None, "reason": "drift in June (by admin, MLOps page)"}
    recent = _get(api, f"/api/models/{name}")["rollback"]["recent_runs"]
    assert recent[0]["run_id"] == run["dag_run_id"] and recent[0]["triggering_user"] == "admin"

    # The tiny model's ledger has one champion: nothing to roll back to, refused before any run is made ...
    tiny_name = tiny.registered_model_name
    refused = api["ui"].post(f"/api/models/{tiny_name}/rollback", json={"reason": "why not"}, headers=api["admin"])
    assert refused.status_code == 409 and "nothing to roll back to" in refused.json()["detail"]
    # ... but a named version goes to the tiny use case's own rollback DAG.
    pinned = seeded["tiny_promotion"]["to_version"]
    named = api["ui"].post(
        f"/api/models/{tiny_name}/rollback", json={"reason": "pin it", "to_version": pinned}, headers=api["admin"]
    )
    assert named.status_code == 201 and named.json()["dag_id"] == tiny.dag_id("rollback") == f"{tiny.name}_rollback"
    assert named.json()["conf"]["to_version"] == pinned


def test_rollback_is_refused_without_a_use_case_a_right_or_a_reason(api, seeded):
    orphan = api["ui"].post(f"/api/models/{ORPHAN}/rollback", json={"reason": "no dag"}, headers=api["admin"])
    assert orphan.status_code == 409 and "no use case" in orphan.json()["detail"]
    state = _get(api, f"/api/models/{ORPHAN}")["rollback"]
    assert state["dag_id"] is None and state["can_trigger"] is False and state["unavailable"]

    url = f"/api/models/{seeded['flights'].registered_model_name}/rollback"
    viewer = api["ui"].post(url, json={"reason": "not mine to do"}, headers=api["viewer"])
    assert viewer.status_code == 403
    assert api["ui"].post(url, data={"reason": "cross-site form"}, headers=api["admin"]).status_code == 422
    assert api["ui"].post(url, json={"reason": " "}, headers=api["admin"]).status_code == 422
    bad = {"reason": "bad version", "to_version": "x"}
    assert api["ui"].post(url, json=bad, headers=api["admin"]).status_code == 422


# -- e2e: the embedded Airflow with the factory's DAGs ---------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from airflow_mlops.hooks.bentoml_process import free_port
    from airflow_mlops_dev.devstack import Stack

    if not (ROOT / "dags" / "mlops.py").is_file():
        pytest.skip("dags/ does not build the use cases' DAGs with the factory yet (dags/mlops.py)")
    home = tmp_path_factory.mktemp("ui-home")
    db = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    (home / "mlflow").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        # The scheduler preloads only what the ingest and rollback DAGs' tasks import (the whole list costs
        # ~40 s of a 2-core start).
        patch.setenv("MLOPS_PRELOAD_MODULES", "pandas,pyarrow.parquet,great_expectations,mlflow,httpx")
        patch.setenv("MLOPS_HOME", str(home))
        patch.setenv("MLOPS_LAKE", (home / "lake").as_uri())
        patch.setenv("MLFLOW_TRACKING_URI", db)
        patch.setenv("MLFLOW_REGISTRY_URI", db)
        patch.setenv("MLOPS_MLFLOW_ARTIFACTS", (home / "mlflow-artifacts").as_uri())
        patch.setenv("MLOPS_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
        patch.setenv("MLFLOW_UI_URL", "http://127.0.0.1:5000")  # gives the MLflow extra links an address
        patch.setenv("MLOPS_PROJECTS", str(home / "projects"))
        seeded = seed_usecases(home, narrow_schedule=True)
        # No serving endpoint in this test: the rollback DAG's deploy task fails; its rollback task is what counts.
        for usecase in (seeded["flights"], seeded["tiny"]):
            patch.setenv(f"MLOPS_SERVING_URL__{usecase.name.upper()}", f"http://127.0.0.2:{free_port()}")
        for name in [k for k in os.environ if k.startswith("AIRFLOW")]:
            patch.delenv(name)
        stack = Stack(home=home, port=free_port())
        try:
            stack.up(timeout=240)
            yield {"stack": stack, **seeded}
        finally:
            stack.down()
            assert stack.pids() == {}


@pytest.fixture(scope="module")
def client(stack):
    from airflow_mlops_dev.devstack import AirflowClient

    client = AirflowClient(stack["stack"].url, "admin", stack["stack"].admin_password())
    # SQLite behind a busy 2-core machine: an API call may wait on a task's write for a while.
    client.http.timeout = httpx.Timeout(120.0)
    client.wait_dag(stack["flights"].dag_id("rollback"))
    return client


def ensure_champion(name: str, version: str, run_id: str) -> list[Any]:
    """Put ``name``'s champion on ``version`` with a promotion (as the training DAG records one) unless it is there;
    returns the ledger after."""
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.registry import MlflowPromoteModelOperator

    hook = MlflowHook()
    current = hook.alias_version(name, "champion")
    if current != version:
        gate = {"approved": True, "champion_version": current}
        registered = {"name": name, "version": version, "run_id": "ui-test", "gate": gate}
        MlflowPromoteModelOperator(task_id="promote_model", registered=registered).execute(
            task_context("promote_model", run_id, dag_id="ui_test_setup")
        )
    return hook.read_ledger(name)


@E2E
def test_e2e_the_page_is_a_nav_entry_and_refuses_anonymous_calls(stack, client):
    url = stack["stack"].url
    name = stack["flights"].registered_model_name
    for method, path in [("GET", "/mlops/ui/api/models"), ("POST", f"/mlops/ui/api/models/{name}/rollback")]:
        response = httpx.request(method, f"{url}{path}", json={"reason": "no login"} if method == "POST" else None)
        assert response.status_code in (401, 403), response.text
    plugins = client.http.get("/api/v2/plugins").json()["plugins"]
    (ours,) = [p for p in plugins if p["name"] == "airflow_mlops"]
    (view,) = ours["external_views"]
    assert view["name"] == "MLOps" and view["url_route"] == "mlops" and view["href"] == "mlops/ui/"
    page = client.http.get("/mlops/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "api/models" in page.text
    models = {m["name"]: m for m in client.http.get("/mlops/ui/api/models").json()["models"]}
    assert models[name]["usecase"] == stack["flights"].name
    assert models[stack["tiny"].registered_model_name]["task"] == "regression"


@E2E
def test_e2e_rollback_action_runs_the_use_case_s_rollback_dag_as_the_signed_in_user(stack, client):
    from airflow_mlops.core import ledger as ledger_core

    flights = stack["flights"]
    name, dag_id = flights.registered_model_name, flights.dag_id("rollback")
    champion = stack["champion"]  # the seed's last promotion: this test puts the champion back there first
    ledger = ensure_champion(name, champion, f"manual__ui_setup_{time.time_ns()}")
    target = ledger_core.rollback_target(ledger)
    head = ledger_core.head(ledger).seq

    client.unpause(dag_id)
    response = client.http.post(f"/mlops/ui/api/models/{name}/rollback", json={"reason": "drift in June"})
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["dag_id"] == dag_id and run["expected_target"] == target and run["triggering_user"] == "admin"
    (listed,) = [r for r in client.runs(dag_id) if r["dag_run_id"] == run["dag_run_id"]]
    assert listed["conf"]["reason"].startswith("drift in June") and listed["triggering_user_name"] == "admin"

    deadline, states = time.monotonic() + 400, {}
    while time.monotonic() < deadline and states.get("rollback_model") not in ("success", "failed"):
        time.sleep(2)
        try:
            states = {ti["task_id"]: ti["state"] for ti in client.task_instances(dag_id, run["dag_run_id"])}
        except httpx.TimeoutException:
            continue
    assert states.get("rollback_model") == "success", states

    detail = client.http.get(f"/mlops/ui/api/models/{name}").json()
    assert detail["champion"]["version"] == target
    entry = detail["ledger"][0]
    assert (entry["seq"], entry["action"], entry["from_version"], entry["to_version"]) == (
        head + 1,
        "rollback",
        champion,
        target,
    )
    assert entry["reason"].startswith("drift in June") and "by admin" in entry["reason"]
    assert any(r["run_id"] == run["dag_run_id"] for r in detail["rollback"]["recent_runs"])


# -- headless Chromium through the Airflow UI --------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    from ui_browser import ensure_chromium, headless_chrome

    ensure_chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = headless_chrome()
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout: float = 60.0, what: str = ""):
    """Wait for a condition; the Airflow UI is React and re-renders, so an element found in one poll may be
    gone in the next (StaleElementReferenceException): such a poll counts as "not yet"."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver, timeout, poll_frequency=0.3, ignored_exceptions=(StaleElementReferenceException,)
    ).until(condition, message=what)


def _click(driver, find, timeout: float = 60.0, what: str = "") -> None:
    """Find an element and click it, finding it afresh whenever a re-render replaced it in between."""

    def found_and_clicked(d) -> bool:
        elements = find(d)
        if not elements:
            return False
        elements[0].click()  # a stale element raises: ignored by _wait, found again next poll
        return True

    _wait(driver, found_and_clicked, timeout=timeout, what=what)


def _login(driver, stack) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{stack.url}/")
    if any(c["name"] == "_token" for c in driver.get_cookies()):
        return  # signed in by an earlier test of this module (one browser per module)
    _wait(driver, lambda d: d.find_elements(By.NAME, "username"), what="the login form")
    driver.find_element(By.NAME, "username").send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(stack.admin_password())
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(driver, lambda d: any(c["name"] == "_token" for c in d.get_cookies()), what="the session cookie")


def _page_loaded(driver) -> bool:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "model-detail").get_attribute("data-loaded") == "true"


@E2E
@pytest.mark.ui
def test_ui_mlops_page_in_the_airflow_nav(stack, client, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    flights, tiny, airflow = stack["flights"], stack["tiny"], stack["stack"]
    name, dag_id = flights.registered_model_name, flights.dag_id("rollback")
    champion = stack["champion"]  # the seed's last promotion: put back there first (a rollback test may move it)
    ledger = ensure_champion(name, champion, f"manual__ui_browser_setup_{time.time_ns()}")
    _login(browser, airflow)
    # The nav entry opens the page inside the Airflow UI (an iframe at /plugin/mlops).
    _click(
        browser, lambda d: d.find_elements(By.XPATH, "//a[contains(@href, 'plugin/mlops')]"), what="the MLOps nav entry"
    )
    frame = _wait(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe[src*='mlops/ui']"), what="the page frame"
    )[0]
    browser.switch_to.frame(frame)
    _wait(browser, _page_loaded, what="the page")
    for model in (name, tiny.registered_model_name):
        assert browser.find_element(By.CSS_SELECTOR, f"nav#models a[data-model='{model}']")
    browser.switch_to.default_content()
    browser.save_screenshot(str(ARTIFACTS / "mlops_nav_page.png"))

    # The page on its own: use case, aliases, gate verdict with reasons, ledger, charts, rollback.
    browser.get(f"{airflow.url}/mlops/ui/?model={name}")
    _wait(browser, _page_loaded, what="the page")
    assert browser.find_element(By.ID, "usecase-name").text == flights.name
    assert browser.find_element(By.CSS_SELECTOR, "#alias-champion .v").text == f"v{champion}"
    assert browser.find_element(By.ID, "gate-verdict").text == "REJECTED"
    reasons = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#gate-reasons li")]
    assert reasons and any("champion" in r or "floor" in r for r in reasons)
    ledger_rows = browser.find_elements(By.CSS_SELECTOR, "#ledger tr")
    assert len(ledger_rows) == len(ledger) + 1 and "promote" in ledger_rows[-1].text  # header + newest first
    for kind in ("drift", "performance"):
        _wait(
            browser,
            lambda d, k=kind: d.execute_script(f"return document.getElementById('chart-{k}').naturalWidth") > 0,
            what=f"the {kind} chart",
        )
    assert "2013-06" in browser.find_element(By.ID, "monitoring").text
    assert "2013-06" in browser.find_element(By.ID, "retraining").text
    browser.save_screenshot(str(ARTIFACTS / "mlops_page.png"))

    # The regression model: its own metrics in the monitoring table.
    browser.get(f"{airflow.url}/mlops/ui/?model={tiny.registered_model_name}")
    _wait(browser, _page_loaded, what="the regression model's page")
    assert "live RMSE" in browser.find_element(By.ID, "monitoring").text
    _wait(
        browser,
        lambda d: d.execute_script("return document.getElementById('chart-performance').naturalWidth") > 0,
        what="the regression model's performance chart",
    )
    browser.save_screenshot(str(ARTIFACTS / "mlops_page_regression.png"))

    # The rollback button, to a named version: a real run of the use case's rollback DAG, as admin.
    browser.get(f"{airflow.url}/mlops/ui/?model={name}")
    _wait(browser, _page_loaded, what="the page")
    versions = Select(browser.find_element(By.ID, "rollback-version"))
    target = next(o.get_attribute("value") for o in versions.options if o.get_attribute("value"))
    assert target != champion
    versions.select_by_value(target)
    browser.find_element(By.ID, "rollback-reason").send_keys(f"restore v{target} from the browser")
    browser.find_element(By.ID, "rollback-button").click()
    link = _wait(browser, lambda d: d.find_elements(By.ID, "rollback-run"), what="the triggered run")[0]
    assert f"Triggered {dag_id} run" in browser.find_element(By.ID, "rollback-result").text
    (run,) = [r for r in client.runs(dag_id) if r["dag_run_id"] == link.text]
    assert run["conf"]["to_version"] == target and run["triggering_user_name"] == "admin"
    browser.save_screenshot(str(ARTIFACTS / "mlops_rollback.png"))


@E2E
@pytest.mark.ui
def test_ui_data_docs_extra_link_of_a_validate_task(stack, client, browser):
    from selenium.webdriver.common.by import By

    from airflow_mlops_dev import replay

    flights, airflow = stack["flights"], stack["stack"]
    ingest = flights.dag_id("ingest_validate")
    replay.land("2013-02", corrupt="null_column", ring=False, usecase=flights.folder)
    client.unpause(ingest)
    run_id = client.trigger(ingest, {"period": "2013-02"})
    assert client.wait_run(ingest, run_id, timeout=300) == "failed"
    links = client.http.get(
        f"/api/v2/dags/{ingest}/dagRuns/{run_id}/taskInstances/validate_batch/links", params={"map_index": 0}
    ).json()["extra_links"]
    assert links.get("Data Docs", "").startswith(f"/mlops/lake/{flights.name}/reports/data_docs/"), links

    _login(browser, airflow)
    browser.get(f"{airflow.url}/dags/{ingest}/runs/{run_id}/tasks/validate_batch/mapped/0/details")

    def data_docs_links(d):
        return [b for b in d.find_elements(By.XPATH, "//a|//button") if b.text.strip() == "Data Docs"]

    _wait(browser, data_docs_links, what="the Data Docs extra link")
    browser.save_screenshot(str(ARTIFACTS / "validate_task_extra_link.png"))
    handles = set(browser.window_handles)
    _click(browser, data_docs_links, what="the Data Docs extra link")
    _wait(browser, lambda d: len(d.window_handles) > len(handles) or "/mlops/lake/" in d.current_url, what="the link")
    new = set(browser.window_handles) - handles
    if new:
        browser.switch_to.window(new.pop())
    _wait(browser, lambda d: "values must never be null" in d.page_source, what="the Data Docs page")
    assert f"/mlops/lake/{flights.name}/reports/data_docs/" in browser.current_url
    browser.save_screenshot(str(ARTIFACTS / "data_docs.png"))
