"""Core batch helpers: months, hashes, row counts, which months a run ingests."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from airflow_mlops.core.batches import (
    Batch,
    FileRecord,
    batch_hash,
    count_csv_rows,
    month_bounds,
    month_of,
    months_to_ingest,
    parse_month,
)


@pytest.mark.parametrize(
    ("text", "month"),
    [("2013-03", "2013-03"), ("2013-3", "2013-03"), ("2013-12-01T00:00:00+00:00", "2013-12"), (" 2014-01 ", "2014-01")],
    ids=["plain", "one-digit", "timestamp", "padded"],
)
def test_parse_month_accepts(text, month):
    assert parse_month(text) == month


@pytest.mark.parametrize("text", ["2013-13", "2013-00", "13-03", "march", "", "2013/03"], ids=str)
def test_parse_month_rejects(text):
    with pytest.raises(ValueError, match="not a month"):
        parse_month(text)


def test_month_bounds_cover_the_month_and_wrap_the_year():
    assert month_bounds("2013-02") == (datetime(2013, 2, 1, tzinfo=UTC), datetime(2013, 3, 1, tzinfo=UTC))
    assert month_bounds("2013-12")[1] == datetime(2014, 1, 1, tzinfo=UTC)


def test_batch_hash_ignores_order_but_not_content():
    a = batch_hash({"flights.csv": "aa", "weather.csv": "bb"})
    assert a == batch_hash({"weather.csv": "bb", "flights.csv": "aa"})
    assert a != batch_hash({"flights.csv": "aa", "weather.csv": "bc"})
    assert a != batch_hash({"flights.csv": "bb", "weather.csv": "aa"})


@pytest.mark.parametrize(
    ("data", "rows"),
    [(b"", 0), (b"a,b\n", 0), (b"a,b\n1,2\n", 1), (b"a,b\n1,2\n3,4", 2), (b"a,b\n1,2\n3,", 2)],
    ids=["empty", "header-only", "one-row", "no-final-newline", "truncated-line"],
)
def test_count_csv_rows(data, rows):
    assert count_csv_rows(data) == rows


@pytest.mark.parametrize(
    ("requested", "run_type", "start", "pending", "expected"),
    [
        ("2013-03", "manual", None, ["2013-01"], (["2013-03"], True)),
        ("2013-03", "scheduled", datetime(2013, 5, 1, tzinfo=UTC), [], (["2013-03"], True)),
        ("", "scheduled", datetime(2013, 5, 1, tzinfo=UTC), ["2013-01", "2013-05"], (["2013-05"], False)),
        ("None", "backfill", datetime(2013, 7, 1, tzinfo=UTC), [], (["2013-07"], False)),
        (
            None,
            "asset_triggered",
            datetime(2026, 1, 1, tzinfo=UTC),
            ["2013-02", "2013-01"],
            (["2013-01", "2013-02"], False),
        ),
        (None, "manual", datetime(2026, 1, 1, tzinfo=UTC), ["2013-04"], (["2013-04"], False)),
        (None, "manual", None, [], ([], False)),
    ],
    ids=[
        "named",
        "named-beats-schedule",
        "scheduled-takes-its-month",
        "backfill",
        "asset-takes-all-pending",
        "manual-takes-pending",
        "nothing",
    ],
)
def test_months_to_ingest(requested, run_type, start, pending, expected):
    assert months_to_ingest(requested, run_type, start, pending) == expected


def test_month_of_uses_utc():
    from datetime import timedelta, timezone

    assert month_of(datetime(2013, 3, 31, 22, tzinfo=timezone(timedelta(hours=-5)))) == "2013-04"


def test_batch_round_trips_through_json():
    record = FileRecord(name="flights.csv", uri="file:///x/flights.csv", sha256="ab" * 32, rows=10, bytes=99)
    batch = Batch(month="2013-01", sha256="cd" * 32, uri="file:///x", files={"flights.csv": record})
    data = batch.to_dict()
    assert data["batch_id"] == "2013-01-" + "cd" * 6
    assert data["rows"] == 10
    assert Batch.from_dict(data) == batch
