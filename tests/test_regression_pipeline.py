"""A regression use case through the real operators: train → evaluate → gate → register → promote, against a real
MLflow (SQLite store in a temporary folder) and a real lake, as ``tests/test_registry.py`` runs classification."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from training_fixtures import (
    REGRESSION_CONFIG_YAML,
    REGRESSION_POLICY_YAML,
    regression_frame,
    run_pipeline,
    write_configs,
    write_snapshot,
)

MODEL = "regression_test"
FACTORY_MODULE = """
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Lasso
from sklearn.pipeline import make_pipeline


def make_model(params):
    return make_pipeline(SimpleImputer(strategy="median"), Lasso(**params))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh MLflow store and lake for this module, a good snapshot and one whose training labels are shuffled."""
    root = tmp_path_factory.mktemp("mlflow-regression")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLOPS_MLFLOW_ARTIFACTS", (root / "artifacts").as_uri())
        mp.setenv("MLOPS_LAKE", (root / "lake").as_uri())
        mp.setenv("MLOPS_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
        from airflow_mlops.hooks.lake import LakeHook

        lake = LakeHook()
        lake.ensure_zones()
        frame = regression_frame(1500, seed=5)
        shuffled = frame.copy()
        train = shuffled["month"] != "2024-03"
        shuffled.loc[train, "target"] = np.random.default_rng(1).permutation(shuffled.loc[train, "target"].to_numpy())
        module = root / "usecase" / "usecase.py"
        module.parent.mkdir()
        module.write_text(textwrap.dedent(FACTORY_MODULE))
        factory_yaml = REGRESSION_CONFIG_YAML.replace(
            "  type: hist_gradient_boosting\n", f"  type: usecase:make_model\n  module_file: {module}\n"
        ).replace(
            "params: {max_iter: 60, max_leaf_nodes: 15, min_samples_leaf: 20, early_stopping: false}",
            "params: {alpha: 0.05}",
        )
        yield {
            "root": root,
            "good": write_snapshot(lake, frame),
            "shuffled": write_snapshot(lake, shuffled),
            "paths": write_configs(root / "config", config=REGRESSION_CONFIG_YAML, policy=REGRESSION_POLICY_YAML),
            "factory_paths": write_configs(root / "factory", config=factory_yaml, policy=REGRESSION_POLICY_YAML),
        }


def hook():
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    return MlflowHook()


@pytest.fixture(scope="module")
def champion(store):
    return run_pipeline(store["good"], store["paths"], "manual__regression_first")


def test_a_regression_is_trained_evaluated_gated_registered_and_promoted(champion, store):
    import mlflow
    import yaml
    from airflow.sdk import ObjectStoragePath
    from mlflow.models import infer_signature

    from airflow_mlops.core import evaluation as ev
    from airflow_mlops.core import training as core
    from airflow_mlops.hooks.mlflow_tracking import load_model

    gate = champion["gate"]
    assert gate["approved"] and gate["champion_version"] is None, gate["reasons"]
    assert champion["registered"]["version"] == "1" and champion["promoted"]["to_version"] == "1"
    h = hook()
    assert h.alias_version(MODEL, "champion") == "1"
    run = h.client.get_run(champion["trained"]["run_id"])
    assert run.data.params["task"] == "regression" and "threshold" not in run.data.params
    assert run.data.tags["mlops.model.task"] == "regression"
    metrics = run.data.metrics
    assert {"holdout_rmse", "holdout_mae", "holdout_r2", "holdout_mean_label", "train_rmse", "train_r2"} <= set(metrics)
    assert not any("roc_auc" in k or "positive_rate" in k for k in metrics)
    assert {k.rsplit(".", 1)[1] for k in metrics if k.startswith("holdout_slice.zone.")} == {"n", "rmse"}
    assert champion["evaluated"]["candidate"]["r2"] == metrics["holdout_r2"] > 0.8
    artifacts = {a.path for a in h.client.list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {"evaluation/evaluation.json", "evaluation/predicted_vs_actual.svg"}
    h.activate()
    document = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/evaluation/evaluation.json")
    assert document["candidate"]["task"] == "regression" and document["candidate"]["threshold"] is None
    assert all(
        set(m) == set(ev.slice_metric_names("regression")) for m in document["candidate"]["slices"]["zone"].values()
    )
    assert json.loads(h.client.get_model_version(MODEL, "1").tags["mlops.gate.decision"])["approved"] is True
    decision = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/gate/decision.json")
    assert decision["metrics"]["overall.rmse"]["passed"] and decision["metrics"]["overall.r2"]["passed"]

    # The logged model: its signature is MLflow's inference on every training row and the predictions (1-D
    # doubles), and pyfunc predicts with ``predict``.
    config = core.load_config(store["paths"]["config"])
    frame = core.read_parquet_bytes(ObjectStoragePath(store["good"]["uri"]).read_bytes())
    split = core.split_holdout(frame, config)
    X = core.features_frame(split.train, config)
    fitted = load_model(h, champion["trained"]["model_uri"])
    info = mlflow.models.get_model_info(champion["trained"]["model_uri"])
    assert info.signature == infer_signature(X, fitted.predict(X))
    (output,) = info.signature.outputs.inputs
    assert output.shape == (-1,) and str(output.type) == "float64"
    assert info.flavors["python_function"]["predict_fn"] == "predict"
    local = mlflow.artifacts.download_artifacts(champion["trained"]["model_uri"])
    pyfunc = mlflow.pyfunc.load_model(local)
    example = pyfunc.metadata.load_input_example(local)
    np.testing.assert_array_equal(np.asarray(pyfunc.predict(example)), fitted.predict(example))

    # Retrained from what the run recorded (config artifact + snapshot): the same figures, exactly.
    from airflow_mlops.core.tracking import CONFIG_ARTIFACT

    logged = core.TrainingConfig.from_dict(
        yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{CONFIG_ARTIFACT}"))
    )
    assert logged == config and logged.sha256 == run.data.tags["mlops.config.sha256"]
    again = core.train(frame, logged)
    result = ev.evaluate(
        again.split.holdout,
        core.predict_scores(again.model, again.split.holdout, logged),
        label=logged.label,
        slices=logged.slices,
        task=logged.task,
    )
    for key, value in result.flat_metrics("holdout", slice_metrics=logged.mlflow_slice_metrics).items():
        assert metrics[key] == value, key


def test_a_factory_candidate_trained_on_noise_is_rejected_against_the_champion(champion, store):
    from airflow_mlops.core import training as core

    out = run_pipeline(store["shuffled"], store["factory_paths"], "manual__regression_factory")
    gate = out["gate"]
    assert not gate["approved"] and gate["champion_version"] == "1", gate["reasons"]
    assert any("r2" in r and "below the floor" in r for r in gate["reasons"])
    assert any(r.startswith("overall.rmse") and "worse by" in r for r in gate["reasons"])
    assert out["registered"] == "skipped" and hook().alias_version(MODEL, "champion") == "1"
    # The champion was scored on the same hold-out and logged beside the candidate.
    run = hook().client.get_run(out["trained"]["run_id"])
    assert run.data.params["model_type"] == "usecase:make_model"
    assert run.data.metrics["champion_holdout_rmse"] == champion["evaluated"]["candidate"]["rmse"]
    assert run.data.metrics["holdout_rmse"] > run.data.metrics["champion_holdout_rmse"]
    # The factory's pipeline (imputer + Lasso) sits behind the package's ordinal encoding in the logged model.
    from airflow_mlops.hooks.mlflow_tracking import load_model

    model = load_model(hook(), out["trained"]["model_uri"])
    assert type(model.named_steps["model"].steps[-1][1]).__name__ == "Lasso"
    assert model.named_steps["model"].steps[-1][1].alpha == 0.05
    config = core.load_config(store["factory_paths"]["config"])
    assert config.module_file.endswith("usecase.py") and config.estimator_factory == ("usecase", "make_model")
