"""Feature engineering for the late-arrival task: plain functions on validated frames (no Airflow, no Feast).

The task (``include/config/features.yaml``): at a flight's scheduled departure, predict whether it arrives more
than 15 minutes late. Every feature row carries the timestamp from which it may be used, and uses only data
known strictly before it:

* **flight features** (``flight_features``, entity ``flight_id``): schedule and fleet data — scheduled local
  hour and weekday, destination, distance, plane age and seats. Stamped at the scheduled departure
  ``event_timestamp = time_hour + minute``. Never the flight's own departure, arrival, delays or air time.
* **weather** (``origin_weather``, entity ``origin``): the hourly observation stamped ``time_hour`` is usable
  from ``time_hour + publication_lag`` (``available_at``); a departure at ``t`` gets the latest observation
  with ``available_at <= t`` no older than the view's TTL, so its ``time_hour`` is strictly before ``t``.
* **history** (``carrier_history``, ``route_history``, ``origin_history``): hourly snapshots. The snapshot
  stamped ``H`` counts the labelled flights whose outcome was *known* in ``[H - window, H)``. An outcome is
  known at ``known_at = scheduled departure + dep_delay + air_time + buffer`` (a conservative arrival time;
  ``scheduled departure + fallback`` when either is missing). A departure at ``t`` uses the snapshot at
  ``floor(t, 1 h) <= t``: every outcome it counts was known strictly before ``t``.

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
    heartbeat_hours: int
    history_ttl_hours: float
    lookback_months: int
    history: tuple[HistoryEntity, ...]
    flight_ttl_hours: float
    feature_version: int
    window_months: int
    min_months: int
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
            heartbeat_hours=int(history["heartbeat_hours"]),
            history_ttl_hours=float(history["ttl_hours"]),
            lookback_months=int(history["lookback_months"]),
            history=entities,
            flight_ttl_hours=float(raw["flight"]["ttl_hours"]),
            feature_version=int(raw["store"]["feature_version"]),
            window_months=int(training["window_months"]),
            min_months=int(training.get("min_months", 1)),
            forbidden_columns=tuple(task.get("forbidden_columns", ())),
            raw=raw,
        )
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"invalid feature config {target}: {err!r}") from err
    unknown = set(HISTORY_VIEWS) ^ {e.name for e in spec.history}
    if unknown:
        raise ValueError(f"{target}: history.entities must be exactly {sorted(HISTORY_VIEWS)}")
    if spec.weather_lag_minutes <= 0:
        raise ValueError(f"{target}: weather.publication_lag_minutes must be > 0, or the weather join is not strict")
    if spec.history_ttl_hours * 60 < spec.heartbeat_hours * 60 + spec.snapshot_minutes:
        raise ValueError(f"{target}: history.ttl_hours must cover heartbeat_hours + one snapshot period")
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


def weather_features(weather: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Hourly observations per origin, stamped with when they become usable (``available_at``)."""
    import pandas as pd

    frame = weather.copy()
    frame["origin"] = _categorical(frame["origin"], spec.unknown_category)
    frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True).astype(TS)
    frame = frame.dropna(subset=["time_hour"]).drop_duplicates(["origin", "time_hour"], keep="last")
    out = frame.loc[:, ["origin", "time_hour", *spec.weather_columns]].copy()
    for column in spec.weather_columns:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    out["available_at"] = (out["time_hour"] + pd.Timedelta(minutes=spec.weather_lag_minutes)).astype(TS)
    out[WEATHER_PRESENT] = 1
    return out.sort_values(["origin", "time_hour"], kind="stable").reset_index(drop=True)


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

    A row is written when a value changes and on every heartbeat; ``max_source_ts`` is the latest ``known_at``
    counted (lineage for the leakage checks, not a feature). Missing history: rate NaN, count 0.
    """
    import numpy as np
    import pandas as pd

    grid_ns = grid.as_unit("us").asi8
    beat = pd.Timedelta(hours=spec.heartbeat_hours).value // 1000
    heartbeat = grid_ns % beat == 0
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
        columns, state = {}, [upto]
        for days, width in zip(entity.windows_days, windows, strict=True):
            since = np.searchsorted(times, grid_ns - width, side="left")
            flights = upto - since
            lates = late_cum[upto] - late_cum[since]
            with np.errstate(invalid="ignore", divide="ignore"):
                columns[f"{entity.name}_late_rate_{days}d"] = np.where(
                    flights > 0, lates / np.maximum(flights, 1), np.nan
                )
            columns[f"{entity.name}_flights_{days}d"] = flights.astype("int64")
            state += [flights, lates]
        since_longest = np.searchsorted(times, grid_ns - longest, side="left")
        last = np.where(
            upto > since_longest, times[np.maximum(upto - 1, 0)] if len(times) else 0, np.iinfo("int64").min
        )
        stacked = np.vstack(state[1:])
        changed = np.ones(len(grid_ns), dtype=bool)
        changed[1:] = (stacked[:, 1:] != stacked[:, :-1]).any(axis=0)
        keep = changed | heartbeat
        frame = pd.DataFrame(
            {entity.key: key, "snapshot_at": grid_ns[keep], **{k: v[keep] for k, v in columns.items()}}
        )
        frame["max_source_ts"] = last[keep]
        parts.append(frame)
    names = entity.features()
    if not parts:
        return pd.DataFrame(
            {
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
    return out.loc[:, [entity.key, "snapshot_at", *names, "max_source_ts"]]


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

    frame = joined.copy()
    missing_flight = frame["sched_hour"].isna()
    if missing_flight.any():
        raise ValueError(
            f"{int(missing_flight.sum())} label rows found no flight features, e.g. {frame.loc[missing_flight, 'flight_id'].iloc[0]}"
        )
    frame["weather_known"] = frame[WEATHER_PRESENT].notna().astype("int64")
    for name in spec.history_features():
        if "_flights_" in name:
            frame[name] = pd.to_numeric(frame[name]).fillna(0).astype("int64")
        else:
            frame[name] = pd.to_numeric(frame[name]).astype("float64")
    for name in spec.weather_columns:
        frame[name] = pd.to_numeric(frame[name]).astype("float64")
    for name in ("sched_hour", "weekday", "plane_known", "is_late"):
        frame[name] = pd.to_numeric(frame[name]).astype("int64")
    for name in ("distance", "plane_age", "plane_seats"):
        frame[name] = pd.to_numeric(frame[name]).astype("float64")
    for name in spec.categorical:
        frame[name] = frame[name].astype(object).where(frame[name].notna(), spec.unknown_category)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype(TS)
    frame["flight_id"] = frame["flight_id"].astype(object)
    frame["month"] = frame["month"].astype(object)
    out = frame.loc[:, spec.training_columns].sort_values("flight_id", kind="stable").reset_index(drop=True)
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
