"""Build the feature partitions of validated months (offline store: Parquet in the lake)."""

from __future__ import annotations

import io
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_mlops.core.batches import batch_hash, month_of, parse_month
from airflow_mlops.hooks.lake import LakeHook
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.core.features import FeatureSpec

#: The validated files a feature partition is built from.
VALIDATED_FILES = ("flights.parquet", "weather.parquet", "planes.parquet")


class ValidatedMonthMissingError(AirflowFailException):
    """A month to build features for has no committed ``validated/<month>/`` (no manifest)."""


def months_from_context(requested: str | None, context: Context) -> list[str]:
    """Which months a run builds: a named month; else the months of the triggering ``validated_batch`` events;
    else the month of the run's data interval."""
    if not is_blank(requested):
        return [parse_month(str(requested).strip())]
    months = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            month = (getattr(event, "extra", None) or {}).get("month")
            if month:
                months.add(parse_month(month))
    if months:
        return sorted(months)
    start = context.get("data_interval_start")
    if start is not None:
        return [month_of(start)]
    raise AirflowFailException(
        "no month to build: trigger with conf {'month': 'YYYY-MM'} or through a validated_batch asset event"
    )


class BuildFeaturesOperator(BaseOperator):
    """Build ``features/<month>/`` (one Parquet file per feature view, plus ``labels``) from validated months.

    History features read up to ``history.lookback_months`` earlier validated months (a missing one is logged:
    its history is then partial). Each partition is committed by its manifest, which records the sha256 of every
    input file and of the feature config; a partition whose inputs did not change is not rewritten, and a rebuild
    of the same inputs writes the same bytes.

    :param month: month to build, ``YYYY-MM`` (templated); empty: the triggering asset events' months, else the
        run's data interval, plus every validated month up to the latest of them that has no features yet.
    :param features_config: path of ``features.yaml`` (templated); default ``include/config/features.yaml``.
    :param lake_root: lake root URL; default from ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :return: (XCom) months, month (the latest), interval_start, interval_end, and per month its partition
        (uri, sha256, rows per view, rebuilt or not).
    :raises ValidatedMonthMissingError: a month to build is not in ``validated/``.
    """

    template_fields = ("month", "features_config")
    ui_color = "#fdf3e8"

    def __init__(
        self,
        *,
        month: str | None = None,
        features_config: str | None = None,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.month = month
        self.features_config = features_config
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)

    def _with_months_left_behind(self, months: list[str]) -> list[str]:
        """Add the validated months up to the latest asked for that have no features yet.

        Asset events that arrive together may be folded into one run whose context names only some of them
        (seen: two ``validated_batch`` events 0.4 s apart, one run, one month built); a month validated
        after a quarantine re-send is caught up too. An explicitly requested month is built alone.
        """
        built = set(self.lake.committed_months("features"))
        behind = [m for m in self.lake.committed_months("validated") if m <= months[-1] and m not in built]
        extra = sorted(set(behind) - set(months))
        if extra:
            self.log.info("also building %s: validated, but no features yet", ", ".join(extra))
        return sorted(set(months) | set(behind))

    def execute(self, context: Context) -> dict:
        from airflow_mlops.core import features as F

        spec = F.load_spec(self.features_config or None)
        months = months_from_context(self.month, context)
        if is_blank(self.month):
            months = self._with_months_left_behind(months)
        self.log.info("building features for %s", ", ".join(months))
        partitions = {month: build_partition(self.lake, month, spec, log=self.log) for month in months}
        start, end = F.month_interval(months)
        return {
            "months": months,
            "month": months[-1],
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
            "partitions": partitions,
        }


def read_validated(lake: LakeHook, month: str) -> dict[str, pd.DataFrame] | None:
    """A committed validated month as frames (only files its manifest lists, hashes checked); None if absent."""
    import pandas as pd

    manifest = lake.read_manifest(lake.path("validated", month))
    if manifest is None:
        return None
    missing = [name for name in VALIDATED_FILES if name not in manifest["files"]]
    if missing:
        raise ValueError(f"validated/{month}/ is committed without {', '.join(missing)}")
    return {
        name.rsplit(".", 1)[0]: pd.read_parquet(io.BytesIO(lake.read_verified(manifest["files"][name])))
        for name in VALIDATED_FILES
    }


def build_partition(lake: LakeHook, month: str, spec: FeatureSpec, log: Any) -> dict:
    """Build and commit ``features/<month>/``; skip the write if the committed partition has the same inputs."""
    from airflow_mlops.core import features as F

    wanted = [*F.previous_months(month, spec.lookback_months), month]
    inputs: dict[str, str] = {}
    for name in wanted:
        manifest = lake.read_manifest(lake.path("validated", name))
        if manifest is not None:
            inputs[name] = batch_hash(
                {f: rec["sha256"] for f, rec in manifest["files"].items() if f in VALIDATED_FILES}
            )
    if month not in inputs:
        raise ValidatedMonthMissingError(f"no committed validated/{month}/ to build features from")
    absent = [m for m in wanted if m not in inputs]
    if absent:
        log.warning("%s: no validated %s; history windows reaching into them are partial", month, ", ".join(absent))
    fingerprint = batch_hash({**{f"validated/{m}": h for m, h in inputs.items()}, "config": F.config_fingerprint(spec)})
    target = lake.path("features", month)
    manifest = lake.read_manifest(target)
    if manifest and manifest.get("inputs_sha256") == fingerprint:
        log.info("%s: features are up to date (inputs %s); nothing to write", month, fingerprint[:12])
        return _partition_summary(lake, target, manifest, rebuilt=False)

    frames = {m: read_validated(lake, m) for m in inputs}
    built = F.build_month(month, frames, spec)
    records = [
        lake.write_file(target / f"{view}.parquet", F.to_parquet_bytes(frame), rows=len(frame))
        for view, frame in built.items()
    ]
    manifest = lake.write_manifest(
        target,
        records,
        month=month,
        sha256=batch_hash({r.name: r.sha256 for r in records}),
        inputs_sha256=fingerprint,
        inputs=inputs,
        feature_version=spec.feature_version,
        config_sha256=F.config_fingerprint(spec),
    )
    log.info("%s: features written to %s (%s)", month, lake.url(target), {r.name: r.rows for r in records})
    return _partition_summary(lake, target, manifest, rebuilt=True)


def _partition_summary(lake: LakeHook, target: Any, manifest: dict, rebuilt: bool) -> dict:
    return {
        "uri": lake.url(target),
        "sha256": manifest["sha256"],
        "rows": {name.rsplit(".", 1)[0]: rec["rows"] for name, rec in sorted(manifest["files"].items())},
        "rebuilt": rebuilt,
    }
