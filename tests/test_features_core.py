"""Feature engineering core: hand-checked values, explicit defaults, and no leakage (real 2013 months)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core import features as F

from features_fixtures import concat_frames, reference_training_set, validated_frames

SPEC = F.load_spec()
FEATURES = SPEC.feature_columns


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
    frame["time_hour"] = frame["time_hour"].astype(F.TS)
    return frame


# -- flights ---------------------------------------------------------------------------------------------------
def test_flight_id_and_event_timestamp_follow_the_contract():
    flights = F.prepare_flights(validated_frames("2013-01")["flights"], SPEC)
    assert flights["flight_id"].is_unique
    assert flights["flight_id"].iloc[0] == "20130101T10-UA-1545"
    assert str(flights["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert flights["event_timestamp"].iloc[0] == ts("2013-01-01T10:15")  # time_hour 10:00Z + minute 15
    assert (flights["event_timestamp"] - flights["time_hour"]).between(pd.Timedelta(0), pd.Timedelta(minutes=59)).all()


def test_flight_features_handle_missing_planes_and_unknown_categories():
    flights = F.prepare_flights(
        _flights(
            [
                {"flight": 1, "tailnum": "N1"},  # registered plane
                {"flight": 2, "tailnum": None, "carrier": " ", "dest": None},  # no tail number, blank categories
                {"flight": 3, "tailnum": "N404"},  # not in the registry
                {"flight": 4, "tailnum": "N2"},  # registered without a build year
            ]
        ),
        SPEC,
    )
    planes = pd.DataFrame({"tailnum": ["N1", "N2"], "year": [2003.0, np.nan], "seats": [150, 20]})
    out = F.flight_features(flights, planes, SPEC).set_index("flight_id")
    assert out.loc["20130201T11-AA-1", ["plane_age", "plane_seats", "plane_known"]].tolist() == [10.0, 150.0, 1]
    blank = out.loc["20130201T11-UNKNOWN-2"]
    assert blank["dest"] == "UNKNOWN" and blank["plane_known"] == 0 and np.isnan(blank["plane_age"])
    assert out.loc["20130201T11-AA-3", "plane_known"] == 0 and np.isnan(out.loc["20130201T11-AA-3", "plane_seats"])
    assert out.loc["20130201T11-AA-4", "plane_known"] == 1 and np.isnan(out.loc["20130201T11-AA-4", "plane_age"])
    assert out.loc["20130201T11-AA-4", "plane_seats"] == 20.0
    assert out["weekday"].eq(4).all() and out["sched_hour"].eq(6).all()  # 2013-02-01 was a Friday, 06:00 local
    assert len(out) == 4  # nothing dropped


def test_outcome_known_at_is_departure_plus_delay_air_time_and_buffer():
    flights = F.prepare_flights(
        _flights([{"dep_delay": 30.0, "air_time": 100.0}, {"flight": 2, "dep_delay": np.nan}]), SPEC
    )
    known = F.outcome_known_at(flights, SPEC)
    assert known.iloc[0] == ts("2013-02-01T11:00") + pd.Timedelta(minutes=30 + 100 + SPEC.outcome_buffer_minutes)
    assert known.iloc[1] == ts("2013-02-01T11:00") + pd.Timedelta(hours=SPEC.outcome_fallback_hours)


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
    outcomes["known_at"] = outcomes["known_at"].astype(F.TS)
    grid = pd.date_range(ts("2013-02-01T11:00"), ts("2013-02-01T13:00"), freq="1h").astype(F.TS)
    carrier = next(e for e in SPEC.history if e.name == "carrier")
    frame = F.history_features(outcomes, grid, ["AA", "B6", "DL"], carrier, SPEC)
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
        {"origin": "JFK", "time_hour": hours, **{c: [1.0, 2.0, 3.0] for c in SPEC.weather_columns}}
    ).assign(wind_gust=[np.nan, 20.0, np.nan])
    out = F.weather_features(weather, SPEC).set_index(F.WEATHER_SLOT)
    assert SPEC.weather_ttl_hours == 3
    assert out.index.tolist() == [f"JFK@20130201T{h:02d}00" for h in (10, 11, 12, 13, 16)]
    assert out.loc["JFK@20130201T1300", "time_hour"] == hours[1] and out.loc["JFK@20130201T1300", "temp"] == 2.0
    assert out.loc["JFK@20130201T1300", "available_at"] == ts("2013-02-01T13:00") + pd.Timedelta(
        minutes=SPEC.weather_lag_minutes
    )
    assert np.isnan(out.loc["JFK@20130201T1000", "wind_gust"])  # a missing value is not filled from elsewhere
    assert np.isnan(out.loc["JFK@20130201T1600", "wind_gust"])


def test_a_request_reads_the_slots_its_training_row_was_joined_on():
    """Serving computes the slot keys from the request's departure; training from the label rows: the same keys."""
    flights = F.prepare_flights(validated_frames("2013-03")["flights"], SPEC)
    labels = F.labels(flights, "2013-03", SPEC).sample(3000, random_state=0)
    for row in labels.to_dict("records"):
        asked = F.request_slots(
            row["carrier"], row["origin"], row["route"], row["event_timestamp"].to_pydatetime(), SPEC
        )
        assert asked == {key: row[key] for key in SPEC.slot_keys()}, row
    on_the_hour = labels[labels["event_timestamp"].dt.minute == 0].iloc[0]
    # with a publication lag, a departure at 10:00 reads the 09:00 weather slot, and the 10:00 history snapshot
    hour = on_the_hour["event_timestamp"]
    assert on_the_hour[F.WEATHER_SLOT].endswith((hour - pd.Timedelta(hours=1)).strftime("@%Y%m%dT%H00"))
    assert on_the_hour["carrier_slot"].endswith(hour.strftime("@%Y%m%dT%H00"))


# -- leakage ---------------------------------------------------------------------------------------------------
MONTHS = ("2013-01", "2013-02")


def _build(months: dict[str, dict[str, pd.DataFrame]], spec=SPEC) -> dict[str, pd.DataFrame]:
    parts = [F.build_month(m, {k: v for k, v in months.items() if k <= m}, spec) for m in sorted(months)]
    return concat_frames(parts)


def _joined(frames: dict[str, pd.DataFrame], spec=SPEC) -> pd.DataFrame:
    return reference_training_set(frames, frames[F.LABELS], spec)


@pytest.fixture(scope="module")
def real():
    months = {m: validated_frames(m) for m in MONTHS}
    frames = _build(months)
    return months, frames, _joined(frames)


def lineage_violations(joined: pd.DataFrame) -> dict[str, int]:
    """Per source, how many rows used data stamped at or after their own scheduled departure."""
    event = joined["event_timestamp"]
    found = {"weather": int((joined["weather_time_hour"] >= event).sum())}
    for entity in SPEC.history:
        found[entity.name] = int((joined[f"{entity.name}_max_source_ts"] >= event).sum())
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
        weather.loc[later, list(SPEC.weather_columns)] = 999.0
        changed[month] = {**frames, "flights": flights, "weather": weather}
    return changed


def future_invariance_violations(months, base_joined, cutoffs, spec=SPEC) -> dict[str, int]:
    """Rebuild with everything from each cutoff on changed; rows departing at or before it must not move."""
    found: dict[str, int] = {}
    base = F.finish_training_set(base_joined, spec).set_index("flight_id")
    for cutoff in cutoffs:
        joined = F.finish_training_set(_joined(_build(_perturb_future(months, cutoff), spec), spec), spec)
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
    _, frames, joined = real
    labelled = sum(int(validated_frames(m)["flights"]["arr_delay"].notna().sum()) for m in MONTHS)
    assert len(joined) == len(frames[F.LABELS]) == labelled == 50_009  # no label row dropped by the joins
    assert lineage_violations(joined) == {}
    # the checks are not vacuous: sources are there for nearly every row
    assert joined["weather_time_hour"].notna().mean() > 0.95
    assert joined["carrier_max_source_ts"].notna().mean() > 0.95


def test_features_do_not_change_when_the_future_changes(real):
    months, _, joined = real
    assert all((joined["event_timestamp"] == c).any() for c in (CUTOFFS[0], CUTOFFS[2]))  # departures on the cutoff
    assert future_invariance_violations(months, joined, CUTOFFS) == {}


def test_planted_leak_weather_at_departure_is_caught(real):
    """A weather observation usable from its own time_hour: a 13:00 departure would see the 13:00 observation."""
    from dataclasses import replace

    months, _, _ = real
    leaky = replace(SPEC, weather_lag_minutes=0.0)
    joined = _joined(_build(months, leaky), leaky)
    assert lineage_violations(joined).get("weather", 0) > 1000
    found = future_invariance_violations(months, joined, [CUTOFFS[2]], leaky)
    assert set(found) >= {"temp", "visib"}


def test_planted_leak_outcome_counted_at_departure_is_caught(real, monkeypatch):
    """History that counts a flight's outcome at its scheduled departure, before anyone knows it."""
    months, _, _ = real
    monkeypatch.setattr(F, "outcome_known_at", lambda flights, spec: flights["event_timestamp"].astype(F.TS))
    joined = _joined(_build(months))
    found = future_invariance_violations(months, joined, [CUTOFFS[3]])
    assert {"carrier_late_rate_7d", "route_late_rate_30d", "origin_late_rate_7d"} <= set(found)


# -- training-set finishing and online defaults ----------------------------------------------------------------
def test_training_set_contract_columns_types_and_defaults(real):
    _, _, joined = real
    out = F.finish_training_set(joined, SPEC)
    assert list(out.columns) == SPEC.training_columns
    assert out["flight_id"].is_monotonic_increasing and out["flight_id"].is_unique
    assert str(out["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert set(out["is_late"].unique()) == {0, 1} and set(out["month"].unique()) == set(MONTHS)
    assert out["is_late"].mean() == pytest.approx(0.2, abs=0.06)
    no_history = out["route_flights_30d"] == 0
    assert no_history.any() and out.loc[no_history, "route_late_rate_30d"].isna().all()
    assert (out.loc[out["weather_known"] == 0, "temp"].isna()).all()
    assert out["weather_known"].mean() > 0.95 and 0.7 < out["plane_known"].mean() < 0.95
    # the first hours of January have no history at all: counts 0, rates NaN
    first = out.sort_values("event_timestamp").iloc[0]
    assert first["carrier_flights_7d"] == 0 and np.isnan(first["carrier_late_rate_7d"])


def test_online_defaults_fill_unknown_keys():
    values = {
        "flight_id": ["x"],
        "sched_hour": [None],
        "weather_obs": [None],
        "carrier_flights_7d": [None],
        "carrier_late_rate_7d": [None],
        "dest": [None],
        "plane_known": [None],
    }
    (row,) = F.finish_online(values, SPEC)
    assert row["weather_known"] == 0 and row["carrier_flights_7d"] == 0 and row["plane_known"] == 0
    assert np.isnan(row["sched_hour"]) and np.isnan(row["carrier_late_rate_7d"]) and row["dest"] == "UNKNOWN"


@pytest.mark.parametrize(
    ("end", "count", "expected"),
    [
        ("2013-03", 3, ["2013-01", "2013-02", "2013-03"]),
        ("2013-01", 2, ["2012-12", "2013-01"]),
        ("2013-12", 1, ["2013-12"]),
    ],
    ids=["march-3", "january-crosses-year", "one"],
)
def test_window_months(end, count, expected):
    assert F.window_months(end, count) == expected
