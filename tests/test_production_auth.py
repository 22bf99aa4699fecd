"""Production sign-in: the production profile's FAB auth manager, its users and roles, over the REST API.

The module starts one production stack natively (``devstack.Stack``, ``MLOPS_PROFILE=production``: API server,
scheduler, DAG processor, triggerer, Celery worker and MLflow server on this machine's PostgreSQL and Redis), on free
ports, in a temporary ``MLOPS_HOME``, with PostgreSQL databases of its own (random names, dropped afterwards) and a
Redis database index of its own (flushed afterwards); it stops every process it started. ``up`` migrates the FAB
tables and creates the ``admin`` user (role Admin); the module adds a ``viewer`` (role Viewer) the documented way,
``Stack.add_user`` (``airflow users create``).

What is driven, with real JWTs from ``POST /auth/token``:

* the use case's DAGs: a copy of ``examples/flight_delay`` is the only use case of ``MLOPS_PROJECTS``, so the DAG
  factory builds ``flight_delay_training`` and ``flight_delay_rollback`` (both left paused: a run the admin triggers
  is created and stays queued; nothing is trained or rolled back);
* a real approval waiting for a person: a DAG of this module (an extra local DAG bundle, one task) runs the suite's
  ``ModelApprovalOperator`` with the use case's approval policy set to ``manual`` on version 1 of the use case's
  registered model in the stack's MLflow server. It parks in Airflow's human-in-the-loop state exactly as the
  training DAG's ``approve_model`` does after infra validation, without training a model first (minutes of CPU);
  answering it resumes the task on the Celery worker, which tags the MLflow version with the decision.

A viewer signs in and reads (DAGs, runs, the pending approval) but gets 403 when triggering a run, unpausing,
answering the approval and triggering the rollback, and none of these happens; the admin does each.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest
import yaml
from production_fixtures import production_stack

from airflow_mlops.usecase import config
from airflow_mlops_dev.devstack import ADMIN_USER, AUTH_MANAGERS, AirflowClient

from conftest import FLIGHTS

pytestmark = pytest.mark.production

VIEWER = "viewer"
#: The module's own DAG: one ModelApprovalOperator on version 1 of the use case's registered model.
APPROVAL_DAG = "auth_test_approval"
APPROVE_TASK = "approve_model"
APPROVAL_DAG_FILE = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_mlops.operators.approval import ModelApprovalOperator

with DAG(
    dag_id={dag_id!r},
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["test"],
    default_args={{"owner": "tests", "retries": 0}},
):
    ModelApprovalOperator(
        task_id={task_id!r},
        usecase={usecase!r},
        registered={{"name": {model!r}, "version": "1", "infra_validation": {{"approved": True}}}},
    )
"""


def _until(what: str, probe, timeout: float, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s"
        time.sleep(poll)


@pytest.fixture(scope="module")
def usecase(tmp_path_factory) -> config.UseCase:
    """A copy of ``examples/flight_delay`` with ``approval: manual`` and no schedule (runs come from REST only)."""
    folder = tmp_path_factory.mktemp("projects") / config.load(FLIGHTS).name
    shutil.copytree(FLIGHTS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((folder / config.CONFIG_FILE).read_text())
    raw["source"]["schedule"] = None
    raw["model"]["schedule_cron"] = None
    raw["approval"] = {"mode": "manual", "timeout_hours": 1}
    (folder / config.CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    return config.load(folder)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, usecase):
    """One production stack for the module (``production_fixtures.production_stack``) with an extra DAG bundle."""
    dags = tmp_path_factory.mktemp("auth-dags")
    (dags / f"{APPROVAL_DAG}.py").write_text(
        APPROVAL_DAG_FILE.format(
            dag_id=APPROVAL_DAG, task_id=APPROVE_TASK, usecase=str(usecase.folder), model=usecase.registered_model_name
        )
    )
    bundles = [
        {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
        {
            "name": "auth-test",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(dags)},
        },
    ]
    env = {
        # The approval task needs MLflow only: the worker need not import the other heavy libraries first.
        "MLOPS_PRELOAD_MODULES": "mlflow,httpx",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
    }
    with production_stack(tmp_path_factory.mktemp("auth-home"), usecase.folder.parent, env) as stack:
        yield stack


@pytest.fixture(scope="module")
def admin(stack, usecase) -> AirflowClient:
    client = AirflowClient(stack.url, ADMIN_USER, stack.admin_password())
    for dag_id in (APPROVAL_DAG, usecase.dag_id("training"), usecase.dag_id("rollback")):
        client.wait_dag(dag_id, timeout=300)
    return client


@pytest.fixture(scope="module")
def viewer(stack, admin) -> AirflowClient:
    return AirflowClient(stack.url, VIEWER, stack.add_user(VIEWER, "Viewer"))


@pytest.fixture(scope="module")
def model_version(stack, usecase) -> str:
    """Version 1 of the use case's registered model in the stack's MLflow server (what the approval asks about)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.services.mlflow_url, registry_uri=stack.services.mlflow_url)
    run = client.create_run(client.create_experiment(f"auth-test-{uuid.uuid4().hex[:8]}"))
    client.set_terminated(run.info.run_id)
    client.create_registered_model(usecase.registered_model_name)
    version = client.create_model_version(
        usecase.registered_model_name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    assert str(version.version) == "1"
    return "1"


def _trigger(client: AirflowClient, dag_id: str, conf: dict | None = None):
    return client.http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})


def _answer(client: AirflowClient, dag_id: str, run_id: str, option: str, comment: str):
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{APPROVE_TASK}/-1/hitlDetails"
    return client.http.patch(path, json={"chosen_options": [option], "params_input": {"comment": comment}})


# -------------------------------------------------------------------------------------------------- tests
def test_the_production_profile_signs_in_with_fab_users(stack, admin, viewer):
    import httpx

    assert stack.env()["AIRFLOW__CORE__AUTH_MANAGER"] == AUTH_MANAGERS["production"]
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS" not in stack.env()
    assert not (stack.airflow_home / "simple_auth_manager_passwords.json.generated").exists()
    # A wrong password is no token; without a token, nothing is read.
    bad = httpx.post(f"{stack.url}/auth/token", json={"username": VIEWER, "password": "not-the-password"}, timeout=30)
    assert bad.status_code == 401, bad.text
    assert httpx.get(f"{stack.url}/api/v2/dags", timeout=30).status_code == 401
    # Both users sign in; the viewer reads what the admin reads: a permission matter below, not a sign-in one.
    for client in (admin, viewer):
        listed = client.http.get("/api/v2/dags", params={"limit": 100})
        assert listed.status_code == 200, listed.text
        assert {APPROVAL_DAG} <= {d["dag_id"] for d in listed.json()["dags"]}
    # ``up`` again finds the admin and keeps the password admin_password() returns (idempotent).
    assert stack.add_user(ADMIN_USER, "Admin", stack.admin_password()) == stack.admin_password()
    AirflowClient(stack.url, ADMIN_USER, stack.admin_password())


def test_a_viewer_cannot_trigger_or_unpause_an_admin_can(usecase, admin, viewer):
    dag_id = usecase.dag_id("training")  # paused: the admin's run is created and stays queued
    denied = _trigger(viewer, dag_id)
    assert denied.status_code == 403, denied.text
    assert viewer.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).status_code == 403
    assert admin.runs(dag_id) == [] and viewer.http.get(f"/api/v2/dags/{dag_id}").json()["is_paused"] is True
    accepted = _trigger(admin, dag_id)
    assert accepted.status_code == 200, accepted.text
    run_id = accepted.json()["dag_run_id"]
    # The viewer reads the run the admin started.
    assert [r["dag_run_id"] for r in viewer.runs(dag_id)] == [run_id]


def test_a_viewer_cannot_answer_an_approval_an_admin_can(stack, usecase, admin, viewer, model_version):
    from mlflow import MlflowClient

    admin.unpause(APPROVAL_DAG)
    run_id = admin.trigger(APPROVAL_DAG)

    def parked():
        states = {t["task_id"]: t["state"] for t in admin.task_instances(APPROVAL_DAG, run_id)}
        assert states.get(APPROVE_TASK) not in ("failed", "upstream_failed", "success", "skipped"), states
        return admin.pending_approvals(APPROVAL_DAG, run_id)

    (request,) = _until(f"{run_id} to wait for approval", parked, timeout=300)
    assert request["options"] == ["Approve", "Reject"]
    assert f"v{model_version}" in request["subject"] and "manual" in request["subject"]
    # The viewer sees the waiting approval and may not answer it: nothing is recorded.
    assert [r["task_instance"]["task_id"] for r in viewer.pending_approvals(APPROVAL_DAG, run_id)] == [APPROVE_TASK]
    denied = _answer(viewer, APPROVAL_DAG, run_id, "Approve", "a viewer tries")
    assert denied.status_code == 403, denied.text
    assert len(admin.pending_approvals(APPROVAL_DAG, run_id)) == 1

    # Airflow 3.3 race (see tests/test_approval.py): an answer that resumes the task before the scheduler has handled
    # the parked worker's exit fails that try. A person never answers that fast; a script waits for the scheduler.
    log = stack.home / "logs" / "scheduler.log"
    marker = f"task_id={APPROVE_TASK}, run_id={run_id}, "

    def handled() -> bool:
        lines = log.read_text(errors="replace").splitlines()
        return any("TaskInstance Finished" in ln and marker in ln and "state=awaiting_input" in ln for ln in lines)

    _until(f"the scheduler to handle the parked {APPROVE_TASK} of {run_id}", handled, timeout=120)

    answered = _answer(admin, APPROVAL_DAG, run_id, "Approve", "signed in as admin")
    assert answered.status_code == 200, answered.text
    assert answered.json()["responded_by"]["name"] == ADMIN_USER
    assert admin.pending_approvals(APPROVAL_DAG, run_id) == []
    assert admin.wait_run(APPROVAL_DAG, run_id, timeout=300) == "success", admin.task_instances(APPROVAL_DAG, run_id)
    decision = admin.xcom(APPROVAL_DAG, run_id, APPROVE_TASK)
    assert (decision["decision"], decision["approver"], decision["comment"]) == (
        "approved",
        ADMIN_USER,
        "signed in as admin",
    )
    tags = (
        MlflowClient(tracking_uri=stack.services.mlflow_url, registry_uri=stack.services.mlflow_url)
        .get_model_version(usecase.registered_model_name, model_version)
        .tags
    )
    assert (tags["mlops.approval.decision"], tags["mlops.approval.approver"]) == ("approved", ADMIN_USER)


def test_a_viewer_cannot_roll_back_an_admin_can(usecase, admin, viewer):
    dag_id = usecase.dag_id("rollback")  # paused: the admin's run is created and stays queued, nothing rolls back
    conf = {"reason": "auth check: who may roll back"}
    denied = _trigger(viewer, dag_id, conf)
    assert denied.status_code == 403, denied.text
    assert admin.runs(dag_id) == []
    accepted = _trigger(admin, dag_id, conf)
    assert accepted.status_code == 200, accepted.text
    (run,) = admin.runs(dag_id)
    assert (run["dag_run_id"], run["conf"]["reason"]) == (accepted.json()["dag_run_id"], conf["reason"])
