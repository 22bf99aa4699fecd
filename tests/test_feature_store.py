"""The Feast store with real DuckDB (offline) and SQLite (online), derived from a use case's declared views: apply,
PIT joins, materialization, online reads (the flight_delay example on two real months, and the tiny use case)."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core import features as F
from airflow_mlops.core import validation
from airflow_mlops.core.batches import period_bounds

from features_fixtures import (
    FLIGHTS,
    TINY,
    context,
    frames_of,
    load_spec,
    load_usecase,
    reference_training_set,
    seed_validated,
    tiny_expected,
    tiny_validated,
    usecase_module,
    validated_frames,
)

USECASE = load_usecase(FLIGHTS)
SPEC = load_spec(FLIGHTS)
MONTHS = ("2013-01", "2013-02")
REQUEST = ["carrier", "flight", "origin", "dest", "event_timestamp"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A lake with validated January and February, their feature partitions, and an applied Feast repo."""
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.features import build_partition

    home = tmp_path_factory.mktemp("feast-store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_FEAST_HOME", str(home / "feast"))
        patch.setenv("MLOPS_LAKE", (home / "lake").as_uri())
        lake = LakeHook(root_url=(home / "lake").as_uri())
        for month in MONTHS:
            seed_validated(lake, month)
        log = logging.getLogger("test")
        partitions = {m: build_partition(lake, m, USECASE, SPEC, log) for m in MONTHS}
        hook = FeastHook(FLIGHTS, lake_root=lake.root_url)
        applied = hook.apply()
        yield {"hook": hook, "lake": lake, "partitions": partitions, "applied": applied, "home": home}


def _frames(store) -> dict[str, pd.DataFrame]:
    return frames_of(store["lake"], MONTHS)


def _labelled(month: str) -> pd.DataFrame:
    flights = validated_frames(month)["flights"]
    return flights[flights["arr_delay"].notna()]


def _requests(labels: pd.DataFrame) -> pd.DataFrame:
    """Serving requests for label rows (their flight number and destination from the validated flights), turned
    into entity keys by the use case's own ``entity_keys``, as the service does."""
    module = usecase_module(FLIGHTS)
    flights = pd.concat([module.prepare_flights(validated_frames(m)["flights"]) for m in MONTHS], ignore_index=True)
    rows = labels.merge(flights.loc[:, ["flight_id", "flight", "dest"]], on="flight_id", validate="one_to_one")
    return module.entity_keys(rows.loc[:, REQUEST], context(USECASE, MONTHS[-1]))


def test_partitions_are_committed_and_rebuilds_are_no_ops(store):
    from airflow_mlops.operators.features import build_partition

    feb = store["partitions"]["2013-02"]
    assert feb["rebuilt"] is True
    # every flight of the month has schedule features; only flights with an arrival delay are label rows
    assert feb["rows"]["labels"] == len(_labelled("2013-02"))
    assert feb["rows"]["flight_features"] == len(validated_frames("2013-02")["flights"])
    assert set(feb["rows"]) == {F.LABELS, *(view.name for view in SPEC.views)}
    manifest = store["lake"].read_manifest(store["lake"].path("features", "2013-02"))
    assert set(manifest["inputs"]) == {"2013-01", "2013-02"}  # December 2012 is absent: history is partial
    again = build_partition(store["lake"], "2013-02", USECASE, SPEC, logging.getLogger("test"))
    assert again["rebuilt"] is False and again["sha256"] == feb["sha256"]


def test_apply_registers_the_declared_views_and_is_idempotent(store):
    applied = store["applied"]
    assert applied["project"] == "flight_delay"
    assert applied["views"] == sorted(
        ["flight_features", "origin_weather", "carrier_history", "route_history", "origin_history"]
    )
    assert applied["entities"] == ["carrier_slot", "flight_id", "origin_slot", "route_slot", "weather_slot"]
    assert applied["online_store"] == "sqlite"
    assert any(c.endswith(":CREATE") for c in applied["changes"])
    assert store["hook"].apply()["changes"] == []
    views = {v.name: v for v in store["hook"].store.list_feature_views()}
    for view in SPEC.views:
        registered = views[view.name]
        assert registered.ttl == timedelta(hours=view.ttl_hours), view.name
        assert [f.name for f in registered.features] == list(view.fields), view.name
        assert (
            registered.entity_columns[0].name == view.key and registered.batch_source.timestamp_field == view.timestamp
        )
        assert registered.batch_source.path == f"{store['home'] / 'lake' / 'features'}/*/{view.name}.parquet"


def test_point_in_time_join_equals_merge_asof(store):
    from airflow_mlops.operators.feature_store import build_training_set

    frames = _frames(store)
    labels = frames[F.LABELS]
    reference = F.finish_training_set(reference_training_set(frames, labels, SPEC), SPEC)
    feast = build_training_set(store["hook"], labels, SPEC)  # features.join_chunk_rows: 50,000 rows a join
    assert len(feast) == len(labels) == len(_labelled("2013-01")) + len(_labelled("2013-02"))
    pd.testing.assert_frame_equal(feast, reference, check_exact=True)
    # not trivially equal: the joins found real values, and some rows legitimately found none
    assert feast["carrier_flights_30d"].gt(0).mean() > 0.9 and feast["route_flights_30d"].eq(0).any()
    assert feast["weather_known"].mean() > 0.95 and feast["plane_known"].eq(0).any()
    # joined in smaller chunks: the same rows, value for value
    chunked = build_training_set(store["hook"], labels, SPEC, chunk_rows=7_000)
    pd.testing.assert_frame_equal(chunked, reference, check_exact=True)
    # the whole label rows in one retrieval, the join keys kept, Feast's own row order: the same once finished
    whole = store["hook"].historical_features(labels)
    assert set(SPEC.join_keys()) <= set(whole.columns)
    pd.testing.assert_frame_equal(F.finish_training_set(whole, SPEC), reference, check_exact=True)


def test_build_training_set_refuses_label_rows_of_an_older_definition(store):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.operators.feature_store import build_training_set

    labels = _frames(store)[F.LABELS].drop(columns=["route_slot"])
    with pytest.raises(AirflowFailException, match="label rows without route_slot: .* rebuild the periods"):
        build_training_set(store["hook"], labels, SPEC)


def _online_rows(store) -> list[tuple]:
    path = store["hook"].config.online_store.path
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [
            (table, *row)
            for table in tables
            for row in conn.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "{table}" ORDER BY 1, 2')
        ]


def _in_interval(frames: dict[str, pd.DataFrame], start, last) -> dict[str, int]:
    """Per view, the distinct keys with a row stamped in ``[start, last]``: what a materialization writes."""
    counts = {}
    for view in SPEC.views:
        frame = frames[view.name]
        inside = frame[(frame[view.timestamp] >= start) & (frame[view.timestamp] <= last)]
        counts[view.name] = int(inside[view.key].nunique())
    return counts


def test_materializing_an_interval_twice_leaves_the_same_online_state(store):
    hook = store["hook"]
    start, end = period_bounds("2013-02")
    last = end - timedelta(microseconds=1)
    hook.materialize(start, last)
    first = _online_rows(store)
    hook.materialize(start, last)
    assert _online_rows(store) == first
    counts = hook.interval_rows(start, last)
    assert len(first) == sum(n * len(USECASE.view(v).fields) for v, n in counts.items())
    frames = _frames(store)
    assert counts == _in_interval(frames, start, last)
    # one online row per flight departing in the interval (January's partition holds its late-evening flights
    # that depart on February 1 UTC) and per weather slot (each origin observed x each hour of the interval), not
    # one per origin
    validated = [validated_frames(m) for m in MONTHS]
    flights = pd.concat([frames["flights"] for frames in validated], ignore_index=True)
    departure = flights["time_hour"] + pd.to_timedelta(flights["minute"], unit="min")
    assert counts["flight_features"] == int(((departure >= start) & (departure < end)).sum())
    origins = pd.concat([frames["weather"]["origin"] for frames in validated]).nunique()
    hours = int((end - start) / timedelta(hours=1))
    assert origins > 1 and hours == 28 * 24  # February 2013, in UTC
    assert counts["origin_weather"] == origins * hours


def test_online_reads_answer_what_the_training_join_found_and_defaults_for_unknown_keys(store):
    """Training/serving consistency: a flight asked for online (its keys from the use case's ``entity_keys``) gets,
    view by view, the values the point-in-time join gave its training row, though the whole month was materialized
    before (no end-of-month values)."""
    hook = store["hook"]
    start, end = period_bounds("2013-02")
    hook.materialize(start, end - timedelta(microseconds=1))
    frames = _frames(store)
    labels = frames[F.LABELS]
    inside = labels[(labels["event_timestamp"] >= start + timedelta(hours=3)) & (labels["event_timestamp"] < end)]
    sample = inside.sample(400, random_state=5)
    trained = F.finish_training_set(reference_training_set(frames, sample, SPEC), SPEC).set_index("flight_id")
    keys = _requests(sample)
    online = pd.DataFrame(hook.online_features(keys), index=keys["flight_id"])
    features = list(SPEC.feature_columns)
    pd.testing.assert_frame_equal(
        online.loc[trained.index, features].astype(object),
        trained[features].astype(object),
        check_names=False,
    )
    # not vacuous: the flights of one carrier got different history over the month, as in training
    assert online["carrier_late_rate_7d"].nunique() > 50 and online["temp"].nunique() > 20
    assert online["weather_known"].mean() > 0.95

    unknown_request = pd.DataFrame(
        [{"carrier": "ZZ", "flight": 1, "origin": "XXX", "dest": "YYY", "event_timestamp": pd.Timestamp(end)}]
    )
    (unknown,) = hook.online_features(usecase_module(FLIGHTS).entity_keys(unknown_request, context(USECASE, "2013-02")))
    assert unknown["carrier_flights_7d"] == 0 and np.isnan(unknown["carrier_late_rate_7d"])
    assert unknown["weather_known"] == 0 and np.isnan(unknown["temp"]) and unknown["plane_known"] == 0
    assert np.isnan(unknown["distance"]) and unknown["dest"] == "YYY" and unknown["carrier"] == "ZZ"
    # what the request itself tells (its local departure hour) stands in for the unknown flight's schedule
    local = pd.Timestamp(end).tz_convert("America/New_York")
    assert (unknown["sched_hour"], unknown["weekday"]) == (local.hour, local.weekday())


def test_hook_renders_sqlite_by_default_and_redis_by_configuration(store, monkeypatch):
    from airflow_mlops.hooks.feast_store import FeastHook

    default = FeastHook(FLIGHTS).render_config()
    assert default["project"] == "flight_delay"
    assert default["online_store"] == {
        "type": "sqlite",
        "path": str(store["home"] / "feast" / "flight_delay" / "online_store.db"),
    }
    assert default["offline_store"] == {"type": "duckdb"}
    assert default["registry"]["path"] == str(store["home"] / "feast" / "flight_delay" / "registry.db")
    assert FeastHook(TINY).render_config()["online_store"]["path"].endswith("/feast/tiny/online_store.db")
    monkeypatch.setenv("MLOPS_FEAST_ONLINE_STORE", "redis")
    monkeypatch.setenv("MLOPS_FEAST_REDIS", "redis:6379,db=1")
    assert FeastHook(FLIGHTS).render_config()["online_store"] == {
        "type": "redis",
        "connection_string": "redis:6379,db=1",
    }
    assert FeastHook(FLIGHTS).config.online_store.type == "redis"  # Feast accepts it: configuration only, same code
    monkeypatch.setenv("MLOPS_FEAST_REDIS", "")
    with pytest.raises(ValueError, match="MLOPS_FEAST_REDIS"):
        FeastHook(FLIGHTS).render_config()


def _suite() -> dict:
    return validation.load_suite(FLIGHTS / "expectations" / "training_set.json")


def _good_set(store) -> pd.DataFrame:
    frames = _frames(store)
    return F.finish_training_set(reference_training_set(frames, frames[F.LABELS], SPEC), SPEC)


def test_training_set_suite_accepts_a_good_set(store):
    report = validation.validate_batch("good", {"training_set": _good_set(store)}, {"training_set": _suite()}, {})
    assert report.success, report.failure_message()


@pytest.mark.parametrize(
    ("plant", "expected"),
    [
        (lambda f: f.assign(arr_delay=1.0), "expect_table_columns_to_match_ordered_list"),
        (lambda f: pd.concat([f, f.iloc[:50]], ignore_index=True), "expect_column_values_to_be_unique"),
        (lambda f: f.assign(is_late=f["is_late"] * 2), "expect_column_values_to_be_in_set"),
        (
            lambda f: f.assign(carrier_late_rate_7d=f["carrier_late_rate_7d"] * 100),
            "expect_column_values_to_be_between",
        ),
        (lambda f: f.assign(is_late=1), "expect_column_mean_to_be_between"),
    ],
    ids=["leaked-column", "duplicate-rows", "bad-label", "rate-out-of-range", "all-late"],
)
def test_training_set_suite_rejects_planted_bad_sets(store, plant, expected):
    report = validation.validate_batch("bad", {"training_set": plant(_good_set(store))}, {"training_set": _suite()}, {})
    assert not report.success
    assert expected in {failure.expectation for _, failure in report.failures}, json.dumps(report.summary())[:500]


# -- the bulk materialization and the prepared reader (hooks/feast_online.py) against Feast's own paths ---------
def _online_tables(store) -> list[tuple]:
    """Every column Feast's SQLite store writes, every row."""
    path = store["hook"].config.online_store.path
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [
            (table, *row)
            for table in tables
            for row in conn.execute(
                f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM "{table}" ORDER BY 1, 2'
            )
        ]


def _wipe_online(store) -> None:
    with sqlite3.connect(store["hook"].config.online_store.path) as conn:
        for (table,) in list(conn.execute("SELECT name FROM sqlite_master WHERE type='table'")):
            conn.execute(f'DELETE FROM "{table}"')


def test_bulk_materialization_writes_exactly_what_feast_writes(store):
    hook = store["hook"]
    start = period_bounds("2013-02")[0]
    last = start + timedelta(days=7) - timedelta(microseconds=1)
    _wipe_online(store)
    hook.store.materialize(start_date=start, end_date=last)  # Feast's own path: the reference
    feast = _online_tables(store)
    _wipe_online(store)
    written = hook.materialize(start, last)
    expected = _in_interval(_frames(store), start, last)
    assert _online_tables(store) == feast and len(feast) == sum(
        n * len(USECASE.view(v).fields) for v, n in expected.items()
    )
    assert written == hook.interval_rows(start, last) == expected
    assert hook.materialize(start, last) == written and _online_tables(store) == feast  # idempotent
    views = {v.name: v for v in hook.store.list_feature_views()}
    assert any(until >= last for _, until in views["flight_features"].materialization_intervals)


def _sample_rows(store, start, end) -> list[dict]:
    frames = _frames(store)
    stamps = frames[F.LABELS]["event_timestamp"]
    labels = frames[F.LABELS][(stamps >= start) & (stamps < end)].sample(200, random_state=3)
    rows = labels.loc[:, SPEC.join_keys()].to_dict("records")
    unknown = {"flight_id": "20990101T00-ZZ-1", **{key: "ZZ@20990101T0000" for key in SPEC.join_keys()[1:]}}
    return [*rows, unknown]


def test_the_prepared_reader_returns_what_get_online_features_returns(store):
    hook = store["hook"]
    start, end = period_bounds("2013-02")
    hook.materialize(start, end - timedelta(microseconds=1))
    rows = _sample_rows(store, start + timedelta(hours=3), end)
    expected = hook.store.get_online_features(features=SPEC.feature_refs(), entity_rows=rows).to_dict()
    reader = hook.online_reader
    assert reader.read(rows) == expected
    assert reader.read(rows[:1]) == {k: v[:1] for k, v in expected.items()}
    assert expected["carrier_flights_7d"][-1] is None and expected["carrier_flights_7d"][0] is not None


@pytest.mark.parametrize("writer", ["other-connection", "same-connection"])
def test_the_reader_never_serves_values_older_than_the_last_materialization(store, writer):
    from airflow_mlops.hooks.feast_store import FeastHook

    start, end = period_bounds("2013-02")
    middle = start + timedelta(days=10)
    reading = FeastHook(FLIGHTS, lake_root=store["lake"].root_url)
    writing = reading if writer == "same-connection" else FeastHook(FLIGHTS, lake_root=store["lake"].root_url)
    reader = reading.online_reader
    _wipe_online(store)
    writing.materialize(start, middle - timedelta(microseconds=1))
    rows = _sample_rows(store, middle + timedelta(hours=3), end)  # flights of the interval not materialized yet
    before = reader.read(rows)
    writing.materialize(middle, end - timedelta(microseconds=1))  # a new materialization commits
    after = reader.read(rows)
    fresh = store["hook"].store.get_online_features(features=SPEC.feature_refs(), entity_rows=rows).to_dict()
    assert after == fresh
    changed = [n for n in ("carrier_late_rate_7d", "route_flights_30d", "temp") if after[n] != before[n]]
    assert len(changed) == 3, "the second interval must change the views read, or this test proves nothing"
    assert set(before["temp"][:-1]) == {None} and None not in after["temp"][:-1]


# -- a second, tiny use case: daily periods, a key that is also a feature, a TTL that expires -------------------
def _tiny_store(tmp_path, monkeypatch, built: list[str]) -> tuple:
    """The tiny use case's three days validated, the partitions of ``built`` built, its Feast repo applied."""
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.features import build_partition

    monkeypatch.setenv("MLOPS_FEAST_HOME", str(tmp_path / "feast"))
    usecase, spec = load_usecase(TINY), load_spec(TINY)
    lake = LakeHook(root_url=(tmp_path / "lake").as_uri())
    for day, frames in tiny_validated().items():
        seed_validated(lake, day, frames)
    for day in built:
        build_partition(lake, day, usecase, spec, logging.getLogger("test"))
    hook = FeastHook(TINY, lake_root=lake.root_url)
    return hook, hook.apply(), frames_of(lake, built)


def _tiny_expected(days: list[str]) -> pd.DataFrame:
    expected = tiny_expected()
    return expected[expected["day"].isin(days)].reset_index(drop=True)


def test_a_tiny_use_case_gets_its_own_store_and_the_same_join(tmp_path, monkeypatch):
    """Nothing of the flight example: the repository is derived from the tiny use case's declaration (``sensor`` is
    both a view's key and a model feature), its training set through Feast (in chunks of two rows) is the
    hand-checked one, and its online store answers requests with the day's values and the declared defaults."""
    from airflow_mlops.operators.feature_store import build_training_set

    spec = load_spec(TINY)
    days = ["2024-01-02", "2024-01-03"]  # day 1 is validated (day 2's statistics read it), not built
    hook, applied, frames = _tiny_store(tmp_path, monkeypatch, days)
    assert applied["project"] == "tiny" and applied["views"] == ["reading_features", "sensor_stats"]
    assert applied["entities"] == ["reading_id", "sensor"]
    assert spec.join_keys() == ["reading_id", "sensor"] and "sensor" in spec.row_features()

    labels = frames[F.LABELS]
    built = build_training_set(hook, labels, spec)
    pd.testing.assert_frame_equal(built, _tiny_expected(days), check_exact=True)
    reference = F.finish_training_set(reference_training_set(frames, labels, spec), spec)
    pd.testing.assert_frame_equal(built, reference, check_exact=True)

    start, end = period_bounds("2024-01-03")
    assert hook.materialize(start, end - timedelta(microseconds=1)) == {"reading_features": 2, "sensor_stats": 2}
    requests = pd.DataFrame({"reading_id": [7, 99], "sensor": ["s1", "s9"], "event_timestamp": [start, start]})
    keys = usecase_module(TINY).entity_keys(requests, context(load_usecase(TINY), "2024-01-03"))
    seven, unknown = hook.online_features(keys)
    assert (seven["kind"], seven["size"], seven["hour"]) == ("a", 8.0, 1)
    assert (seven["sensor_mean"], seven["sensor_count"], seven["sensor_site"]) == (4.0, 2, "north")
    assert (unknown["kind"], unknown["sensor_count"], unknown["sensor_site"]) == ("UNKNOWN", 0, "NOWHERE")
    assert np.isnan(unknown["size"]) and np.isnan(unknown["sensor_mean"]) and unknown["sensor"] == "s9"


def test_an_empty_partition_of_a_view_joins_like_any_other(tmp_path, monkeypatch):
    """Day 1 has no sensor statistics (nothing before it): its partition of the view is empty, which must not break
    the join of the other days."""
    from airflow_mlops.operators.feature_store import build_training_set

    days = sorted(tiny_validated())
    hook, _, frames = _tiny_store(tmp_path, monkeypatch, days)
    assert len(frames["sensor_stats"]) == 4  # days 2 and 3 only
    built = build_training_set(hook, frames[F.LABELS], load_spec(TINY))
    pd.testing.assert_frame_equal(built, _tiny_expected(days), check_exact=True)
