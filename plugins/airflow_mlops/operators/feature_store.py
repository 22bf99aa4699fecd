"""Feast operators: register the feature repository, materialize a data interval, extract a training set."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_mlops.hooks.feast_store import FeastHook
from airflow_mlops.hooks.lake import LakeHook

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.core.features import FeatureSpec


class TrainingSetValidationError(AirflowFailException):
    """A training set failed its expectation suite; it was not committed. Retrying cannot help."""


class _FeastOperator(BaseOperator):
    def __init__(
        self,
        *,
        usecase: str,
        feast_conn_id: str | None = None,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.usecase = usecase
        self.feast_conn_id = feast_conn_id
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def feast(self) -> FeastHook:
        return FeastHook(self.usecase, feast_conn_id=self.feast_conn_id, lake_root=self.lake_root)

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)


class ApplyFeatureRepoOperator(_FeastOperator):
    """``feast apply`` the use case's feature repository (derived from its declared views) against this lake:
    idempotent.

    :param usecase: the use-case folder.
    :param feast_conn_id: connection with the online store (default: environment, see ``FeastHook``).
    :return: (XCom) project, views, entities, the registry changes (empty when nothing changed), online store type.
    """

    ui_color = "#f3e8fd"

    def execute(self, context: Context) -> dict:
        return self.feast.apply()


def _moment(value: Any, fallback: Any, name: str) -> datetime:
    import pendulum

    chosen = value if value not in (None, "", "None") else fallback
    if chosen is None:
        raise AirflowFailException(f"no {name}: pass it, or run with a data interval")
    moment = chosen if isinstance(chosen, datetime) else pendulum.parse(str(chosen))
    if moment.tzinfo is None:
        raise AirflowFailException(f"{name} {chosen!r} has no timezone")
    return moment


def months_in_interval(start: datetime, end: datetime) -> list[str]:
    """``YYYY-MM`` of every calendar month that ``[start, end)`` touches (UTC)."""
    months, year, month = [], start.year, start.month
    while (year, month) < (end.year, end.month) or (
        (year, month) == (end.year, end.month) and end > end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    ):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


class MaterializeFeaturesOperator(_FeastOperator):
    """Materialize exactly ``[interval_start, interval_end)`` into the online store.

    Writes, per entity, the latest feature row stamped inside the interval (Feast's semantics), so a retry or a
    re-run of the same interval writes the same online state. Backfill intervals in time order: the online store
    keeps what the last materialization wrote.

    :param interval_start: start of the interval, ISO 8601 with timezone (templated); default the run's
        ``data_interval_start``.
    :param interval_end: end (excluded), likewise; default ``data_interval_end``.
    :param views: feature views to materialize (templated); default all.
    :param periods: the periods whose features these are (templated; a list, or its JSON): the ``features`` Asset
        event's extra ``periods``; default the calendar months the interval touches.
    :return: (XCom) interval_start, interval_end, rows per view (entities written), rows, seconds.
    """

    template_fields = ("interval_start", "interval_end", "views", "periods")
    ui_color = "#f3e8fd"

    def __init__(
        self,
        *,
        interval_start: str | None = None,
        interval_end: str | None = None,
        views: list[str] | None = None,
        periods: list[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.views = views
        self.periods = periods

    def execute(self, context: Context) -> dict:
        import time

        start = _moment(self.interval_start, context.get("data_interval_start"), "interval_start")
        end = _moment(self.interval_end, context.get("data_interval_end"), "interval_end")
        if end <= start:
            raise AirflowFailException(f"empty interval [{start}, {end})")
        # Feast's interval is closed; the run's data interval excludes its end.
        last = end - timedelta(microseconds=1)
        views = list(self.views) if self.views else None
        rows = self.feast.interval_rows(start, last, views)
        began = time.perf_counter()
        self.feast.materialize(start, last, views)
        seconds = time.perf_counter() - began
        total = sum(rows.values())
        self.log.info(
            "materialized [%s, %s): %d rows in %.1f s (%.0f rows/s) %s",
            start.isoformat(),
            end.isoformat(),
            total,
            seconds,
            total / max(seconds, 1e-9),
            rows,
        )
        result = {
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
            "rows": rows,
            "total_rows": total,
            "seconds": round(seconds, 3),
        }
        periods = self.periods
        if isinstance(periods, str):
            periods = json.loads(periods) if periods.strip().startswith("[") else [periods] if periods.strip() else None
        periods = sorted(periods) if periods else months_in_interval(start, end)
        result["periods"] = periods
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = {
                "periods": periods,
                "months": periods,
                **{k: result[k] for k in ("interval_start", "interval_end", "rows")},
            }
        return result


class TrainingSetOperator(_FeastOperator):
    """Extract a point-in-time correct training set for the label rows of a window of periods, validate, commit.

    Label rows (``features/<period>/labels.parquet``) of the trailing ``window`` periods up to ``end_period`` are
    joined with every feature view in the offline store (Feast, DuckDB), finished to the training-set contract
    (``core.features.finish_training_set``: id, event time, label, period, model features), sorted by the id and
    validated with the use case's ``expectations/training_set.json`` suite when it has one. A passing set is
    committed to ``training_sets/<sha12>/`` with its manifest; the same window and inputs give the same bytes,
    hence the same address.

    :param usecase: the use-case folder.
    :param end_period: last period of the window (templated).
    :param window: how many periods (templated); default ``features.window_periods`` of ``mlops.yaml``.
    :param join_chunk_rows: label rows per point-in-time join (bounds its memory); default
        ``features.join_chunk_rows``.
    :return: (XCom) uri, sha256, rows, periods (and months, the same), manifest_uri.
    :raises TrainingSetValidationError: the set failed its suite (nothing is committed).
    :raises AirflowSkipException: fewer than ``features.min_periods`` periods have features yet.
    """

    template_fields = ("end_period", "window")
    ui_color = "#e8fdf3"

    def __init__(
        self,
        *,
        end_period: str,
        window: int | str | None = None,
        join_chunk_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.end_period = end_period
        self.window = window
        self.join_chunk_rows = join_chunk_rows

    def execute(self, context: Context) -> dict:
        from airflow_mlops.core.batches import parse_period, window_periods

        spec = self.feast.spec
        count = int(self.window) if self.window not in (None, "", "None") else spec.window_periods
        wanted = window_periods(parse_period(str(self.end_period)), count)
        labels, partitions = self._labels(wanted)
        periods = sorted(partitions)
        if len(periods) < spec.min_periods:
            # Normal at the start of a use case: the features are materialized; a training set waits for more data.
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(
                f"only {len(periods)} period(s) of features in {wanted[0]}..{wanted[-1]} "
                f"(features.min_periods is {spec.min_periods}): no training set yet"
            )
        self.log.info("training set: %d label rows of %s", len(labels), ", ".join(periods))
        frame = build_training_set(self.feast, labels, spec, chunk_rows=self.join_chunk_rows)
        del labels
        return self._commit(frame, periods, partitions, spec, context)

    def _labels(self, wanted: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
        import io

        import pandas as pd

        frames, partitions = [], {}
        for period in wanted:
            manifest = self.lake.read_manifest(self.lake.path("features", period))
            if manifest is None:
                self.log.warning("no features for %s: left out of the window", period)
                continue
            frames.append(pd.read_parquet(io.BytesIO(self.lake.read_verified(manifest["files"]["labels.parquet"]))))
            partitions[period] = manifest["sha256"]
        if not frames:
            raise AirflowFailException(f"no feature partition in {wanted[0]}..{wanted[-1]}")
        return pd.concat(frames, ignore_index=True), partitions

    def _validate(self, frame: pd.DataFrame, digest: str) -> dict:
        from airflow_mlops.core import validation
        from airflow_mlops.usecase import config

        suite_path = config.load(self.usecase).folder / "expectations" / "training_set.json"
        if not suite_path.is_file():
            self.log.info("no %s: the training set is committed without a suite", suite_path)
            return {"success": True, "suite": None}
        report = validation.validate_batch(
            f"training_set-{digest[:12]}",
            {"training_set": frame},
            {"training_set": validation.load_suite(suite_path)},
            {},
        )
        summary = report.summary()
        if not report.success:
            self.log.error("training set %s failed validation: %s", digest[:12], json.dumps(summary)[:2000])
            raise TrainingSetValidationError(report.failure_message())
        return summary

    def _commit(
        self, frame: pd.DataFrame, periods: list[str], partitions: dict[str, str], spec: FeatureSpec, context: Context
    ) -> dict:
        from airflow_mlops.core import features as F
        from airflow_mlops.core.batches import sha256_bytes

        data = F.to_parquet_bytes(frame)
        digest = sha256_bytes(data)
        summary = self._validate(frame, digest)
        target = self.lake.path("training_sets", digest[:12])
        manifest = self.lake.read_manifest(target)
        if manifest and manifest.get("sha256") == digest:
            self.log.info("training set %s exists; nothing to write", digest[:12])
            record = manifest["files"]["training_set.parquet"]
        else:
            rec = self.lake.write_file(target / "training_set.parquet", data, rows=len(frame))
            record = rec.to_dict()
            self.lake.write_manifest(
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
        result = {
            "uri": record["uri"],
            "sha256": digest,
            "rows": int(len(frame)),
            "periods": periods,
            "months": periods,
            "manifest_uri": self.lake.url(target / "_manifest.json"),
        }
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = dict(result)
        context["ti"].xcom_push(key="validation", value=summary)
        return result


def build_training_set(
    feast: FeastHook, labels: pd.DataFrame, spec: FeatureSpec, chunk_rows: int | None = None
) -> pd.DataFrame:
    """Point-in-time join of label rows with the offline store, finished to the training-set contract.

    :param chunk_rows: label rows per join; default ``features.join_chunk_rows`` of ``mlops.yaml``.
    """
    from airflow_mlops.core import features as F

    columns = list(
        dict.fromkeys(
            [
                spec.id_column,
                F.EVENT_TIMESTAMP,
                *spec.join_keys(),
                *spec.row_features(),
                spec.label,
                spec.period_column,
            ]
        )
    )
    missing = [c for c in columns if c not in labels.columns]
    if missing:
        raise AirflowFailException(
            f"label rows without {', '.join(missing)}: built under an older feature definition; rebuild the periods"
        )
    entity_df = labels.loc[:, columns]
    drop = [k for k in spec.join_keys() if k not in spec.training_columns]  # a key that is a feature stays
    joined = feast.historical_features(
        entity_df,
        spec.feature_refs(),
        chunk_rows=chunk_rows or spec.join_chunk_rows,
        drop=drop,
        sort_by=spec.id_column,
    )
    if len(joined) != len(entity_df):
        raise AirflowFailException(f"the point-in-time join returned {len(joined)} rows for {len(entity_df)} labels")
    del entity_df
    return F.finish_training_set(joined, spec)
