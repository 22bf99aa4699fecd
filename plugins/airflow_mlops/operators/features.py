"""Build the feature partitions of validated periods (offline store: Parquet in the lake) with the use case's
own ``build_features`` and ``label_rows`` (the logic: :mod:`airflow_mlops.core.feature_build`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_mlops.core.batches import parse_period, period_of
from airflow_mlops.operators.base import MlopsBaseOperator
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.core.features import FeatureSpec
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase.config import UseCase


class ValidatedPeriodMissingError(AirflowFailException):
    """A period to build features for has no committed ``validated/<period>/`` (no manifest)."""


#: The earlier name of :class:`ValidatedPeriodMissingError`.
ValidatedMonthMissingError = ValidatedPeriodMissingError


def periods_from_context(requested: str | None, context: Context, kind: str) -> list[str]:
    """Which periods a run builds: a named period; else the periods of the triggering ``validated_batch`` events
    (extra ``period``, or ``month``); else the period of the run's data interval."""
    if not is_blank(requested):
        return [parse_period(str(requested).strip(), kind)]
    periods = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = getattr(event, "extra", None) or {}
            value = extra.get("period") or extra.get("month")
            if value:
                periods.add(parse_period(value, kind))
    if periods:
        return sorted(periods)
    start = context.get("data_interval_start")
    if start is not None:
        return [period_of(start, kind)]
    raise AirflowFailException(
        "no period to build: trigger with conf {'period': ...} or through a validated_batch asset event"
    )


def build_partition(lake: LakeHook, period: str, usecase: UseCase, spec: FeatureSpec, log: Any) -> dict:
    """:func:`airflow_mlops.core.feature_build.build_partition`, failing the task on what a retry cannot fix.

    :raises ValidatedPeriodMissingError: ``period`` is not in ``validated/``.
    :raises AirflowFailException: the use case's functions are missing or return frames that do not fit.
    """
    from airflow_mlops.core import feature_build

    try:
        return feature_build.build_partition(lake, period, usecase, spec, log)
    except feature_build.ValidatedPeriodMissing as err:
        raise ValidatedPeriodMissingError(str(err)) from err
    except ValueError as err:
        raise AirflowFailException(str(err)) from err


def run_user_features(
    usecase: UseCase, spec: FeatureSpec, period: str, frames: dict[str, dict[str, pd.DataFrame]]
) -> dict[str, pd.DataFrame]:
    """:func:`airflow_mlops.core.feature_build.run_user_features`; its errors fail the task (``AirflowFailException``)."""
    from airflow_mlops.core import feature_build

    try:
        return feature_build.run_user_features(usecase, spec, period, frames)
    except feature_build.UserFeatureCodeError as err:
        raise AirflowFailException(str(err)) from err


def read_validated(lake: LakeHook, period: str, files: tuple[str, ...]) -> dict[str, pd.DataFrame] | None:
    """:func:`airflow_mlops.core.feature_build.read_validated` (kept here for its callers)."""
    from airflow_mlops.core.feature_build import read_validated as read

    return read(lake, period, files)


def materialize_interval(periods: list[str], partitions: dict[str, dict]) -> tuple[Any, Any]:
    """:func:`airflow_mlops.core.feature_build.materialize_interval` (kept here for its callers)."""
    from airflow_mlops.core.feature_build import materialize_interval as interval

    return interval(periods, partitions)


class BuildFeaturesOperator(MlopsBaseOperator):
    """Build ``features/<period>/`` (one Parquet file per declared feature view, plus ``labels``).

    Calls the use case's ``build_features(ctx)`` and ``label_rows(ctx)`` with the period's validated frames and
    up to ``features.lookback_periods`` earlier ones (a missing one is logged: its history is then partial), checks
    every frame against the declared views, and commits the partition by its manifest, which records the sha256 of
    every input and of the feature config: a partition whose inputs did not change is not rewritten, and a
    rebuild of the same inputs writes the same bytes.

    :param usecase: the use-case folder (holding ``mlops.yaml``).
    :param period: period to build (templated); empty: the triggering asset events' periods, else the run's
        data interval, plus every validated period up to the latest of them that has no features yet.
    :param lake_root: lake root URL; default the use case's lake (``MLOPS_LAKE/<name>``).
    :param lake_conn_id: connection with the lake's credentials.
    :return: (XCom) periods, period (the latest), month (the same), interval_start and interval_end (the periods'
        data interval, widened to every view row written: what to materialize), and per period its partition (uri,
        sha256, rows per view, first and last row timestamps, rebuilt or not).
    :raises ValidatedPeriodMissingError: a period to build is not in ``validated/``.
    :raises AirflowFailException: the use case's config or functions are broken, or return frames that do not
        match the declared views (fails once: a retry cannot change it).
    """

    template_fields = ("period",)
    ui_color = "#fdf3e8"

    def __init__(self, *, usecase: str, period: str | None = None, **kwargs: Any) -> None:
        super().__init__(usecase=usecase, **kwargs)
        self.period = period

    def _with_periods_left_behind(self, periods: list[str], kind: str) -> list[str]:
        """Add the validated periods up to the latest asked for that have no features yet (asset events folded
        into one run, a period validated after a quarantine re-send). An explicitly requested period is alone."""
        built = set(self.lake.committed_periods("features", kind))
        behind = [p for p in self.lake.committed_periods("validated", kind) if p <= periods[-1] and p not in built]
        extra = sorted(set(behind) - set(periods))
        if extra:
            self.log.info("also building %s: validated, but no features yet", ", ".join(extra))
        return sorted(set(periods) | set(behind))

    def execute(self, context: Context) -> dict:
        from airflow_mlops.core import features as F

        usecase = self.require_usecase()
        spec = self.checked(F.FeatureSpec.from_usecase, usecase)
        kind = usecase.source.period
        periods = periods_from_context(self.period, context, kind)
        if is_blank(self.period):
            periods = self._with_periods_left_behind(periods, kind)
        self.log.info("building %s features for %s", usecase.name, ", ".join(periods))
        partitions = {p: build_partition(self.lake, p, usecase, spec, log=self.log) for p in periods}
        start, end = materialize_interval(periods, partitions)
        return {
            "periods": periods,
            "period": periods[-1],
            "month": periods[-1],
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
            "partitions": partitions,
        }
