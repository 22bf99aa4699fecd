"""Features, generically: a use case's declared feature views, its functions' frames checked against them, the
training-set contract and the online rows. Plain functions (no Airflow, no Feast); pandas imported inside.

A use case (``mlops.yaml`` + ``usecase.py``) says what its features are:

* ``build_features(ctx)`` returns one frame per declared view (``features.views``): the view's key (a string),
  its timestamp (from when a row may be used, UTC) and its fields;
* ``label_rows(ctx)`` returns the training rows of a period: the id column, ``event_timestamp`` (the moment of
  prediction), the label, every view's key and the model features that come with the row itself;
* ``entity_keys(rows, ctx)`` returns, for request rows, the id column and every view's key (and may add model
  features the request itself determines).

The partition of a period is those frames, checked and typed (:func:`check_view`, :func:`check_labels`). A
training set is the label rows joined point-in-time with every view (Feast), finished by
:func:`finish_training_set`; an online read is finished by :func:`finish_online` with the same defaults, so a
feature has the same value at training and serving time. Timestamps are ``datetime64[us, UTC]`` throughout
(what Feast's DuckDB store needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.batches import parse_period, period_bounds, previous_periods

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.usecase.config import UseCase, ViewConfig

TS = "datetime64[us, UTC]"
#: The file of a partition that holds the label rows (the entity rows of training sets; never served).
LABELS = "labels"
EVENT_TIMESTAMP = "event_timestamp"


@dataclass(frozen=True)
class FeatureSpec:
    """What the feature stage needs of a use case (built by :meth:`from_usecase`)."""

    name: str
    views: tuple[ViewConfig, ...]
    id_column: str
    label: str
    period_column: str
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    unknown_category: str = "UNKNOWN"
    feature_version: int = 1
    lookback_periods: int = 0
    window_periods: int = 12
    min_periods: int = 1
    join_chunk_rows: int = 50_000
    params: dict[str, Any] = field(default_factory=dict)
    module_file: Path | None = None
    fingerprint: str = ""

    @classmethod
    def from_usecase(cls, usecase: UseCase) -> FeatureSpec:
        features = usecase.features
        spec = cls(
            name=usecase.name,
            views=usecase.views,
            id_column=usecase.id_column,
            label=usecase.label,
            period_column=usecase.period_column,
            categorical=usecase.categorical,
            numeric=usecase.numeric,
            unknown_category=str(features.get("unknown_category", "UNKNOWN")),
            feature_version=int(features.get("version", 1)),
            lookback_periods=int(features.get("lookback_periods", 0)),
            window_periods=int(features.get("window_periods", 12)),
            min_periods=int(features.get("min_periods", 1)),
            join_chunk_rows=int(features.get("join_chunk_rows", 50_000)),
            params=dict(features.get("params") or {}),
            module_file=usecase.module_file,
            fingerprint=_fingerprint(usecase),
        )
        if spec.join_chunk_rows < 1:
            raise ValueError(f"{usecase.config_file}: features.join_chunk_rows must be >= 1")
        return spec

    # -- columns -------------------------------------------------------------------------------------------
    @property
    def feature_columns(self) -> list[str]:
        return [*self.categorical, *self.numeric]

    @property
    def training_columns(self) -> list[str]:
        """The training-set contract, in order: id, event time, label, period, then the model features."""
        return [self.id_column, EVENT_TIMESTAMP, self.label, self.period_column, *self.feature_columns]

    def view_of(self) -> dict[str, ViewConfig]:
        """Each view field → its view."""
        return {name: view for view in self.views for name in view.fields}

    def join_keys(self) -> list[str]:
        """The distinct entity join keys of the views, in declaration order."""
        return list(dict.fromkeys(view.key for view in self.views))

    def row_features(self) -> list[str]:
        """Model features no view serves: they come with each label row and each request."""
        served = self.view_of()
        return [name for name in self.feature_columns if name not in served]

    def feature_refs(self) -> list[str]:
        """Feast references (``view:field``) of every model feature a view serves."""
        served = self.view_of()
        return [f"{served[name].name}:{name}" for name in self.feature_columns if name in served]

    def default_of(self, name: str) -> Any:
        """A view field's value when its key is unknown or its row is older than the TTL."""
        view = self.view_of()[name]
        if name in view.defaults:
            return view.defaults[name]
        return self.unknown_category if view.fields[name] == "string" else math.nan

    def online_defaults(self) -> dict[str, Any]:
        return {name: self.default_of(name) for name in self.view_of()}


def _fingerprint(usecase: UseCase) -> str:
    """A hash of what a feature partition depends on: the features section and the label (not model or serving)."""
    import hashlib
    import json

    relevant = {"features": usecase.raw.get("features"), "label": usecase.raw.get("label"), "name": usecase.name}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


# -- periods -----------------------------------------------------------------------------------------------
def lookback(period: str, spec: FeatureSpec) -> list[str]:
    """The periods a partition of ``period`` reads: ``lookback_periods`` earlier ones, then itself."""
    return [*previous_periods(period, spec.lookback_periods), parse_period(period)]


def interval(periods: list[str]) -> tuple[Any, Any]:
    """The data interval ``[start, end)`` spanning ``periods``."""
    ordered = sorted(parse_period(p) for p in periods)
    return period_bounds(ordered[0])[0], period_bounds(ordered[-1])[1]


# -- checking what the use case's functions return ---------------------------------------------------------
def utc(values: pd.Series) -> pd.Series:
    import pandas as pd

    return pd.to_datetime(values, utc=True).astype(TS)


def check_view(frame: Any, view: ViewConfig, spec: FeatureSpec, where: str = "build_features") -> pd.DataFrame:
    """A view frame typed to its declaration (key string, timestamp UTC, fields by type), sorted by key and time.

    :raises ValueError: not a DataFrame, a declared column missing, a null key or timestamp; names the view.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{where}() returned {type(frame).__name__} for view {view.name}, not a DataFrame")
    needed = [view.key, view.timestamp, *view.fields]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}(): view {view.name} lacks column(s) {', '.join(missing)}")
    out = frame.copy()
    if out[view.key].isna().any() or out[view.timestamp].isna().any():
        raise ValueError(f"{where}(): view {view.name} has rows without {view.key} or {view.timestamp}")
    out[view.key] = out[view.key].astype(str).astype(object)
    out[view.timestamp] = utc(out[view.timestamp])
    for name, dtype in view.fields.items():
        out[name] = _typed(out[name], dtype, spec, default=view.defaults.get(name), fill=False)
    return out.sort_values([view.key, view.timestamp], kind="stable").reset_index(drop=True)


def check_labels(frame: Any, spec: FeatureSpec, period: str, where: str = "label_rows") -> pd.DataFrame:
    """Label rows typed and completed with the period column, sorted by id.

    :raises ValueError: a required column missing (id, event_timestamp, label, a view key, a row feature), a
        duplicate id, or a null id / time; the message names the column.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{where}() returned {type(frame).__name__}, not a DataFrame")
    needed = [spec.id_column, EVENT_TIMESTAMP, spec.label, *spec.join_keys(), *spec.row_features()]
    missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}() rows lack column(s) {', '.join(missing)}")
    out = frame.copy()
    if out[spec.id_column].isna().any() or out[EVENT_TIMESTAMP].isna().any():
        raise ValueError(f"{where}(): rows without {spec.id_column} or {EVENT_TIMESTAMP}")
    out[spec.id_column] = out[spec.id_column].astype(str).astype(object)
    out[EVENT_TIMESTAMP] = utc(out[EVENT_TIMESTAMP])
    for key in spec.join_keys():
        out[key] = out[key].astype(str).astype(object)
    if spec.period_column not in out.columns:
        out[spec.period_column] = parse_period(period)
    out[spec.period_column] = out[spec.period_column].astype(str).astype(object)
    duplicated = out[spec.id_column].duplicated()
    if duplicated.any():
        raise ValueError(
            f"{where}(): {int(duplicated.sum())} rows share an id, e.g. {out.loc[duplicated, spec.id_column].iloc[0]}"
        )
    return out.sort_values(spec.id_column, kind="stable").reset_index(drop=True)


def _typed(values: pd.Series, dtype: str, spec: FeatureSpec, default: Any = None, fill: bool = True) -> pd.Series:
    """One column as its declared type; ``fill`` puts the default (or the unknown category) into gaps."""
    import pandas as pd

    if dtype == "string":
        cleaned = values.astype(object).where(values.notna(), None)
        if fill:
            cleaned = cleaned.where(cleaned.notna(), spec.unknown_category if default is None else default)
        return cleaned.astype(object)
    numbers = pd.to_numeric(values, errors="coerce")
    if fill and default is not None:
        numbers = numbers.fillna(default)
    if dtype == "int64" and not numbers.isna().any():
        return numbers.astype("int64")
    return numbers.astype("float64")


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Deterministic Parquet bytes (no index, fixed row order from the caller). A column with no value at all (an
    empty view frame, a string field null throughout) is written as string, not Arrow's null type: DuckDB types a
    view by one partition file and cannot compare a null-typed key with a string one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    nulls = [i for i, f in enumerate(table.schema) if pa.types.is_null(f.type)]
    if not nulls:
        return frame.to_parquet(index=False, engine="pyarrow", compression="zstd")
    for i in nulls:
        table = table.set_column(i, table.schema.field(i).name, table.column(i).cast(pa.string()))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


# -- training sets and online reads ------------------------------------------------------------------------
def finish_training_set(joined: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """From a point-in-time join (label rows ⋈ views) to the training-set contract (:attr:`training_columns`).

    View fields get their declared type and default (a row the join found nothing for, or older than the TTL);
    a row without any value of a ``required`` view is an error. Row features keep their values (categoricals
    with the unknown category for gaps).
    """
    import pandas as pd

    served = spec.view_of()
    for view in spec.views:
        if not view.required:
            continue
        names = [n for n in view.fields if n in joined.columns]
        if names:
            absent = joined[names].isna().all(axis=1)
            if absent.any():
                raise ValueError(
                    f"{int(absent.sum())} label rows found no row of the required view {view.name}, e.g. "
                    f"{joined.loc[absent, spec.id_column].iloc[0]}"
                )
    # Column by column into a new frame (one block per column): converting inside a copy of the join held
    # several copies at once.
    out = pd.DataFrame(index=pd.RangeIndex(len(joined)))
    for name in spec.training_columns:
        if name in served:
            values = _typed(joined[name], served[name].fields[name], spec, default=served[name].defaults.get(name))
        elif name in spec.categorical:
            values = joined[name].astype(object).where(joined[name].notna(), spec.unknown_category)
        elif name == EVENT_TIMESTAMP:
            values = utc(joined[name])
        elif name in (spec.id_column, spec.period_column):
            values = joined[name].astype(object)
        elif name in spec.numeric:
            values = pd.to_numeric(joined[name])
        else:
            values = joined[name]
        out[name] = values.array
    if not out[spec.id_column].is_monotonic_increasing:
        out = out.sort_values(spec.id_column, kind="stable").reset_index(drop=True)
    if out[spec.id_column].duplicated().any():
        raise ValueError(f"the training set has duplicate {spec.id_column} rows: the label rows were not unique")
    return out


def finish_online(values: dict[str, list], spec: FeatureSpec) -> list[dict[str, Any]]:
    """Feast online values (``to_dict()``, None for unknown keys) → one row per entity with the defaults filled."""
    defaults = spec.online_defaults()
    count = len(next(iter(values.values()))) if values else 0
    rows = []
    for i in range(count):
        row = {name: column[i] for name, column in values.items()}
        for name, value in row.items():
            if value is None and name in defaults:
                row[name] = defaults[name]
        rows.append(row)
    return rows


def unknown_views(values: dict[str, list], spec: FeatureSpec, index: int) -> list[str]:
    """The views whose every field came back None for row ``index``: their entity was unknown (or too old)."""
    return [
        view.name
        for view in spec.views
        if any(name in values for name in view.fields)
        and all(values[name][index] is None for name in view.fields if name in values)
    ]
