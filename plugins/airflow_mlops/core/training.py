"""Training: the scikit-learn pipeline a config describes, a time-based hold-out, seeded fitting.

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

from airflow_mlops.core.evaluation import METRICS

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from sklearn.pipeline import Pipeline

#: Model types a config may name; each maps to a pipeline builder below.
MODEL_TYPES = ("hist_gradient_boosting", "logistic_regression", "random_forest")
#: What the evaluation reports per slice (``core.evaluation.overall_metrics``): size, positive rate, metrics.
SLICE_METRIC_NAMES = ("n", "positive_rate", *METRICS)


@dataclass(frozen=True)
class TrainingConfig:
    """What to train and how to judge it (``include/config/training.yaml``)."""

    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    model_type: str = "hist_gradient_boosting"
    model_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: int = 1
    serialization_format: str = "cloudpickle"
    holdout_months: int = 1
    threshold: float = 0.5
    slices: tuple[str, ...] = ("carrier", "origin", "month")
    #: Per-slice metrics also logged as MLflow metrics (all of them are in the evaluation JSON whatever this says).
    mlflow_slice_metrics: tuple[str, ...] = ("n", "roc_auc")
    id_column: str = "flight_id"
    timestamp_column: str = "event_timestamp"
    label: str = "is_late"
    month_column: str = "month"
    experiment_name: str = "mlops-training"
    registered_model_name: str = "model"

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model type {self.model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
        if not self.categorical and not self.numeric:
            raise ValueError("the training config lists no features")
        overlap = set(self.categorical) & set(self.numeric)
        if overlap:
            raise ValueError(f"features listed as both categorical and numeric: {sorted(overlap)}")
        if self.holdout_months < 1:
            raise ValueError("holdout.months must be at least 1: a model is never judged on its training data")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"evaluation.threshold must be in (0, 1), got {self.threshold}")
        unknown = [m for m in self.mlflow_slice_metrics if m not in SLICE_METRIC_NAMES]
        if unknown:
            raise ValueError(
                f"evaluation.mlflow_slice_metrics names unknown metrics {unknown}; expected some of "
                f"{', '.join(SLICE_METRIC_NAMES)}"
            )
        if self.serialization_format not in ("cloudpickle", "skops"):
            raise ValueError(
                f"model.serialization_format must be cloudpickle or skops, not {self.serialization_format!r}"
            )

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
                "type": self.model_type,
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
        try:
            features, model = data["features"], data["model"]
            return cls(
                categorical=tuple(features.get("categorical") or ()),
                numeric=tuple(features.get("numeric") or ()),
                model_type=model["type"],
                model_params=dict(model.get("params") or {}),
                seed=int(model.get("seed", 0)),
                threads=int(model.get("threads", 1)),
                serialization_format=model.get("serialization_format", "cloudpickle"),
                holdout_months=int((data.get("holdout") or {}).get("months", 1)),
                threshold=float((data.get("evaluation") or {}).get("threshold", 0.5)),
                slices=tuple((data.get("evaluation") or {}).get("slices") or ()),
                mlflow_slice_metrics=tuple(
                    (data.get("evaluation") or {}).get("mlflow_slice_metrics", cls.mlflow_slice_metrics) or ()
                ),
                id_column=data.get("id_column", "flight_id"),
                timestamp_column=data.get("timestamp_column", "event_timestamp"),
                label=data.get("label", "is_late"),
                month_column=data.get("month_column", "month"),
                experiment_name=data.get("experiment_name", "mlops-training"),
                registered_model_name=data.get("registered_model_name", "model"),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"the training config is incomplete: missing {err}") from err


def load_config(path: str | Path) -> TrainingConfig:
    """Read a training config YAML file."""
    import yaml

    target = Path(path)
    try:
        data = yaml.load(target.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read the training config {target}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{target} must hold a mapping (features, model, holdout, evaluation)")
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
    ``holdout_rows`` when first asked for, one copy each, index ``0..n-1``, the label as int.
    """

    source: Any = field(repr=False)
    label: str
    train_rows: Any = field(repr=False)
    holdout_rows: Any = field(repr=False)
    train_months: list[str]
    holdout_months: list[str]
    cutoff: str

    @functools.cached_property
    def train(self) -> pd.DataFrame:
        return _take_rows(self.source, self.train_rows, self.label)

    @functools.cached_property
    def holdout(self) -> pd.DataFrame:
        return _take_rows(self.source, self.holdout_rows, self.label)

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


def _take_rows(source: pd.DataFrame | pa.Table, positions: Any, label: str) -> pd.DataFrame:
    """The rows at ``positions`` of a DataFrame or a pyarrow Table as a new frame (one copy, index
    0..n-1), the label as int."""
    import pandas as pd

    if hasattr(source, "column_names"):
        out = source.take(positions).to_pandas()
    else:
        out = source.take(positions)
        out.index = pd.RangeIndex(len(out))
    out[label] = out[label].astype(int)
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
    """An unfitted pipeline: encoding of the configured features + the configured estimator, seeded."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    cats, nums = list(config.categorical), list(config.numeric)
    params = dict(config.model_params)
    if config.model_type == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        encode = ColumnTransformer(
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
        n_cat = len(cats)
        # Encoded unknown/missing (-1) is treated as missing by the estimator: its own branch.
        cat_mask = [True] * n_cat + [False] * len(nums)
        model = HistGradientBoostingClassifier(
            categorical_features=cat_mask if n_cat else None, random_state=config.seed, **params
        )
        return Pipeline([("encode", encode), ("model", model)])

    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric_steps = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
    if config.model_type == "logistic_regression":
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
    else:
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(random_state=config.seed, **{"n_jobs": 1, **params})
    return Pipeline([("encode", encode), ("model", model)])


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

    :raises ValueError: a single class in the training rows, or a feature with no value at all.
    """
    import time

    from threadpoolctl import threadpool_limits

    if split.train[config.label].nunique() < 2:
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
    """Overall metrics of ``model`` on the rows it was trained on, as ``train_<metric>``."""
    from airflow_mlops.core.evaluation import overall_metrics

    proba = predict_proba(model, split.train, config)
    y = split.train[config.label].to_numpy()
    return {f"train_{k}": v for k, v in overall_metrics(y, proba, config.threshold).items()}


def predict_proba(model: Any, frame: pd.DataFrame, config: TrainingConfig | None = None) -> Any:
    """P(label = 1) for each row. ``model`` is a fitted pipeline (it selects its own columns by name)."""
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


def git_commit(root: str | Path) -> tuple[str, bool]:
    """The code version: ``MLOPS_GIT_COMMIT`` if set (e.g. baked into an image), else ``git rev-parse HEAD``.

    :return: (commit or ``"unknown"``, whether tracked files differ from it).
    """
    import os
    import subprocess

    pinned = os.environ.get("MLOPS_GIT_COMMIT")
    if pinned:
        return pinned, False
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
