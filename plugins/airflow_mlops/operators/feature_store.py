"""Feast operators: register the feature repository, materialize a data interval, extract a training set.

The Feast I/O is :class:`~airflow_mlops.hooks.feast_store.FeastHook`'s; the training-set logic is
:mod:`airflow_mlops.core.training_set`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.core.features import FeatureSpec
    from airflow_mlops.hooks.feast_store import FeastHook


class TrainingSetValidationError(AirflowFailException):
    """A training set failed its expectation suite; it was not committed. Retrying cannot help."""


def months_in_interval(start: datetime, end: datetime) -> list[str]:
    """``YYYY-MM`` of every calendar month that ``[start, end)`` touches (UTC); see ``core.training_set``."""
    from airflow_mlops.core.training_set import months_in_interval as months

    return months(start, end)


def build_training_set(
    feast: FeastHook, labels: pd.DataFrame, spec: FeatureSpec, chunk_rows: int | None = None
) -> pd.DataFrame:
    """:func:`airflow_mlops.core.training_set.build_training_set`, failing the task on what a retry cannot fix.

    :raises AirflowFailException: label rows of an older definition, or a join that lost rows.
    """
    from airflow_mlops.core import training_set

    try:
        return training_set.build_training_set(feast, labels, spec, chunk_rows)
    except ValueError as err:
        raise AirflowFailException(str(err)) from err


class FeastApplyOperator(MlopsBaseOperator):
    """``feast apply`` the use case's feature repository (derived from its declared views) against this lake:
    idempotent.

    :param usecase: the use-case folder.
    :param feast_conn_id: connection with the online store (default: environment, see ``FeastHook``).
    :param lake_root: lake root URL (the offline sources); default the use case's lake.
    :return: (XCom) project, views, entities, the registry changes (empty when nothing changed), online store type.
    :raises AirflowFailException: the use case's config or its online-store settings are wrong.
    """

    ui_color = "#f3e8fd"

    def __init__(self, *, usecase: str, **kwargs: Any) -> None:
        super().__init__(usecase=usecase, **kwargs)

    def execute(self, context: Context) -> dict:
        return self.checked(self.feast.apply)


class FeastMaterializeOperator(MlopsBaseOperator):
    """Materialize exactly ``[interval_start, interval_end)`` into the online store.

    Writes, per entity, the latest feature row stamped inside the interval (Feast's semantics), so a retry or a
    re-run of the same interval writes the same online state. Backfill intervals in time order: the online store
    keeps what the last materialization wrote.

    :param usecase: the use-case folder.
    :param interval_start: start of the interval, ISO 8601 with timezone (templated); default the run's
        ``data_interval_start``.
    :param interval_end: end (excluded), likewise; default ``data_interval_end``.
    :param views: feature views to materialize (templated); default all.
    :param periods: the periods whose features these are (templated; a list, or its JSON): the ``features`` Asset
        event's extra ``periods``; default the calendar months the interval touches.
    :return: (XCom) interval_start, interval_end, rows per view (entities written), total_rows, seconds, periods;
        the same (but seconds) as the extra of the outlets' Asset events.
    :raises AirflowFailException: no or an empty interval, a bound without timezone, an unknown view.
    """

    template_fields = ("interval_start", "interval_end", "views", "periods")
    ui_color = "#f3e8fd"

    def __init__(
        self,
        *,
        usecase: str,
        interval_start: str | None = None,
        interval_end: str | None = None,
        views: list[str] | None = None,
        periods: list[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(usecase=usecase, **kwargs)
        self.interval_start = interval_start
        self.interval_end = interval_end
        self.views = views
        self.periods = periods

    def execute(self, context: Context) -> dict:
        import time

        from airflow_mlops.core.training_set import moment, periods_of

        start = self.checked(moment, self.interval_start, context.get("data_interval_start"), "interval_start")
        end = self.checked(moment, self.interval_end, context.get("data_interval_end"), "interval_end")
        if end <= start:
            self.fail(f"empty interval [{start}, {end})")
        last = end - timedelta(microseconds=1)  # Feast's interval is closed; the run's data interval excludes its end
        views = list(self.views) if self.views else None
        began = time.perf_counter()
        rows = self.checked(self.feast.materialize, start, last, views)
        seconds = time.perf_counter() - began
        total = sum(rows.values())
        rate = total / max(seconds, 1e-9)
        self.log.info(
            "materialized [%s, %s): %d rows in %.1f s (%.0f rows/s) %s", start, end, total, seconds, rate, rows
        )
        result = {
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
            "rows": rows,
            "total_rows": total,
            "seconds": round(seconds, 3),
            "periods": periods_of(self.periods, start, end),
        }
        extra = {"months": result["periods"], **{k: result[k] for k in ("periods", "interval_start", "interval_end")}}
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = {**extra, "rows": rows}
        return result


class FeastTrainingSetOperator(MlopsBaseOperator):
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
    :return: (XCom) uri, sha256, rows, periods (and months, the same), manifest_uri; also the outlets' Asset event
        extra. The suite's summary is pushed as XCom ``validation``.
    :raises TrainingSetValidationError: the set failed its suite (nothing is committed).
    :raises AirflowSkipException: fewer than ``features.min_periods`` periods have features yet.
    :raises AirflowFailException: no partition in the window, or label rows of an older feature definition.
    """

    template_fields = ("end_period", "window")
    ui_color = "#e8fdf3"

    def __init__(
        self,
        *,
        usecase: str,
        end_period: str,
        window: int | str | None = None,
        join_chunk_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(usecase=usecase, **kwargs)
        self.end_period = end_period
        self.window = window
        self.join_chunk_rows = join_chunk_rows

    def execute(self, context: Context) -> dict:
        from airflow_mlops.core import training_set
        from airflow_mlops.core.batches import parse_period, window_periods

        spec = self.checked(getattr, self.feast, "spec")
        count = self.checked(int, self.window) if self.window not in (None, "", "None") else spec.window_periods
        wanted = self.checked(window_periods, self.checked(parse_period, str(self.end_period)), count)
        labels, partitions = self.checked(training_set.read_labels, self.lake, wanted, self.log)
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
        result, summary = self._commit(frame, periods, partitions, spec)
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = dict(result)
        context["ti"].xcom_push(key="validation", value=summary)
        return result

    def _commit(
        self, frame: pd.DataFrame, periods: list[str], partitions: dict[str, str], spec: FeatureSpec
    ) -> tuple[dict, dict]:
        """Validate and commit ``frame``: the XCom result and the suite's summary."""
        from airflow_mlops.core import features as F
        from airflow_mlops.core import training_set
        from airflow_mlops.core.batches import sha256_bytes

        data = F.to_parquet_bytes(frame)
        digest = sha256_bytes(data)
        suite_path = self.require_usecase().folder / "expectations" / "training_set.json"
        report = training_set.validate(frame, digest, suite_path)
        if report is None:
            self.log.info("no %s: the training set is committed without a suite", suite_path)
        elif not report.success:
            self.log.error("training set %s failed validation: %s", digest[:12], json.dumps(report.summary())[:2000])
            raise TrainingSetValidationError(report.failure_message())
        summary = report.summary() if report is not None else {"success": True, "suite": None}
        record, target, written = training_set.commit(
            self.lake, frame, data, digest, periods, partitions, spec, summary
        )
        self.log.info("training set %s %s", digest[:12], "committed" if written else "exists; nothing to write")
        result = {
            "uri": record["uri"],
            "sha256": digest,
            "rows": int(len(frame)),
            "periods": periods,
            "months": periods,
            "manifest_uri": self.lake.url(target / "_manifest.json"),
        }
        return result, summary
