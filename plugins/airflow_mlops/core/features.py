"""Feature engineering for the late-arrival task: plain functions on validated frames (no Airflow, no Feast).

The task (``include/config/features.yaml``): at a flight's scheduled departure, predict whether it arrives more
than 15 minutes late. Every feature row carries the timestamp from which it may be used, and uses only data
known strictly before it:

* **flight features** (``flight_features``, entity ``flight_id``): schedule and fleet data — scheduled local
  hour and weekday, destination, distance, plane age and seats. Stamped at the scheduled departure
  ``event_timestamp = time_hour + minute``. Never the flight's own departure, arrival, delays or air time.
* **weather** (``origin_weather``, entity ``weather_slot``): the hourly observation stamped ``time_hour`` is
  usable from ``time_hour + publication_lag``. A departure at ``t`` reads the *slot* ``B = floor(t - lag, 1 h)``
  of its origin: the latest observation with ``time_hour <= B`` (so ``time_hour + lag <= t``: strictly before
  ``t``), if it is less than ``ttl_hours`` older than ``B``; the slot row is stamped ``available_at = B + lag``.
* **history** (``carrier_history``, ``route_history``, ``origin_history``; entities ``<key>_slot``): hourly
  snapshots. The snapshot stamped ``H`` counts the labelled flights whose outcome was *known* in
  ``[H - window, H)``. An outcome is known at ``known_at = scheduled departure + dep_delay + air_time + buffer``
  (a conservative arrival time; ``scheduled departure + fallback`` when either is missing). A departure at
  ``t`` reads the snapshot of the slot ``floor(t, snapshot period) <= t``: every outcome it counts was known
  strictly before ``t``.

Weather and history rows are keyed by entity *and* time slot (``"JFK@20130315T0900"``), one row per slot, so the
online store answers a request with the values of the request's own time, as the point-in-time join does for
training: a month materialized in one go (a replay, a backfill) serves each flight what was known before it,
not the values of the end of the month. ``slot_columns`` computes the keys for label rows and requests alike.

The labels (``is_late``) are written next to the features but never served: they are the entity rows of a
training set. Every frame here keeps timestamps as ``datetime64[us, UTC]`` (what Feast's DuckDB store needs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops import settings
from airflow_mlops.core.batches import month_bounds, parse_month

if TYPE_CHECKING:
    import pandas as pd

TS = "datetime64[us, UTC]"

#: Feature views (names as registered in Feast) and the lake file each one is read from.
FLIGHT_VIEW = "flight_features"
WEATHER_VIEW = "origin_weather"
HISTORY_VIEWS = {"carrier": "carrier_history", "route": "route_history", "origin": "origin_history"}
LABELS = "labels"
#: The timestamp column of each kind of partition file.
TIMESTAMP_FIELDS = {FLIGHT_VIEW: "event_timestamp", WEATHER_VIEW: "available_at", LABELS: "event_timestamp"}
TIMESTAMP_FIELDS.update({view: "snapshot_at" for view in HISTORY_VIEWS.values()})

FLIGHT_FEATURES = ["dest", "sched_hour", "weekday", "distance", "plane_age", "plane_seats", "plane_known"]
#: Set to 1 on every weather row: after a join, null means "no observation within the TTL".
WEATHER_PRESENT = "weather_obs"
#: The weather view's join key: ``"<origin>@<slot %Y%m%dT%H%M>"``.
WEATHER_SLOT = "weather_slot"
SLOT_FORMAT = "%Y%m%dT%H%M"

#: The training-set contract (column order). ``flight_id`` is unique; rows are sorted by it.
ID_COLUMNS = ["flight_id", "event_timestamp", "is_late", "month"]


@dataclass(frozen=True)
class HistoryEntity:
    name: str
    key: str
    windows_days: tuple[int, ...]

    @property
    def view(self) -> str:
        return HISTORY_VIEWS[self.name]

    @property
    def slot_key(self) -> str:
        """The view's join key: ``"<key>@<snapshot slot>"``, e.g. ``carrier_slot = "UA@20130315T0900"``."""
        return f"{self.key}_slot"

    def features(self) -> list[str]:
        return [f"{self.name}_{stat}_{w}d" for w in self.windows_days for stat in ("late_rate", "flights")]


@dataclass(frozen=True)
class FeatureSpec:
    """The task definition read from ``features.yaml``."""

    threshold_minutes: float
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    unknown_category: str
    weather_columns: tuple[str, ...]
    weather_lag_minutes: float
    weather_ttl_hours: float
    outcome_buffer_minutes: float
    outcome_fallback_hours: float
    snapshot_minutes: int
    history_ttl_hours: float
    lookback_months: int
    history: tuple[HistoryEntity, ...]
    flight_ttl_hours: float
    feature_version: int
    window_months: int
    min_months: int
    join_chunk_rows: int = 50_000
    forbidden_columns: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def feature_columns(self) -> list[str]:
        return [*self.categorical, *self.numeric]

    @property
    def training_columns(self) -> list[str]:
        return [*ID_COLUMNS, *self.feature_columns]

    def history_features(self) -> list[str]:
        return [name for entity in self.history for name in entity.features()]

    def slot_keys(self) -> list[str]:
        """The join keys of the time-slotted views (weather, then each history entity)."""
        return [WEATHER_SLOT, *(entity.slot_key for entity in self.history)]

    def feature_refs(self) -> list[str]:
        """Feast feature references (``view:feature``) a training set or an online lookup reads."""
        refs = [f"{FLIGHT_VIEW}:{name}" for name in FLIGHT_FEATURES]
        refs += [f"{WEATHER_VIEW}:{name}" for name in (*self.weather_columns, WEATHER_PRESENT)]
        refs += [f"{entity.view}:{name}" for entity in self.history for name in entity.features()]
        return refs

    def online_defaults(self) -> dict[str, Any]:
        """The value of each feature when its key is unknown or its row is older than the TTL."""
        defaults: dict[str, Any] = {name: float("nan") for name in self.numeric}
        defaults.update({name: self.unknown_category for name in self.categorical})
        defaults.update({"plane_known": 0, "weather_known": 0})
        defaults.update({name: 0 for name in self.history_features() if "_flights_" in name})
        return defaults


def features_config_path() -> Path:
    import os

    return Path(os.environ.get("MLOPS_FEATURES_CONFIG") or settings.include_dir() / "config" / "features.yaml")


@cache
def _load_yaml(path: str) -> dict:
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping (task, features, weather, outcome, history, ...)")
    return data


def load_spec(path: str | Path | None = None) -> FeatureSpec:
    """Read the task definition (default ``include/config/features.yaml``; ``MLOPS_FEATURES_CONFIG`` overrides)."""
    target = str(path or features_config_path())
    try:
        raw = _load_yaml(target)
        task, feats, weather = raw["task"], raw["features"], raw["weather"]
        outcome, history, training = raw["outcome"], raw["history"], raw["training"]
        entities = tuple(
            HistoryEntity(name=name, key=item["key"], windows_days=tuple(int(w) for w in item["windows_days"]))
            for name, item in history["entities"].items()
        )
        spec = FeatureSpec(
            threshold_minutes=float(task["threshold_minutes"]),
            categorical=tuple(feats["categorical"]),
            numeric=tuple(feats["numeric"]),
            unknown_category=str(feats.get("unknown_category", "UNKNOWN")),
            weather_columns=tuple(weather["columns"]),
            weather_lag_minutes=float(weather["publication_lag_minutes"]),
            weather_ttl_hours=float(weather["ttl_hours"]),
            outcome_buffer_minutes=float(outcome["buffer_minutes"]),
            outcome_fallback_hours=float(outcome["fallback_hours"]),
            snapshot_minutes=int(history["snapshot_freq_minutes"]),
            history_ttl_hours=float(history["ttl_hours"]),
            lookback_months=int(history["lookback_months"]),
            history=entities,
            flight_ttl_hours=float(raw["flight"]["ttl_hours"]),
            feature_version=int(raw["store"]["feature_version"]),
            window_months=int(training["window_months"]),
            min_months=int(training.get("min_months", 1)),
            join_chunk_rows=int(training.get("join_chunk_rows", 50_000)),
            forbidden_columns=tuple(task.get("forbidden_columns", ())),
            raw=raw,
        )
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"invalid feature config {target}: {err!r}") from err
    unknown = set(HISTORY_VIEWS) ^ {e.name for e in spec.history}
    if unknown:
        raise ValueError(f"{target}: history.entities must be exactly {sorted(HISTORY_VIEWS)}")
    if spec.join_chunk_rows < 1:
        raise ValueError(f"{target}: training.join_chunk_rows must be >= 1")
    if spec.weather_lag_minutes <= 0:
        raise ValueError(f"{target}: weather.publication_lag_minutes must be > 0, or the weather join is not strict")
    if spec.history_ttl_hours * 60 < spec.snapshot_minutes:
        raise ValueError(f"{target}: history.ttl_hours must cover one snapshot period")
    if spec.weather_ttl_hours < 1:
        raise ValueError(f"{target}: weather.ttl_hours must be >= 1 (one hourly slot)")
    if spec.outcome_buffer_minutes < 0:
        raise ValueError(f"{target}: outcome.buffer_minutes must be >= 0")
    missing = set(spec.numeric) - {*FLIGHT_FEATURES, *spec.weather_columns, "weather_known", *spec.history_features()}
    if missing:
        raise ValueError(f"{target}: numeric features with no source: {sorted(missing)}")
    return spec


def config_fingerprint(spec: FeatureSpec) -> str:
    """A hash of the task definition: a partition built under another definition is rebuilt."""
    import json

    from airflow_mlops.core.batches import sha256_bytes

    return sha256_bytes(json.dumps(spec.raw, sort_keys=True, default=str).encode())


# -- months -------------------------------------------------------------------------------------------------
def previous_months(month: str, count: int) -> list[str]:
    """``count`` months before ``month``, oldest first (``previous_months('2013-03', 2) == ['2013-01', '2013-02']``)."""
    year, mon = (int(p) for p in parse_month(month).split("-"))
    out = []
    for back in range(count, 0, -1):
        index = year * 12 + (mon - 1) - back
        out.append(f"{index // 12:04d}-{index % 12 + 1:02d}")
    return out


def window_months(end_month: str, count: int) -> list[str]:
    """The trailing ``count`` months ending with ``end_month`` (inclusive), oldest first."""
    return [*previous_months(end_month, count - 1), parse_month(end_month)]


def _us(values: pd.Series) -> Any:
    """UTC timestamps as a numpy ``datetime64[us]`` array (fast; no per-element Timestamp objects)."""
    import pandas as pd

    return pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None).as_unit("us").to_numpy()


# -- flights ------------------------------------------------------------------------------------------------
def _categorical(values: pd.Series, unknown: str) -> pd.Series:
    cleaned = values.astype("string").str.strip().str.upper()
    return cleaned.mask(cleaned.isna() | cleaned.eq(""), unknown).astype(object)


def prepare_flights(flights: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Flights with ``flight_id``, ``event_timestamp`` (UTC scheduled departure) and clean categoricals."""
    import pandas as pd

    frame = flights.copy()
    time_hour = pd.to_datetime(frame["time_hour"], utc=True).astype(TS)
    frame["time_hour"] = time_hour
    frame["event_timestamp"] = (time_hour + pd.to_timedelta(frame["minute"].astype("int64"), unit="min")).astype(TS)
    for column in ("carrier", "origin", "dest"):
        frame[column] = _categorical(frame[column], spec.unknown_category)
    import numpy as np

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


def flight_features(flights: pd.DataFrame, planes: pd.DataFrame | None, spec: FeatureSpec) -> pd.DataFrame:
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


# -- time slots ---------------------------------------------------------------------------------------------
def _floor_seconds(seconds: int, minutes: float) -> int:
    step = int(minutes * 60)
    return seconds // step * step


def weather_slot_start(departure_utc: Any, spec: FeatureSpec) -> Any:
    """The weather slot a departure reads: ``floor(t - publication lag, 1 h)`` (UTC)."""
    from datetime import UTC, datetime

    seconds = int(departure_utc.timestamp() - spec.weather_lag_minutes * 60)
    return datetime.fromtimestamp(_floor_seconds(seconds, 60), UTC)


def history_slot_start(departure_utc: Any, spec: FeatureSpec) -> Any:
    """The history snapshot a departure reads: ``floor(t, snapshot period)`` (UTC)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(_floor_seconds(int(departure_utc.timestamp()), spec.snapshot_minutes), UTC)


def request_slots(carrier: str, origin: str, route: str, departure_utc: Any, spec: FeatureSpec) -> dict[str, str]:
    """The slot keys of one flight (what ``slot_columns`` computes for a frame), for an online lookup."""
    weather = weather_slot_start(departure_utc, spec).strftime(SLOT_FORMAT)
    history = history_slot_start(departure_utc, spec).strftime(SLOT_FORMAT)
    values = {"carrier": carrier, "origin": origin, "route": route}
    out = {WEATHER_SLOT: f"{origin}@{weather}"}
    out.update({entity.slot_key: f"{values[entity.key]}@{history}" for entity in spec.history})
    return out


def slot_columns(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, pd.Series]:
    """The slot keys of flights (``origin``, ``carrier``, ``route``, ``event_timestamp`` in UTC)."""
    import pandas as pd

    event = pd.to_datetime(frame["event_timestamp"], utc=True)
    weather = (event - pd.Timedelta(minutes=spec.weather_lag_minutes)).dt.floor("60min").dt.strftime(SLOT_FORMAT)
    history = event.dt.floor(f"{spec.snapshot_minutes}min").dt.strftime(SLOT_FORMAT)
    out = {WEATHER_SLOT: frame["origin"].astype(str) + "@" + weather}
    out.update({entity.slot_key: frame[entity.key].astype(str) + "@" + history for entity in spec.history})
    return out


def weather_features(weather: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """One row per origin and hourly slot ``B``: the latest observation with ``time_hour <= B`` less than
    ``ttl_hours`` older than ``B``, keyed ``"<origin>@<B>"`` and usable from ``available_at = B + lag``.

    ``time_hour`` stays the observation's own hour (lineage for the leakage checks). Slots run from the first to
    the last observation of the batch, so two months' partitions never hold the same slot.
    """
    import math

    import pandas as pd

    frame = weather.copy()
    frame["origin"] = _categorical(frame["origin"], spec.unknown_category)
    frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True).astype(TS)
    frame = frame.dropna(subset=["time_hour"]).drop_duplicates(["origin", "time_hour"], keep="last")
    observed = frame.loc[:, ["origin", "time_hour", *spec.weather_columns]].copy()
    for column in spec.weather_columns:
        observed[column] = pd.to_numeric(observed[column], errors="coerce").astype("float64")
    observed["slot"] = observed["time_hour"].dt.floor("60min")
    grid = [
        pd.DataFrame({"origin": origin, "slot": pd.date_range(hours.min(), hours.max(), freq="1h")})
        for origin, hours in observed.groupby("origin", sort=True)["slot"]
    ]
    if not grid:
        out = observed.drop(columns="slot").assign(**{WEATHER_SLOT: pd.Series(dtype=object)})
        out["available_at"] = out["time_hour"]
        out[WEATHER_PRESENT] = pd.Series(dtype="int64")
        return out.loc[:, [WEATHER_SLOT, "origin", "time_hour", "available_at", *spec.weather_columns, WEATHER_PRESENT]]
    slots = pd.concat(grid, ignore_index=True)
    slots["slot"] = slots["slot"].astype(TS)
    older = max(int(math.ceil(spec.weather_ttl_hours)) - 1, 0)  # slots after its own hour an observation serves
    out = pd.merge_asof(
        slots.sort_values("slot", kind="stable"),
        observed.sort_values("slot", kind="stable"),
        on="slot",
        by="origin",
        direction="backward",
        tolerance=pd.Timedelta(hours=older),
    ).dropna(subset=["time_hour"])
    out[WEATHER_SLOT] = out["origin"].astype(str) + "@" + out["slot"].dt.strftime(SLOT_FORMAT)
    out["available_at"] = (out["slot"] + pd.Timedelta(minutes=spec.weather_lag_minutes)).astype(TS)
    out["time_hour"] = out["time_hour"].astype(TS)
    out[WEATHER_PRESENT] = 1
    out = out.sort_values(["origin", "slot"], kind="stable").reset_index(drop=True)
    return out.loc[:, [WEATHER_SLOT, "origin", "time_hour", "available_at", *spec.weather_columns, WEATHER_PRESENT]]


def outcome_known_at(flights: pd.DataFrame, spec: FeatureSpec) -> pd.Series:
    """When each flight's outcome is known: departure + dep_delay + air_time + buffer (or + fallback)."""
    import pandas as pd

    minutes = flights["dep_delay"] + flights["air_time"] + spec.outcome_buffer_minutes
    fallback = spec.outcome_fallback_hours * 60.0
    minutes = minutes.where(minutes.notna(), fallback)
    return (flights["event_timestamp"] + pd.to_timedelta(minutes, unit="min")).astype(TS)


def labelled(flights: pd.DataFrame) -> pd.DataFrame:
    return flights[flights["arr_delay"].notna()]


def outcomes(flights: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Labelled flights as (entity keys, ``known_at``, ``late``): the raw material of history features."""
    import pandas as pd

    done = labelled(flights)
    return pd.DataFrame(
        {
            "carrier": done["carrier"],
            "route": done["route"],
            "origin": done["origin"],
            "known_at": outcome_known_at(done, spec),
            "late": (done["arr_delay"] > spec.threshold_minutes).astype("int64"),
        }
    ).reset_index(drop=True)


def labels(flights: pd.DataFrame, month: str, spec: FeatureSpec) -> pd.DataFrame:
    """Entity rows of a training set: labelled flights with their keys and ``is_late``; never served."""
    import pandas as pd

    done = labelled(flights)
    out = pd.DataFrame(
        {
            "flight_id": done["flight_id"].astype(object),
            "event_timestamp": done["event_timestamp"].astype(TS),
            "carrier": done["carrier"].astype(object),
            "origin": done["origin"].astype(object),
            "route": done["route"].astype(object),
            "is_late": (done["arr_delay"] > spec.threshold_minutes).astype("int64"),
            "month": parse_month(month),
        }
    )
    for name, keys in slot_columns(out, spec).items():
        out[name] = keys.astype(object)
    return out.sort_values("flight_id", kind="stable").reset_index(drop=True)


# -- history ------------------------------------------------------------------------------------------------
def snapshot_grid(event_timestamps: pd.Series, spec: FeatureSpec) -> pd.DatetimeIndex:
    """Snapshot times covering a month's departures: ``floor(first)`` .. ``floor(last)`` every snapshot period.

    Bounded by the month's own departures (not the UTC month), so a partition never stamps a snapshot at a time
    when outcomes of the next month's flights could already be known: every next-month outcome is known after its
    departure, which is after this month's last one.
    """
    import pandas as pd

    freq = pd.Timedelta(minutes=spec.snapshot_minutes)
    if not len(event_timestamps):
        return pd.DatetimeIndex([], tz="UTC").astype(TS)
    first, last = event_timestamps.min().floor(freq), event_timestamps.max().floor(freq)
    return pd.date_range(first, last, freq=freq).astype(TS)


def history_features(
    past: pd.DataFrame, grid: pd.DatetimeIndex, keys: list[str], entity: HistoryEntity, spec: FeatureSpec
) -> pd.DataFrame:
    """Trailing late rates and volumes per key at each grid time ``H``, from outcomes known in ``[H - w, H)``.

    One row per key and grid time (the view's join key ``"<key>@<H>"``: a lookup reads its own slot);
    ``max_source_ts`` is the latest ``known_at`` counted (lineage for the leakage checks, not a feature).
    Missing history: rate NaN, count 0.
    """
    import numpy as np
    import pandas as pd

    grid_ns = grid.as_unit("us").asi8
    slots = list(pd.DatetimeIndex(grid).strftime(SLOT_FORMAT))
    windows = [int(pd.Timedelta(days=w).value // 1000) for w in entity.windows_days]
    longest = windows[int(np.argmax(windows))]
    by_key = {k: g for k, g in past.groupby(entity.key, sort=False)} if len(past) else {}
    parts = []
    for key in sorted(set(keys)):
        group = by_key.get(key)
        if group is not None:
            known = _us(group["known_at"]).view("int64")
            order = np.argsort(known, kind="stable")
            times = known[order]
            late_cum = np.concatenate([[0], np.cumsum(group["late"].to_numpy()[order])])
        else:
            times, late_cum = np.array([], dtype="int64"), np.array([0])
        upto = np.searchsorted(times, grid_ns, side="left")  # outcomes known strictly before H
        columns = {}
        for days, width in zip(entity.windows_days, windows, strict=True):
            since = np.searchsorted(times, grid_ns - width, side="left")
            flights = upto - since
            lates = late_cum[upto] - late_cum[since]
            with np.errstate(invalid="ignore", divide="ignore"):
                columns[f"{entity.name}_late_rate_{days}d"] = np.where(
                    flights > 0, lates / np.maximum(flights, 1), np.nan
                )
            columns[f"{entity.name}_flights_{days}d"] = flights.astype("int64")
        since_longest = np.searchsorted(times, grid_ns - longest, side="left")
        last = np.where(
            upto > since_longest, times[np.maximum(upto - 1, 0)] if len(times) else 0, np.iinfo("int64").min
        )
        frame = pd.DataFrame(
            {entity.slot_key: [f"{key}@{slot}" for slot in slots], entity.key: key, "snapshot_at": grid_ns, **columns}
        )
        frame["max_source_ts"] = last
        parts.append(frame)
    names = entity.features()
    if not parts:
        return pd.DataFrame(
            {
                entity.slot_key: pd.Series(dtype=object),
                entity.key: pd.Series(dtype=object),
                "snapshot_at": pd.Series(dtype=TS),
                **{n: pd.Series(dtype="float64") for n in names},
                "max_source_ts": pd.Series(dtype=TS),
            }
        )
    out = pd.concat(parts, ignore_index=True)
    out["snapshot_at"] = pd.to_datetime(out["snapshot_at"], unit="us", utc=True).astype(TS)
    missing = out["max_source_ts"] == np.iinfo("int64").min
    out["max_source_ts"] = pd.to_datetime(out["max_source_ts"].where(~missing), unit="us", utc=True).astype(TS)
    for name in names:
        out[name] = out[name].astype("int64" if "_flights_" in name else "float64")
    out[entity.key] = out[entity.key].astype(object)
    out[entity.slot_key] = out[entity.slot_key].astype(object)
    return out.loc[:, [entity.slot_key, entity.key, "snapshot_at", *names, "max_source_ts"]]


# -- one month ----------------------------------------------------------------------------------------------
def build_month(month: str, months: dict[str, dict[str, pd.DataFrame]], spec: FeatureSpec) -> dict[str, pd.DataFrame]:
    """All feature frames of ``month`` (plus its ``labels``) from validated frames of it and earlier months.

    ``months`` maps ``YYYY-MM`` → ``{"flights", "weather", "planes"}`` and must contain ``month``; earlier months
    (up to ``history.lookback_months``) feed the history windows. Frames are sorted, so equal inputs give equal
    Parquet bytes.
    """
    import pandas as pd

    month = parse_month(month)
    if month not in months:
        raise ValueError(f"no validated frames for {month}")
    current = months[month]
    flights = prepare_flights(current["flights"], spec)
    frames: dict[str, pd.DataFrame] = {
        FLIGHT_VIEW: flight_features(flights, current.get("planes"), spec),
        WEATHER_VIEW: weather_features(current["weather"], spec),
        LABELS: labels(flights, month, spec),
    }
    history_sources = [prepare_flights(months[m]["flights"], spec) for m in sorted(months) if m < month]
    past = outcomes(pd.concat([*history_sources, flights], ignore_index=True), spec)
    grid = snapshot_grid(flights["event_timestamp"], spec)
    for entity in spec.history:
        keys = sorted(set(flights[entity.key]) | set(past[entity.key]))
        frames[entity.view] = history_features(past, grid, keys, entity, spec)
    return frames


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Deterministic Parquet bytes (no index, fixed row order from the caller)."""
    return frame.to_parquet(index=False, engine="pyarrow", compression="zstd")


# -- training sets and online reads -------------------------------------------------------------------------
def finish_training_set(joined: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """From a point-in-time join (labels ⋈ feature views) to the training-set contract.

    Explicit defaults: no weather observation within the TTL → values NaN, ``weather_known`` 0; no history →
    rate NaN, count 0. A label row without its flight features fails (they come from the same partition).
    """
    import pandas as pd

    missing_flight = joined["sched_hour"].isna()
    if missing_flight.any():
        raise ValueError(
            f"{int(missing_flight.sum())} label rows found no flight features, e.g. {joined.loc[missing_flight, 'flight_id'].iloc[0]}"
        )
    history = set(spec.history_features())
    floats = {*history, *spec.weather_columns, "distance", "plane_age", "plane_seats"}
    ints = {"sched_hour", "weekday", "plane_known", "is_late"}
    # Column by column into a new frame, one block per column: converting inside a copy of the join, or
    # building the frame from a dict (which consolidates blocks), held several copies at once (0.3 GiB of
    # transient memory for a year's training set).
    out = pd.DataFrame(index=pd.RangeIndex(len(joined)))
    for name in spec.training_columns:
        if name == "weather_known":
            values = joined[WEATHER_PRESENT].notna().astype("int64")
        elif name in history and "_flights_" in name:
            values = pd.to_numeric(joined[name]).fillna(0).astype("int64")
        elif name in floats:
            values = pd.to_numeric(joined[name]).astype("float64")
        elif name in ints:
            values = pd.to_numeric(joined[name]).astype("int64")
        elif name in spec.categorical:
            values = joined[name].astype(object).where(joined[name].notna(), spec.unknown_category)
        elif name == "event_timestamp":
            values = pd.to_datetime(joined[name], utc=True).astype(TS)
        elif name in ("flight_id", "month"):
            values = joined[name].astype(object)
        else:
            values = joined[name]
        out[name] = values.array
    if not out["flight_id"].is_monotonic_increasing:
        out = out.sort_values("flight_id", kind="stable").reset_index(drop=True)
    if out["flight_id"].duplicated().any():
        raise ValueError("the training set has duplicate flight_id rows: the entity rows were not unique")
    return out


def finish_online(values: dict[str, list], spec: FeatureSpec) -> list[dict[str, Any]]:
    """Feast online values (``to_dict()``, None for unknown keys) → one row per entity with the defaults filled."""
    defaults = spec.online_defaults()
    count = len(next(iter(values.values()))) if values else 0
    rows = []
    for i in range(count):
        row = {name: column[i] for name, column in values.items()}
        row["weather_known"] = int(row.pop(WEATHER_PRESENT, None) is not None)
        for name, value in list(row.items()):
            if value is None and name in defaults:
                row[name] = defaults[name]
        rows.append(row)
    return rows


def month_interval(months: list[str]) -> tuple[Any, Any]:
    """The data interval ``[start, end)`` spanning ``months``."""
    ordered = sorted(parse_month(m) for m in months)
    return month_bounds(ordered[0])[0], month_bounds(ordered[-1])[1]
