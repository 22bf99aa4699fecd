"""Training: the scikit-learn pipeline a config describes, a time-based hold-out, seeded fitting.

A config's ``task`` is ``classification`` (the score is the positive class's probability) or ``regression``
(the score is the prediction); its ``model_type`` names a built-in estimator of that task (``ESTIMATORS``) or
a factory in the use case's module (``"usecase:make_model"`` with ``module_file``).

Plain functions with no Airflow import. pandas / scikit-learn are imported inside the functions so that
importing this module stays cheap.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.evaluation import METRICS, TASKS, slice_metric_names

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from sklearn.pipeline import Pipeline

#: Classification model types a config may name; each maps to a pipeline builder below.
MODEL_TYPES = ("hist_gradient_boosting", "logistic_regression", "random_forest")
#: The built-in estimators of each task (``build_pipeline``); a config may also name a factory of its own.
ESTIMATORS: dict[str, tuple[str, ...]] = {
    "classification": MODEL_TYPES,
    "regression": ("hist_gradient_boosting", "ridge", "random_forest"),
}
#: What a classification's evaluation reports per slice (``core.evaluation.overall_metrics``): size, positive
#: rate, metrics. ``core.evaluation.slice_metric_names(task)`` gives those of any task.
SLICE_METRIC_NAMES = ("n", "positive_rate", *METRICS)
#: The per-slice figures MLflow gets by default, per task.
DEFAULT_MLFLOW_SLICE_METRICS = {"classification": ("n", "roc_auc"), "regression": ("n", "rmse")}


@dataclass(frozen=True)
class TrainingConfig:
    """What to train and how to judge it (``include/config/training.yaml``).

    ``model_type`` is the estimator: a name of ``ESTIMATORS[task]``, or ``"<module stem>:<function>"`` (e.g.
    ``"usecase:make_model"``), a factory in the use case's module ``module_file`` (an absolute path) called with
    ``model_params`` when the pipeline is built. ``mlflow_slice_metrics`` left ``None`` is the task's default
    (``DEFAULT_MLFLOW_SLICE_METRICS``). ``threshold`` is a classification's decision threshold.
    """

    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    model_type: str = "hist_gradient_boosting"
    model_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: int = 1
    serialization_format: str = "cloudpickle"
    holdout_months: int = 1
    threshold: float = 0.5
    slices: tuple[str, ...] = ()
    #: Per-slice metrics also logged as MLflow metrics (all of them are in the evaluation JSON whatever this says);
    #: ``None``: the task's default.
    mlflow_slice_metrics: tuple[str, ...] | None = None
    id_column: str = "id"
    timestamp_column: str = "event_timestamp"
    label: str = "label"
    month_column: str = "month"
    experiment_name: str = "mlops-training"
    registered_model_name: str = "model"
    task: str = "classification"
    module_file: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r} in model.task; expected one of {', '.join(TASKS)}")
        self._check_estimator()
        if self.mlflow_slice_metrics is None:
            object.__setattr__(self, "mlflow_slice_metrics", DEFAULT_MLFLOW_SLICE_METRICS[self.task])
        if not self.categorical and not self.numeric:
            raise ValueError("the training config lists no features")
        overlap = set(self.categorical) & set(self.numeric)
        if overlap:
            raise ValueError(f"features listed as both categorical and numeric: {sorted(overlap)}")
        if self.holdout_months < 1:
            raise ValueError("holdout.months must be at least 1: a model is never judged on its training data")
        if self.task == "classification" and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"evaluation.threshold must be in (0, 1), got {self.threshold}")
        known = slice_metric_names(self.task)
        unknown = [m for m in self.mlflow_slice_metrics if m not in known]
        if unknown:
            raise ValueError(
                f"evaluation.mlflow_slice_metrics names unknown metrics {unknown}; expected some of "
                f"{', '.join(known)} (a {self.task} model)"
            )
        if self.serialization_format not in ("cloudpickle", "skops"):
            raise ValueError(
                f"model.serialization_format must be cloudpickle or skops, not {self.serialization_format!r}"
            )

    def _check_estimator(self) -> None:
        """Raise ``ValueError`` naming ``model_type`` unless it is a built-in estimator of the task or a
        well-formed factory reference with its ``module_file`` (the module itself is only read when the
        pipeline is built, at run time)."""
        factory = self.estimator_factory
        if factory is None:
            known = ESTIMATORS[self.task]
            if self.model_type not in known:
                raise ValueError(
                    f"unknown model type {self.model_type!r} for a {self.task} model; expected one of "
                    f"{', '.join(known)}, or a factory of the use case's module as '<module stem>:<function>'"
                )
            return
        stem, function = factory
        if not stem or "/" in stem or "\\" in stem or not function.isidentifier():
            raise ValueError(
                f"model type {self.model_type!r}: a factory is named '<module stem>:<function>', e.g. 'usecase:make_model'"
            )
        if not self.module_file:
            raise ValueError(
                f"model type {self.model_type!r} names a factory of the use case's module, but the config has no "
                "module_file (the absolute path of that module)"
            )
        module = Path(self.module_file)
        if not module.is_absolute():
            raise ValueError(f"module_file must be an absolute path, not {self.module_file!r}")
        if module.stem != stem:
            raise ValueError(
                f"model type {self.model_type!r} names the module {stem!r} but module_file is {module.name}: "
                f"write '{module.stem}:{function}'"
            )

    @property
    def estimator_factory(self) -> tuple[str, str] | None:
        """``(module stem, function)`` when ``model_type`` names a factory of the use case's module, else ``None``."""
        if ":" not in self.model_type:
            return None
        stem, _, function = self.model_type.partition(":")
        return stem.strip(), function.strip()

    @property
    def features(self) -> list[str]:
        return [*self.categorical, *self.numeric]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_yaml_dict(self) -> dict[str, Any]:
        """The config in the layout of ``training.yaml`` (what is logged with a run, and read back to retrain)."""
        return {
            "experiment_name": self.experiment_name,
            "registered_model_name": self.registered_model_name,
            "id_column": self.id_column,
            "timestamp_column": self.timestamp_column,
            "label": self.label,
            "month_column": self.month_column,
            "features": {"categorical": list(self.categorical), "numeric": list(self.numeric)},
            "model": {
                "task": self.task,
                "type": self.model_type,
                "module_file": self.module_file,
                "seed": self.seed,
                "threads": self.threads,
                "params": dict(self.model_params),
                "serialization_format": self.serialization_format,
            },
            "holdout": {"months": self.holdout_months},
            "evaluation": {
                "threshold": self.threshold,
                "slices": list(self.slices),
                "mlflow_slice_metrics": list(self.mlflow_slice_metrics),
            },
        }

    @property
    def sha256(self) -> str:
        """Hash of everything that changes what is trained or how it is judged."""
        return hashlib.sha256(json.dumps(self.to_yaml_dict(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """A config from the layout of ``training.yaml`` (``to_yaml_dict``); no ``model.task`` is classification.

        :param data: the mapping.
        :raises ValueError: a required key is missing, or a value is invalid (the message names it).
        """
        try:
            features, model = data["features"], data["model"]
            evaluation = data.get("evaluation") or {}
            return cls(
                categorical=tuple(features.get("categorical") or ()),
                numeric=tuple(features.get("numeric") or ()),
                task=model.get("task") or "classification",
                model_type=model["type"],
                module_file=model.get("module_file") or None,
                model_params=dict(model.get("params") or {}),
                seed=int(model.get("seed", 0)),
                threads=int(model.get("threads", 1)),
                serialization_format=model.get("serialization_format", "cloudpickle"),
                holdout_months=int((data.get("holdout") or {}).get("months", 1)),
                threshold=float(evaluation.get("threshold", 0.5)),
                slices=tuple(evaluation.get("slices") or ()),
                mlflow_slice_metrics=(
                    tuple(evaluation["mlflow_slice_metrics"] or ()) if "mlflow_slice_metrics" in evaluation else None
                ),
                id_column=data.get("id_column", "id"),
                timestamp_column=data.get("timestamp_column", "event_timestamp"),
                label=data.get("label", "label"),
                month_column=data.get("month_column", "month"),
                experiment_name=data.get("experiment_name", "mlops-training"),
                registered_model_name=data.get("registered_model_name", "model"),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"the training config is incomplete: missing {err}") from err


def load_config(path: str | Path) -> TrainingConfig:
    """Read a training config YAML file."""
    from airflow_mlops.core.yaml_files import read_mapping

    data = read_mapping(path, TRAINING_CONFIG_SHAPE)
    if data is None:
        raise ValueError(f"{path} is empty: it must hold {TRAINING_CONFIG_SHAPE}")
    return TrainingConfig.from_dict(data)


TRAINING_CONFIG_SHAPE = "a mapping (features, model, holdout, evaluation)"


def config_from_yaml(text: str, where: str) -> TrainingConfig:
    """A training config from YAML text (e.g. the config artifact a training run logged).

    :raises ValueError: not YAML, empty, or not a valid config; names ``where``.
    """
    from airflow_mlops.core.yaml_files import parse_mapping

    data = parse_mapping(text, where, TRAINING_CONFIG_SHAPE)
    if data is None:
        raise ValueError(f"{where} is empty: it must hold {TRAINING_CONFIG_SHAPE}")
    return TrainingConfig.from_dict(data)


# -- data -------------------------------------------------------------------------------------------------
def read_parquet_bytes(data: bytes) -> pd.DataFrame:
    import io

    import pandas as pd

    return pd.read_parquet(io.BytesIO(data))


def read_parquet_table(data: bytes) -> pa.Table:
    """The Parquet file ``data`` decoded, not yet converted to pandas: ``split_holdout`` of a table converts
    only the rows a caller asks for (training takes its rows, the evaluation the hold-out), and decides the
    split itself in Arrow."""
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data))


def check_columns(columns: Any, config: TrainingConfig) -> None:
    """Raise ``ValueError`` naming every column the config needs that ``columns`` lacks."""
    needed = [config.id_column, config.timestamp_column, config.label, *config.features, *config.slices]
    present = set(columns)
    missing = [c for c in dict.fromkeys(needed) if c not in present]
    if missing:
        raise ValueError(f"the training set lacks columns the config needs: {', '.join(missing)}")


@dataclass(frozen=True, eq=False)
class Split:
    """A time-based split: ``train`` strictly before ``cutoff``, ``holdout`` from it on.

    The two frames are taken from ``source`` (a DataFrame or a pyarrow Table) at ``train_rows`` /
    ``holdout_rows`` when first asked for, one copy each, index ``0..n-1``, the label as int (classification)
    or float64 (regression).
    """

    source: Any = field(repr=False)
    label: str
    train_rows: Any = field(repr=False)
    holdout_rows: Any = field(repr=False)
    train_months: list[str]
    holdout_months: list[str]
    cutoff: str
    task: str = "classification"

    @functools.cached_property
    def train(self) -> pd.DataFrame:
        return _take_rows(self.source, self.train_rows, self.label, self.task)

    @functools.cached_property
    def holdout(self) -> pd.DataFrame:
        return _take_rows(self.source, self.holdout_rows, self.label, self.task)

    def summary(self) -> dict[str, Any]:
        return {
            "train_rows": len(self.train_rows),
            "holdout_rows": len(self.holdout_rows),
            "train_months": self.train_months,
            "holdout_months": self.holdout_months,
            "cutoff": self.cutoff,
        }


def utc_timestamps(values: pd.Series) -> pd.Series:
    """``values`` as UTC timestamps. A column that already holds time-zone-aware timestamps is converted
    in place of being re-parsed (``pd.to_datetime(..., utc=True)`` walks such a column element by element)."""
    import pandas as pd

    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    return pd.to_datetime(values, utc=True)


def _utc_months(ts: pd.Series) -> pd.Series:
    return utc_timestamps(ts).dt.strftime("%Y-%m")


def split_holdout(frame: pd.DataFrame | pa.Table, config: TrainingConfig) -> Split:
    """Hold out the newest ``holdout_months`` month(s) of the labelled rows; train on everything before.

    A row's month is the ``month`` column of the training set (the batch month the feature stage assigned)
    when there is one, else the UTC month of its event time. The split is strictly by time: training rows
    are those whose event time is before the earliest event of the hold-out, so nothing from the hold-out's
    period (or later) is ever trained on. Unlabelled rows are dropped. Rows are ordered by id, so the same
    snapshot always gives the same training matrix whatever order its file has.

    ``frame`` may be a pyarrow Table (``read_parquet_table``): the split is decided on its key columns in
    Arrow and each side is converted to pandas only when asked for.

    :raises ValueError: too few months to hold any out, or nothing left to train on.
    """
    import numpy as np

    is_table = hasattr(frame, "column_names")
    columns = frame.column_names if is_table else frame.columns
    check_columns(columns, config)
    has_month = config.month_column in set(columns)
    rows, ts, codes, labels = (_table_keys if is_table else _frame_keys)(frame, config, has_month)
    distinct = sorted(labels)
    if len(distinct) <= config.holdout_months:
        raise ValueError(
            f"the training set covers {len(distinct)} month(s) ({', '.join(distinct) or 'none'}); "
            f"holding out {config.holdout_months} leaves nothing to train on"
        )
    holdout_months = distinct[-config.holdout_months :]
    is_holdout = np.isin(codes, [labels.index(m) for m in holdout_months])
    cutoff = ts[is_holdout].min()
    is_train = ~is_holdout & (ts < cutoff).to_numpy()
    if not is_train.any():
        raise ValueError(f"no labelled rows before the hold-out's first event {cutoff.isoformat()}")
    return Split(
        source=frame,
        label=config.label,
        train_rows=rows[is_train],
        holdout_rows=rows[is_holdout],
        train_months=sorted(labels[i] for i in np.unique(codes[is_train])),
        holdout_months=holdout_months,
        cutoff=cutoff.isoformat(),
        task=config.task,
    )


def _frame_keys(frame: pd.DataFrame, config: TrainingConfig, has_month: bool) -> tuple[Any, pd.Series, Any, list[str]]:
    """``split_holdout``'s keys of a DataFrame: the labelled rows' positions in id order, their UTC event
    times, and their months as codes into a list of month labels."""
    import numpy as np

    rows = np.flatnonzero(frame[config.label].notna().to_numpy())
    ids = frame[config.id_column].iloc[rows]
    if not ids.is_monotonic_increasing:  # committed training sets already are
        rows = rows[np.argsort(ids.to_numpy(), kind="stable")]
    ts = utc_timestamps(frame[config.timestamp_column].iloc[rows]).reset_index(drop=True)
    months = frame[config.month_column].iloc[rows].astype(str) if has_month else _utc_months(ts)
    codes, labels = _factorize(months)
    return rows, ts, codes, labels


def _table_keys(table: pa.Table, config: TrainingConfig, has_month: bool) -> tuple[Any, pd.Series, Any, list[str]]:
    """As ``_frame_keys``, of a pyarrow Table: computed in Arrow (a month column of strings is dictionary
    encoded, not hashed as Python strings), the event times alone converted to pandas."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    label = table.column(config.label)
    labelled = pc.is_valid(label)
    if pa.types.is_floating(label.type):
        labelled = pc.and_kleene(labelled, pc.invert(pc.is_nan(label)))
    rows = np.flatnonzero(labelled.to_numpy(zero_copy_only=False))
    ids = table.column(config.id_column).take(rows).combine_chunks()
    if len(ids) > 1 and not pc.all(pc.greater_equal(ids[1:], ids[:-1])).as_py():  # committed sets already are
        rows = rows[pc.sort_indices(ids).to_numpy()]  # a stable sort
    ts = utc_timestamps(table.column(config.timestamp_column).take(rows).to_pandas()).reset_index(drop=True)
    if not has_month:
        codes, labels = _factorize(_utc_months(ts))
        return rows, ts, codes, labels
    months = table.column(config.month_column).take(rows).combine_chunks()
    if not (pa.types.is_string(months.type) or pa.types.is_large_string(months.type)) or months.null_count:
        codes, labels = _factorize(months.to_pandas().astype(str))  # as the DataFrame path spells them
        return rows, ts, codes, labels
    encoded = pc.dictionary_encode(months)
    return rows, ts, encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


def _factorize(values: pd.Series) -> tuple[Any, list[str]]:
    """Codes of ``values`` into the list of their distinct values."""
    import pandas as pd

    codes, labels = pd.factorize(values)
    return codes, list(labels)


def _take_rows(
    source: pd.DataFrame | pa.Table, positions: Any, label: str, task: str = "classification"
) -> pd.DataFrame:
    """The rows at ``positions`` of a DataFrame or a pyarrow Table as a new frame (one copy, index
    0..n-1), the label as int (classification) or float64 (regression).

    :raises ValueError: a regression's label is not numeric.
    """
    import pandas as pd

    if hasattr(source, "column_names"):
        out = source.take(positions).to_pandas()
    else:
        out = source.take(positions)
        out.index = pd.RangeIndex(len(out))
    if task == "classification":
        out[label] = out[label].astype(int)
        return out
    try:
        out[label] = out[label].astype("float64")
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"the label {label!r} ({out[label].dtype}) is not numeric: a regression's label must be a number"
        ) from err
    return out


def features_frame(frame: pd.DataFrame, config: TrainingConfig) -> pd.DataFrame:
    """The model's input: the configured features in config order, a categorical one as Python objects
    (missing → None), a numeric one as float64 (missing → NaN); one new frame built from the converted columns."""
    import numpy as np
    import pandas as pd

    categorical = set(config.categorical)
    return pd.DataFrame(
        {
            col: (
                frame[col].astype("object").where(frame[col].notna(), None)
                if col in categorical
                else frame[col].to_numpy(dtype="float64", na_value=np.nan)
            )
            for col in config.features
        },
        index=frame.index,
    )


# -- model ------------------------------------------------------------------------------------------------
def build_pipeline(config: TrainingConfig) -> Pipeline:
    """An unfitted pipeline: encoding of the configured features + the configured estimator, seeded.

    Built-in estimators (``ESTIMATORS``): gradient boosting reads ordinal-encoded categoricals (unknown /
    missing: a code of their own, a branch of its own) and the numerics as they are; the others one-hot
    categoricals and median-impute numerics (the linear ones also standardise them). A factory of the use
    case's module (``estimator_factory``) gets the gradient boosting's encoding: categoricals ordinal-encoded
    (unknown / missing → -1), numerics as they are (NaN kept: the estimator, or a pipeline the factory returns,
    must take them if the features have gaps).

    :param config: the training config.
    :raises ValueError: the factory cannot be loaded or returns no estimator (the message names it).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    cats, nums = list(config.categorical), list(config.numeric)
    params = dict(config.model_params)
    classify = config.task == "classification"
    if config.estimator_factory is not None:
        return Pipeline([("encode", _ordinal_encoding(cats, nums)), ("model", make_user_estimator(config))])
    if config.model_type == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        n_cat = len(cats)
        # Encoded unknown/missing (-1) is treated as missing by the estimator: its own branch.
        cat_mask = [True] * n_cat + [False] * len(nums)
        estimator = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
        model = estimator(categorical_features=cat_mask if n_cat else None, random_state=config.seed, **params)
        return Pipeline([("encode", _ordinal_encoding(cats, nums)), ("model", model)])

    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric_steps = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
    if config.model_type in ("logistic_regression", "ridge"):
        numeric_steps.append(("scale", StandardScaler()))
    encode = ColumnTransformer(
        [
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", min_frequency=20)),
                    ]
                ),
                cats,
            ),
            ("numeric", Pipeline(numeric_steps), nums),
        ]
    )
    if config.model_type == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(random_state=config.seed, **{"max_iter": 1000, **params})
    elif config.model_type == "ridge":
        from sklearn.linear_model import Ridge

        model = Ridge(random_state=config.seed, **params)
    elif classify:
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(random_state=config.seed, **{"n_jobs": 1, **params})
    else:
        from sklearn.ensemble import RandomForestRegressor

        model = RandomForestRegressor(random_state=config.seed, **{"n_jobs": 1, **params})
    return Pipeline([("encode", encode), ("model", model)])


def _ordinal_encoding(cats: list[str], nums: list[str]) -> Any:
    """Categoricals ordinal-encoded as float (unknown and missing → -1), numerics passed through, in that order."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OrdinalEncoder

    return ColumnTransformer(
        [
            (
                "categorical",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=-1,
                    encoded_missing_value=-1,
                    dtype="float64",
                ),
                cats,
            ),
            ("numeric", "passthrough", nums),
        ],
        verbose_feature_names_out=False,
    )


def make_user_estimator(config: TrainingConfig) -> Any:
    """The estimator the use case's factory (``model_type`` ``"<module stem>:<function>"``) returns when called
    with ``model_params``, seeded: a ``random_state`` parameter it leaves unset gets ``config.seed``.

    The module's own code is pickled with the model (by value), so the saved model loads where the use case's
    module is not importable (serving).

    :param config: a config whose ``model_type`` names a factory.
    :raises ValueError: the module or function cannot be loaded (``UserCodeError``), the function does not take
        one argument, or what it returns is no estimator (no ``fit`` / ``predict``, or no ``predict_proba``
        for a classification).
    """
    from airflow_mlops.usecase import load_function
    from airflow_mlops.usecase.user_code import load_module

    factory = config.estimator_factory
    if factory is None or not config.module_file:
        raise ValueError(f"model type {config.model_type!r} names no factory of a use case's module")
    _, function = factory
    make = load_function(config.module_file, function, arity=1)
    model = make(dict(config.model_params))
    where = f"{Path(config.module_file).name}: {function}(params)"
    missing = [m for m in ("fit", "predict") if not callable(getattr(model, m, None))]
    if config.task == "classification" and not callable(getattr(model, "predict_proba", None)):
        missing.append("predict_proba")
    if missing:
        raise ValueError(
            f"{where} returned {type(model).__name__}, not a scikit-learn {config.task} estimator "
            f"(it lacks {', '.join(missing)})"
        )
    get_params = getattr(model, "get_params", None)
    if callable(get_params) and "random_state" in (own := get_params(deep=False)) and own["random_state"] is None:
        model.set_params(random_state=config.seed)
    import cloudpickle

    cloudpickle.register_pickle_by_value(load_module(config.module_file))
    return model


@dataclass(frozen=True)
class TrainResult:
    """A fitted pipeline with what it was fitted on (the split) and how long it took."""

    model: Pipeline
    split: Split
    fit_seconds: float
    train_metrics: dict[str, float]


def train(frame: pd.DataFrame, config: TrainingConfig, split: Split | None = None) -> TrainResult:
    """Split off the hold-out and fit the configured pipeline on the rest. Same frame + config → same model.

    :param split: ``split_holdout(frame, config)`` if the caller already made it.
    """
    split = split or split_holdout(frame, config)
    pipeline, fit_seconds = fit(split, config)
    return TrainResult(
        model=pipeline, split=split, fit_seconds=fit_seconds, train_metrics=training_metrics(pipeline, split, config)
    )


def fit(split: Split, config: TrainingConfig) -> tuple[Pipeline, float]:
    """Fit the configured pipeline on the split's training rows; returns it and the fit's seconds.

    :raises ValueError: a single class in a classification's training rows, or a feature with no value at all.
    """
    import time

    from threadpoolctl import threadpool_limits

    if config.task == "classification" and split.train[config.label].nunique() < 2:
        raise ValueError("the training rows hold a single class: nothing to learn")
    X, y = features_frame(split.train, config), split.train[config.label].to_numpy()
    empty = [c for c in config.features if X[c].isna().all()]
    if empty:
        raise ValueError(
            f"features with no value at all in the training rows (fix the feature stage or the config): {', '.join(empty)}"
        )
    pipeline = build_pipeline(config)
    started = time.perf_counter()
    with threadpool_limits(config.threads):
        pipeline.fit(X, y)
    return pipeline, time.perf_counter() - started


def training_metrics(model: Any, split: Split, config: TrainingConfig) -> dict[str, float | None]:
    """Overall metrics of ``model`` on the rows it was trained on, as ``train_<metric>`` (the task's metrics)."""
    from airflow_mlops.core.evaluation import task_metrics

    scores = predict_scores(model, split.train, config)
    y = split.train[config.label].to_numpy()
    figures = task_metrics(y, scores, task=config.task, threshold=config.threshold)
    return {f"train_{k}": v for k, v in figures.items()}


def predict_scores(model: Any, frame: pd.DataFrame, config: TrainingConfig) -> Any:
    """The model's score of each row, what its evaluation judges: P(label = 1) for a classification
    (``predict_proba``), the prediction (``model.predict``, float64) for a regression.

    :param model: a fitted pipeline (it selects its own columns by name).
    :param frame: rows holding the configured features.
    :param config: the training config (task, features, threads).
    :raises ValueError: a regression model that does not predict one number per row.
    """
    import numpy as np
    from threadpoolctl import threadpool_limits

    if config.task == "classification":
        return predict_proba(model, frame, config)
    X = features_frame(frame, config)
    with threadpool_limits(config.threads):
        predicted = np.asarray(model.predict(X), dtype="float64")
    if predicted.shape != (len(X),):
        if predicted.size != len(X):
            raise ValueError(f"the model predicted an array of shape {predicted.shape} for {len(X)} rows")
        predicted = predicted.reshape(len(X))
    return predicted


def predict_proba(model: Any, frame: pd.DataFrame, config: TrainingConfig | None = None) -> Any:
    """P(label = 1) for each row, of a classifier. ``model`` is a fitted pipeline (it selects its own columns by
    name). ``predict_scores`` is the score of any task."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    X = features_frame(frame, config) if config is not None else frame
    with threadpool_limits(config.threads if config is not None else 1):
        return np.asarray(model.predict_proba(X))[:, 1]


def pip_requirements() -> list[str]:
    """Exact requirements for serving the pipeline (inferring them is slow and lists unrelated packages)."""
    return list(_installed_pins())


@functools.cache
def _installed_pins() -> tuple[str, ...]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("scikit-learn", "pandas", "numpy", "cloudpickle", "skops"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            if package != "skops":  # skops is only needed for the skops format
                raise
    return tuple(pins)


def git_commit(root: str | Path | None) -> tuple[str, bool]:
    """The code version: ``MLOPS_GIT_COMMIT`` if set (e.g. baked into an image), else ``git rev-parse HEAD`` of
    ``root`` (the checkout; None, installed from a wheel: ``"unknown"``).

    :return: (commit or ``"unknown"``, whether tracked files differ from it).
    """
    import os
    import subprocess

    pinned = os.environ.get("MLOPS_GIT_COMMIT")
    if pinned:
        return pinned, False
    if root is None:
        return "unknown", False
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return head or "unknown", bool(status)
