"""Feast's online store through its public API and through ``SqliteOnlineAdapter`` (hooks/feast_online.py): the
same rows materialized both ways into two fresh stores read back value for value the same, and the adapter is only
used on the Feast series and the store it was written for."""

from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta

import pytest

from airflow_mlops.core import features as F
from airflow_mlops.core.batches import period_bounds

from features_fixtures import FLIGHTS, TINY, frames_of, load_spec, load_usecase, seed_validated, tiny_validated

MONTH = "2013-01"


def _hook(home, name: str, lake, usecase, use_adapter: bool):
    """A Feast store of its own under ``home/name`` over ``lake``, applied (config and store cached on the hook)."""
    from airflow_mlops.hooks.feast_store import FeastHook

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_FEAST_HOME", str(home / name))
        hook = FeastHook(usecase, lake_root=lake.root_url, use_adapter=use_adapter)
        hook.apply()
    return hook


def _stores(home, usecase, periods, seed) -> dict:
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.features import build_partition

    lake = LakeHook(root_url=(home / "lake").as_uri())
    for period, frames in seed.items():
        seed_validated(lake, period, frames)
    loaded = load_usecase(usecase)
    for period in periods:
        build_partition(lake, period, loaded, load_spec(usecase), logging.getLogger("test"))
    return {
        "lake": lake,
        "adapter": _hook(home, "adapter", lake, usecase, use_adapter=True),
        "public": _hook(home, "public", lake, usecase, use_adapter=False),
        "frames": frames_of(lake, periods),
    }


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    return _stores(tmp_path_factory.mktemp("feast-online"), FLIGHTS, [MONTH], {MONTH: None})


def _online_tables(hook) -> list[tuple]:
    """Every column Feast's SQLite store writes, every row."""
    with sqlite3.connect(hook.config.online_store.path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [
            (table, *row)
            for table in tables
            for row in conn.execute(
                f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM "{table}" ORDER BY 1, 2'
            )
        ]


def _rows(stores, spec, start, end, unknown: dict) -> list[dict]:
    labels = stores["frames"][F.LABELS]
    inside = labels[(labels["event_timestamp"] >= start) & (labels["event_timestamp"] < end)]
    rows = inside.sample(min(200, len(inside)), random_state=5).loc[:, spec.join_keys()].to_dict("records")
    return [*rows, unknown]


@pytest.mark.parametrize(
    ("version", "supported"),
    [("0.67.0", True), ("0.67.4", True), ("0.67.0rc1", True), ("0.68.0", False), ("0.66.2", False), ("1.67.0", False)],
)
def test_the_adapter_is_only_for_the_series_it_was_written_for(version, supported):
    from airflow_mlops.hooks.feast_online import adapter_supports

    assert adapter_supports(version) is supported


def test_the_hook_picks_the_adapter_only_where_it_applies(flights, caplog, tmp_path, monkeypatch):
    from airflow_mlops.hooks.feast_online import SqliteOnlineAdapter
    from airflow_mlops.hooks.feast_store import FeastHook

    store = flights["adapter"].store
    assert isinstance(flights["adapter"].adapter, SqliteOnlineAdapter) and flights["public"].adapter is None
    with caplog.at_level(logging.INFO, logger="airflow_mlops.hooks.feast_online"):
        assert SqliteOnlineAdapter.for_store(store, version="0.68.0") is None
        assert SqliteOnlineAdapter.for_store(store, enabled=False) is None
        monkeypatch.setenv("MLOPS_FEAST_HOME", str(tmp_path / "redis"))
        monkeypatch.setenv("MLOPS_FEAST_ONLINE_STORE", "redis")
        monkeypatch.setenv("MLOPS_FEAST_REDIS", "127.0.0.1:1")  # never connected: the choice reads the config only
        assert SqliteOnlineAdapter.for_store(FeastHook(FLIGHTS, lake_root=flights["lake"].root_url).store) is None
    reasons = [r.getMessage() for r in caplog.records]
    assert any("public API (feast 0.68.0 is outside" in m for m in reasons)
    assert any("public API (adapter disabled" in m for m in reasons)
    assert any("public API (online store redis is not plain SQLite)" in m for m in reasons)
    monkeypatch.setenv("MLOPS_FEAST_ADAPTER", "off")
    assert FeastHook(FLIGHTS).use_adapter is False


def test_both_paths_materialize_and_read_the_same_values(flights):
    fast, public = flights["adapter"], flights["public"]
    start, end = period_bounds(MONTH)
    middle, last = start + timedelta(days=10), end - timedelta(microseconds=1)
    for begin, until in ((start, middle - timedelta(microseconds=1)), (middle, last)):  # an update of existing keys
        written = fast.materialize(begin, until)
        assert public.materialize(begin, until) == written == fast.interval_rows(begin, until)
        assert all(written.values())
    assert _online_tables(fast) == _online_tables(public) != []  # Feast's own bytes, row for row

    spec = fast.spec
    unknown = {"flight_id": "20990101T00-ZZ-1", **{key: "ZZ@20990101T0000" for key in spec.join_keys()[1:]}}
    rows = _rows(flights, spec, middle, end, unknown)
    expected = public.store.get_online_features(features=spec.feature_refs(), entity_rows=rows).to_dict()
    assert fast.online_reader.read(rows) == public.online_reader.read(rows) == expected
    assert fast.online_reader.caching and not public.online_reader.caching
    assert fast.online_reader.read(rows) == expected and fast.online_reader.hits  # the cached views, again
    features = [name for name in expected if name not in spec.join_keys()]
    assert all(expected[n][-1] is None for n in features) and any(expected[n][0] is not None for n in features)
    for hook in (fast, public):
        intervals = {v.name: v.materialization_intervals for v in hook.store.list_feature_views()}
        assert all(any(u >= last for _, u in spans) for spans in intervals.values())


def test_both_paths_agree_on_a_second_use_case_and_cast_keys_alike(tmp_path):
    """The tiny use case (a key that is also a feature, two days); a key asked as an int is read as its string."""
    days = sorted(tiny_validated())
    stores = _stores(tmp_path, TINY, days[1:], tiny_validated())
    fast, public = stores["adapter"], stores["public"]
    start, _ = period_bounds(days[1])
    _, end = period_bounds(days[-1])
    assert fast.materialize(start, end - timedelta(microseconds=1)) == public.materialize(
        start, end - timedelta(microseconds=1)
    )
    assert _online_tables(fast) == _online_tables(public) != []
    rows = _rows(stores, fast.spec, start, end, {"reading_id": 99, "sensor": "s9"})
    expected = public.store.get_online_features(features=fast.spec.feature_refs(), entity_rows=rows).to_dict()
    assert fast.online_reader.read(rows) == public.online_reader.read(rows) == expected
