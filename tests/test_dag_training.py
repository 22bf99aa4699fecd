"""The flight_delay example's training and rollback DAGs (from the use-case factory), run end to end with
``dag.test()`` (real Airflow, real MLflow, real sklearn, the real serving stack for infra validation and deploy).

Each test has its own MLflow store, lake, Feast registry and serving port: the first model, the champion and the
ledger it asserts on are the ones it made.
"""

from __future__ import annotations

import pytest

from conftest import FLIGHTS, asset_event_extras, load_dag, task_states
from training_fixtures import build_frame, shuffle_labels, write_snapshot

pytestmark = pytest.mark.slow

TASKS = (
    "training_set",
    "train_model",
    "evaluate_challenger",
    "model_gate",
    "register_model",
    "infra_validate",
    "promote_model",
    "deploy_model",
)
AFTER_THE_GATE = ("register_model", "infra_validate", "approve_model", "promote_model", "deploy_model")


@pytest.fixture
def usecase():
    from airflow_mlops.usecase import config

    return config.load(FLIGHTS)


@pytest.fixture
def serving_endpoint(usecase, monkeypatch):
    """deploy_model starts the use case's embedded server when none answers: give it a free port (its per-use-case
    variables) and stop it afterwards (it serves from this test's MLflow store)."""
    from airflow_mlops.hooks import bentoml_process as serving_process

    port = serving_process.free_port()
    key = usecase.name.upper()
    monkeypatch.setenv(f"MLOPS_SERVING_PORT__{key}", str(port))  # the default endpoint: the embedded server
    monkeypatch.delenv(f"MLOPS_SERVING_URL__{key}", raising=False)  # an explicit URL is never started by deploy
    try:
        yield port
    finally:
        server = serving_process.ServingProcess(usecase=usecase.folder, port=port)
        server.stop()
        assert not server.pidfile.exists()
        assert not serving_process._port_in_use("127.0.0.1", port)


@pytest.fixture
def snapshots(airflow_db, usecase_lake, mlflow_store, serving_endpoint, tmp_path, monkeypatch):
    """A good and a degraded training set in the use case's lake; its (empty) Feast online store, which the
    serving stack of infra validation and deploy reads."""
    from airflow_mlops.hooks.feast_store import FeastHook

    monkeypatch.setenv("MLOPS_FEAST_HOME", str(tmp_path / "feast"))
    FeastHook(FLIGHTS, lake_root=usecase_lake.root_url).apply()
    frame = build_frame((1, 2, 3), sample=0.5, seed=0)
    return {
        "good": write_snapshot(usecase_lake, frame),
        "bad": write_snapshot(usecase_lake, shuffle_labels(frame, keep_months=["2013-03"], seed=5)),
    }


def _state(run) -> str:
    return str(getattr(run.state, "value", run.state))


def _xcom(run, task_id: str):
    return run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def _train(snapshot: dict, **conf):
    run = load_dag("flight_delay_training").test(run_conf={"training_set_uri": snapshot["uri"], **conf})
    return run, task_states(run)


def test_training_dag_promotes_a_first_model_and_skips_a_degraded_one(usecase, snapshots):
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    name = usecase.registered_model_name
    hook = MlflowHook()
    assert hook.alias_version(name, "champion") is None and hook.read_ledger(name) == []  # a fresh store

    run, states = _train(snapshots["good"])
    assert _state(run) == "success", states
    assert all(states[(t, -1)] == "success" for t in TASKS), states
    assert states[("approve_model", -1)] == "skipped"  # approval: auto (the example's default): no person asked
    gate = _xcom(run, "model_gate")
    assert gate["approved"] and gate["champion_version"] is None  # no champion yet: judged on the floors alone
    assert any("first model" in r for r in gate["reasons"]), gate["reasons"]
    champion = hook.alias_version(name, "champion")
    assert champion == "1" and hook.alias_version(name, "challenger") == champion
    (entry,) = hook.read_ledger(name)
    assert (entry.from_version, entry.to_version, entry.approval) == (None, champion, None)
    assert entry.triggered_by["dag_id"] == usecase.dag_id("training") == "flight_delay_training"
    version = hook.client.get_model_version(name, champion)
    run_tags = hook.client.get_run(version.run_id).data.tags
    assert run_tags["mlops.airflow.dag_id"] == "flight_delay_training"
    assert run_tags["mlops.airflow.task_id"] == "train_model"
    assert run_tags["mlops.training_set.sha256"] == snapshots["good"]["sha256"]
    (promoted,) = asset_event_extras(f"{usecase.name}.model_promoted", run)  # the use case's own Asset
    assert (promoted["model"], promoted["action"], promoted["to_version"]) == (name, "promote", champion)

    degraded, states = _train(snapshots["bad"])
    assert _state(degraded) == "success", states  # a rejection is green
    assert states[("model_gate", -1)] == "success"
    gate = _xcom(degraded, "model_gate")
    assert not gate["approved"] and gate["champion_version"] == champion
    assert any("below the floor" in r or "worse by" in r for r in gate["reasons"]), gate["reasons"]
    assert all(states[(t, -1)] == "skipped" for t in AFTER_THE_GATE), states
    assert asset_event_extras(f"{usecase.name}.model_promoted", degraded) == []
    assert hook.alias_version(name, "champion") == champion
    assert len(hook.read_ledger(name)) == 1
    assert [str(v.version) for v in hook.client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert hook.client.get_model_version(name, "1").tags["mlops.model_card"].startswith(f"runs:/{version.run_id}/")


def test_rollback_dag_restores_the_previous_champion(usecase, snapshots):
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    name = usecase.registered_model_name
    hook = MlflowHook()
    assert hook.alias_version(name, "champion") is None and hook.read_ledger(name) == []  # a fresh store
    first, states = _train(snapshots["good"])
    assert states[("promote_model", -1)] == "success", states
    assert _xcom(first, "model_gate")["champion_version"] is None  # the first-model path
    before = hook.alias_version(name, "champion")
    assert before == _xcom(first, "promote_model")["to_version"] == "1"

    forced, states = _train(snapshots["bad"], force_bless=True, force_bless_reason="dag test")
    assert states[("promote_model", -1)] == "success", states
    gate = _xcom(forced, "model_gate")
    assert gate["forced"] is True and gate["champion_version"] == before  # the gate path, against the first model
    bad_champion = hook.alias_version(name, "champion")
    assert bad_champion == _xcom(forced, "promote_model")["to_version"] == "2"
    assert hook.read_ledger(name)[-1].gate["forced"] is True

    rollback = load_dag("flight_delay_rollback").test(run_conf={"reason": "forced model misbehaves"})
    states = task_states(rollback)
    assert _state(rollback) == "success", states
    assert states == {("rollback_model", -1): "success", ("deploy_model", -1): "success"}
    assert hook.alias_version(name, "champion") == before
    ledger = hook.read_ledger(name)
    assert [e.action for e in ledger] == ["promote", "promote", "rollback"]
    last = ledger[-1]
    assert (last.action, last.from_version, last.to_version, last.reason) == (
        "rollback",
        bad_champion,
        before,
        "forced model misbehaves",
    )
    assert last.triggered_by["dag_id"] == usecase.dag_id("rollback") == "flight_delay_rollback"
    (event,) = asset_event_extras(f"{usecase.name}.model_promoted", rollback)
    assert (event["action"], event["from_version"], event["to_version"]) == ("rollback", bad_champion, before)
    versions = hook.client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 2 and all(v.tags.get("mlops.model_card") for v in versions)  # each has its model card
