"""The template use case's own functions: predict each store's sales of the next day (a regression).

Copy this folder with ``python -m airflow_mlops new <name>``, then make it yours: this module is the only Python
you write. The pipeline calls the functions below at run time (never while Airflow parses DAGs), each with one
typed argument, ``ctx`` (:class:`airflow_mlops.usecase.FeatureContext`): ``ctx.period`` (the day being built,
``"2024-03-05"``), ``ctx.frames`` (``{period: {file stem: DataFrame}}``: that day's validated batch and up to
``features.lookback_periods`` earlier days), ``ctx.params`` (``features.params``) and ``ctx.config`` (the whole
``mlops.yaml``, typed). Import pandas / numpy *inside* the functions: DAG files import this package while Airflow
parses them, and heavy imports there slow every parse.

The data. One daily batch is one file, ``sales.csv``: one row per store and day::

    store,date,sales,promo,customers
    S01,2024-03-05,1012.5,0,131

Time (UTC throughout; a day is the date the data names):

* The rows of day ``d`` are complete at the end of ``d``: they may be used from ``d+1 00:00 UTC``.
* The forecast of store ``s`` for day ``D`` is made at ``D 00:00 UTC`` (its ``event_timestamp``) from what is
  usable then, i.e. the days before ``D``. Its target, ``next_day_sales``, is the ``sales`` of ``s`` on ``D``.

Features (the view ``store_history`` of mlops.yaml) are keyed by store and day: the row keyed ``"S01@20240305"``
(key ``store_day``) holds what is known about store ``S01`` at 2024-03-05 00:00 UTC (the sales of 03-04 and
windows ending on 03-04) and is stamped ``available_at`` = 2024-03-05 00:00 UTC. The batch of day ``d`` therefore
builds the rows of slot ``d+1``; the windows read the earlier batches in ``ctx.frames``.

Labels. The label of ``d`` is known once the batch of ``d`` arrives, so the label rows of period ``d`` are the
forecasts *for* ``d``: ``forecast_id`` ``"S01@20240305"``, ``event_timestamp`` ``d 00:00 UTC``, the label, the
view's key (the same ``"S01@20240305"``: the row the batch of ``d-1`` built) and the features that come with the
row itself (``store``, ``day_of_week``: known in advance, not read from the view). A serving request for
``{"store": "S01", "date": "2024-03-05"}`` gets the same id, key and row features from :func:`entity_keys`, so
training and serving read the same feature row.

No leakage: the view row a label row of ``d`` reads was built from batches before ``d`` only (its
``available_at`` equals the label row's ``event_timestamp``, never later); ``sales`` and ``customers`` of ``d``
itself are in no row usable before ``d+1`` and are listed in ``label.forbidden``.

To adapt it: change the constants below to your file and columns, rewrite the feature computation in
:func:`build_features` (keep "rows of day d are usable from d+1"), keep :func:`label_rows` and
:func:`entity_keys` agreeing on ids and keys, and replace :func:`demo_batches` with a reader of your own history
(or delete it: it only feeds ``make demo``). ``python -m airflow_mlops check <folder>`` checks the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.usecase import FeatureContext

# -- names shared with mlops.yaml: change them together -------------------------------------------------------
#: The batch file (``source.files``); its stem is the frame's key in ``ctx.frames``.
FILE = "sales.csv"
FRAME = "sales"
#: The columns of a batch file, in order (also checked by expectations/sales.json).
COLUMNS = ("store", "date", "sales", "promo", "customers")
#: The feature view (``features.views``), its key and its timestamp column.
VIEW = "store_history"
KEY = "store_day"
AVAILABLE_AT = "available_at"
#: ``features.id_column`` and ``label.column``.
ID = "forecast_id"
LABEL = "next_day_sales"
#: The view's fields and their types, as declared in ``features.views.store_history.fields``.
VIEW_FIELDS = {
    "sales_lag_1d": "float64",
    "sales_lag_7d": "float64",
    "sales_mean_7d": "float64",
    "sales_mean_long": "float64",
    "customers_lag_1d": "float64",
    "promo_share_7d": "float64",
    "history_days": "int64",
}
#: ``features.params.long_window_days`` when mlops.yaml does not set it.
DEFAULT_LONG_WINDOW_DAYS = 14
#: The demo's stores (:func:`demo_batches`).
STORES = tuple(f"S{i:02d}" for i in range(1, 11))


# -- helpers --------------------------------------------------------------------------------------------------
def _long_window(ctx: FeatureContext) -> int:
    """The long rolling window in days (``features.params.long_window_days``); the batches it reaches back to
    must be handed to :func:`build_features` (``features.lookback_periods`` >= window - 1).

    :param ctx: the feature context.
    :raises ValueError: the window is < 2 days or longer than the lookback allows.
    """
    days = int((ctx.params or {}).get("long_window_days", DEFAULT_LONG_WINDOW_DAYS))
    if days < 2:
        raise ValueError(f"features.params.long_window_days must be >= 2, got {days}")
    if ctx.config is not None:
        lookback = int(ctx.config.features.get("lookback_periods", 0))
        if lookback < days - 1:
            raise ValueError(
                f"features.lookback_periods is {lookback}: a {days}-day window needs at least {days - 1} earlier days"
            )
    return days


def _stores(values: pd.Series) -> pd.Series:
    """Store codes as the request normalizes them (stripped, upper case).

    :param values: a ``store`` column.
    """
    return values.astype("string").str.strip().str.upper().astype(object)


def _days(values: pd.Series) -> pd.Series:
    """Dates as read (``"2024-03-05"`` text, or timestamps once the validator parsed the event time) → tz-naive
    midnights; unparseable → NaT.

    :param values: a ``date`` column.
    """
    import pandas as pd

    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    return parsed.dt.tz_localize(None).dt.normalize()


def _slot_keys(stores: pd.Series, days: pd.Series) -> pd.Series:
    """``"S01@20240305"``: the key of a store on a day (the view's key and the label rows' id).

    :param stores: store codes.
    :param days: midnights, aligned with ``stores``.
    """
    return (stores.astype(str) + "@" + days.dt.strftime("%Y%m%d")).astype(object)


def _utc(days: pd.Series) -> pd.Series:
    """Tz-naive midnights as ``datetime64[us, UTC]`` (the type every timestamp of the pipeline has).

    :param days: tz-naive midnights.
    """
    return days.dt.tz_localize("UTC").astype("datetime64[us, UTC]")


def _batch(frames: dict[str, pd.DataFrame], period: str) -> pd.DataFrame:
    """One day's rows, typed: ``store``, ``day`` (midnight), ``sales``, ``promo``, ``customers``; rows without a
    store or a date dropped, one row per store and day (the last wins).

    :param frames: one period's ``{file stem: DataFrame}``.
    :param period: the period (for the error message).
    """
    import pandas as pd

    frame = frames.get(FRAME)
    if frame is None:
        raise ValueError(f"{period}: the batch has no {FILE} (frames: {sorted(frames)})")
    out = pd.DataFrame(
        {
            "store": _stores(frame["store"]),
            "day": _days(frame["date"]),
            **{c: pd.to_numeric(frame[c], errors="coerce").astype("float64") for c in ("sales", "promo", "customers")},
        }
    )
    out = out.dropna(subset=["store", "day"])
    return out.drop_duplicates(["store", "day"], keep="last").reset_index(drop=True)


def _history(ctx: FeatureContext) -> pd.DataFrame:
    """Every row of this period's batch and the earlier ones in ``ctx.frames`` (none later than ``ctx.period``).

    :param ctx: the feature context.
    """
    import pandas as pd

    parts = [_batch(files, period) for period, files in sorted(ctx.frames.items()) if period <= ctx.period]
    history = pd.concat(parts, ignore_index=True) if parts else _batch({FRAME: pd.DataFrame(columns=COLUMNS)}, "")
    return history.drop_duplicates(["store", "day"], keep="last").reset_index(drop=True)


def _row_features(stores: pd.Series, days: pd.Series) -> dict[str, pd.Series]:
    """The model features a label row and a request carry themselves (not read from the view).

    :param stores: the store of each row.
    :param days: the forecast day of each row (midnight).
    """
    return {
        "store": stores.reset_index(drop=True).astype(object),
        "day_of_week": days.dt.weekday.astype("int64").reset_index(drop=True),
    }


# -- the use case's functions (docs/usecase.md) ---------------------------------------------------------------
def build_features(ctx: FeatureContext) -> dict[str, pd.DataFrame]:
    """The view rows the batch of ``ctx.period`` (day ``d``) makes usable: for each store seen on ``d``, the row of
    slot ``d+1`` (``available_at`` = ``d+1 00:00 UTC``) with windows ending on ``d``.

    What to change: the columns and windows (keep every window ending on ``d`` or earlier). Each field you add
    here must be declared in ``features.views.store_history.fields`` (and listed in ``model.features`` to be
    used by the model).

    :param ctx: ``ctx.frames`` holds this day's ``sales`` frame and the earlier days' (lookback).
    :returns: ``{"store_history": DataFrame}`` with ``store_day``, ``available_at``, ``store`` (for reading; not a
        field) and the view's fields, sorted by key.
    """
    import pandas as pd

    long_days = _long_window(ctx)
    history = _history(ctx)
    today = _batch(ctx.current, ctx.period)
    if history.empty or today.empty:
        columns = {
            KEY: pd.Series(dtype=object),
            AVAILABLE_AT: pd.Series(dtype="datetime64[us, UTC]"),
            "store": pd.Series(dtype=object),
        }
        return {VIEW: pd.DataFrame({**columns, **{n: pd.Series(dtype=t) for n, t in VIEW_FIELDS.items()}})}
    # One column per store, one row per calendar day (a missing day is NaN and is left out of the windows).
    calendar = pd.date_range(history["day"].min(), history["day"].max(), freq="D")
    wide = {
        name: history.pivot(index="day", columns="store", values=name).reindex(calendar)
        for name in ("sales", "promo", "customers")
    }
    sales = wide["sales"]
    derived = {
        "sales_lag_1d": sales,
        "sales_lag_7d": sales.shift(6),  # day d-6: the same weekday as the forecast day d+1, a week earlier
        "sales_mean_7d": sales.rolling(7, min_periods=1).mean(),
        "sales_mean_long": sales.rolling(long_days, min_periods=1).mean(),
        "customers_lag_1d": wide["customers"],
        "promo_share_7d": wide["promo"].rolling(7, min_periods=1).mean(),
        "history_days": sales.notna().astype("float64").rolling(long_days, min_periods=1).sum(),
    }
    # The values of the stores seen on this batch's day, as of that day (one row per store).
    at_day, at_store = calendar.get_indexer(today["day"]), sales.columns.get_indexer(today["store"])
    rows = today[["store", "day"]].assign(
        **{name: frame.to_numpy()[at_day, at_store] for name, frame in derived.items()}
    )
    slot = rows["day"] + pd.Timedelta(days=1)
    out = pd.DataFrame({KEY: _slot_keys(rows["store"], slot), AVAILABLE_AT: _utc(slot), "store": rows["store"]})
    for name, dtype in VIEW_FIELDS.items():
        out[name] = rows[name].astype(dtype) if dtype != "int64" else rows[name].fillna(0).astype("int64")
    return {VIEW: out.sort_values(KEY, kind="stable").reset_index(drop=True)}


def label_rows(ctx: FeatureContext) -> pd.DataFrame:
    """The training rows whose label became known with this batch: one per store with sales on ``ctx.period``
    (the forecast made at ``d 00:00 UTC`` of that day's sales).

    What to change: the id and the label; keep the view's key and every model feature no view serves (here
    ``store`` and ``day_of_week``), computed exactly as :func:`entity_keys` computes them for a request.

    :param ctx: the feature context (only this period's frame is read).
    :returns: ``forecast_id``, ``event_timestamp``, ``next_day_sales``, ``store_day``, ``store``,
        ``day_of_week``, sorted by ``forecast_id`` (the period column ``day`` is added by the pipeline).
    """
    import pandas as pd

    today = _batch(ctx.current, ctx.period)
    today = today[today["sales"].notna()].reset_index(drop=True)
    keys = _slot_keys(today["store"], today["day"])
    out = pd.DataFrame(
        {
            ID: keys,
            "event_timestamp": _utc(today["day"]),
            LABEL: today["sales"].astype("float64"),
            KEY: keys.copy(),
            **_row_features(today["store"], today["day"]),
        }
    )
    return out.sort_values(ID, kind="stable").reset_index(drop=True)


def entity_keys(rows: pd.DataFrame, ctx: FeatureContext) -> pd.DataFrame:
    """Request rows → the id, the view's key and the row features, exactly as :func:`label_rows` has them.

    What to change: derive your own ids, keys and row features from your request fields (``serving.request``).

    :param rows: the request fields (``store``, ``date``) plus ``event_timestamp`` (the date's midnight, UTC).
    :param ctx: the feature context (``ctx.frames`` is empty at serving time).
    :returns: ``forecast_id``, ``store_day``, ``store``, ``day_of_week``, indexed like ``rows``.
    """
    import pandas as pd

    days = pd.to_datetime(rows["event_timestamp"], utc=True).dt.floor("D").dt.tz_localize(None)
    stores = _stores(rows["store"])
    keys = _slot_keys(stores, days)
    out = pd.DataFrame({ID: keys.to_numpy(), KEY: keys.to_numpy(), **_row_features(stores, days)})
    out.index = rows.index
    return out


def outcomes(ctx: FeatureContext) -> pd.DataFrame:
    """The outcomes this batch makes known (joined with the logged predictions by live monitoring).

    :param ctx: the feature context.
    :returns: ``forecast_id``, ``event_timestamp`` and ``next_day_sales`` of the day's forecasts.
    """
    return label_rows(ctx)[[ID, "event_timestamp", LABEL]]


# -- demo data: replace with a reader of your own history, or delete ---------------------------------------------
def demo_batches(period: str) -> dict[str, pd.DataFrame]:
    """A synthetic, deterministic batch of one day for ``make demo``: one row per store of :data:`STORES`.

    Each store has its own size and promotion habit; sales follow the weekday, the season and promotions, with
    noise drawn from a generator seeded by the date and the store (the same day always gives the same file).

    :param period: the day, ``YYYY-MM-DD``.
    :returns: ``{"sales.csv": DataFrame}`` with the columns of :data:`COLUMNS`.
    :raises ValueError: ``period`` is not a day.
    """
    import math
    from datetime import date

    import numpy as np
    import pandas as pd

    try:
        day = date.fromisoformat(str(period).strip())
    except ValueError as err:
        raise ValueError(f"the template's batches are days (YYYY-MM-DD), not {period!r}") from err
    weekday_factor = (0.9, 0.85, 0.9, 1.0, 1.15, 1.35, 0.7)[day.weekday()]
    season = 1.0 + 0.15 * math.sin(2 * math.pi * (day.timetuple().tm_yday - 80) / 365.25)
    rows = []
    for index, store in enumerate(STORES, start=1):
        rng = np.random.default_rng([day.year * 10_000 + day.month * 100 + day.day, index])
        promo = int(rng.random() < 0.15 + 0.03 * (index % 4))
        basket = 7.5 + 0.4 * (index % 3)  # average spend per customer
        expected = (60 + 18 * index) * weekday_factor * season * (1.25 if promo else 1.0)
        customers = int(rng.poisson(expected))
        sales = round(max(customers * (basket + rng.normal(0.0, 0.6)), 0.0), 2)
        rows.append({"store": store, "date": day.isoformat(), "sales": sales, "promo": promo, "customers": customers})
    return {FILE: pd.DataFrame(rows, columns=list(COLUMNS))}
