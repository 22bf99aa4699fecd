"""The Feast store with real DuckDB (offline) and SQLite (online): apply, PIT joins, materialization, online reads."""

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
from airflow_mlops.core.batches import month_bounds
from airflow_mlops.settings import include_dir

from features_fixtures import reference_training_set, seed_validated

SPEC = F.load_spec()
MONTHS = ("2013-01", "2013-02")


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
        partitions = {m: build_partition(lake, m, SPEC, logging.getLogger("test")) for m in MONTHS}
        hook = FeastHook(lake_root=lake.root_url)
        applied = hook.apply()
        yield {"hook": hook, "lake": lake, "partitions": partitions, "applied": applied, "home": home}


def _frames(store) -> dict[str, pd.DataFrame]:
    lake = store["lake"]
    parts = []
    for month in MONTHS:
        manifest = lake.read_manifest(lake.path("features", month))
        parts.append(
            {
                n.rsplit(".", 1)[0]: pd.read_parquet(r["uri"].removeprefix("file://"))
                for n, r in manifest["files"].items()
            }
        )
    return {view: pd.concat([p[view] for p in parts], ignore_index=True) for view in parts[0]}


def test_partitions_are_committed_and_rebuilds_are_no_ops(store):
    from airflow_mlops.operators.features import build_partition

    feb = store["partitions"]["2013-02"]
    assert feb["rebuilt"] is True
    assert feb["rows"]["labels"] == 23_611 and feb["rows"]["flight_features"] == 24_951
    manifest = store["lake"].read_manifest(store["lake"].path("features", "2013-02"))
    assert set(manifest["inputs"]) == {"2013-01", "2013-02"}  # December 2012 is absent: history is partial
    again = build_partition(store["lake"], "2013-02", SPEC, logging.getLogger("test"))
    assert again["rebuilt"] is False and again["sha256"] == feb["sha256"]


def test_apply_registers_the_repo_and_is_idempotent(store):
    applied = store["applied"]
    assert applied["views"] == sorted([F.FLIGHT_VIEW, F.WEATHER_VIEW, *F.HISTORY_VIEWS.values()])
    assert applied["entities"] == ["carrier_slot", "flight", "origin_slot", "route_slot", "weather_slot"]
    assert applied["online_store"] == "sqlite"
    assert any(c.endswith(":CREATE") for c in applied["changes"])
    assert store["hook"].apply()["changes"] == []
    views = {v.name: v for v in store["hook"].store.list_feature_views()}
    assert views["origin_weather"].ttl == timedelta(hours=SPEC.weather_ttl_hours)
    assert views["route_history"].batch_source.path.startswith(str(store["home"] / "lake" / "features"))


def test_point_in_time_join_equals_merge_asof(store):
    frames = _frames(store)
    labels = frames[F.LABELS]
    keys = ["flight_id", "event_timestamp", "carrier", "origin", "route", *SPEC.slot_keys(), "is_late", "month"]
    entity_df = labels.loc[:, keys]
    feast = F.finish_training_set(store["hook"].historical_features(entity_df), SPEC)
    reference = F.finish_training_set(reference_training_set(frames, labels, SPEC), SPEC)
    assert len(feast) == len(labels) == 50_009
    pd.testing.assert_frame_equal(feast, reference, check_exact=True)
    # not trivially equal: the joins found real values, and some rows legitimately found none
    assert feast["carrier_flights_30d"].gt(0).mean() > 0.9 and feast["route_flights_30d"].eq(0).any()
    # Joined in chunks (what the training-set operator does to bound memory): the same rows, value for value.
    joined = store["hook"].historical_features(entity_df, chunk_rows=7_000, drop=SPEC.slot_keys(), sort_by="flight_id")
    assert not set(SPEC.slot_keys()) & set(joined.columns) and joined["flight_id"].is_monotonic_increasing
    pd.testing.assert_frame_equal(F.finish_training_set(joined, SPEC), reference, check_exact=True)


def _online_rows(store) -> list[tuple]:
    path = store["hook"].config.online_store.path
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [
            (table, *row)
            for table in tables
            for row in conn.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "{table}" ORDER BY 1, 2')
        ]


def test_materializing_an_interval_twice_leaves_the_same_online_state(store):
    hook = store["hook"]
    start, end = month_bounds("2013-02")
    last = end - timedelta(microseconds=1)
    hook.materialize(start, last)
    first = _online_rows(store)
    hook.materialize(start, last)
    assert _online_rows(store) == first
    counts = hook.interval_rows(start, last)
    assert len(first) == sum(n * len(_view_features(v)) for v, n in counts.items())
    weather = _frames(store)[F.WEATHER_VIEW]
    slots = weather[(weather["available_at"] >= start) & (weather["available_at"] <= last)]
    # one online row per flight and per weather slot (3 origins x 28 days x 24 hours), not one per origin
    assert counts["flight_features"] == 24_936 and counts["origin_weather"] == len(slots) == 3 * 28 * 24


def _view_features(view: str) -> list[str]:
    return [ref.split(":")[1] for ref in SPEC.feature_refs() if ref.startswith(f"{view}:")]


def test_online_reads_answer_what_the_training_join_found_and_defaults_for_unknown_keys(store):
    """Training/serving consistency: a flight looked up online gets, view by view, the values the point-in-time
    join gave its training row, though the whole month was materialized before (no end-of-month values)."""
    hook = store["hook"]
    start, end = month_bounds("2013-02")
    hook.materialize(start, end - timedelta(microseconds=1))
    frames = _frames(store)
    labels = frames[F.LABELS]
    inside = labels[(labels["event_timestamp"] >= start + timedelta(hours=3)) & (labels["event_timestamp"] < end)]
    sample = inside.sample(400, random_state=5)
    trained = F.finish_training_set(reference_training_set(frames, sample, SPEC), SPEC).set_index("flight_id")
    asked = sample.merge(frames[F.FLIGHT_VIEW][["flight_id", "dest"]], on="flight_id")
    rows = asked.loc[:, ["flight_id", "carrier", "origin", "dest", "event_timestamp"]].to_dict("records")
    online = pd.DataFrame(hook.online_features(rows), index=asked["flight_id"])
    numeric = list(SPEC.numeric)
    pd.testing.assert_frame_equal(
        online.loc[trained.index, numeric].astype("float64"), trained[numeric].astype("float64"), check_names=False
    )
    # not vacuous: the flights of one carrier got different history over the month, as in training
    assert online["carrier_late_rate_7d"].nunique() > 50 and online["temp"].nunique() > 20
    assert online["weather_known"].mean() > 0.95

    (unknown,) = hook.online_features(
        [{"flight_id": "20990101T00-ZZ-1", "carrier": "ZZ", "origin": "XXX", "dest": "YYY", "event_timestamp": end}]
    )
    assert unknown["carrier_flights_7d"] == 0 and np.isnan(unknown["carrier_late_rate_7d"])
    assert unknown["weather_known"] == 0 and np.isnan(unknown["temp"]) and unknown["plane_known"] == 0


def test_hook_renders_sqlite_by_default_and_redis_by_configuration(store, monkeypatch):
    from airflow_mlops.hooks.feast_store import FeastHook

    default = FeastHook().render_config()
    assert default["online_store"] == {"type": "sqlite", "path": str(store["home"] / "feast" / "online_store.db")}
    assert default["offline_store"] == {"type": "duckdb"}
    monkeypatch.setenv("MLOPS_FEAST_ONLINE_STORE", "redis")
    monkeypatch.setenv("MLOPS_FEAST_REDIS", "redis:6379,db=1")
    assert FeastHook().render_config()["online_store"] == {"type": "redis", "connection_string": "redis:6379,db=1"}
    assert FeastHook().config.online_store.type == "redis"  # Feast accepts it: configuration only, same code
    monkeypatch.setenv("MLOPS_FEAST_REDIS", "")
    with pytest.raises(ValueError, match="MLOPS_FEAST_REDIS"):
        FeastHook().render_config()


def _suite() -> dict:
    return validation.load_suite(include_dir() / "expectations" / "training_set.json")


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
    start = month_bounds("2013-02")[0]
    last = start + timedelta(days=7) - timedelta(microseconds=1)
    _wipe_online(store)
    hook.store.materialize(start_date=start, end_date=last)  # Feast's own path: the reference
    feast = _online_tables(store)
    _wipe_online(store)
    written = hook.materialize(start, last)
    assert _online_tables(store) == feast and len(feast) > 40_000
    assert written == hook.interval_rows(start, last)
    assert hook.materialize(start, last) == written and _online_tables(store) == feast  # idempotent
    views = {v.name: v for v in hook.store.list_feature_views()}
    assert any(until >= last for _, until in views[F.FLIGHT_VIEW].materialization_intervals)


def _sample_rows(store, start, end) -> list[dict]:
    frames = _frames(store)
    stamps = frames[F.LABELS]["event_timestamp"]
    labels = frames[F.LABELS][(stamps >= start) & (stamps < end)].sample(200, random_state=3)
    rows = labels.loc[:, ["flight_id", *SPEC.slot_keys()]].to_dict("records")
    unknown = {"flight_id": "20990101T00-ZZ-1", **{key: "ZZ@20990101T0000" for key in SPEC.slot_keys()}}
    return [*rows, unknown]


def test_the_prepared_reader_returns_what_get_online_features_returns(store):
    hook = store["hook"]
    start, end = month_bounds("2013-02")
    hook.materialize(start, end - timedelta(microseconds=1))
    rows = _sample_rows(store, start + timedelta(hours=3), end)
    expected = hook.store.get_online_features(features=SPEC.feature_refs(), entity_rows=rows).to_dict()
    reader = hook.online_reader
    assert reader.read(rows) == expected
    assert reader.read(rows[:1]) == {k: v[:1] for k, v in expected.items()}
    assert expected["carrier_flights_7d"][-1] is None and expected["carrier_flights_7d"][0] is not None


@pytest.mark.parametrize("writer", ["other-connection", "same-connection"])
def test_the_reader_cache_never_serves_values_older_than_the_last_materialization(store, writer):
    from airflow_mlops.hooks.feast_store import FeastHook

    start, end = month_bounds("2013-02")
    middle = start + timedelta(days=10)
    reading = FeastHook(lake_root=store["lake"].root_url)
    writing = reading if writer == "same-connection" else FeastHook(lake_root=store["lake"].root_url)
    reader = reading.online_reader
    assert reader.caching
    _wipe_online(store)
    writing.materialize(start, middle - timedelta(microseconds=1))
    rows = _sample_rows(store, middle + timedelta(hours=3), end)  # flights of the interval not materialized yet
    before = reader.read(rows)
    misses = reader.misses
    assert reader.read(rows) == before and reader.misses == misses  # served from the cache, nothing read
    writing.materialize(middle, end - timedelta(microseconds=1))  # a new materialization commits
    after = reader.read(rows)
    fresh = store["hook"].store.get_online_features(features=SPEC.feature_refs(), entity_rows=rows).to_dict()
    assert after == fresh and reader.misses > misses
    changed = [n for n in ("carrier_late_rate_7d", "route_flights_30d", "temp") if after[n] != before[n]]
    assert len(changed) == 3, "the second interval must change the cached views, or this test proves nothing"
    assert set(before["temp"][:-1]) == {None} and None not in after["temp"][:-1]
