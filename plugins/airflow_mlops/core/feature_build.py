"""Building a period's feature partition (``features/<period>/`` of the lake) with the use case's own
``build_features`` and ``label_rows``, and the data interval a materialization of it covers.

Lake I/O goes through the :class:`~airflow_mlops.hooks.lake.LakeHook` passed in. Errors a retry cannot fix (a missing
validated period, user code returning frames that do not fit) raise ``ValueError`` subclasses naming what to fix;
the operators turn them into ``AirflowFailException``.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.batches import batch_hash

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.core.features import FeatureSpec
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase.config import UseCase


class ValidatedPeriodMissing(ValueError):
    """A period to build features for has no committed ``validated/<period>/`` (no manifest)."""


class UserFeatureCodeError(ValueError):
    """The use case's ``build_features`` or ``label_rows`` is missing, raised, or returned frames that do not fit."""


def materialize_interval(periods: list[str], partitions: dict[str, dict]) -> tuple[datetime, datetime]:
    """The interval to materialize: the periods' data interval, widened to every view row the partitions hold (a
    daily use case stamps the rows built from day d at d+1 00:00, when they become usable)."""
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
    None if absent.

    :raises ValueError: the period is committed without one of ``files``.
    """
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


def input_hash(manifest: dict, files: tuple[str, ...]) -> str:
    names = {f"{name.rsplit('.', 1)[0]}.parquet" for name in files}
    return batch_hash({f: rec["sha256"] for f, rec in manifest["files"].items() if f in names})


def build_partition(lake: LakeHook, period: str, usecase: UseCase, spec: FeatureSpec, log: Any) -> dict:
    """Build and commit ``features/<period>/``; skip the write if the committed partition has the same inputs.

    :param log: a logger (what was read, skipped and written).
    :return: the partition's summary: uri, first and last row timestamps, sha256, rows per file, rebuilt.
    :raises ValidatedPeriodMissing: ``period`` is not in ``validated/``.
    :raises UserFeatureCodeError: see :func:`run_user_features`.
    """
    from airflow_mlops.core import features as F

    files = usecase.source.files
    inputs: dict[str, str] = {}
    for name in F.lookback(period, spec):
        manifest = lake.read_manifest(lake.path("validated", name))
        if manifest is not None:
            inputs[name] = input_hash(manifest, files)
    if period not in inputs:
        raise ValidatedPeriodMissing(f"no committed validated/{period}/ to build features from")
    absent = [p for p in F.lookback(period, spec) if p not in inputs]
    if absent:
        log.warning("%s: no validated %s; windows reaching into them are partial", period, ", ".join(absent))
    fingerprint = batch_hash({**{f"validated/{p}": h for p, h in inputs.items()}, "config": spec.fingerprint})
    target = lake.path("features", period)
    manifest = lake.read_manifest(target)
    if manifest and manifest.get("inputs_sha256") == fingerprint:
        log.info("%s: features are up to date (inputs %s); nothing to write", period, fingerprint[:12])
        return partition_summary(lake, target, manifest, rebuilt=False)

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
    return partition_summary(lake, target, manifest, rebuilt=True)


def run_user_features(
    usecase: UseCase, spec: FeatureSpec, period: str, frames: dict[str, dict[str, pd.DataFrame]]
) -> dict[str, pd.DataFrame]:
    """The use case's ``build_features`` and ``label_rows`` on ``frames``, checked against the declared views.

    :raises UserFeatureCodeError: a function is missing, raises ``ValueError``/``KeyError``, or returns frames
        that do not fit (the message names the file, the period and what is wrong).
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
        raise UserFeatureCodeError(f"{usecase.module_file.name}, period {period}: {err}") from err
    return out


def partition_summary(lake: LakeHook, target: Any, manifest: dict, rebuilt: bool) -> dict:
    """What a build returns for a committed partition (its manifest's figures)."""
    return {
        "uri": lake.url(target),
        "first_timestamp": manifest.get("first_timestamp"),
        "last_timestamp": manifest.get("last_timestamp"),
        "sha256": manifest["sha256"],
        "rows": {name.rsplit(".", 1)[0]: rec["rows"] for name, rec in sorted(manifest["files"].items())},
        "rebuilt": rebuilt,
    }
