"""The MLOps page of the Airflow UI, against the real embedded Airflow and a real MLflow store.

The module seeds a temporary ``MLOPS_HOME`` with real registered versions (train → gate → register → promote,
twice, then a candidate the gate rejects) and the monitoring runs the monitoring operators log, starts the
embedded Airflow on a free port, and checks the page's JSON endpoints over HTTP (signed in and not), the
rollback action (a real ``mlops_rollback`` run that moves the champion back, as the signed-in user), then
drives headless Debian Chromium through the Airflow UI: the nav entry, the page, and a task's extra link.
Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
import yaml

from airflow_mlops.devstack import AirflowClient, Stack
from airflow_mlops.serving_process import free_port

from conftest import ROOT
from training_fixtures import build_frame, run_pipeline, shuffle_labels, task_context, write_configs, write_snapshot

pytestmark = pytest.mark.e2e
MODEL = "flight_delay_test"
ROLLBACK = "mlops_rollback"
INGEST = "mlops_ingest_validate"
ARTIFACTS = ROOT / "tests" / "artifacts"
SEEDED: dict = {}  # what _seed made (the stack is a frozen dataclass)
MONTHS = {"2013-04": (0.05, 0.02, 0.74, 0.16), "2013-05": (0.15, 0.08, 0.72, 0.17), "2013-06": (0.45, 0.31, 0.66, 0.19)}


def _seed(home: Path) -> dict:
    """Three candidate runs of the real pipeline and three months of monitoring checks, in ``home``'s MLflow."""
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.monitoring import DriftCheckOperator, PerformanceCheckOperator

    lake = LakeHook()
    lake.ensure_zones()
    frame = build_frame((1, 2, 3), sample=0.25, seed=0)
    good = write_snapshot(lake, frame)
    paths = write_configs(home / "config")
    first = run_pipeline(good, paths, "manual__ui_first")
    second = run_pipeline(good, paths, "manual__ui_second")
    bad = write_snapshot(lake, shuffle_labels(frame, keep_months=["2013-03"], seed=1))
    rejected = run_pipeline(bad, paths, "manual__ui_rejected")
    assert first["promoted"]["to_version"] == "1" and second["promoted"]["to_version"] == "2"
    assert rejected["gate"]["approved"] is False and rejected["registered"] == "skipped"

    hook = MlflowHook()
    mv = hook.client.get_model_version(MODEL, "2")
    champion = {"name": MODEL, "version": "2", "run_id": mv.run_id, "model_id": getattr(mv, "model_id", None)}
    for month, (share, psi, auc, brier) in MONTHS.items():
        drift = {"drift_share": share, "drifted_columns": 2.0, "drift_rows": 2000.0, "prediction_drift": psi}
        perf = {"live_rows": 1800.0, "live_roc_auc": auc, "live_brier": brier, "decay_roc_auc": 0.75 - auc}
        for op, kind, metrics in (
            (DriftCheckOperator(task_id="drift_check"), "drift", drift),
            (PerformanceCheckOperator(task_id="performance_check"), "performance", perf),
        ):
            op.log_to_mlflow(
                task_context(op.task_id, f"manual__monitor_{month}", dag_id="mlops_monitoring"),
                kind=kind,
                month=month,
                champion=champion,
                metrics=metrics,
                report_key=None,
                summary={"status": "ok", "month": month, **metrics},
            )
    return {"rejected_run": rejected["gate"]["run_id"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui-home")
    db = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    (home / "mlflow").mkdir()
    # One scheduled month keeps the ingest DAG's catch-up short once it is unpaused (as in test_e2e_scheduler).
    config = yaml.safe_load((ROOT / "include" / "config" / "pipeline.yaml").read_text())
    config["ingest"].update(schedule_first_month="2013-01", schedule_last_month="2013-01")
    (home / "pipeline.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_CONFIG", str(home / "pipeline.yaml"))
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
        # No serving endpoint in this test: the rollback DAG's deploy task fails; its rollback task is what counts.
        patch.setenv("MLOPS_SERVING_URL", f"http://127.0.0.2:{free_port()}")
        seeded = _seed(home)
        for name in [k for k in os.environ if k.startswith("AIRFLOW")]:
            patch.delenv(name)
        stack = Stack(home=home, port=free_port())
        try:
            stack.up(timeout=240)
            SEEDED.update(seeded)
            yield stack
        finally:
            stack.down()
            assert stack.pids() == {}


@pytest.fixture(scope="module")
def client(stack) -> AirflowClient:
    client = AirflowClient(stack.url, "admin", stack.admin_password())
    # SQLite behind a busy 2-core machine: an API call may wait on a task's write for a while.
    client.http.timeout = httpx.Timeout(120.0)
    client.wait_dag(ROLLBACK)
    return client


# -- the JSON endpoints ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/mlops/ui/"),
        ("GET", "/mlops/ui/api/models"),
        ("GET", f"/mlops/ui/api/models/{MODEL}"),
        ("GET", f"/mlops/ui/api/models/{MODEL}/chart/drift.svg"),
        ("POST", f"/mlops/ui/api/models/{MODEL}/rollback"),
    ],
    ids=["page", "models", "model", "chart", "rollback"],
)
def test_unauthenticated_requests_are_refused(stack, method, path):
    response = httpx.request(method, f"{stack.url}{path}", json={"reason": "no login"} if method == "POST" else None)
    assert response.status_code in (401, 403), response.text
    forged = httpx.request(method, f"{stack.url}{path}", headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code in (401, 403)


def test_the_page_is_a_nav_entry_of_the_airflow_ui(client):
    plugins = client.http.get("/api/v2/plugins").json()["plugins"]
    (ours,) = [p for p in plugins if p["name"] == "airflow_mlops"]
    (view,) = ours["external_views"]
    assert view["name"] == "MLOps" and view["url_route"] == "mlops" and view["destination"] == "nav"
    assert view["href"] == "mlops/ui/"
    page = client.http.get("/mlops/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "fetch(url" in page.text and "api/models" in page.text  # the page renders the JSON endpoints


def test_models_lists_aliases_and_the_last_gate_verdict(client):
    models = client.http.get("/mlops/ui/api/models").json()["models"]
    (model,) = [m for m in models if m["name"] == MODEL]
    assert model["champion"] == "2" and model["challenger"] == "2"
    assert model["last_gate"]["verdict"] == "REJECTED" and model["last_gate"]["approved"] is False


def test_model_detail_has_versions_gate_ledger_and_monitoring(stack, client):
    detail = client.http.get(f"/mlops/ui/api/models/{MODEL}").json()
    assert detail["champion"]["version"] == "2" and detail["champion"]["gate"]["approved"] is True
    assert 0.5 < detail["champion"]["holdout"]["roc_auc"] < 1.0
    assert [v["version"] for v in detail["versions"]] == ["2", "1"]
    assert detail["versions"][0]["aliases"] == ["challenger", "champion"]

    last, *earlier = detail["gate"]
    assert last["run_id"] == SEEDED["rejected_run"] and last["verdict"] == "REJECTED"
    assert any("worse by" in reason or "below the floor" in reason for reason in last["reasons"]), last["reasons"]
    assert last["checks"] and last["champion_version"] == "2"
    assert [g["verdict"] for g in earlier] == ["APPROVED", "APPROVED"]
    assert last["airflow"]["run_id"] == "manual__ui_rejected"

    ledger = detail["ledger"]
    assert [(e["seq"], e["action"], e["from_version"], e["to_version"]) for e in ledger] == [
        (2, "promote", "1", "2"),
        (1, "promote", None, "1"),
    ]
    months = [p["month"] for p in detail["monitoring"]]
    assert months == sorted(MONTHS)
    june = detail["monitoring"][-1]
    assert june["metrics"]["drift_share"] == pytest.approx(0.45) and june["metrics"]["live_roc_auc"] == pytest.approx(
        0.66
    )
    assert june["champion_version"] == "2"
    assert detail["rollback"]["target"] == "1" and detail["rollback"]["can_trigger"] is True
    assert detail["rollback"]["dag_exists"] is True


@pytest.mark.parametrize("kind,series", [("drift", "drift_share"), ("performance", "live_roc_auc")])
def test_charts_are_svg_with_one_point_per_month(client, kind, series):
    response = client.http.get(f"/mlops/ui/api/models/{MODEL}/chart/{kind}.svg")
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
    svg = response.text
    assert svg.startswith("<svg") and svg.count(f'data-series="{series}"') == len(MONTHS)
    assert all(month in svg for month in MONTHS)


@pytest.mark.parametrize(
    "path,status",
    [("/mlops/ui/api/models/no_such_model", 404), (f"/mlops/ui/api/models/{MODEL}/chart/nope.svg", 404)],
    ids=["unknown-model", "unknown-chart"],
)
def test_unknown_things_are_404(client, path, status):
    assert client.http.get(path).status_code == status


def test_rollback_refuses_a_form_post_and_an_empty_reason(client):
    url = f"/mlops/ui/api/models/{MODEL}/rollback"
    assert client.http.post(url, data={"reason": "cross-site form"}).status_code == 422
    assert client.http.post(url, json={"reason": " "}).status_code == 422
    assert client.http.post(url, json={"reason": "bad version", "to_version": "x"}).status_code == 422
    assert client.runs(ROLLBACK) == []


def test_rollback_action_runs_the_rollback_dag_as_the_signed_in_user(client):
    client.unpause(ROLLBACK)
    response = client.http.post(f"/mlops/ui/api/models/{MODEL}/rollback", json={"reason": "drift in June"})
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["dag_id"] == ROLLBACK and run["expected_target"] == "1" and run["triggering_user"] == "admin"

    (listed,) = [r for r in client.runs(ROLLBACK) if r["dag_run_id"] == run["dag_run_id"]]
    assert listed["conf"]["registered_model_name"] == MODEL and listed["conf"]["reason"].startswith("drift in June")
    assert listed["triggering_user_name"] == "admin" and listed["run_type"] == "manual"

    deadline, states = time.monotonic() + 400, {}
    while time.monotonic() < deadline and states.get("rollback_model") not in ("success", "failed"):
        time.sleep(2)
        try:
            states = {ti["task_id"]: ti["state"] for ti in client.task_instances(ROLLBACK, run["dag_run_id"])}
        except httpx.TimeoutException:
            continue
    assert states.get("rollback_model") == "success", states

    detail = client.http.get(f"/mlops/ui/api/models/{MODEL}").json()
    assert detail["champion"]["version"] == "1"
    entry = detail["ledger"][0]
    assert (entry["seq"], entry["action"], entry["from_version"], entry["to_version"]) == (3, "rollback", "2", "1")
    assert entry["reason"].startswith("drift in June") and "by admin" in entry["reason"]
    assert entry["triggered_by"]["triggered_by_user"] == "admin"
    assert any(r["run_id"] == run["dag_run_id"] for r in detail["rollback"]["recent_runs"])
    # Back at the first champion there is nothing left to roll back to: refused before any run is made.
    before = len(client.runs(ROLLBACK))
    again = client.http.post(f"/mlops/ui/api/models/{MODEL}/rollback", json={"reason": "once more"})
    assert again.status_code == 409 and "nothing to roll back to" in again.json()["detail"]
    assert len(client.runs(ROLLBACK)) == before


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


@pytest.mark.ui
def test_ui_mlops_page_in_the_airflow_nav(stack, client, browser):
    from selenium.webdriver.common.by import By

    _login(browser, stack)
    # The nav entry opens the page inside the Airflow UI (an iframe at /plugin/mlops).
    _click(
        browser, lambda d: d.find_elements(By.XPATH, "//a[contains(@href, 'plugin/mlops')]"), what="the MLOps nav entry"
    )
    frame = _wait(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe[src*='mlops/ui']"), what="the page frame"
    )[0]
    browser.switch_to.frame(frame)
    _wait(
        browser, lambda d: d.find_element(By.ID, "model-detail").get_attribute("data-loaded") == "true", what="the page"
    )
    assert browser.find_element(By.CSS_SELECTOR, f"nav#models a[data-model='{MODEL}']")
    browser.switch_to.default_content()
    browser.save_screenshot(str(ARTIFACTS / "mlops_nav_page.png"))

    # The page on its own: aliases, gate verdict with reasons, ledger, charts, rollback.
    browser.get(f"{stack.url}/mlops/ui/?model={MODEL}")
    _wait(
        browser, lambda d: d.find_element(By.ID, "model-detail").get_attribute("data-loaded") == "true", what="the page"
    )
    champion = client.http.get(f"/mlops/ui/api/models/{MODEL}").json()["champion"]["version"]
    assert browser.find_element(By.CSS_SELECTOR, "#alias-champion .v").text == f"v{champion}"
    assert browser.find_element(By.ID, "gate-verdict").text == "REJECTED"
    reasons = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#gate-reasons li")]
    assert reasons and any("champion" in r or "floor" in r for r in reasons)
    ledger_rows = browser.find_elements(By.CSS_SELECTOR, "#ledger tr")
    assert len(ledger_rows) >= 3 and "promote" in ledger_rows[-1].text  # header + newest first
    for kind in ("drift", "performance"):
        _wait(
            browser,
            lambda d, k=kind: d.execute_script(f"return document.getElementById('chart-{k}').naturalWidth") > 0,
            what=f"the {kind} chart",
        )
    assert "2013-06" in browser.find_element(By.ID, "monitoring").text
    browser.save_screenshot(str(ARTIFACTS / "mlops_page.png"))
    browser.execute_script("document.getElementById('charts').scrollIntoView()")
    browser.save_screenshot(str(ARTIFACTS / "mlops_charts.png"))

    # The rollback button, to a named version: a real run of mlops_rollback, as admin.
    from selenium.webdriver.support.ui import Select

    versions = Select(browser.find_element(By.ID, "rollback-version"))
    target = next(o.get_attribute("value") for o in versions.options if o.get_attribute("value"))
    assert target != champion
    versions.select_by_value(target)
    browser.find_element(By.ID, "rollback-reason").send_keys(f"restore v{target} from the browser")
    browser.find_element(By.ID, "rollback-button").click()
    link = _wait(browser, lambda d: d.find_elements(By.ID, "rollback-run"), what="the triggered run")[0]
    assert "Triggered mlops_rollback run" in browser.find_element(By.ID, "rollback-result").text
    run_id = link.text
    (run,) = [r for r in client.runs(ROLLBACK) if r["dag_run_id"] == run_id]
    assert run["conf"]["to_version"] == target and run["triggering_user_name"] == "admin"
    browser.save_screenshot(str(ARTIFACTS / "mlops_rollback.png"))


@pytest.mark.ui
def test_ui_data_docs_extra_link_of_a_validate_task(stack, client, browser):
    from selenium.webdriver.common.by import By

    from airflow_mlops import replay
    from airflow_mlops.hooks.lake import LakeHook

    lake = LakeHook(root_url=(stack.home / "lake").as_uri())
    replay.land("2013-02", corrupt="null_column", ring=False, lake_root=lake.root_url)
    client.unpause(INGEST)
    run_id = client.trigger(INGEST, {"month": "2013-02"})
    assert client.wait_run(INGEST, run_id, timeout=300) == "failed"
    links = client.http.get(
        f"/api/v2/dags/{INGEST}/dagRuns/{run_id}/taskInstances/validate_batch/links", params={"map_index": 0}
    ).json()["extra_links"]
    assert links.get("Data Docs")

    _login(browser, stack)
    browser.get(
        f"{stack.url}/dags/{INGEST}/runs/{run_id}/tasks/validate_batch/mapped/0/details"
    )  # extra links live here

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
    assert "/mlops/lake/reports/data_docs/" in browser.current_url
    browser.save_screenshot(str(ARTIFACTS / "data_docs.png"))
