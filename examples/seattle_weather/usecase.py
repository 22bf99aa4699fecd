"""Seattle weather: at the end of a day, predict the next day's maximum temperature (a regression use case).

Data: ``seattle-weather.csv`` of the PyPI package ``vega_datasets`` (0.9.0 ships it in ``vega_datasets/_data/``,
read offline): one row per day from 2012-01-01 to 2015-12-31 at one station (Seattle, here ``SEA``), with
``date``, ``precipitation`` (mm), ``temp_max`` and ``temp_min`` (°C), ``wind`` (m/s) and ``weather`` (drizzle,
fog, rain, snow or sun). One daily batch is ``observations.csv`` holding that day's row.

Time (UTC throughout; a day is the date the data names, taken as a UTC day):

* The observations of day ``d`` are complete at the end of ``d``: they are usable from ``d+1 00:00 UTC``.
* The prediction for day ``D`` is made at ``D 00:00 UTC`` (its ``event_timestamp``), from what is usable then:
  the observations of ``D-1`` and earlier. Its target ``temp_max_next`` is the ``temp_max`` of ``D`` (the day
  after the last observed one).

Features (view ``daily_weather``) are keyed by slot, like the flights' history snapshots: the row keyed
``"SEA@20120305"`` (key ``station_day``) holds what is usable at 2012-03-05 00:00 UTC, i.e. the observations
of 2012-03-04 and rolling windows ending with that day, and its ``available_at`` is 2012-03-05 00:00 UTC. The
batch of day ``d`` therefore builds the row of slot ``d+1``; the rolling windows read the earlier daily batches
in ``ctx.frames`` (a 30-day window ending on ``d`` reaches 29 days back; a missing day is left out of a window).

Labels: the label of day ``d`` is only known once the batch of ``d`` arrives. The label rows of period ``d`` are
the predictions whose outcome became known in batch ``d``: ``day_id`` ``"SEA@<d>"``, ``event_timestamp`` =
``d 00:00 UTC``, ``temp_max_next`` = ``temp_max`` of ``d``, ``station_day`` ``"SEA@<d>"`` (the slot whose row
batch ``d-1`` built), the calendar of ``d`` (``month``, ``day_of_year``: known in advance, so they come with the
row) and the period column ``day`` (``"YYYY-MM-DD"``). A serving request for the date ``D`` gets the same id,
key and calendar from :func:`entity_keys`, so training and serving read the same feature row.

No leakage: the feature row a label row of ``d`` reads was built from batches before ``d`` only (its
``available_at`` is ``d 00:00 UTC``, equal to the label row's ``event_timestamp``, never later); the observations
of ``d`` itself, the label's source, are in no row usable before ``d+1 00:00 UTC``; ``temp_max_next`` is no
view field (``label.forbidden``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.usecase import FeatureContext

#: The batch file (its stem is the frame's key in ``ctx.frames``).
FILE = "observations.csv"
FRAME = "observations"
#: The columns of a batch file, in order.
COLUMNS = ("date", "precipitation", "temp_max", "temp_min", "wind", "weather")
OBSERVED = ("temp_max", "temp_min", "precipitation", "wind")
WEATHER = ("drizzle", "fog", "rain", "snow", "sun")

VIEW = "daily_weather"
KEY = "station_day"
AVAILABLE_AT = "available_at"
#: A lineage column of the view's frame (not a field): the observed day the row holds, midnight UTC.
OBSERVED_ON = "observed_on"
ID = "day_id"
LABEL = "temp_max_next"
PERIOD_COLUMN = "day"
#: Model features that come with a label row (and a request) itself, not from the view.
ROW_FEATURES = ("month", "day_of_year")
#: The view's fields, in order, with their Feast types (as declared in mlops.yaml).
VIEW_FIELDS = {
    "temp_max": "float64",
    "temp_min": "float64",
    "precipitation": "float64",
    "wind": "float64",
    "weather": "string",
    "temp_max_change_1d": "float64",
    "temp_max_mean_7d": "float64",
    "temp_max_mean_30d": "float64",
    "temp_min_mean_7d": "float64",
    "precipitation_sum_7d": "float64",
}
DEFAULT_STATION = "SEA"
#: The days the packaged data holds: what ``make demo`` replays by default (the source has no schedule: batches
#: arrive when they land). A daily replay lands the first days at once (enough for the first model), then goes on
#: a week at a time (``airflow_mlops_dev.replay_source``).
DEMO_PERIODS = ("2012-01-01", "2015-12-31")
#: The ways :func:`corrupt` can break a day's batch (the demo's and the tests' broken batches), each with what
#: happened upstream.
CORRUPTION_KINDS = {
    "out_of_range": "the station reported a 60 °C maximum",
    "unknown_weather": "a new weather code (hail) the suite does not know",
    "negative_precipitation": "the rain gauge reported -1 mm",
    "null_date": "the export lost the date",
    "duplicate_day": "a retry upstream sent the day's row twice",
    "missing_column": "the export forgot the wind column",
}


# -- helpers -------------------------------------------------------------------------------------------------
def _station(ctx: FeatureContext) -> str:
    """The station code keys are made of (``features.params.station``, default ``SEA``).

    :param ctx: the feature context.
    """
    return str((ctx.params or {}).get("station") or DEFAULT_STATION).upper()


def _days(values: pd.Series) -> pd.Series:
    """Dates as read (``"2012-03-05"``, ``"2012/03/05"`` or timestamps) → tz-naive midnights; unparseable → NaT.

    :param values: the ``date`` column of a batch frame.
    """
    import pandas as pd

    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    return parsed.dt.tz_localize(None).dt.normalize()


def _slot_keys(station: str | pd.Series, days: pd.Series) -> pd.Series:
    """``"SEA@20120305"``: the slot key of each day.

    :param station: one station code, or one per day.
    :param days: tz-naive or UTC midnights.
    """
    return station + "@" + days.dt.strftime("%Y%m%d")


def _utc(days: pd.Series) -> pd.Series:
    """Tz-naive midnights as ``datetime64[us, UTC]``.

    :param days: tz-naive midnights.
    """
    return days.dt.tz_localize("UTC").astype("datetime64[us, UTC]")


def _observations(frames: dict[str, dict[str, pd.DataFrame]], upto: str | None = None) -> pd.DataFrame:
    """Every observation of ``frames`` (periods up to ``upto``), one row per day (the newest batch wins),
    indexed by the day (tz-naive midnight), sorted; rows without a parseable date are dropped.

    :param frames: ``{period: {file stem: DataFrame}}`` as in a :class:`FeatureContext`.
    :param upto: the last period to read (None: all).
    """
    import pandas as pd

    parts = [
        files[FRAME]
        for period, files in sorted(frames.items())
        if (upto is None or period <= upto) and files.get(FRAME) is not None and len(files[FRAME])
    ]
    if not parts:
        return pd.DataFrame(columns=list(COLUMNS[1:]), index=pd.DatetimeIndex([], name=PERIOD_COLUMN))
    obs = pd.concat(parts, ignore_index=True)
    obs[PERIOD_COLUMN] = _days(obs["date"])
    obs = obs.dropna(subset=[PERIOD_COLUMN]).drop_duplicates(PERIOD_COLUMN, keep="last")
    for column in OBSERVED:
        obs[column] = pd.to_numeric(obs[column], errors="coerce").astype("float64")
    return obs.set_index(PERIOD_COLUMN).sort_index()


def _current_days(ctx: FeatureContext) -> pd.Series:
    """The distinct days of this period's batch (normally one), sorted.

    :param ctx: the feature context.
    """
    import pandas as pd

    frame = ctx.current.get(FRAME)
    if frame is None:
        raise ValueError(f"{ctx.period}: the batch has no {FILE} (frames: {sorted(ctx.current)})")
    days = _days(frame["date"]).dropna().drop_duplicates().sort_values()
    return pd.Series(days.to_numpy(), name=PERIOD_COLUMN)


# -- the use case's functions --------------------------------------------------------------------------------
def build_features(ctx: FeatureContext) -> dict[str, pd.DataFrame]:
    """The ``daily_weather`` rows this batch makes usable: for each observed day ``d`` of the batch, the row of
    slot ``d+1`` (``available_at`` = ``d+1 00:00 UTC``) with ``d``'s observations and windows ending on ``d``.

    :param ctx: ``ctx.frames`` holds this day's ``observations`` frame and the earlier days' (lookback).
    :returns: ``{"daily_weather": DataFrame}`` with ``station_day``, ``available_at``, the view's fields and the
        lineage column ``observed_on`` (the day observed, midnight UTC), sorted by key.
    """
    import pandas as pd

    station = _station(ctx)
    history = _observations(ctx.frames, upto=ctx.period)
    # Windows by calendar days ending on (and including) each day: "7D" is d-6 .. d; a missing day is left out.
    week = history[["temp_max", "temp_min", "precipitation"]].rolling("7D", min_periods=1)
    means = week.mean()
    derived = pd.DataFrame(
        {
            "temp_max_change_1d": history["temp_max"]
            - history["temp_max"].reindex(history.index - pd.Timedelta(days=1)).to_numpy(),
            "temp_max_mean_7d": means["temp_max"],
            "temp_max_mean_30d": history["temp_max"].rolling("30D", min_periods=1).mean(),
            "temp_min_mean_7d": means["temp_min"],
            "precipitation_sum_7d": week.sum()["precipitation"],
        },
        index=history.index,
    )
    days = _current_days(ctx)
    days = days[days.isin(history.index)]
    today = history.reindex(days).join(derived)
    observed = days.reset_index(drop=True)
    slots = observed + pd.Timedelta(days=1)
    out = pd.DataFrame({KEY: _slot_keys(station, slots).astype(object), AVAILABLE_AT: _utc(slots)})
    for name, dtype in VIEW_FIELDS.items():
        values = today[name].reset_index(drop=True)
        if dtype == "float64":
            out[name] = values.astype("float64")
        else:
            out[name] = values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))
    out[OBSERVED_ON] = _utc(observed)  # lineage (not a field): the day observed, for leakage checks
    return {VIEW: out.sort_values(KEY, kind="stable").reset_index(drop=True)}


def label_rows(ctx: FeatureContext) -> pd.DataFrame:
    """The training rows whose label became known in this batch: one per observed day ``d`` (the prediction made
    at ``d 00:00 UTC`` of ``d``'s maximum temperature).

    :param ctx: the feature context (only this period's frame is read).
    :returns: ``day_id``, ``event_timestamp``, ``temp_max_next``, ``station_day``, ``month``, ``day_of_year``
        and ``day``, sorted by ``day_id``; days without a ``temp_max`` have no label and no row.
    """
    import pandas as pd

    station = _station(ctx)
    frame = ctx.current.get(FRAME)
    if frame is None:
        raise ValueError(f"{ctx.period}: the batch has no {FILE} (frames: {sorted(ctx.current)})")
    current = _observations({ctx.period: {FRAME: frame}})
    current = current[current["temp_max"].notna()]
    days = pd.Series(current.index, name=PERIOD_COLUMN)
    keys = _slot_keys(station, days).astype(object)
    out = pd.DataFrame(
        {
            ID: keys,
            "event_timestamp": _utc(days),
            LABEL: current["temp_max"].to_numpy(dtype="float64"),
            KEY: keys.copy(),
            **_calendar(days),
            PERIOD_COLUMN: days.dt.strftime("%Y-%m-%d").astype(object),
        }
    )
    return out.sort_values(ID, kind="stable").reset_index(drop=True)


def _calendar(days: pd.Series) -> dict[str, pd.Series]:
    """The row features of the days predicted: ``month`` and ``day_of_year`` (int64).

    :param days: the predicted days (midnights).
    """
    return {
        "month": days.dt.month.astype("int64").reset_index(drop=True),
        "day_of_year": days.dt.dayofyear.astype("int64").reset_index(drop=True),
    }


def entity_keys(rows: pd.DataFrame, ctx: FeatureContext) -> pd.DataFrame:
    """The id, the view's key and the calendar row features of request rows (one row each, in their order).

    A request for the date ``D`` (``event_timestamp`` ``D 00:00 UTC``, or any moment of ``D``) is the prediction of
    ``D``'s maximum temperature: it reads the slot of ``D`` (the observations of ``D-1`` and before), exactly as
    the label row of ``D`` does in training.

    :param rows: the request fields (``date``, optional ``station``) plus ``event_timestamp``.
    :param ctx: the feature context (``ctx.params.station``: the station of rows that name none).
    :returns: ``day_id``, ``station_day``, ``month``, ``day_of_year``, indexed like ``rows``.
    """
    import pandas as pd

    moments = pd.to_datetime(rows["event_timestamp"], utc=True)
    days = moments.dt.floor("D").dt.tz_localize(None).reset_index(drop=True)
    default = _station(ctx)
    if "station" in rows.columns:
        station = rows["station"].fillna(default).astype(str).str.strip().str.upper()
        station = station.where(station != "", default).reset_index(drop=True)
    else:
        station = pd.Series([default] * len(rows), dtype=object)
    keys = _slot_keys(station, days).astype(object)
    out = pd.DataFrame({ID: keys, KEY: keys.copy(), **_calendar(days)})
    out.index = rows.index
    return out


def prepare_validation(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Add ``_year``, ``_month`` and ``_day`` (of ``date``) to the batch's ``observations`` frame: the suite pins
    the batch to its day with them (suite parameters ``year``, ``month``, ``day``). Derived columns start with
    ``_`` and are never published.

    :param frames: the batch's frames by file stem, ``date`` already parsed as UTC timestamps by the validator.
    :returns: every frame, ``observations`` with the derived columns (nullable ints: an unparseable date gives
        nulls, which the suite's not-null check on ``date`` reports).
    """
    import pandas as pd

    out = dict(frames)
    frame = out.get(FRAME)
    if frame is not None and "date" in frame.columns:
        moments = pd.to_datetime(frame["date"], utc=True, errors="coerce", format="mixed")
        frame = frame.copy()
        for name, values in (("_year", moments.dt.year), ("_month", moments.dt.month), ("_day", moments.dt.day)):
            frame[name] = values.astype("Int64")
        out[FRAME] = frame
    return out


def outcomes(ctx: FeatureContext) -> pd.DataFrame:
    """The outcomes this batch makes known: ``day_id``, ``event_timestamp`` and ``temp_max_next`` of its days
    (what the logged predictions for those days are joined with).

    :param ctx: the feature context.
    """
    return label_rows(ctx)[[ID, "event_timestamp", LABEL]]


# -- the packaged data, for the demo and the tests ------------------------------------------------------------
@functools.cache
def _packaged() -> pd.DataFrame:
    """``seattle-weather.csv`` from the installed ``vega_datasets`` (no network), dates as ``YYYY-MM-DD``."""
    from importlib import resources

    import pandas as pd

    try:
        source = resources.files("vega_datasets") / "_data" / "seattle-weather.csv"
    except ModuleNotFoundError as err:
        raise RuntimeError("the seattle_weather example needs vega_datasets==0.9.0 (see requirements.txt)") from err
    with resources.as_file(source) as path:
        frame = pd.read_csv(path, dtype={"date": str})
    frame["date"] = pd.to_datetime(frame["date"], format="%Y/%m/%d").dt.strftime("%Y-%m-%d")
    return frame.loc[:, list(COLUMNS)].sort_values("date", kind="stable").reset_index(drop=True)


def packaged_observations() -> pd.DataFrame:
    """Every day of the packaged data (a copy): the columns of a batch file, ``date`` as ``YYYY-MM-DD``."""
    return _packaged().copy()


def demo_batches(period: str) -> dict[str, pd.DataFrame]:
    """The batch of one day, from the packaged data: ``{"observations.csv": <that day's row>}``.

    :param period: the day, ``YYYY-MM-DD``.
    :raises ValueError: not a day, or a day the packaged data does not hold (2012-01-01 .. 2015-12-31).
    """
    from datetime import date

    try:
        day = date.fromisoformat(str(period).strip()).isoformat()
    except ValueError as err:
        raise ValueError(f"seattle_weather batches are days (YYYY-MM-DD), not {period!r}") from err
    data = _packaged()
    rows = data[data["date"] == day]
    if rows.empty:
        raise ValueError(
            f"no Seattle weather for {day}: the packaged data covers {data['date'].iloc[0]} .. {data['date'].iloc[-1]}"
        )
    return {FILE: rows.reset_index(drop=True).copy()}


def demo_requests(ctx: FeatureContext) -> pd.DataFrame:
    """The day's live traffic: the prediction of the day's maximum temperature, asked for at the start of the day
    (one request per day of the batch; the request schema has no other dimension: one station).

    :param ctx: ``ctx.current["observations"]`` is the day's validated batch (``date`` as UTC midnights).
    :returns: the request fields ``date`` (``YYYY-MM-DD``) and ``station``, one row per day, in order.
    """
    import pandas as pd

    days = _current_days(ctx)
    return pd.DataFrame(
        {
            "date": days.dt.strftime("%Y-%m-%d").astype(object),
            "station": pd.Series([_station(ctx)] * len(days), dtype=object),
        }
    )


def corrupt(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """A broken copy of a day's batch, for the demo's and the tests' quarantine paths.

    :param frame: a batch frame (the columns of ``observations.csv``).
    :param kind: one of :data:`CORRUPTION_KINDS`: ``out_of_range`` (a 60 °C maximum), ``unknown_weather``
        (``hail``), ``negative_precipitation``, ``null_date``, ``duplicate_day`` (the row sent twice),
        ``missing_column`` (no ``wind``).
    """
    import pandas as pd

    out = frame.copy()
    if kind == "out_of_range":
        out["temp_max"] = 60.0
    elif kind == "unknown_weather":
        out["weather"] = "hail"
    elif kind == "negative_precipitation":
        out["precipitation"] = -1.0
    elif kind == "null_date":
        out["date"] = None
    elif kind == "duplicate_day":
        out = pd.concat([out, out], ignore_index=True)
    elif kind == "missing_column":
        out = out.drop(columns=["wind"])
    else:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(CORRUPTION_KINDS)}")
    return out


def _corruption(kind: str) -> Callable[[dict[str, bytes], dict[str, pd.DataFrame]], None]:
    """The demo contract's ``fn(files, frames)`` for ``kind``: rewrite the batch file from the good frame.

    :param kind: a key of :data:`CORRUPTION_KINDS`.
    """

    def rewrite(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
        files[FILE] = corrupt(frames[FILE], kind).to_csv(index=False).encode()

    rewrite.__name__ = f"corrupt_{kind}"
    rewrite.__doc__ = f"{CORRUPTION_KINDS[kind][:1].upper()}{CORRUPTION_KINDS[kind][1:]} ({kind})."
    return rewrite


#: Broken deliveries for the demo (``airflow_mlops_dev.replay_source``): kind → ``fn(files, frames)`` that rewrites
#: ``files`` (file name → bytes) from the good batch's ``frames`` (file name → DataFrame). The first is the demo's
#: default: a day the suite quarantines, then re-sent corrected.
CORRUPTIONS: dict[str, Callable[[dict[str, bytes], dict[str, pd.DataFrame]], None]] = {
    kind: _corruption(kind) for kind in CORRUPTION_KINDS
}
