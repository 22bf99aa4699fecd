"""Build the feature partitions of validated periods (offline store: Parquet in the lake) with the use case's
own ``build_features`` and ``label_rows``."""

from __future__ import annotations

import io
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_mlops.core.batches import batch_hash, parse_period, period_of
from airflow_mlops.hooks.lake import LakeHook
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.core.features import FeatureSpec
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


class BuildFeaturesOperator(BaseOperator):
    """Build ``features/<period>/`` (one Parquet file per declared feature view, plus ``labels``).

    Calls the use case's ``build_features(ctx)`` and ``label_rows(ctx)`` with the period's validated frames and
    up to ``features.lookback_periods`` earlier ones (a missing one is logged: its history is then partial), checks
    every frame against the declared views, and commits the partition by its manifest, which records the sha256 of
    every input and of the feature config: a partition whose inputs did not change is not rewritten, and a
    rebuild of the same inputs writes the same bytes.

    :param usecase: the use-case folder (holding ``mlops.yaml``).
    :param period: period to build (templated); empty: the triggering asset events' periods, else the run's
        data interval, plus every validated period up to the latest of them that has no features yet.
    :param lake_root: lake root URL; default from ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :return: (XCom) periods, period (the latest), month (the same), interval_start and interval_end (the periods'
        data interval, widened to every view row written: what to materialize), and per period its partition (uri,
        sha256, rows per view, first and last row timestamps, rebuilt or not).
    :raises ValidatedPeriodMissingError: a period to build is not in ``validated/``.
    :raises AirflowFailException: the use case's functions are missing or return frames that do not match the
        declared views (fails once: a retry cannot change it).
    """

    template_fields = ("period",)
    ui_color = "#fdf3e8"

    def __init__(
        self,
        *,
        usecase: str,
        period: str | None = None,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.usecase = usecase
        self.period = period
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)

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
        from airflow_mlops.usecase import config as usecase_config

        usecase = usecase_config.load(self.usecase)
        spec = F.FeatureSpec.from_usecase(usecase)
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


def materialize_interval(periods: list[str], partitions: dict[str, dict]) -> tuple[Any, Any]:
    """The interval to materialize: the periods' data interval, widened to every view row the partitions hold (a
    daily use case stamps the rows built from day d at d+1 00:00, when they become usable)."""
    from datetime import datetime, timedelta

    from airflow_mlops.core import features as F

    start, end = F.interval(periods)
    for partition in partitions.values():
        first, last = partition.get("first_timestamp"), partition.get("last_timestamp")
        if first:
            start = min(start, datetime.fromisoformat(first))
        if last:
            end = max(end, datetime.fromisoformat(last) + timedelta(microseconds=1))
    return start, end


def read_validated(lake: LakeHook, period: str, files: tuple[str, ...]) -> dict[str, pd.DataFrame] | None:
    """A committed validated period as ``{file stem: frame}`` (only files its manifest lists, hashes checked);
    None if absent."""
    import pandas as pd

    manifest = lake.read_manifest(lake.path("validated", period))
    if manifest is None:
        return None
    names = [f"{name.rsplit('.', 1)[0]}.parquet" for name in files]
    missing = [name for name in names if name not in manifest["files"]]
    if missing:
        raise ValueError(f"validated/{period}/ is committed without {', '.join(missing)}")
    return {
        name.rsplit(".", 1)[0]: pd.read_parquet(io.BytesIO(lake.read_verified(manifest["files"][name])))
        for name in names
    }


def _input_hash(manifest: dict, files: tuple[str, ...]) -> str:
    names = {f"{name.rsplit('.', 1)[0]}.parquet" for name in files}
    return batch_hash({f: rec["sha256"] for f, rec in manifest["files"].items() if f in names})


def build_partition(lake: LakeHook, period: str, usecase: UseCase, spec: FeatureSpec, log: Any) -> dict:
    """Build and commit ``features/<period>/``; skip the write if the committed partition has the same inputs."""
    from airflow_mlops.core import features as F

    files = usecase.source.files
    inputs: dict[str, str] = {}
    for name in F.lookback(period, spec):
        manifest = lake.read_manifest(lake.path("validated", name))
        if manifest is not None:
            inputs[name] = _input_hash(manifest, files)
    if period not in inputs:
        raise ValidatedPeriodMissingError(f"no committed validated/{period}/ to build features from")
    absent = [p for p in F.lookback(period, spec) if p not in inputs]
    if absent:
        log.warning("%s: no validated %s; windows reaching into them are partial", period, ", ".join(absent))
    fingerprint = batch_hash({**{f"validated/{p}": h for p, h in inputs.items()}, "config": spec.fingerprint})
    target = lake.path("features", period)
    manifest = lake.read_manifest(target)
    if manifest and manifest.get("inputs_sha256") == fingerprint:
        log.info("%s: features are up to date (inputs %s); nothing to write", period, fingerprint[:12])
        return _partition_summary(lake, target, manifest, rebuilt=False)

    frames = {p: read_validated(lake, p, files) for p in inputs}
    built = run_user_features(usecase, spec, period, frames)
    records = [
        lake.write_file(target / f"{view}.parquet", F.to_parquet_bytes(frame), rows=len(frame))
        for view, frame in built.items()
    ]
    stamps = [frame[view.timestamp] for view in spec.views if len(frame := built[view.name])]
    manifest = lake.write_manifest(
        target,
        records,
        first_timestamp=min(s.min() for s in stamps).isoformat() if stamps else None,
        last_timestamp=max(s.max() for s in stamps).isoformat() if stamps else None,
        period=period,
        month=period,
        sha256=batch_hash({r.name: r.sha256 for r in records}),
        inputs_sha256=fingerprint,
        inputs=inputs,
        feature_version=spec.feature_version,
        config_sha256=spec.fingerprint,
    )
    log.info("%s: features written to %s (%s)", period, lake.url(target), {r.name: r.rows for r in records})
    return _partition_summary(lake, target, manifest, rebuilt=True)


def run_user_features(
    usecase: UseCase, spec: FeatureSpec, period: str, frames: dict[str, dict[str, pd.DataFrame]]
) -> dict[str, pd.DataFrame]:
    """The use case's ``build_features`` and ``label_rows`` on ``frames``, checked against the declared views.

    :raises AirflowFailException: a function is missing, raises, or returns frames that do not fit.
    """
    from airflow_mlops.core import features as F
    from airflow_mlops.usecase import FeatureContext, UserCodeError, load_function

    ctx = FeatureContext(period=period, frames=frames, params=spec.params, config=usecase)
    try:
        build = load_function(usecase.module_file, "build_features", arity=1)
        labels = load_function(usecase.module_file, "label_rows", arity=1)
        views = build(ctx)
        if not isinstance(views, dict):
            raise ValueError(f"build_features() returned {type(views).__name__}, not a mapping of view → frame")
        unknown = sorted(set(views) - {v.name for v in spec.views})
        missing = [v.name for v in spec.views if v.name not in views]
        if unknown or missing:
            raise ValueError(
                f"build_features() must return exactly the declared views: missing {missing}, undeclared {unknown}"
            )
        out = {view.name: F.check_view(views[view.name], view, spec) for view in spec.views}
        out[F.LABELS] = F.check_labels(labels(ctx), spec, period)
    except (UserCodeError, ValueError, KeyError) as err:
        raise AirflowFailException(f"{usecase.module_file.name}, period {period}: {err}") from err
    return out


def _partition_summary(lake: LakeHook, target: Any, manifest: dict, rebuilt: bool) -> dict:
    return {
        "uri": lake.url(target),
        "first_timestamp": manifest.get("first_timestamp"),
        "last_timestamp": manifest.get("last_timestamp"),
        "sha256": manifest["sha256"],
        "rows": {name.rsplit(".", 1)[0]: rec["rows"] for name, rec in sorted(manifest["files"].items())},
        "rebuilt": rebuilt,
    }
