"""The tiny test use case's functions (see docs/usecase.md): daily sensor readings.

A batch is one day of ``readings`` (reading_id, sensor, site, measured_at, kind, size, value). The label is the
reading's ``value``; ``reading_features`` holds what the reading itself says (stamped when it is taken);
``sensor_stats`` holds, per sensor, the mean and count of its readings of the earlier days handed over
(``lookback_periods``), stamped at midnight UTC of the day being built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

TS = "datetime64[us, UTC]"


def _readings(frame: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    out = frame.copy()
    out["reading_id"] = out["reading_id"].astype("int64").astype(str)
    out["event_timestamp"] = pd.to_datetime(out["measured_at"], utc=True).astype(TS)
    return out


def build_features(ctx: Any) -> dict[str, pd.DataFrame]:
    """The day's two views.

    :param ctx: the feature context (``ctx.frames[period]["readings"]``).
    """
    import pandas as pd

    current = _readings(ctx.current["readings"])
    readings = pd.DataFrame(
        {
            "reading_id": current["reading_id"],
            "event_timestamp": current["event_timestamp"],
            "kind": current["kind"],
            "size": current["size"].astype("float64"),
            "hour": current["event_timestamp"].dt.hour.astype("int64"),
        }
    )
    earlier = [_readings(ctx.frames[p]["readings"]) for p in ctx.earlier()]
    digits = int(ctx.params.get("round_digits", 3))
    midnight = pd.Timestamp(ctx.period, tz="UTC")
    if earlier:
        past = pd.concat(earlier, ignore_index=True).sort_values("event_timestamp", kind="stable")
        grouped = past.groupby("sensor", sort=True)
        stats = pd.DataFrame(
            {
                "sensor_mean": grouped["value"].mean().round(digits),
                "sensor_count": grouped["value"].size().astype("int64"),
                "sensor_site": grouped["site"].last(),
            }
        ).reset_index()
    else:
        stats = pd.DataFrame(
            {
                "sensor": pd.Series(dtype=object),
                "sensor_mean": pd.Series(dtype="float64"),
                "sensor_count": pd.Series(dtype="int64"),
                "sensor_site": pd.Series(dtype=object),
            }
        )
    stats["computed_at"] = pd.Series(midnight, index=stats.index, dtype=TS)
    return {"reading_features": readings, "sensor_stats": stats}


def label_rows(ctx: Any) -> pd.DataFrame:
    """The day's readings with a value: id, time, label, the sensor (a view key and a row feature).

    :param ctx: the feature context.
    """
    current = _readings(ctx.current["readings"])
    current = current[current["value"].notna()]
    return current.loc[:, ["reading_id", "event_timestamp", "value", "sensor"]].reset_index(drop=True)


def entity_keys(rows: pd.DataFrame, ctx: Any) -> pd.DataFrame:
    """Request rows (reading_id, sensor, event_timestamp) → the keys of both views and the sensor.

    :param rows: the request rows.
    :param ctx: the feature context.
    """
    import pandas as pd

    return pd.DataFrame({"reading_id": rows["reading_id"].astype(str), "sensor": rows["sensor"].astype(str)})
