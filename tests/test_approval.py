"""Approval per use case (issue 22): the ``approval`` policy, the evidence a person sees, and a human-in-the-loop step
between infra validation and promotion that is answered over the REST API and in the Airflow UI.

The policy and the evidence are checked directly. The approval step runs in the real embedded Airflow (scheduler,
DAG processor, triggerer, API server as processes) on a copy of ``examples/flight_delay`` with ``approval: manual``:
a run is approved over REST (promoted; the ledger and the version keep the approver), one rejected over REST (not
promoted), one left unanswered past a short timeout (rejected: fail closed), one approved and one rejected by
clicking in the UI's Required Actions form. The runs share one stack and one registered model, in this order (the
REST rejection compares against the champion the REST approval made). ``approval: auto`` (every example's default)
is tests/test_dag_training.py: the step skips.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import FLIGHTS, ROOT
from waiting import wait_for

DAG_STAGE = "training"
APPROVE_TASK = "approve_model"


# -- the policy -------------------------------------------------------------------------------------------------------
def test_the_policy_defaults_to_auto_and_reads_a_mode_or_a_mapping():
    from airflow_mlops.core.approval import ApprovalPolicy

    assert ApprovalPolicy.from_config(None) == ApprovalPolicy(mode="auto", timeout_hours=24.0, manual_if=())
    assert ApprovalPolicy.from_config("manual").mode == "manual"
    policy = ApprovalPolicy.from_config({"mode": "manual_if", "manual_if": ["slice_regressed"], "timeout_hours": 2})
    assert (policy.mode, policy.manual_if, policy.timeout.total_seconds()) == ("manual_if", ("slice_regressed",), 7200)


@pytest.mark.parametrize(
    ("approval", "message"),
    [
        ("sometimes", "approval: mode: 'sometimes': expected one of auto, manual, manual_if"),
        ({"mode": "manual_if"}, "approval: manual_if: mode manual_if needs at least one condition"),
        ({"mode": "manual_if", "manual_if": ["moon_phase"]}, "approval: manual_if: unknown condition 'moon_phase'"),
        ({"mode": "manual", "timeout_hours": 0}, "approval: timeout_hours: must be > 0"),
        ({"mode": "manual", "who": "me"}, "approval: who: unknown key"),
    ],
)
def test_a_bad_approval_section_names_the_file_and_the_key(tmp_path, approval, message):
    from airflow_mlops.usecase import config

    folder = _copy_usecase(tmp_path, approval)
    with pytest.raises(config.UseCaseConfigError) as err:
        config.load(folder)
    assert str(err.value).startswith(f"{folder / 'mlops.yaml'}: {message}"), str(err.value)


def test_the_examples_promote_without_a_person():
    from airflow_mlops.usecase import config

    for folder in config.discover(ROOT / "examples"):
        assert config.load(folder).approval_policy().mode == "auto", folder


def _evidence(**changes: Any):
    from airflow_mlops.core.approval import Evidence

    checks = {
        "overall.roc_auc": {
            "candidate": 0.71,
            "champion": 0.72,
            "worse_by": 0.01,
            "max_regression": 0.02,
            "passed": True,
        },
        "slice.origin.EWR.roc_auc": {"candidate": 0.70, "champion": 0.69, "worse_by": -0.01, "passed": True},
        "slice.origin.JFK.roc_auc": {"candidate": 0.65, "champion": 0.68, "worse_by": 0.03, "passed": True},
    }
    base = {
        "model": "m",
        "version": "3",
        "run_id": "r",
        "gate": {"approved": True, "champion_version": "2", "reasons": ["all 3 checks passed"]},
        "checks": checks,
        "family": "hist_gradient_boosting",
        "champion_family": "hist_gradient_boosting",
    }
    return Evidence(**{**base, **changes})


def test_manual_if_holds_only_for_its_conditions():
    from airflow_mlops.core.approval import ApprovalPolicy, holding

    def policy(*conditions: str) -> ApprovalPolicy:
        return ApprovalPolicy.from_config({"mode": "manual_if", "manual_if": list(conditions)})

    evidence = _evidence()
    assert holding(ApprovalPolicy(), evidence) == []
    assert holding(ApprovalPolicy.from_config("manual"), evidence) != []
    (slice_held,) = holding(policy("slice_regressed"), evidence)
    assert "slice.origin.JFK.roc_auc" in slice_held and "EWR" not in slice_held  # EWR got better
    assert len(holding(policy("overall_regressed"), evidence)) == 1
    assert holding(policy("model_family_changed", "first_model", "force_blessed"), evidence) == []
    changed = _evidence(family="logistic_regression")
    assert "hist_gradient_boosting → logistic_regression" in holding(policy("model_family_changed"), changed)[0]
    first = _evidence(gate={"approved": True, "champion_version": None}, checks={})
    assert holding(policy("first_model", "slice_regressed", "model_family_changed"), first)[0].startswith("first_model")


def test_the_body_shows_challenger_and_champion_per_metric_and_slice():
    from airflow_mlops.core.approval import render_body

    evidence = _evidence(
        infra={"approved": True, "checks": {"canned": True}, "latency_ms": {"p95": 12.5}, "reasons": []},
        drift=[{"month": "2013-05", "reasons": ["drift_share 0.4 >= 0.3"]}],
        links={"MLflow run": "http://mlflow/r"},
    )
    body = render_body(evidence, ["approval mode is manual"])
    for key, check in evidence.checks.items():
        assert f"| {key} | {check['candidate']:.4f} | {check['champion']:.4f} |" in body
    assert "**Infra validation**: passed" in body and "p95 12.5 ms" in body
    assert "2013-05: drift_share 0.4 >= 0.3" in body and "[MLflow run](http://mlflow/r)" in body


def test_only_an_approval_promotes():
    from airflow_mlops.core.approval import promotable, record

    approved = record(
        mode="manual", chosen="Approve", responded_by={"id": "a", "name": "ann"}, comment="ok", at="t", timed_out=False
    )
    assert promotable(None) is None and promotable("None") is None
    assert promotable(approved) == approved and approved["approver"] == "ann"
    rejected = record(
        mode="manual", chosen="Reject", responded_by={"id": "b", "name": "bob"}, comment="", at="t", timed_out=False
    )
    with pytest.raises(ValueError, match="rejected by bob"):
        promotable(rejected)
    timed_out = record(mode="manual", chosen="Reject", responded_by=None, comment=None, at="t", timed_out=True)
    assert (timed_out["decision"], timed_out["approver"]) == ("rejected", "timeout")


def test_the_step_sits_between_infra_validation_and_promotion(tmp_path):
    from airflow_mlops.usecase import config
    from airflow_mlops.usecase.factory import training_dag

    dag = training_dag(config.load(_copy_usecase(tmp_path, "manual")))
    approve, promote = dag.get_task(APPROVE_TASK), dag.get_task("promote_model")
    assert approve.upstream_task_ids == {"infra_validate"}
    assert promote.upstream_task_ids == {"infra_validate", APPROVE_TASK}
    assert promote.trigger_rule == "none_failed_min_one_success"  # runs when the step skipped (no person needed)
    assert approve.defaults == ["Reject"]  # what a timeout answers
    assert set(approve.params) == {"comment"}  # the DAG's params are not the form's


def test_the_demo_says_what_to_click_or_curl():
    from airflow_mlops_dev.replay_loop import approval_prompt

    text = approval_prompt("http://127.0.0.1:8080", "m_training", "manual__2026-01-01T00:00:00+00:00", APPROVE_TASK)
    run = "manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    assert f"click: http://127.0.0.1:8080/dags/m_training/runs/{run}/tasks/approve_model/required_actions" in text
    assert f"/api/v2/dags/m_training/dagRuns/{run}/taskInstances/approve_model/-1/hitlDetails" in text
    assert "curl -X PATCH" in text and '"chosen_options": ["Approve"]' in text


# -- the real Airflow ------------------------------------------------------------------------------------------------
def _copy_usecase(root: Path, approval: Any, name: str = "flight_delay") -> Path:
    folder = root / name
    if not folder.exists():
        shutil.copytree(FLIGHTS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((folder / "mlops.yaml").read_text())
    raw["approval"] = approval
    raw["source"]["schedule"] = {"first": "2013-01", "last": "2013-01"}
    raw["model"].pop("schedule_cron", None)
    (folder / "mlops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from airflow_mlops.hooks.bentoml_process import ServingProcess, free_port
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase import config
    from airflow_mlops_dev.devstack import Stack

    from training_fixtures import build_frame, write_snapshot

    home = tmp_path_factory.mktemp("approval-home")
    (home / "mlflow").mkdir()
    db = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        folder = _copy_usecase(home / "projects", {"mode": "manual", "timeout_hours": 1})
        usecase = config.load(folder)
        key = usecase.name.upper()
        for name, value in {
            "MLOPS_PROJECTS": str(folder.parent),
            "MLOPS_PRELOAD_MODULES": "pandas,pyarrow.parquet,mlflow,sklearn,httpx",
            "MLOPS_HOME": str(home),
            "MLOPS_LAKE": (home / "lake").as_uri(),
            "MLOPS_FEAST_HOME": str(home / "feast"),
            "MLFLOW_TRACKING_URI": db,
            "MLFLOW_REGISTRY_URI": db,
            "MLOPS_MLFLOW_ARTIFACTS": (home / "mlflow-artifacts").as_uri(),
            "MLOPS_GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
            "MLFLOW_UI_URL": "http://127.0.0.1:5000",  # gives the evidence its MLflow links
            f"MLOPS_SERVING_PORT__{key}": str(port),  # the embedded endpoint: the deploy step starts it
            "FEAST_USAGE": "False",
        }.items():
            patch.setenv(name, value)
        for name in [k for k in os.environ if k.startswith("AIRFLOW") or k == "MLOPS_USECASE"]:
            patch.delenv(name)
        # The scheduler's sweep of Human-in-the-loop deadlines, every second instead of every 15.
        patch.setenv("AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL", "1")
        lake = LakeHook(root_url=config.lake_url(usecase))
        lake.ensure_zones()
        FeastHook(folder, lake_root=lake.root_url).apply()
        snapshot = write_snapshot(lake, build_frame((1, 2, 3), sample=0.5, seed=0))
        stack = Stack(home=home, port=free_port())
        try:
            stack.up(timeout=240)
            yield {"stack": stack, "usecase": usecase, "folder": folder, "snapshot": snapshot}
        finally:
            stack.down()
            serving = ServingProcess(usecase=folder, port=port)  # deploy_model started it
            serving.stop()
            assert stack.pids() == {} and not serving.pidfile.exists()


@pytest.fixture(scope="module")
def client(stack):
    import httpx

    from airflow_mlops_dev.devstack import AirflowClient

    client = AirflowClient(stack["stack"].url, "admin", stack["stack"].admin_password())
    client.http.timeout = httpx.Timeout(120.0)  # SQLite behind a busy machine: a call may wait on a task's write
    dag_id = stack["usecase"].dag_id(DAG_STAGE)
    client.wait_dag(dag_id, timeout=300)
    client.unpause(dag_id)
    return client


def _until(what: str, probe, timeout: float = 600.0, poll: float = 1.0):
    """``waiting.wait_for``: ``probe`` observed until it holds."""
    return wait_for(probe, timeout, what, every=poll)


def _states(client, dag_id: str, run_id: str) -> dict[str, str]:
    return {t["task_id"]: t["state"] for t in client.task_instances(dag_id, run_id)}


def _waiting(stack, client) -> tuple[str, str, dict[str, Any]]:
    """Trigger a training run and wait until its approval step waits for a person: (dag_id, run_id, request)."""
    dag_id = stack["usecase"].dag_id(DAG_STAGE)
    run_id = client.trigger(dag_id, {"training_set_uri": stack["snapshot"]["uri"]})

    def pending():
        states = _states(client, dag_id, run_id)
        assert not {t for t, s in states.items() if s in ("failed", "upstream_failed")}, states
        return client.pending_approvals(dag_id, run_id)

    (request,) = _until(f"{run_id} to wait for approval", pending)
    assert request["task_instance"]["task_id"] == APPROVE_TASK and request["options"] == ["Approve", "Reject"]
    # Airflow 3.3 race: an answer that resumes the task before the scheduler has handled the parked worker's exit
    # makes the scheduler see "state changed externally" and fail that try (a retry asks again). A person never
    # answers that fast; a script waits until the scheduler logged the parked try as finished.
    parked = f"task_id={APPROVE_TASK}, run_id={run_id}, "
    log = stack["stack"].home / "logs" / "scheduler.log"

    def handled() -> bool:
        lines = log.read_text(errors="replace").splitlines()
        return any("TaskInstance Finished" in ln and parked in ln and "state=awaiting_input" in ln for ln in lines)

    _until(f"the scheduler to handle the parked {APPROVE_TASK} of {run_id}", handled, timeout=120)
    return dag_id, run_id, request


def _finished(client, dag_id: str, run_id: str, task: str) -> str:
    """The state ``task`` of the run ends in, once it has one."""

    def state() -> str | None:
        value = _states(client, dag_id, run_id).get(task)
        return value if value in ("success", "skipped", "failed", "upstream_failed") else None

    return _until(f"{task} of {run_id}", state)


def _version_of(client, dag_id: str, run_id: str) -> str:
    return str(client.xcom(dag_id, run_id, "register_model")["version"])


def _tags(name: str, version: str) -> dict[str, str]:
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    return MlflowHook().client.get_model_version(name, version).tags


@pytest.mark.e2e
def test_e2e_approved_over_rest_promotes_and_the_ledger_and_version_keep_the_approver(stack, client):
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    dag_id, run_id, request = _waiting(stack, client)
    name = stack["usecase"].registered_model_name
    version = _version_of(client, dag_id, run_id)
    assert f"**{name} v{version}**" in request["body"] and "**Infra validation**: passed" in request["body"]
    answer = client.respond(dag_id, run_id, APPROVE_TASK, "Approve", "first model, numbers checked")
    assert answer["responded_by"]["name"] == "admin"
    assert _finished(client, dag_id, run_id, "promote_model") == "success"
    hook = MlflowHook()
    assert hook.alias_version(name, "champion") == version
    (entry,) = hook.read_ledger(name)
    assert entry.to_version == version and entry.approval["decision"] == "approved"
    assert (entry.approval["approver"], entry.approval["comment"]) == ("admin", "first model, numbers checked")
    tags = _tags(name, version)
    assert (tags["mlops.approval.decision"], tags["mlops.approval.approver"]) == ("approved", "admin")
    assert tags["mlops.approval.comment"] == "first model, numbers checked"


@pytest.mark.e2e
def test_e2e_rejected_over_rest_is_not_promoted_and_the_form_showed_the_gate_s_checks(stack, client):
    import json

    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    name = stack["usecase"].registered_model_name
    hook = MlflowHook()
    champion = hook.alias_version(name, "champion")
    dag_id, run_id, request = _waiting(stack, client)
    version = _version_of(client, dag_id, run_id)
    gate_run = client.xcom(dag_id, run_id, "model_gate")["run_id"]
    checks = json.loads(hook.run_artifact_text(gate_run, "gate/decision.json"))["metrics"]
    slices = [k for k in checks if k.startswith("slice.")]
    assert slices, checks  # a champion exists: challenger and champion compared per slice
    for key in slices:
        assert f"| {key} | {checks[key]['candidate']:.4f} | {checks[key]['champion']:.4f} |" in request["body"]
    client.respond(dag_id, run_id, APPROVE_TASK, "Reject", "JFK slice looks odd")
    assert _finished(client, dag_id, run_id, "promote_model") == "skipped"
    assert _finished(client, dag_id, run_id, "deploy_model") == "skipped"
    assert hook.alias_version(name, "champion") == champion and len(hook.read_ledger(name)) == 1
    tags = _tags(name, version)
    assert (tags["mlops.approval.decision"], tags["mlops.approval.approver"]) == ("rejected", "admin")
    assert tags["mlops.approval.comment"] == "JFK slice looks odd"


@pytest.mark.e2e
def test_e2e_no_answer_in_time_rejects(stack, client):
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    name = stack["usecase"].registered_model_name
    champion = MlflowHook().alias_version(name, "champion")
    _copy_usecase(stack["folder"].parent, {"mode": "manual", "timeout_hours": 0.004})  # ~14 s, read at execute
    try:
        dag_id, run_id, _ = _waiting(stack, client)
        assert _finished(client, dag_id, run_id, "promote_model") == "skipped"
    finally:
        _copy_usecase(stack["folder"].parent, {"mode": "manual", "timeout_hours": 1})
    decision = client.xcom(dag_id, run_id, APPROVE_TASK, "approval")
    assert (decision["decision"], decision["approver"], decision["timed_out"]) == ("rejected", "timeout", True)
    assert _states(client, dag_id, run_id)[APPROVE_TASK] == "success"
    assert MlflowHook().alias_version(name, "champion") == champion
    assert _tags(name, _version_of(client, dag_id, run_id))["mlops.approval.approver"] == "timeout"


@pytest.mark.e2e
@pytest.mark.ui
@pytest.mark.parametrize("button", ["Approve", "Reject"])
def test_ui_the_required_actions_form_shows_the_evidence_and_answers(stack, client, button):
    """A person signs in, opens the run's Required Actions form, reads the evidence and clicks a button: Approve
    promotes this version, Reject leaves the champion as it was; either way the version keeps who answered."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    from ui_browser import ensure_chromium, headless_chrome

    ensure_chromium()
    name = stack["usecase"].registered_model_name
    champion = MlflowHook().alias_version(name, "champion")
    dag_id, run_id, _ = _waiting(stack, client)
    version = _version_of(client, dag_id, run_id)
    url = stack["stack"].url
    driver = headless_chrome()
    driver.set_page_load_timeout(60)

    def wait(condition, what: str):
        return WebDriverWait(driver, 60, 0.3, ignored_exceptions=(StaleElementReferenceException,)).until(
            condition, message=what
        )

    try:
        driver.get(f"{url}/")
        wait(lambda d: d.find_elements(By.NAME, "username"), "the login form")
        driver.find_element(By.NAME, "username").send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys(stack["stack"].admin_password())
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait(lambda d: any(c["name"] == "_token" for c in d.get_cookies()), "the session cookie")
        driver.get(f"{url}/dags/{dag_id}/runs/{run_id}/tasks/{APPROVE_TASK}/required_actions")
        wait(lambda d: f"Promote {name} v{version}" in d.find_element(By.TAG_NAME, "body").text, "the form")
        page = driver.find_element(By.TAG_NAME, "body").text
        assert "Infra validation" in page and "Drift at training time" in page, page[:3000]
        comment = driver.find_elements(By.CSS_SELECTOR, "input[name=comment], textarea[name=comment], #element_comment")
        if comment:
            comment[0].send_keys(f"{button} in the browser")

        def click(d) -> bool:
            buttons = [b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == button]
            if buttons and buttons[0].is_enabled():
                buttons[0].click()
                return True
            return False

        wait(click, f"the {button} button")
        promoted = _finished(client, dag_id, run_id, "promote_model")
    finally:
        driver.quit()
    tags = _tags(name, version)
    assert tags["mlops.approval.approver"] == "admin"
    if button == "Approve":
        assert promoted == "success" and tags["mlops.approval.decision"] == "approved"
        assert MlflowHook().alias_version(name, "champion") == version
    else:
        assert promoted == "skipped" and tags["mlops.approval.decision"] == "rejected"
        assert MlflowHook().alias_version(name, "champion") == champion
