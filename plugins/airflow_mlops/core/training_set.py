"""The training set of a window of periods: label rows from the lake, a point-in-time join with the offline store
(through the Feast hook passed in), the training-set contract, its suite, and its content-addressed commit. Also the
interval arithmetic of a materialization.

Errors a retry cannot fix raise ``ValueError`` naming what to fix; the operators turn them into
``AirflowFailException``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from airflow_mlops.core.features import FeatureSpec
    from airflow_mlops.core.validation import ValidationReport
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook


# -- materialization intervals --------------------------------------------------------------------------------
def moment(value: Any, fallback: Any, name: str) -> datetime:
    """``value`` (a datetime or ISO 8601 text), else ``fallback``, as a timezone-aware datetime.

    :raises ValueError: neither is given, or the moment has no timezone.
    """
    import pendulum

    chosen = value if value not in (None, "", "None") else fallback
    if chosen is None:
        raise ValueError(f"no {name}: pass it, or run with a data interval")
    parsed = chosen if isinstance(chosen, datetime) else pendulum.parse(str(chosen))
    if parsed.tzinfo is None:
        raise ValueError(f"{name} {chosen!r} has no timezone")
    return parsed


def months_in_interval(start: datetime, end: datetime) -> list[str]:
    """``YYYY-MM`` of every calendar month that ``[start, end)`` touches (UTC)."""
    months, year, month = [], start.year, start.month
    while (year, month) < (end.year, end.month) or (
        (year, month) == (end.year, end.month) and end > end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    ):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def periods_of(periods: list[str] | str | None, start: datetime, end: datetime) -> list[str]:
    """The periods a materialization is for: ``periods`` (a list, its JSON, or one period), sorted; else the
    calendar months ``[start, end)`` touches."""
    if isinstance(periods, str):
        text = periods.strip()
        periods = json.loads(text) if text.startswith("[") else [text] if text else None
    return sorted(periods) if periods else months_in_interval(start, end)


# -- the training set -----------------------------------------------------------------------------------------
def read_labels(lake: LakeHook, wanted: list[str], log: Any) -> tuple[pd.DataFrame, dict[str, str]]:
    """The label rows of the ``wanted`` periods that have features (the others are logged and left out), and the
    sha256 of each partition read.

    :raises ValueError: none of the periods has features.
    """
    import io

    import pandas as pd

    frames, partitions = [], {}
    for period in wanted:
        manifest = lake.read_manifest(lake.path("features", period))
        if manifest is None:
            log.warning("no features for %s: left out of the window", period)
            continue
        frames.append(pd.read_parquet(io.BytesIO(lake.read_verified(manifest["files"]["labels.parquet"]))))
        partitions[period] = manifest["sha256"]
    if not frames:
        raise ValueError(f"no feature partition in {wanted[0]}..{wanted[-1]}")
    return pd.concat(frames, ignore_index=True), partitions


def build_training_set(
    feast: FeastHook, labels: pd.DataFrame, spec: FeatureSpec, chunk_rows: int | None = None
) -> pd.DataFrame:
    """Point-in-time join of label rows with the offline store, finished to the training-set contract.

    :param feast: the use case's Feast hook (``historical_features``).
    :param chunk_rows: label rows per join; default ``features.join_chunk_rows`` of ``mlops.yaml``.
    :raises ValueError: the label rows lack a column of the current definition, or the join lost rows.
    """
    from airflow_mlops.core import features as F

    keep = [spec.id_column, F.EVENT_TIMESTAMP, *spec.join_keys(), *spec.row_features(), spec.label, spec.period_column]
    columns = list(dict.fromkeys(keep))
    missing = [c for c in columns if c not in labels.columns]
    if missing:
        raise ValueError(
            f"label rows without {', '.join(missing)}: built under an older feature definition; rebuild the periods"
        )
    entity_df = labels.loc[:, columns]
    drop = [k for k in spec.join_keys() if k not in spec.training_columns]  # a key that is a feature stays
    joined = feast.historical_features(
        entity_df, spec.feature_refs(), chunk_rows=chunk_rows or spec.join_chunk_rows, drop=drop, sort_by=spec.id_column
    )
    if len(joined) != len(entity_df):
        raise ValueError(f"the point-in-time join returned {len(joined)} rows for {len(entity_df)} labels")
    del entity_df
    return F.finish_training_set(joined, spec)


def validate(frame: pd.DataFrame, digest: str, suite_path: Path) -> ValidationReport | None:
    """The training set checked with the suite at ``suite_path``; None when the use case has none."""
    if not suite_path.is_file():
        return None
    from airflow_mlops.core import validation

    return validation.validate_batch(
        f"training_set-{digest[:12]}",
        {"training_set": frame},
        {"training_set": validation.load_suite(suite_path)},
        {},
    )


def commit(
    lake: LakeHook,
    frame: pd.DataFrame,
    data: bytes,
    digest: str,
    periods: list[str],
    partitions: dict[str, str],
    spec: FeatureSpec,
    summary: dict,
) -> tuple[dict, Any, bool]:
    """Write ``training_sets/<sha12>/`` (the Parquet ``data`` and its manifest) unless it is committed already.

    :return: the file's record, the folder, and whether anything was written.
    """
    target = lake.path("training_sets", digest[:12])
    manifest = lake.read_manifest(target)
    if manifest and manifest.get("sha256") == digest:
        return manifest["files"]["training_set.parquet"], target, False
    rec = lake.write_file(target / "training_set.parquet", data, rows=len(frame))
    lake.write_manifest(
        target,
        [rec],
        sha256=digest,
        rows=len(frame),
        periods=periods,
        months=periods,
        end_month=periods[-1],
        feature_partitions=partitions,
        feature_views={view.name: spec.feature_version for view in spec.views},
        feature_version=spec.feature_version,
        columns=list(frame.columns),
        validation=summary,
    )
    return rec.to_dict(), target, True
