"""The training and rollback DAGs, run end to end with ``dag.test()`` (real Airflow, real MLflow, real sklearn)."""

from __future__ import annotations

import pytest

from conftest import load_dag, task_states
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


@pytest.fixture(scope="module", autouse=True)
def serving_endpoint():
    """deploy_model starts the embedded server when none answers: give it a free port and stop it afterwards."""
    from airflow_mlops import serving_process

    port = serving_process.free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_SERVING_PORT", str(port))
        patch.setenv("MLOPS_SERVING_URL", f"http://127.0.0.1:{port}")
        try:
            yield port
        finally:
            server = serving_process.embedded(port)
            server.stop()
            assert not server.pidfile.exists()
            assert not serving_process._port_in_use("127.0.0.1", port)


@pytest.fixture(scope="module")
def snapshots():
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook

    lake = LakeHook()
    lake.ensure_zones()
    FeastHook().apply()  # the serving stack of infra validation and deploy reads (empty) online features
    frame = build_frame((1, 2, 3), sample=0.5, seed=0)
    return {
        "good": write_snapshot(lake, frame),
        "bad": write_snapshot(lake, shuffle_labels(frame, keep_months=["2013-03"], seed=5)),
    }


def test_training_dag_promotes_a_good_model_and_skips_a_degraded_one(airflow_db, snapshots):
    from airflow_mlops.core import training as core
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.training import default_config_path

    dag = load_dag("mlops_training")
    name = core.load_config(default_config_path()).registered_model_name
    hook = MlflowHook()
    start = len(hook.read_ledger(name))

    run = dag.test(run_conf={"training_set_uri": snapshots["good"]["uri"]})
    states = task_states(run)
    assert str(getattr(run.state, "value", run.state)) == "success", states
    assert all(states[(t, -1)] == "success" for t in TASKS), states
    champion = hook.alias_version(name, "champion")
    assert champion is not None and hook.alias_version(name, "challenger") == champion
    ledger = hook.read_ledger(name)
    assert len(ledger) == start + 1 and ledger[-1].to_version == champion
    assert ledger[-1].triggered_by["dag_id"] == "mlops_training"
    version = hook.client.get_model_version(name, champion)
    run_tags = hook.client.get_run(version.run_id).data.tags
    assert run_tags["mlops.airflow.dag_id"] == "mlops_training" and run_tags["mlops.airflow.task_id"] == "train_model"
    assert run_tags["mlops.training_set.sha256"] == snapshots["good"]["sha256"]

    degraded = dag.test(run_conf={"training_set_uri": snapshots["bad"]["uri"]})
    states = task_states(degraded)
    assert str(getattr(degraded.state, "value", degraded.state)) == "success", states  # a rejection is green
    assert states[("model_gate", -1)] == "success"
    assert all(
        states[(t, -1)] == "skipped" for t in ("register_model", "infra_validate", "promote_model", "deploy_model")
    )
    assert hook.alias_version(name, "champion") == champion
    assert len(hook.read_ledger(name)) == start + 1


def test_rollback_dag_restores_the_previous_champion(airflow_db, snapshots):
    from airflow_mlops.core import training as core
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.training import default_config_path

    name = core.load_config(default_config_path()).registered_model_name
    hook = MlflowHook()
    training = load_dag("mlops_training")
    if hook.alias_version(name, "champion") is None:  # run alone: make a first champion
        training.test(run_conf={"training_set_uri": snapshots["good"]["uri"]})
    before = hook.alias_version(name, "champion")
    assert before is not None
    forced = training.test(
        run_conf={"training_set_uri": snapshots["bad"]["uri"], "force_bless": True, "force_bless_reason": "dag test"}
    )
    assert task_states(forced)[("promote_model", -1)] == "success"
    bad_champion = hook.alias_version(name, "champion")
    assert bad_champion != before and hook.read_ledger(name)[-1].gate["forced"] is True

    rollback = load_dag("mlops_rollback")
    run = rollback.test(run_conf={"registered_model_name": name, "reason": "forced model misbehaves"})
    assert task_states(run)[("rollback_model", -1)] == "success"
    assert hook.alias_version(name, "champion") == before
    last = hook.read_ledger(name)[-1]
    assert (last.action, last.from_version, last.to_version, last.reason) == (
        "rollback",
        bad_champion,
        before,
        "forced model misbehaves",
    )
