"""Training and evaluation generic over the task (classification | regression) and the estimator, on seeded
synthetic frames (no MLflow, no Airflow): regression metrics are scikit-learn's, every built-in estimator of
every task fits, a use case's factory fits through the same preprocessing, and bad configs name what to fix."""

from __future__ import annotations

import dataclasses
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from airflow_mlops.core import evaluation as ev
from airflow_mlops.core import training as core

from training_fixtures import REGRESSION_CONFIG_YAML, regression_frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return regression_frame(1500, seed=3)


def config(**model_changes) -> core.TrainingConfig:
    data = yaml.safe_load(REGRESSION_CONFIG_YAML)
    data["model"].update(model_changes)
    return core.TrainingConfig.from_dict(data)


def classification(frame: pd.DataFrame) -> tuple[pd.DataFrame, core.TrainingConfig]:
    """The same rows with a binary label (the target above its median) and a classification config."""
    binary = frame.assign(target=(frame["target"] > frame["target"].median()).astype(int))
    cfg = dataclasses.replace(config(), task="classification", mlflow_slice_metrics=None, threshold=0.5)
    return binary, cfg


def write_module(tmp_path, body: str, name: str = "usecase.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


# -- metrics ----------------------------------------------------------------------------------------------
def test_regression_metrics_are_scikit_learns_overall_and_per_slice(frame):
    cfg = config()
    result = core.train(frame, cfg)
    holdout = result.split.holdout
    assert holdout["target"].dtype == "float64" and result.split.holdout_months == ["2024-03"]
    predicted = core.predict_scores(result.model, holdout, cfg)
    assert predicted.shape == (len(holdout),) and predicted.dtype == "float64"
    np.testing.assert_array_equal(predicted, result.model.predict(core.features_frame(holdout, cfg)))
    evaluation = ev.evaluate(holdout, predicted, label=cfg.label, slices=cfg.slices, task=cfg.task)
    y = holdout["target"].to_numpy()

    def expected(mask: np.ndarray) -> dict[str, float]:
        return {
            "n": int(mask.sum()),
            "mean_label": float(y[mask].mean()),
            "rmse": float(np.sqrt(mean_squared_error(y[mask], predicted[mask]))),
            "mae": float(mean_absolute_error(y[mask], predicted[mask])),
            "r2": float(r2_score(y[mask], predicted[mask])),
        }

    def assert_close(got: dict, want: dict) -> None:
        assert set(got) == set(want) == set(ev.slice_metric_names("regression"))
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-12, rel=0), key

    assert_close(evaluation.overall, expected(np.ones(len(y), dtype=bool)))
    zones = holdout["zone"].to_numpy()
    assert set(evaluation.slices["zone"]) == set(zones)
    for zone, figures in evaluation.slices["zone"].items():
        assert_close(figures, expected(zones == zone))
    assert evaluation.overall["r2"] > 0.8  # the synthetic target is learnable
    assert evaluation.task == "regression" and evaluation.threshold is None
    # The training metrics are the same figures on the training rows.
    train_y = result.split.train["target"].to_numpy()
    train_pred = core.predict_scores(result.model, result.split.train, cfg)
    assert result.train_metrics["train_mae"] == pytest.approx(mean_absolute_error(train_y, train_pred), abs=1e-12)
    assert set(result.train_metrics) == {f"train_{k}" for k in ev.slice_metric_names("regression")}
    # The evaluation document reads back as it was written.
    again = ev.Evaluation.from_dict(evaluation.to_dict())
    assert again == evaluation
    flat = evaluation.flat_metrics(slice_metrics=cfg.mlflow_slice_metrics)
    assert flat["holdout_rmse"] == evaluation.overall["rmse"]
    assert {k.rsplit(".", 1)[1] for k in flat if "_slice." in k} == {"n", "rmse"}


def test_undefined_regression_metrics_are_none():
    # A constant label has no R² (scikit-learn would say 0 or 1); one row neither; no rows: no metric at all.
    constant = ev.regression_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert constant["r2"] is None and constant["mae"] == pytest.approx(2 / 3) and constant["mean_label"] == 2.0
    assert ev.regression_metrics([1.0], [1.5])["r2"] is None
    assert ev.regression_metrics([], []) == {"n": 0, "mean_label": None, "rmse": None, "mae": None, "r2": None}


def test_metric_names_and_directions_per_task():
    assert (
        ev.metrics_for("classification") == tuple(ev.METRICS) == ("roc_auc", "log_loss", "brier", "precision", "recall")
    )
    assert ev.metrics_for("regression") == ("rmse", "mae", "r2")
    assert ev.slice_metric_names("classification") == core.SLICE_METRIC_NAMES
    assert ev.slice_metric_names("regression") == ("n", "mean_label", "rmse", "mae", "r2")
    higher = {m for m, up in ev.METRIC_DIRECTIONS.items() if up}
    assert higher == {"roc_auc", "precision", "recall", "r2"}
    assert set(ev.METRIC_DIRECTIONS) - higher == {"log_loss", "brier", "rmse", "mae"}
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        ev.metrics_for("ranking")
    with pytest.raises(ValueError, match="unknown task"):
        ev.evaluate(pd.DataFrame({"y": [1.0]}), [1.0], label="y", task="ranking")


def test_an_evaluation_written_before_tasks_reads_as_a_classification():
    old = {"overall": {"n": 3, "roc_auc": 0.7}, "slices": {}, "threshold": 0.35, "holdout": {}}
    read = ev.Evaluation.from_dict(old)
    assert read.task == "classification" and read.threshold == 0.35


def test_predicted_vs_actual_plot_draws_each_model_in_label_units():
    from xml.etree import ElementTree

    rng = np.random.default_rng(1)
    y = rng.normal(100, 15, 1000)
    noisy = y + rng.normal(0, 30, 1000)
    svg = ev.predicted_vs_actual_svg(y, {"candidate": y.copy(), "champion v2 <old>": noisy})
    root = ElementTree.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 3  # the diagonal and one line per model
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "champion v2 <old>" in texts and "Predicted vs actual on the hold-out" in texts
    # Perfect predictions: every bin's mean prediction equals its mean label, so the points lie on the diagonal.
    points = [tuple(map(float, p.split(","))) for p in lines[1].get("points").split()]
    left, top, size = 60, 40, 290
    assert len(points) == 20
    assert all(abs((x - left) - (top + size - y)) < 0.15 for x, y in points)
    # Ticks are in the label's units: both axes span the plotted bin means (of every model), not 0..1.
    means = np.concatenate([np.r_[ev.quantile_calibration(y, p, n_bins=20)].ravel() for p in (y, noisy)])
    lo, hi = means.min(), means.max()
    expected = [f"{lo + tick * (hi - lo):.4g}" for tick in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert [t for t in texts if t in expected] == [label for label in expected for _ in range(2)]


# -- estimators -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("task", "name"), [(task, name) for task, names in core.ESTIMATORS.items() for name in names])
def test_every_built_in_estimator_of_every_task_builds_and_fits(frame, task, name):
    params = {"hist_gradient_boosting": {"max_iter": 30}, "random_forest": {"n_estimators": 20}}.get(name, {})
    data, cfg = classification(frame) if task == "classification" else (frame, config())
    cfg = dataclasses.replace(cfg, model_type=name, model_params=params)
    result = core.train(data, cfg)
    estimator = result.model.named_steps["model"]
    kind = "Classifier" if task == "classification" else "Regressor"
    if name == "ridge":
        assert type(estimator).__name__ == "Ridge"
    elif name == "logistic_regression":
        assert type(estimator).__name__ == "LogisticRegression"
    else:
        assert type(estimator).__name__.endswith(kind)
    assert estimator.get_params()["random_state"] == cfg.seed
    holdout = result.split.holdout
    scores = core.predict_scores(result.model, holdout, cfg)
    figures = ev.evaluate(holdout, scores, label=cfg.label, task=task).overall
    if task == "classification":
        np.testing.assert_array_equal(scores, core.predict_proba(result.model, holdout, cfg))
        assert ((scores >= 0) & (scores <= 1)).all() and figures["roc_auc"] > 0.8
    else:
        assert figures["r2"] > 0.7


def test_a_regression_fits_whatever_number_of_distinct_labels(frame):
    # A classification refuses training rows of one class; a regression has no classes.
    flat = frame.assign(target=np.where(frame["month"] == "2024-03", frame["target"], 7.0))
    result = core.train(flat, config())
    np.testing.assert_allclose(result.model.predict(core.features_frame(result.split.holdout, config())), 7.0)
    binary, cfg = classification(frame)
    with pytest.raises(ValueError, match="single class"):
        core.train(binary.assign(target=np.where(binary["month"] == "2024-03", binary["target"], 1)), cfg)


def test_a_regression_label_is_kept_as_float_and_must_be_numeric(frame):
    counts = frame.assign(target=frame["target"].round().astype(int))
    split = core.split_holdout(counts, config())
    assert split.train["target"].dtype == "float64"
    np.testing.assert_array_equal(split.train["target"], counts["target"].iloc[split.train_rows].astype(float))
    with pytest.raises(ValueError, match="label 'target'.*not numeric"):
        _ = core.split_holdout(frame.assign(target="high"), config()).train


# -- config -----------------------------------------------------------------------------------------------
def test_the_config_validates_the_task_and_the_estimator_of_each_task():
    assert config().task == "regression" and config().mlflow_slice_metrics == ("n", "rmse")
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        config(task="ranking")
    with pytest.raises(ValueError, match="unknown model type 'logistic_regression' for a regression model"):
        config(type="logistic_regression")
    data = yaml.safe_load(REGRESSION_CONFIG_YAML)
    data["model"].update(task="classification", type="ridge")
    with pytest.raises(ValueError, match="unknown model type 'ridge' for a classification model"):
        core.TrainingConfig.from_dict(data)
    with pytest.raises(ValueError, match="no module_file"):
        config(type="usecase:make_model")
    with pytest.raises(ValueError, match="absolute path"):
        config(type="usecase:make_model", module_file="usecase.py")
    with pytest.raises(ValueError, match="names the module 'usecase' but module_file is mine.py"):
        config(type="usecase:make_model", module_file="/srv/uc/mine.py")
    with pytest.raises(ValueError, match="'<module stem>:<function>'"):
        config(type="usecase:make-model", module_file="/srv/uc/usecase.py")
    # A regression has no class metrics to log per slice.
    data = yaml.safe_load(REGRESSION_CONFIG_YAML)
    data["evaluation"]["mlflow_slice_metrics"] = ["n", "roc_auc"]
    with pytest.raises(ValueError, match=r"unknown metrics \['roc_auc'\].*mean_label.*a regression model"):
        core.TrainingConfig.from_dict(data)
    # The threshold is a classification's; a regression does not check it.
    data = yaml.safe_load(REGRESSION_CONFIG_YAML)
    data["evaluation"]["threshold"] = 40
    assert core.TrainingConfig.from_dict(data).threshold == 40


def test_the_config_hash_and_round_trip_carry_the_task_and_the_module_file():
    factory = config(type="usecase:make_model", module_file="/srv/uc/usecase.py", params={"alpha": 0.1})
    for cfg in (config(), factory):
        assert core.TrainingConfig.from_dict(cfg.to_yaml_dict()) == cfg
        assert core.TrainingConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_yaml_dict()))) == cfg
        assert cfg.to_dict()["task"] == "regression" and cfg.to_dict()["module_file"] == cfg.module_file
    assert factory.to_yaml_dict()["model"]["module_file"] == "/srv/uc/usecase.py"
    moved = dataclasses.replace(factory, module_file="/srv/other/usecase.py")
    assert len({config().sha256, factory.sha256, moved.sha256}) == 3
    # The same model as a classification is another config; a dict without a task is a classification.
    data = yaml.safe_load(REGRESSION_CONFIG_YAML)
    data["model"].pop("task")
    data["evaluation"]["threshold"] = 0.5
    old = core.TrainingConfig.from_dict(data)
    assert old.task == "classification" and old.mlflow_slice_metrics == ("n", "roc_auc")
    as_classifier = dataclasses.replace(old, mlflow_slice_metrics=("n",))
    as_regressor = dataclasses.replace(as_classifier, task="regression")
    assert as_classifier.to_yaml_dict() | {"model": None} == as_regressor.to_yaml_dict() | {"model": None}
    assert as_classifier.sha256 != as_regressor.sha256  # the task alone changes the hash


# -- a use case's factory ---------------------------------------------------------------------------------
def test_a_factory_of_the_use_case_module_fits_through_the_pipeline(frame, tmp_path):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Lasso
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    module = write_module(
        tmp_path,
        """
        from sklearn.linear_model import Lasso

        def make_model(params):
            return Lasso(**params)
        """,
    )
    complete = frame.assign(x2=frame["x2"].fillna(5.0))  # Lasso takes no NaN: the features here have no gaps
    cfg = config(type="usecase:make_model", module_file=module, params={"alpha": 0.05})
    result = core.train(complete, cfg)
    encode, model = result.model.named_steps["encode"], result.model.named_steps["model"]
    assert isinstance(model, Lasso) and model.alpha == 0.05
    assert isinstance(encode, ColumnTransformer)
    assert isinstance(encode.named_transformers_["categorical"], OrdinalEncoder)
    assert encode.get_feature_names_out().tolist() == ["zone", "kind", "x1", "x2", "x3"]  # numerics as they are
    # The same as Lasso on the built-in estimators' ordinal encoding, fitted by hand.
    by_hand = Pipeline(
        [("encode", core._ordinal_encoding(["zone", "kind"], ["x1", "x2", "x3"])), ("m", Lasso(alpha=0.05))]
    )
    by_hand.fit(core.features_frame(result.split.train, cfg), result.split.train["target"])
    holdout = result.split.holdout
    np.testing.assert_array_equal(
        core.predict_scores(result.model, holdout, cfg), by_hand.predict(core.features_frame(holdout, cfg))
    )
    assert (
        ev.evaluate(
            holdout, core.predict_scores(result.model, holdout, cfg), label="target", task="regression"
        ).overall["r2"]
        > 0.7
    )


def test_a_factory_estimator_is_seeded_and_its_module_travels_with_the_pickle(frame, tmp_path):
    import cloudpickle

    module = write_module(
        tmp_path,
        """
        from sklearn.ensemble import RandomForestRegressor

        class Forest(RandomForestRegressor):
            pass

        def make_model(params):
            return Forest(n_estimators=10, **params)
        """,
    )
    cfg = config(type="usecase:make_model", module_file=module, params={"min_samples_leaf": 5})
    first, second = core.train(frame, cfg), core.train(frame, cfg)
    assert first.model.named_steps["model"].random_state == cfg.seed  # left unset by the factory: the config's seed
    holdout = first.split.holdout
    np.testing.assert_array_equal(
        core.predict_scores(first.model, holdout, cfg), core.predict_scores(second.model, holdout, cfg)
    )
    # Pickled by value: it loads where the use case's module is not importable (e.g. the serving process).
    pickled = cloudpickle.dumps(first.model)
    name = type(first.model.named_steps["model"]).__module__
    saved = sys.modules.pop(name)
    try:
        loaded = cloudpickle.loads(pickled)
    finally:
        sys.modules[name] = saved
    np.testing.assert_array_equal(
        loaded.predict(core.features_frame(holdout, cfg)), core.predict_scores(first.model, holdout, cfg)
    )


@pytest.mark.parametrize(
    ("body", "task", "message"),
    [
        ("def other(params):\n    return None\n", "regression", r"usecase.py: no function make_model\(\)"),
        ("def make_model():\n    return None\n", "regression", r"make_model\(\) must take 1 positional argument"),
        ("def make_model(params, seed):\n    return None\n", "regression", r"must take 1 positional argument"),
        ("make_model = 3\n", "regression", "make_model is not a function"),
        ("def make_model(params):\n    return 'ridge'\n", "regression", r"returned str, not a scikit-learn regression"),
        (
            "from sklearn.linear_model import Lasso\n\ndef make_model(params):\n    return Lasso()\n",
            "classification",
            r"returned Lasso, not a scikit-learn classification estimator \(it lacks predict_proba\)",
        ),
        ("raise RuntimeError('broken on import')\n", "regression", "importing the module failed"),
    ],
    ids=["missing", "no-argument", "two-arguments", "not-callable", "not-an-estimator", "no-proba", "import-error"],
)
def test_a_bad_factory_is_a_clear_error(frame, tmp_path, body, task, message):
    module = write_module(tmp_path, body)
    data, cfg = classification(frame) if task == "classification" else (frame, config())
    cfg = dataclasses.replace(cfg, model_type="usecase:make_model", module_file=module)
    with pytest.raises(ValueError, match=message):
        core.train(data, cfg)


def test_a_factory_module_that_does_not_exist_is_named(frame, tmp_path):
    cfg = config(type="usecase:make_model", module_file=str(tmp_path / "usecase.py"))
    with pytest.raises(ValueError, match="usecase.py: the use case's module file does not exist"):
        core.build_pipeline(cfg)
