"""Training, gating, registry and promotion against a real MLflow (SQLite store in a temporary folder)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from training_fixtures import (
    TEST_CONFIG_YAML,
    build_frame,
    race_worker,
    run_pipeline,
    shuffle_labels,
    task_context,
    write_configs,
    write_snapshot,
)

MODEL = "flight_delay_test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh MLflow store and lake for this module (``MLFLOW_TRACKING_URI`` / ``MLOPS_LAKE`` point at them)."""
    root = tmp_path_factory.mktemp("mlflow-registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{root / 'mlflow.db'}")  # restored after: mlflow writes it
        mp.setenv("MLOPS_MLFLOW_ARTIFACTS", (root / "artifacts").as_uri())
        mp.setenv("MLOPS_LAKE", (root / "lake").as_uri())
        mp.setenv("MLOPS_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
        from airflow_mlops.hooks.lake import LakeHook

        lake = LakeHook()
        lake.ensure_zones()
        frame = build_frame((1, 2, 3), sample=0.5, seed=0)
        good = write_snapshot(lake, frame)
        bad = [write_snapshot(lake, shuffle_labels(frame, keep_months=["2013-03"], seed=s)) for s in (1, 2, 3)]
        yield {"root": root, "lake": lake, "good": good, "bad": bad, "paths": write_configs(root / "config")}


def hook():
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    return MlflowHook()


@pytest.fixture(scope="module")
def champion(store):
    """The first model: approved on the absolute floors alone and promoted to champion."""
    return run_pipeline(store["good"], store["paths"], "manual__first")


def test_first_model_is_judged_on_floors_and_promoted(champion):
    gate = champion["gate"]
    assert gate["approved"] and gate["champion_version"] is None
    assert any("first model" in r for r in gate["reasons"])
    assert champion["registered"]["created"] and champion["registered"]["version"] == "1"
    assert champion["promoted"]["to_version"] == "1" and champion["promoted"]["from_version"] is None
    h = hook()
    assert h.alias_version(MODEL, "champion") == "1"
    assert h.alias_version(MODEL, "challenger") == "1"


def test_run_records_lineage(champion, store):
    h = hook()
    run = h.client.get_run(champion["trained"]["run_id"])
    tags, snap = run.data.tags, store["good"]
    assert tags["mlops.airflow.dag_id"] == "test_dag"
    assert tags["mlops.airflow.run_id"] == "manual__first"
    assert tags["mlops.airflow.task_id"] == "train_model"
    assert tags["mlops.airflow.try_number"] == "1"
    assert tags["mlops.git.commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert json.loads(tags["mlops.feature_views"])["weather_features"] == "v1-test"
    assert tags["mlops.training_set.sha256"] == snap["sha256"]
    assert tags["mlops.holdout.months"] == "2013-03"
    assert tags["mlops.gate.approved"] == "true"
    assert run.data.params["model_type"] == "hist_gradient_boosting"
    assert run.data.metrics["holdout_roc_auc"] > 0.6
    assert run.info.status == "FINISHED" and 0 < run.data.metrics["train_roc_auc"] <= 1
    # The training metrics are linked to the logged model (its page lists them).
    model = h.client.get_logged_model(champion["trained"]["model_id"])
    assert {m.key for m in model.metrics} >= {"train_roc_auc", "fit_seconds"}
    # ... and it lives in the run's experiment and artifact store (not the Default experiment's ./mlruns).
    assert model.experiment_id == run.info.experiment_id and model.source_run_id == run.info.run_id
    # ... with the run's parameters, finished, and listed as the run's output.
    assert model.params == run.data.params and str(model.status) in ("READY", "LoggedModelStatus.READY")
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert model.artifact_location.startswith(str(store["root"] / "artifacts")) or model.artifact_location.startswith(
        (store["root"] / "artifacts").as_uri()
    )
    # Per slice, MLflow gets the figures the config names (n, roc_auc); the evaluation JSON holds them all.
    slice_metrics = {k.rsplit(".", 1)[1] for k in run.data.metrics if k.startswith("holdout_slice.carrier.")}
    assert slice_metrics == {"n", "roc_auc"}
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.source and snap["uri"] in dataset_input.dataset.source
    assert {t.key: t.value for t in dataset_input.tags}["sha256"] == snap["sha256"]
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    artifacts = {a.path for a in h.client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/evaluation.json", "evaluation/curves.svg"} <= artifacts
    # The logged model carries a signature, an input example and the explicit requirements.
    import mlflow

    h.activate()
    from airflow_mlops.core.training import SLICE_METRIC_NAMES

    document = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/evaluation/evaluation.json")
    carriers = document["candidate"]["slices"]["carrier"]
    assert carriers and all(set(m) == set(SLICE_METRIC_NAMES) for m in carriers.values())
    info = mlflow.models.get_model_info(champion["trained"]["model_uri"])
    assert info.signature is not None and info.saved_input_example_info is not None
    # The signature is what MLflow infers from all the training rows and the model's output on them: a
    # feature missing in some training rows (weather, plane) is optional, whatever the first rows hold.
    from airflow.sdk import ObjectStoragePath
    from mlflow.models import infer_signature

    from airflow_mlops.core import training as core
    from airflow_mlops.hooks.mlflow_tracking import load_model

    config = core.load_config(store["paths"]["config"])
    split = core.split_holdout(core.read_parquet_bytes(ObjectStoragePath(snap["uri"]).read_bytes()), config)
    X = core.features_frame(split.train, config)
    fitted = load_model(h, champion["trained"]["model_uri"])
    assert info.signature == infer_signature(X, fitted.predict_proba(X))
    optional = {spec.name for spec in info.signature.inputs.inputs if not spec.required}
    assert optional == set(X.columns[X.isna().any()]) and optional  # the test months do miss some values
    reqs = Path(mlflow.pyfunc.get_model_dependencies(champion["trained"]["model_uri"])).read_text()
    assert "scikit-learn==" in reqs and "cloudpickle==" in reqs
    assert "great_expectations" not in reqs and "apache-airflow" not in reqs  # explicit, not inferred
    # The logged model loads through pyfunc and scores its own input example and serving example (MLflow's
    # post-log self-check, left out when logging, asserted here), with the flavor recorded on the model.
    assert {"sklearn", "python_function"} <= set(info.flavors)
    assert info.flavors["python_function"]["predict_fn"] == "predict_proba"
    local = Path(mlflow.artifacts.download_artifacts(champion["trained"]["model_uri"]))
    pyfunc = mlflow.pyfunc.load_model(str(local))
    example = pyfunc.metadata.load_input_example(str(local))
    proba = np.asarray(pyfunc.predict(example))
    assert proba.shape == (len(example), 2) and np.allclose(proba.sum(axis=1), 1.0)
    from mlflow.pyfunc.scoring_server import _parse_json_data

    serving = _parse_json_data(
        (local / "serving_input_example.json").read_text(), pyfunc.metadata, pyfunc.metadata.get_input_schema()
    )
    np.testing.assert_allclose(np.asarray(pyfunc.predict(serving.data)), proba)
    version = h.client.get_model_version(MODEL, "1")
    assert version.tags["mlops.training_set.sha256"] == snap["sha256"]
    assert json.loads(version.tags["mlops.gate.decision"])["approved"] is True


def test_retraining_from_recorded_lineage_reproduces_metrics_exactly(champion, store):
    """From the registry alone: version → run → training-set URI + sha256 + config artifact → same metrics."""
    import mlflow
    import yaml

    from airflow_mlops.core import evaluation as ev
    from airflow_mlops.core import training as core
    from airflow_mlops.core.tracking import CONFIG_ARTIFACT
    from airflow_mlops.operators.training_set import ResolveTrainingSetOperator

    h = hook()
    h.activate()
    version = h.client.get_model_version_by_alias(MODEL, "champion")
    run = h.client.get_run(version.run_id)
    config = core.TrainingConfig.from_dict(
        yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{CONFIG_ARTIFACT}"))
    )
    assert config.sha256 == run.data.tags["mlops.config.sha256"]
    resolver = ResolveTrainingSetOperator(task_id="resolve")
    frame, info = resolver.read_training_set(
        {"uri": run.data.tags["mlops.training_set.uri"], "sha256": run.data.tags["mlops.training_set.sha256"]}
    )
    again = core.train(frame, config)
    proba = core.predict_proba(again.model, again.split.holdout, config)
    result = ev.evaluate(
        again.split.holdout, proba, label=config.label, threshold=config.threshold, slices=config.slices
    )
    logged = run.data.metrics
    for key, value in result.flat_metrics("holdout", slice_metrics=config.mlflow_slice_metrics).items():
        assert logged[key] == value, key  # exactly, not approximately
    # ... and every slice figure of the evaluation JSON (all of them, not only those MLflow got as metrics).
    document = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/evaluation/evaluation.json")
    assert document["candidate"]["slices"] == json.loads(json.dumps(result.slices))
    original = mlflow.sklearn.load_model(f"models:/{MODEL}/{version.version}")
    assert (core.predict_proba(original, again.split.holdout, config) == proba).all()


def test_degraded_candidate_is_never_promoted(champion, store):
    h = hook()
    before = h.read_ledger(MODEL)
    for i, snapshot in enumerate(store["bad"]):
        out = run_pipeline(snapshot, store["paths"], f"manual__degraded_{i}")
        gate = out["gate"]
        assert not gate["approved"], gate["reasons"]
        assert gate["champion_version"] == "1"
        assert any("below the floor" in r or "worse by" in r for r in gate["reasons"])
        assert out["registered"] == "skipped" and out["promoted"] == "skipped"
        run = h.client.get_run(out["trained"]["run_id"])
        tags = run.data.tags
        assert tags["mlops.gate.approved"] == "false" and "REJECTED" in tags["mlops.gate.summary"]
        assert h.alias_version(MODEL, "champion") == "1"
        # The champion's overall figures on the same hold-out sit beside the candidate's (not its slices).
        champion_metrics = {k for k in run.data.metrics if k.startswith("champion_")}
        assert "champion_holdout_roc_auc" in champion_metrics
        assert not any("_slice." in k for k in champion_metrics)
    assert [str(v.version) for v in h.client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    assert h.read_ledger(MODEL) == before


def test_missing_policy_rejects_and_registration_skips(champion, store, tmp_path):
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_mlops.operators.gate import ModelGateOperator
    from airflow_mlops.operators.registry import MlflowRegisterModelOperator

    decision = ModelGateOperator(
        task_id="model_gate", evaluation=champion["evaluated"], policy_path=str(tmp_path / "no_policy.yaml")
    ).execute(task_context("model_gate", "manual__nopolicy"))
    assert not decision["approved"] and "no gate policy" in decision["reasons"][0]
    with pytest.raises(AirflowSkipException, match="no gate policy"):
        MlflowRegisterModelOperator(task_id="register_model", gate=decision).execute(task_context("register_model"))


def test_retried_register_creates_no_second_version(champion, store):
    from airflow_mlops.operators.registry import MlflowRegisterModelOperator

    name = "flight_delay_register_retry"
    gate = {**champion["gate"], "registered_model_name": name}
    h = hook()
    # A first attempt that died after creating the version, before setting the alias:
    version, created = h.register(name, gate["model_uri"], gate["run_id"])
    assert created and h.alias_version(name, "challenger") is None
    for attempt in (2, 3):
        out = MlflowRegisterModelOperator(task_id="register_model", gate=gate).execute(
            task_context("register_model", try_number=attempt)
        )
        assert out["version"] == version and out["created"] is False
    assert len(h.client.search_model_versions(f"name = '{name}'")) == 1
    assert h.alias_version(name, "challenger") == version


def _versions(h, name: str, source_uri: str, count: int) -> list[str]:
    import mlflow

    h.activate()
    return [str(mlflow.register_model(source_uri, name).version) for _ in range(count)]


def test_promotion_is_compare_and_set(champion):
    from airflow_mlops.exceptions import PromotionConflictError
    from airflow_mlops.operators.registry import MlflowPromoteModelOperator

    name = "flight_delay_cas"
    h = hook()
    v1, v2, v3 = _versions(h, name, champion["trained"]["model_uri"], 3)

    def promote(version, expected, run_id, try_number=1):
        registered = {
            "name": name,
            "version": version,
            "run_id": "r",
            "gate": {"approved": True, "champion_version": expected},
        }
        return MlflowPromoteModelOperator(task_id="promote_model", registered=registered).execute(
            task_context("promote_model", run_id, try_number=try_number)
        )

    assert promote(v1, None, "run_a")["seq"] == 1
    assert promote(v2, v1, "run_b")["seq"] == 2
    # A retry of the same task finds its own entry instead of appending again:
    assert promote(v2, v1, "run_b", try_number=2)["seq"] == 2
    # The gate of run_c compared against v1, but the champion is v2 by now:
    with pytest.raises(PromotionConflictError, match="expected it at 1"):
        promote(v3, v1, "run_c")
    assert h.alias_version(name, "champion") == v2
    ledger = h.read_ledger(name)
    assert [(e.seq, e.from_version, e.to_version) for e in ledger] == [(1, None, v1), (2, v1, v2)]
    assert ledger[1].triggered_by["run_id"] == "run_b" and ledger[1].gate["champion_version"] == v1
    assert ledger[1].timestamp
    # Readable from MLflow without this package too: the registered model carries each entry as a tag.
    tags = h.client.get_registered_model(name).tags
    assert json.loads(tags["mlops.ledger.000002"])["to_version"] == v2

    # The alias moved by hand to a version the ledger never held: refuse, say so.
    h.client.set_registered_model_alias(name, "champion", v3)
    with pytest.raises(PromotionConflictError, match="moved by hand"):
        promote(v3, v2, "run_d")


def test_two_processes_racing_leave_one_winner_and_a_consistent_ledger(champion):
    from airflow_mlops.core.ledger import check_sequence

    name = "flight_delay_race"
    h = hook()
    rounds = 2
    versions = _versions(h, name, champion["trained"]["model_uri"], 1 + 2 * rounds)
    h.client.set_registered_model_alias(name, "champion", versions[0])  # a champion adopted before the ledger
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=race_worker, args=(name, versions[1 + w :: 2], barrier, results, w)) for w in range(2)
    ]
    for p in workers:
        p.start()
    outcomes = [results.get(timeout=300) for _ in range(2 * rounds)]
    for p in workers:
        p.join(timeout=60)
        assert p.exitcode == 0
    for round_no in range(rounds):
        this_round = [o for o in outcomes if o[0] == round_no]
        assert sorted(o[2] for o in this_round) == ["lost", "won"], this_round
    ledger = h.read_ledger(name)
    check_sequence(ledger)
    assert len(ledger) == rounds
    winners = [o[3] for o in sorted(outcomes) if o[2] == "won"]
    assert [e.to_version for e in ledger] == winners
    assert ledger[0].from_version == versions[0]
    assert h.alias_version(name, "champion") == winners[-1] == ledger[-1].to_version


def test_rollback_restores_the_previous_champion(champion, store):
    from airflow_mlops.exceptions import PromotionConflictError
    from airflow_mlops.operators.registry import MlflowPromoteModelOperator, MlflowRollbackModelOperator

    name = "flight_delay_rollback"
    h = hook()
    v1, v2, v3 = _versions(h, name, champion["trained"]["model_uri"], 3)
    expected = None
    for i, version in enumerate((v1, v2, v3)):
        registered = {
            "name": name,
            "version": version,
            "run_id": "r",
            "gate": {"approved": True, "champion_version": expected},
        }
        MlflowPromoteModelOperator(task_id="promote_model", registered=registered).execute(
            task_context("promote_model", f"p{i}")
        )
        expected = version

    def rollback(run_id, to_version=None):
        return MlflowRollbackModelOperator(
            task_id="rollback_model", registered_model_name=name, to_version=to_version, reason="bad canary"
        ).execute(task_context("rollback_model", run_id, dag_id="flight_delay_rollback"))

    entry = rollback("rb1")
    assert (entry["action"], entry["from_version"], entry["to_version"]) == ("rollback", v3, v2)
    assert entry["reason"] == "bad canary" and entry["triggered_by"]["dag_id"] == "flight_delay_rollback"
    assert h.alias_version(name, "champion") == v2
    assert rollback("rb2")["to_version"] == v1
    with pytest.raises(PromotionConflictError, match="nothing to roll back to"):
        rollback("rb3")
    assert rollback("rb4", to_version=v3)["to_version"] == v3
    assert h.alias_version(name, "champion") == v3
    assert [e.action for e in h.read_ledger(name)] == ["promote"] * 3 + ["rollback"] * 3


def test_force_bless_overrides_a_rejection_and_is_audited(champion, store):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.operators.gate import ModelGateOperator
    from airflow_mlops.operators.registry import MlflowPromoteModelOperator, MlflowRegisterModelOperator
    from airflow_mlops.operators.training import EvaluateChallengerOperator, TrainModelOperator

    name = "flight_delay_forced"
    paths = write_configs(store["root"] / "forced", config=TEST_CONFIG_YAML.replace(MODEL, name))
    # Champion of this model: the first model's run, registered under the new name.
    first = MlflowRegisterModelOperator(
        task_id="register_model", gate=champion["gate"], registered_model_name=name
    ).execute(task_context("register_model", "forced0"))
    MlflowPromoteModelOperator(task_id="promote_model", registered=first).execute(
        task_context("promote_model", "forced0")
    )

    trained = TrainModelOperator(
        task_id="train_model", training_set=store["bad"][0], config_path=paths["config"]
    ).execute(task_context("train_model", "forced1"))
    evaluated = EvaluateChallengerOperator(task_id="evaluate", trained=trained, config_path=paths["config"]).execute(
        task_context("evaluate", "forced1")
    )
    gate_op = ModelGateOperator(
        task_id="model_gate",
        evaluation=evaluated,
        policy_path=paths["policy"],
        force_bless="True",
        force_bless_reason="",
    )
    with pytest.raises(AirflowFailException, match="force_bless_reason"):
        gate_op.execute(task_context("model_gate", "forced1"))
    gate_op.force_bless_reason = "incident 42: degraded model needed for a schema change"
    decision = gate_op.execute(task_context("model_gate", "forced1"))
    assert decision["approved"] and decision["forced"]
    assert any("below the floor" in r or "worse by" in r for r in decision["reasons"])  # what was overridden
    registered = MlflowRegisterModelOperator(task_id="register_model", gate=decision).execute(
        task_context("register_model", "forced1")
    )
    entry = MlflowPromoteModelOperator(task_id="promote_model", registered=registered).execute(
        task_context("promote_model", "forced1")
    )
    assert entry["gate"]["forced"] and "incident 42" in entry["gate"]["force_reason"]
    h = hook()
    tags = h.client.get_run(trained["run_id"]).data.tags
    assert tags["mlops.gate.forced"] == "true" and "incident 42" in tags["mlops.gate.force_reason"]
    assert h.alias_version(name, "champion") == registered["version"]


def test_alias_sensor_defers_and_its_trigger_fires_on_a_move(champion):
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_mlops.sensors.model_alias import MlflowModelAliasSensor
    from airflow_mlops.triggers.model_alias import ModelAliasTrigger

    name = "flight_delay_sensor"
    h = hook()
    v1, v2 = _versions(h, name, champion["trained"]["model_uri"], 2)
    h.client.set_registered_model_alias(name, "champion", v1)
    # [START howto_sensor_model_alias]
    sensor = MlflowModelAliasSensor(task_id="wait", registered_model_name=name, poke_interval=0.2, timeout=60)
    # [END howto_sensor_model_alias]
    ctx = task_context("wait")
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(ctx)
    trigger = deferred.value.trigger
    assert isinstance(trigger, ModelAliasTrigger) and trigger.from_version == v1
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_mlops.triggers.model_alias.ModelAliasTrigger"
    trigger = ModelAliasTrigger(**kwargs)

    async def first_event():
        async for event in trigger.run():
            return event.payload

    async def move_once_waiting():
        waiting = asyncio.ensure_future(first_event())
        # Polling every 0.2 s, the trigger has looked at the unmoved alias a few times by then: no event yet.
        done, _ = await asyncio.wait({waiting}, timeout=1.0)
        assert not done, f"the trigger fired before the alias moved: {waiting.result()}"
        await asyncio.to_thread(h.client.set_registered_model_alias, name, "champion", v2)
        return await asyncio.wait_for(waiting, timeout=30)

    payload = asyncio.run(move_once_waiting())
    assert payload == {"status": "moved", "version": v2, "from_version": v1}
    result = sensor.execute_complete(ctx, event=payload)
    assert result["version"] == v2
    # Poke mode: the baseline recorded at the first poke is kept; it succeeds once the alias moves again.
    poker = MlflowModelAliasSensor(task_id="wait", registered_model_name=name, deferrable=False, poke_interval=0.1)
    pctx = task_context("wait")
    assert poker.poke(pctx) is False
    h.client.set_registered_model_alias(name, "champion", v1)
    assert poker.poke(pctx) is True


def test_hook_defaults_to_sqlite_under_mlops_home_with_artifacts_in_the_lake(tmp_path, monkeypatch):
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLOPS_MLFLOW_ARTIFACTS", "MLFLOW_UI_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_LAKE", (tmp_path / "lake").as_uri())
    h = MlflowHook()
    assert h.tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}"
    assert h.registry_uri == h.tracking_uri and h.is_embedded and h.ui_url is None
    assert h.artifact_root == f"{(tmp_path / 'lake').as_uri()}/mlflow-artifacts"
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps(
            {"conn_type": "mlflow", "host": "mlflow.internal", "port": 5000, "extra": {"ui_url": "https://ml.example"}}
        ),
    )
    server = MlflowHook()
    assert server.tracking_uri == "http://mlflow.internal:5000" and not server.is_embedded
    assert server.artifact_root is None  # the server decides
    assert server.model_version_url("m", 3) == "https://ml.example/#/models/m/versions/3"


def test_training_set_resolution_verifies_the_snapshot(store):
    from types import SimpleNamespace

    from airflow_mlops.exceptions import TrainingSetError
    from airflow_mlops.operators.training import ResolveTrainingSetOperator

    good = store["good"]
    # Committed after ``good`` (in the same second, likely): its stamp, to the microsecond, makes it the newest.
    newest = write_snapshot(store["lake"], build_frame((1, 2, 3), sample=0.05, seed=11))
    ctx = task_context("training_set")
    assert ResolveTrainingSetOperator(task_id="ts", training_set=good["uri"]).execute(ctx)["sha256"] == good["sha256"]
    # Nothing named: the asset event's snapshot, else the newest committed one.
    event = SimpleNamespace(extra={"uri": good["uri"], "sha256": good["sha256"], "rows": good["rows"]})
    with_event = {**ctx, "triggering_asset_events": {"training_set": [event]}}
    assert ResolveTrainingSetOperator(task_id="ts", training_set="").execute(with_event)["uri"] == good["uri"]
    assert ResolveTrainingSetOperator(task_id="ts", training_set="").execute(ctx)["uri"] == newest["uri"]
    with pytest.raises(TrainingSetError, match="asked for with sha256"):
        ResolveTrainingSetOperator(task_id="ts", training_set={**good, "sha256": "0" * 64}).execute(ctx)
    # Bytes changed behind the manifest's back:
    tampered = store["root"] / "tampered"
    from airflow_mlops.hooks.lake import LakeHook

    lake = LakeHook(root_url=tampered.as_uri())
    snap = write_snapshot(lake, build_frame((1, 2, 3), sample=0.05, seed=9))
    path = lake.path("training_sets", snap["sha256"][:12], "training_set.parquet")
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(TrainingSetError, match="no longer matches"):
        ResolveTrainingSetOperator(task_id="ts", training_set=snap["uri"]).execute(ctx)


def test_a_failed_fit_leaves_a_failed_run(store):
    from airflow_mlops.operators.training import TrainModelOperator

    frame = build_frame((1, 2), sample=0.2, seed=4)
    frame.loc[frame["month"] == "2013-01", "is_late"] = 0  # one class in the training rows
    snapshot = write_snapshot(store["lake"], frame)
    op = TrainModelOperator(task_id="train_model", training_set=snapshot, config_path=store["paths"]["config"])
    with pytest.raises(ValueError, match="single class"):
        op.execute(task_context("train_model", "manual__one_class"))
    h = hook()
    h.activate()
    runs = h.client.search_runs(
        [e.experiment_id for e in h.client.search_experiments()],
        filter_string="tags.`mlops.airflow.run_id` = 'manual__one_class'",
    )
    assert [r.info.status for r in runs] == ["FAILED"]
    # The run's logged model, created while the model was being fitted, is not left pending.
    (model,) = h.client.search_logged_models(
        [runs[0].info.experiment_id], filter_string=f"source_run_id = '{runs[0].info.run_id}'"
    )
    assert str(model.status) in ("FAILED", "LoggedModelStatus.FAILED")


def test_a_failed_model_upload_leaves_a_failed_logged_model_and_run(store, monkeypatch):
    """The model's artifacts cannot be written: the error reaches the task, the logged model is ``FAILED`` (not
    left pending) and so is the run."""
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.training import TrainModelOperator

    def refuse(self, artifact_uri, local_dir, artifact_path=None):
        if "/models/" in artifact_uri:
            raise OSError("artifact store refused the upload")
        return upload(self, artifact_uri, local_dir, artifact_path)

    upload = MlflowHook.upload_artifacts
    monkeypatch.setattr(MlflowHook, "upload_artifacts", refuse)
    snapshot = write_snapshot(store["lake"], build_frame((1, 2), sample=0.2, seed=5))
    op = TrainModelOperator(task_id="train_model", training_set=snapshot, config_path=store["paths"]["config"])
    with pytest.raises(OSError, match="refused the upload"):
        op.execute(task_context("train_model", "manual__upload_fails"))
    h = hook()
    (run,) = h.client.search_runs(
        [e.experiment_id for e in h.client.search_experiments()],
        filter_string="tags.`mlops.airflow.run_id` = 'manual__upload_fails'",
    )
    assert run.info.status == "FAILED"
    assert h.client.list_artifacts(run.info.run_id, "config")  # what was written before stays
    (model,) = h.client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert str(model.status) in ("FAILED", "LoggedModelStatus.FAILED")


def test_the_signature_makes_a_feature_optional_when_any_training_row_misses_it(tmp_path):
    """``model_signature`` equals MLflow's inference over every training row, also when the rows that miss a
    value come last (inferring from the first rows, as a sample would, makes that feature required)."""
    from mlflow.models import infer_signature

    from airflow_mlops.core import training as core
    from airflow_mlops.hooks.mlflow_tracking import model_signature

    config = core.load_config(write_configs(tmp_path)["config"])
    result = core.train(build_frame((1, 2), sample=0.3, seed=0), config)
    train = result.split.train
    late = train["temp"].isna()
    assert late.any() and not late.all()
    train = train.iloc[np.r_[np.flatnonzero(~late), np.flatnonzero(late)]].reset_index(drop=True)
    X = core.features_frame(train, config)
    signature = model_signature(train, config, result.model.classes_)
    assert signature == infer_signature(X, result.model.predict_proba(X))
    required = {spec.name: spec.required for spec in signature.inputs.inputs}
    assert required["temp"] is False and required["carrier"] is True
    head_inputs = infer_signature(X.head(200)).inputs
    assert {spec.name: spec.required for spec in head_inputs.inputs}["temp"] is True  # the first rows alone
    # ... and why it matters: MLflow's schema enforcement refuses input without a required column.
    from mlflow.models.utils import _enforce_schema

    without_temp = X[X["temp"].isna()].head(3).drop(columns=["temp"])
    assert len(_enforce_schema(without_temp, signature.inputs)) == 3
    with pytest.raises(Exception, match="missing inputs"):
        _enforce_schema(without_temp, head_inputs)


def test_the_signature_types_a_categorical_coded_as_numbers_as_mlflow_does(tmp_path):
    """A config may list a numeric column (here the weekday, with missing values first) as categorical: the
    signature keeps what ``features_frame`` hands the model, as MLflow infers it from every row."""
    from mlflow.models import infer_signature

    from airflow_mlops.core import training as core
    from airflow_mlops.hooks.mlflow_tracking import model_signature

    yaml_text = TEST_CONFIG_YAML.replace(
        "categorical: [carrier, origin, dest]", "categorical: [carrier, origin, dest, weekday]"
    )
    yaml_text = yaml_text.replace("numeric: [sched_hour, weekday,", "numeric: [sched_hour,")
    config = core.load_config(write_configs(tmp_path, config=yaml_text)["config"])
    assert "weekday" in config.categorical and "weekday" not in config.numeric
    result = core.train(build_frame((1, 2), sample=0.3, seed=0), config)
    train = result.split.train.copy()
    train.loc[:9, "weekday"] = np.nan
    X = core.features_frame(train, config)
    signature = model_signature(train, config, result.model.classes_)
    assert signature == infer_signature(X, result.model.predict_proba(X))
    assert str({spec.name: spec.type for spec in signature.inputs.inputs}["weekday"]) != "string"


def test_the_dataset_input_schema_is_the_snapshot_s_own(tmp_path):
    """A run's dataset schema is the Parquet file's: each column typed as MLflow types the pandas column it
    becomes, required exactly when no row (of the whole snapshot, not just its first rows) lacks it."""
    import io

    import pyarrow as pa
    from mlflow.models import infer_signature

    from airflow_mlops.core import training as core
    from airflow_mlops.hooks.mlflow_tracking import dataset_schema

    config = core.load_config(write_configs(tmp_path)["config"])
    frame = build_frame((1, 2), sample=0.3, seed=0).sort_values("flight_id").reset_index(drop=True)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    table = core.read_parquet_table(buffer.getvalue())
    schema = {spec.name: spec for spec in dataset_schema(core.split_holdout(table, config)).inputs}
    assert list(schema) == table.column_names
    inferred = {spec.name: spec for spec in infer_signature(table.to_pandas()).inputs.inputs}
    for name, column in zip(table.column_names, table.columns, strict=True):
        assert schema[name].required is (column.null_count == 0), name
        if not (pa.types.is_integer(column.type) and column.null_count):  # pandas makes those float
            assert schema[name].type == inferred[name].type, name
    late = [name for name, spec in schema.items() if not spec.required]
    assert "temp" in late and schema["carrier"].required
    # A type MLflow has no name for (uint64: its inference of such a frame gives up on every column) is Any.
    odd = table.append_column("big", pa.array(np.arange(len(table), dtype="uint64")))
    specs = {s.name: s for s in dataset_schema(core.split_holdout(odd, config)).inputs}
    assert str(specs["big"].type) == "Any" and specs["big"].required and specs["carrier"].type == schema["carrier"].type
    # A DataFrame source: MLflow's inference on 200 training rows. A column whose only gap is in the last row
    # tells the two apart: optional by the file's counts, required by the sample.
    gapped = table.append_column("late_gap", pa.array(np.r_[np.ones(len(table) - 1), np.nan], from_pandas=True))
    assert {s.name: s.required for s in dataset_schema(core.split_holdout(gapped, config)).inputs}["late_gap"] is False
    as_frame = core.split_holdout(gapped.to_pandas(), config)
    fallback = dataset_schema(as_frame)
    assert fallback == infer_signature(as_frame.train.head(200)).inputs
    assert {s.name: s.required for s in fallback.inputs}["late_gap"] is True
