"""Feast operators: register the feature repository, materialize a data interval, extract a training set."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_mlops import settings
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
        repo_path: str | None = None,
        feast_conn_id: str | None = None,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.repo_path = repo_path
        self.feast_conn_id = feast_conn_id
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def feast(self) -> FeastHook:
        return FeastHook(repo_path=self.repo_path, feast_conn_id=self.feast_conn_id, lake_root=self.lake_root)

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)


class ApplyFeatureRepoOperator(_FeastOperator):
    """``feast apply`` the repository (``include/feature_repo``) against this lake: idempotent.

    :param repo_path: the feature repository; default ``include/feature_repo``.
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
    :return: (XCom) interval_start, interval_end, rows per view (entities written), rows, seconds.
    """

    template_fields = ("interval_start", "interval_end", "views")
    ui_color = "#f3e8fd"

    def __init__(
        self,
        *,
        interval_start: str | None = None,
        interval_end: str | None = None,
        views: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.views = views

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
        months = months_in_interval(start, end)
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = {
                "months": months,
                **{k: result[k] for k in ("interval_start", "interval_end", "rows")},
            }
        return result


class TrainingSetOperator(_FeastOperator):
    """Extract a point-in-time correct training set for the label rows of a window of months, validate, commit.

    Label rows (``features/<month>/labels.parquet``: labelled flights only) of the trailing ``window_months``
    months up to ``end_month`` are joined with every feature view in the offline store (Feast, DuckDB), finished
    to the training-set contract (``core.features.finish_training_set``), sorted by ``flight_id`` and validated
    with the ``training_set`` GX suite. A passing set is committed to ``training_sets/<sha12>/`` with its
    manifest; the same window and inputs give the same bytes, hence the same address.

    :param end_month: last month of the window, ``YYYY-MM`` (templated).
    :param window_months: how many months (templated); default ``training.window_months`` of ``features.yaml``.
    :param suite: the GX suite file (templated); default ``include/expectations/training_set.json``.
    :param join_chunk_rows: label rows per point-in-time join (bounds its memory); default
        ``training.join_chunk_rows`` of ``features.yaml``.
    :return: (XCom) uri, sha256, rows, months, manifest_uri.
    :raises TrainingSetValidationError: the set failed its suite (nothing is committed).
    """

    template_fields = ("end_month", "window_months", "suite")
    ui_color = "#e8fdf3"

    def __init__(
        self,
        *,
        end_month: str,
        window_months: int | str | None = None,
        suite: str | None = None,
        join_chunk_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.end_month = end_month
        self.window_months = window_months
        self.suite = suite
        self.join_chunk_rows = join_chunk_rows

    def execute(self, context: Context) -> dict:
        from airflow_mlops.core import features as F

        spec = self.feast.spec
        count = int(self.window_months) if self.window_months not in (None, "", "None") else spec.window_months
        wanted = F.window_months(F.parse_month(str(self.end_month)), count)
        labels, partitions = self._labels(wanted)
        months = sorted(partitions)
        if len(months) < spec.min_months:
            raise AirflowFailException(f"only {len(months)} month(s) of features in {wanted[0]}..{wanted[-1]}")
        self.log.info("training set: %d label rows of %s", len(labels), ", ".join(months))
        frame = build_training_set(self.feast, labels, spec, chunk_rows=self.join_chunk_rows)
        del labels
        return self._commit(frame, months, partitions, spec, context)

    def _labels(self, wanted: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
        import io

        import pandas as pd

        frames, partitions = [], {}
        for month in wanted:
            manifest = self.lake.read_manifest(self.lake.path("features", month))
            if manifest is None:
                self.log.warning("no features for %s: left out of the window", month)
                continue
            frames.append(pd.read_parquet(io.BytesIO(self.lake.read_verified(manifest["files"]["labels.parquet"]))))
            partitions[month] = manifest["sha256"]
        if not frames:
            raise AirflowFailException(f"no feature partition in {wanted[0]}..{wanted[-1]}")
        return pd.concat(frames, ignore_index=True), partitions

    def _commit(
        self, frame: pd.DataFrame, months: list[str], partitions: dict[str, str], spec: FeatureSpec, context: Context
    ) -> dict:
        from airflow_mlops.core import features as F
        from airflow_mlops.core import validation
        from airflow_mlops.core.batches import sha256_bytes

        suite_path = Path(self.suite) if self.suite else settings.include_dir() / "expectations" / "training_set.json"
        data = F.to_parquet_bytes(frame)
        digest = sha256_bytes(data)
        report = validation.validate_batch(
            f"training_set-{digest[:12]}",
            {"training_set": frame},
            {"training_set": validation.load_suite(suite_path)},
            {},
        )
        context_xcom = report.summary()
        if not report.success:
            self.log.error("training set %s failed validation: %s", digest[:12], json.dumps(context_xcom)[:2000])
            raise TrainingSetValidationError(report.failure_message())
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
                months=months,
                end_month=months[-1],
                feature_partitions=partitions,
                feature_views={view: spec.feature_version for view in spec.raw["store"]["views"]},
                feature_version=spec.feature_version,
                columns=list(frame.columns),
                validation=context_xcom,
            )
        result = {
            "uri": record["uri"],
            "sha256": digest,
            "rows": int(len(frame)),
            "months": months,
            "manifest_uri": self.lake.url(target / "_manifest.json"),
        }
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = dict(result)
        context["ti"].xcom_push(key="validation", value=context_xcom)
        return result


def build_training_set(
    feast: FeastHook, labels: pd.DataFrame, spec: FeatureSpec, chunk_rows: int | None = None
) -> pd.DataFrame:
    """Point-in-time join of label rows with the offline store, finished to the training-set contract.

    :param chunk_rows: label rows per join; default ``training.join_chunk_rows`` of ``features.yaml``.
    """
    from airflow_mlops.core import features as F

    columns = ["flight_id", "event_timestamp", "carrier", "origin", "route", *spec.slot_keys(), "is_late", "month"]
    missing = [c for c in columns if c not in labels.columns]
    if missing:
        raise AirflowFailException(
            f"label rows without {', '.join(missing)}: built under an older feature definition; rebuild the months"
        )
    entity_df = labels.loc[:, columns]
    joined = feast.historical_features(
        entity_df,
        spec.feature_refs(),
        chunk_rows=chunk_rows or spec.join_chunk_rows,
        drop=spec.slot_keys(),
        sort_by="flight_id",
    )
    if len(joined) != len(entity_df):
        raise AirflowFailException(f"the point-in-time join returned {len(joined)} rows for {len(entity_df)} labels")
    del entity_df
    return F.finish_training_set(joined, spec)
