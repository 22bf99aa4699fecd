"""Batch scoring: a validated period's rows scored by the champion from the offline features, committed to the lake
in the inference log's format so that the drift and performance checks read them as they read online traffic.

The rows scored are the period's entity rows as the use case defines them (the label rows of
``features/<period>/``), joined point-in-time with the offline store exactly as a training set is
(``core.training_set.read_labels`` + ``build_training_set``), so a row gets the feature values it would have had when
it happened. Layout under the use case's lake root (the inference log's, with the period in place of the day)::

    scores/<period>/v<model version>-<batch sha12>/predictions.parquet
    scores/<period>/v<model version>-<batch sha12>/_manifest.json      (written last: the commit)

One row per scored row, with the inference log's columns (``core.inference_log``) where they apply:
``request_id`` (``<batch sha12>-<row>``, rows in id order), ``batch_id`` (the batch's sha256), ``timestamp``
(when the batch was validated, from its manifest: not the wall clock), ``event_timestamp``, the id column, every
model feature, ``defaults_used`` (empty), ``prediction``, ``label`` (a classification's decision, else null),
``threshold``, ``model_name``, ``model_version``, ``latency_ms`` (null: no request was answered). The manifest
records model_name, model_version, model_versions, batch_sha256, batch_id, features_sha256, rows, first/last,
event_first/event_last.

Idempotent: the same batch, features and model give the same part folder and the same bytes, and a committed part
with the same inputs is not rewritten (nor re-scored). A new champion, a re-validated batch or rebuilt features for
the same period make a new part; once it is committed, every other part of the period is removed, so the period
never holds a row twice (a reader between the two steps may see both parts for a moment).

Plain functions, no Airflow; pandas imported inside. Errors a retry cannot fix raise ``BatchNotReady`` (a
``ValueError``) naming the period and what to run first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.inference_log import PART_FILE

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.core.features import FeatureSpec
    from airflow_mlops.core.training import TrainingConfig

ZONE = "scores"


class BatchNotReady(ValueError):
    """The period cannot be scored yet: ``stage`` (``validated`` or ``features``) is missing or out of date."""

    def __init__(self, message: str, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class BatchInputs:
    """What a period's scores are derived from (besides the model)."""

    period: str
    batch_sha256: str
    batch_id: str
    validated_at: str
    features_sha256: str


def batch_inputs(lake: Any, period: str, files: tuple[str, ...] | list[str]) -> BatchInputs:
    """The committed validated batch of ``period`` and its features, checked to belong together.

    :param lake: the use case's ``LakeHook``.
    :param period: the period scored.
    :param files: the use case's ``source.files`` (the validated files the features were built from).
    :raises BatchNotReady: no committed ``validated/<period>/``, no committed ``features/<period>/``, or features
        built from another validated batch of the period.
    """
    from airflow_mlops.core.batches import period_bounds
    from airflow_mlops.core.feature_build import input_hash

    validated = lake.read_manifest(lake.path("validated", period))
    if validated is None:
        raise BatchNotReady(f"no validated batch for {period} (validated/{period}/ is not committed)", "validated")
    features = lake.read_manifest(lake.path("features", period))
    if features is None or "labels.parquet" not in (features.get("files") or {}):
        raise BatchNotReady(f"no features for {period} (features/{period}/ is not committed)", "features")
    built_from = (features.get("inputs") or {}).get(period)
    if built_from is not None and built_from != input_hash(validated, tuple(files)):
        raise BatchNotReady(
            f"the features of {period} were built from an earlier validated batch of {period}", "features"
        )
    sha = validated.get("batch_sha256") or input_hash(validated, tuple(files))
    at = validated.get("written_at") or period_bounds(period)[1].isoformat()
    return BatchInputs(
        period=period,
        batch_sha256=str(sha),
        batch_id=str(validated.get("batch_id") or f"{period}-{sha[:12]}"),
        validated_at=str(at),
        features_sha256=str(features.get("sha256") or ""),
    )


def part_name(model_version: str | int, batch_sha256: str) -> str:
    """The part folder of a model version's scores of a batch: ``v<version>-<sha12>``."""
    return f"v{model_version}-{batch_sha256[:12]}"


def identity(inputs: BatchInputs, model_name: str, model_version: str | int) -> dict[str, str]:
    """What a committed part must record to be reused as it is."""
    return {
        "model_name": model_name,
        "model_version": str(model_version),
        "batch_sha256": inputs.batch_sha256,
        "features_sha256": inputs.features_sha256,
    }


def committed_part(lake: Any, period: str, part: str, expected: dict[str, str]) -> dict[str, Any] | None:
    """The manifest of ``scores/<period>/<part>/`` if it is committed with ``expected``'s inputs; else None."""
    manifest = lake.read_manifest(lake.path(ZONE, period, part))
    if not manifest or PART_FILE not in (manifest.get("files") or {}):
        return None
    return manifest if all(str(manifest.get(k)) == v for k, v in expected.items()) else None


def rows_to_score(lake: Any, feast: Any, spec: FeatureSpec, period: str, log: Any) -> pd.DataFrame:
    """The period's label rows joined point-in-time with the offline store (the training-set contract: id, event
    time, label, period, model features), sorted by id.

    :param feast: the use case's ``FeastHook`` (its repository applied).
    """
    from airflow_mlops.core import training_set

    labels, _ = training_set.read_labels(lake, [period], log)
    return training_set.build_training_set(feast, labels, spec)


def scored_frame(
    rows: pd.DataFrame,
    scores: Any,
    *,
    config: TrainingConfig,
    inputs: BatchInputs,
    model_name: str,
    model_version: str | int,
    threshold: float | None,
) -> pd.DataFrame:
    """The inference-log rows of scored ``rows`` (see the module docstring), vectorised.

    :param rows: the joined rows (``rows_to_score``), in id order.
    :param scores: one score per row (``core.training.predict_scores``).
    :param threshold: a classification's decision threshold; None for a regression.
    """
    import numpy as np
    import pandas as pd

    from airflow_mlops.core.features import EVENT_TIMESTAMP, TS

    n = len(rows)
    values = np.asarray(scores, dtype="float64")
    if values.shape != (n,):
        raise ValueError(f"{values.size} scores for {n} rows")
    classification = (getattr(config, "task", None) or "classification") == "classification"
    decided = threshold is not None and classification
    index = pd.RangeIndex(n)
    columns: dict[str, Any] = {
        "request_id": pd.Series(np.arange(n), index=index).astype(str).radd(f"{inputs.batch_sha256[:12]}-"),
        "batch_id": inputs.batch_sha256,
        "timestamp": pd.Series(pd.Timestamp(inputs.validated_at), index=index).astype(TS),
        EVENT_TIMESTAMP: pd.to_datetime(rows[EVENT_TIMESTAMP], utc=True).astype(TS).array,
        config.id_column: rows[config.id_column].astype(object).array,
    }
    columns.update({name: rows[name].array for name in config.features})
    columns.update(
        {
            "defaults_used": "",
            "prediction": values,
            "label": values >= threshold if decided else pd.Series([None] * n, index=index, dtype=object),
            "threshold": float(threshold) if decided else pd.Series([None] * n, index=index, dtype=object),
            "model_name": model_name,
            "model_version": str(model_version),
            "latency_ms": np.full(n, np.nan),
        }
    )
    return pd.DataFrame(columns, index=index)


def score_rows(
    model: Any,
    rows: pd.DataFrame,
    config: TrainingConfig,
    *,
    inputs: BatchInputs,
    model_name: str,
    model_version: str | int,
    threshold: float | None,
) -> tuple[pd.DataFrame, float]:
    """Score ``rows`` with ``model`` (``core.training.predict_scores``, vectorised over the batch) into the
    inference-log rows; returns them and the seconds scoring took.

    :raises ValueError: the rows lack a feature of the model's config (named).
    """
    from airflow_mlops.core.training import predict_scores

    missing = [name for name in (config.id_column, *config.features) if name not in rows.columns]
    if missing:
        raise ValueError(
            f"{model_name} v{model_version} needs {', '.join(missing)}, which the offline features of "
            f"{inputs.period} do not have: rebuild the features, or retrain under the current feature definition"
        )
    if not rows[config.id_column].is_monotonic_increasing:
        rows = rows.sort_values(config.id_column, kind="stable").reset_index(drop=True)
    started = time.perf_counter()
    scores = predict_scores(model, rows, config)
    frame = scored_frame(
        rows,
        scores,
        config=config,
        inputs=inputs,
        model_name=model_name,
        model_version=model_version,
        threshold=threshold,
    )
    return frame, time.perf_counter() - started


def commit_scores(lake: Any, frame: pd.DataFrame, inputs: BatchInputs, **meta: Any) -> tuple[dict[str, Any], Any]:
    """Write ``scores/<period>/<part>/`` (deterministic Parquet, then its manifest with ``meta``); returns the
    manifest and the folder. The part is named by the frame's model version and the batch.

    :param meta: more manifest entries (e.g. the scoring's seconds).
    """
    from airflow_mlops.core.drift import event_times

    version = str(frame["model_version"].iloc[0]) if len(frame) else str(meta.get("model_version"))
    name = str(frame["model_name"].iloc[0]) if len(frame) else str(meta.get("model_name"))
    folder = lake.path(ZONE, inputs.period, part_name(version, inputs.batch_sha256))
    # As the inference log writes its parts (pyarrow, snappy): the same frame gives the same bytes.
    data = frame.to_parquet(index=False, engine="pyarrow", compression="snappy")
    record = lake.write_file(folder / PART_FILE, data, rows=len(frame))
    events = event_times(frame).dropna()
    span = {"event_first": events.min().isoformat(), "event_last": events.max().isoformat()} if len(events) else {}
    times = {"first": frame["timestamp"].min().isoformat(), "last": frame["timestamp"].max().isoformat()}
    manifest = lake.write_manifest(
        folder,
        [record],
        **{**meta, **identity(inputs, name, version)},
        period=inputs.period,
        batch_id=inputs.batch_id,
        validated_at=inputs.validated_at,
        rows=len(frame),
        model_versions=[version],
        **(times if len(frame) else {}),
        **span,
    )
    return manifest, folder


def supersede(lake: Any, period: str, keep: str) -> list[str]:
    """Remove every part of ``scores/<period>/`` but ``keep`` (older models' or batches' scores, leftovers of an
    interrupted write); returns the names removed. Call it once ``keep`` is committed."""
    folder = lake.path(ZONE, period)
    removed = []
    for part in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []:
        if part.name != keep:
            lake.remove_tree(part)
            removed.append(part.name)
    return removed


def summary(manifest: dict[str, Any], folder: Any, lake: Any, written: bool, seconds: float | None) -> dict[str, Any]:
    """The step's small result (XCom and the ``scores`` Asset event's extra)."""
    rows = int(manifest.get("rows") or 0)
    return {
        "period": manifest.get("period"),
        "uri": manifest["files"][PART_FILE]["uri"],
        "folder": lake.url(folder),
        "part": folder.name,
        "rows": rows,
        "model_name": manifest.get("model_name"),
        "model_version": manifest.get("model_version"),
        "batch_sha256": manifest.get("batch_sha256"),
        "batch_id": manifest.get("batch_id"),
        "written": written,
        "seconds": None if seconds is None else round(seconds, 4),
        "rows_per_s": None if not seconds else round(rows / max(seconds, 1e-9), 1),
    }
