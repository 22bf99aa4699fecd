"""Core batch helpers: periods (months and days), hashes, row counts, which periods a run ingests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from airflow_mlops.core.batches import (
    Batch,
    FileRecord,
    batch_hash,
    count_csv_rows,
    count_rows,
    file_stem,
    month_bounds,
    month_of,
    months_to_ingest,
    parse_month,
    parse_period,
    period_bounds,
    period_kind,
    period_of,
    periods_to_ingest,
    previous_periods,
    schedule_periods,
    window_periods,
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
    assert month_of(datetime(2013, 3, 31, 22, tzinfo=timezone(timedelta(hours=-5)))) == "2013-04"


@pytest.mark.parametrize(
    ("period", "kind", "month"), [("2013-01", "month", "2013-01"), ("2013-01-31", "day", None)], ids=["month", "day"]
)
def test_batch_round_trips_through_json(period, kind, month):
    record = FileRecord(name="a.csv", uri="file:///x/a.csv", sha256="ab" * 32, rows=10, bytes=99)
    batch = Batch(period=period, sha256="cd" * 32, uri="file:///x", files={"a.csv": record}, primary="a.csv")
    data = batch.to_dict()
    assert data["batch_id"] == f"{period}-" + "cd" * 6
    assert data["rows"] == 10
    assert (data["period"], data.get("month"), batch.kind, batch.month) == (period, month, kind, month)
    assert Batch.from_dict(data) == batch
    assert Batch.from_dict(json.loads(json.dumps(data))) == batch


def test_batch_reads_a_manifest_that_names_only_its_month():
    record = {"name": "a.csv", "uri": "file:///x/a.csv", "sha256": "ab" * 32, "rows": 1, "bytes": 9}
    batch = Batch.from_dict({"month": "2013-02", "sha256": "cd" * 32, "uri": "file:///x", "files": {"a.csv": record}})
    assert (batch.period, batch.primary) == ("2013-02", None)


# -- periods: months and days ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "period", "kind"),
    [
        ("2013-03", "2013-03", "month"),
        ("2013-3", "2013-03", "month"),
        (" 2014-01 ", "2014-01", "month"),
        ("2013-03-05", "2013-03-05", "day"),
        ("2013-3-5", "2013-03-05", "day"),
        ("2012-02-29", "2012-02-29", "day"),
    ],
    ids=["month", "month-one-digit", "month-padded", "day", "day-one-digit", "leap-day"],
)
def test_parse_period_normalises_and_tells_the_kind(text, period, kind):
    assert parse_period(text) == period
    assert period_kind(text) == kind


@pytest.mark.parametrize(
    "text",
    [
        "2013-13",
        "2013-00",
        "2013-02-30",
        "2013-02-29",
        "2013-03-00",
        "2013-03-32",
        "13-03",
        "march",
        "",
        "2013/03",
        "2013-03-05T10:00",
        "2013-03-05-01",
    ],
    ids=str,
)
def test_parse_period_rejects(text):
    with pytest.raises(ValueError, match="not a (period|month|day)"):
        parse_period(text)
    with pytest.raises(ValueError):
        period_bounds(text)


@pytest.mark.parametrize(
    ("text", "kind", "period"),
    [
        ("2013-03-05", "month", "2013-03"),
        ("2013-12-01T00:00:00+00:00", "month", "2013-12"),
        ("2013-03-05T10:00:00+00:00", "day", "2013-03-05"),
        ("2013-3-5", "day", "2013-03-05"),
    ],
    ids=["day-as-month", "timestamp-as-month", "timestamp-as-day", "day"],
)
def test_parse_period_of_a_kind_reads_longer_forms(text, kind, period):
    assert parse_period(text, kind) == period


def test_parse_period_of_a_kind_rejects_other_forms():
    with pytest.raises(ValueError, match="not a day"):
        parse_period("2013-03", "day")
    with pytest.raises(ValueError, match="not a period kind"):
        parse_period("2013-03", "week")


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("2013-02", datetime(2013, 2, 1, tzinfo=UTC), datetime(2013, 3, 1, tzinfo=UTC)),
        ("2013-12", datetime(2013, 12, 1, tzinfo=UTC), datetime(2014, 1, 1, tzinfo=UTC)),
        ("2013-02-05", datetime(2013, 2, 5, tzinfo=UTC), datetime(2013, 2, 6, tzinfo=UTC)),
        ("2013-02-28", datetime(2013, 2, 28, tzinfo=UTC), datetime(2013, 3, 1, tzinfo=UTC)),
        ("2012-02-28", datetime(2012, 2, 28, tzinfo=UTC), datetime(2012, 2, 29, tzinfo=UTC)),
        ("2013-12-31", datetime(2013, 12, 31, tzinfo=UTC), datetime(2014, 1, 1, tzinfo=UTC)),
    ],
    ids=["month", "month-year-end", "day", "day-month-end", "day-leap", "day-year-end"],
)
def test_period_bounds(period, start, end):
    assert period_bounds(period) == (start, end)
    assert period_of(start, period_kind(period)) == period
    assert period_of(end - timedelta(microseconds=1), period_kind(period)) == period
    assert period_of(end, period_kind(period)) != period


@pytest.mark.parametrize(
    ("moment", "kind", "period"),
    [
        (datetime(2013, 3, 31, 22, tzinfo=timezone(timedelta(hours=-5))), "month", "2013-04"),
        (datetime(2013, 3, 31, 22, tzinfo=timezone(timedelta(hours=-5))), "day", "2013-04-01"),
        (datetime(2013, 12, 31, 23, 59), "day", "2013-12-31"),
    ],
    ids=["month-utc", "day-utc", "naive-is-utc"],
)
def test_period_of_uses_utc(moment, kind, period):
    assert period_of(moment, kind) == period


@pytest.mark.parametrize(
    ("period", "count", "previous"),
    [
        ("2013-03", 2, ["2013-01", "2013-02"]),
        ("2013-02", 3, ["2012-11", "2012-12", "2013-01"]),
        ("2013-03-02", 3, ["2013-02-27", "2013-02-28", "2013-03-01"]),
        ("2013-01-01", 2, ["2012-12-30", "2012-12-31"]),
        ("2012-03-01", 1, ["2012-02-29"]),
        ("2013-03-05", 0, []),
    ],
    ids=["month", "month-year-end", "day-month-end", "day-year-end", "day-leap", "none"],
)
def test_previous_and_window_periods(period, count, previous):
    assert previous_periods(period, count) == previous
    assert window_periods(period, count + 1) == [*previous, period]
    kinds = {period_kind(p) for p in window_periods(period, count + 1)}
    assert kinds == {period_kind(period)}


def test_windows_need_a_length():
    with pytest.raises(ValueError):
        window_periods("2013-03", 0)
    with pytest.raises(ValueError):
        previous_periods("2013-03-01", -1)
    with pytest.raises(ValueError):
        window_periods("2013-3-x", 2)


@pytest.mark.parametrize(
    ("first", "last", "count", "final_start"),
    [
        ("2013-01", "2013-12", 12, datetime(2013, 12, 1, tzinfo=UTC)),
        ("2013-11", "2014-02", 4, datetime(2014, 2, 1, tzinfo=UTC)),
        ("2013-12-30", "2014-01-02", 4, datetime(2014, 1, 2, tzinfo=UTC)),
        ("2012-02-27", "2012-03-01", 4, datetime(2012, 3, 1, tzinfo=UTC)),
        ("2013-05-05", "2013-05-05", 1, datetime(2013, 5, 5, tzinfo=UTC)),
    ],
    ids=["months", "months-over-year-end", "days-over-year-end", "days-leap", "one-day"],
)
def test_schedule_periods(first, last, count, final_start):
    starts = schedule_periods(first, last)
    assert len(starts) == count
    assert starts[0] == period_bounds(first)[0] and starts[-1] == final_start
    assert all(
        period_bounds(period_of(a, period_kind(first)))[1] == b for a, b in zip(starts[:-1], starts[1:], strict=True)
    )


@pytest.mark.parametrize(
    ("first", "last"), [("2013-02", "2013-01"), ("2013-01", "2013-01-05"), ("2013-1-x", "2013-02")]
)
def test_schedule_periods_rejects(first, last):
    with pytest.raises(ValueError):
        schedule_periods(first, last)


@pytest.mark.parametrize(
    ("requested", "run_type", "start", "pending", "kind", "expected"),
    [
        ("2013-3-5", "manual", None, ["2013-03-01"], "day", (["2013-03-05"], True)),
        ("", "scheduled", datetime(2013, 5, 7, tzinfo=UTC), ["2013-05-06"], "day", (["2013-05-07"], False)),
        (None, "asset_triggered", None, ["2013-05-07", "2013-05-06"], "day", (["2013-05-06", "2013-05-07"], False)),
        ("", "backfill", datetime(2013, 5, 7, tzinfo=UTC), [], "month", (["2013-05"], False)),
    ],
    ids=["named-day", "scheduled-day", "pending-days", "backfill-month"],
)
def test_periods_to_ingest(requested, run_type, start, pending, kind, expected):
    assert periods_to_ingest(requested, run_type, start, pending, kind) == expected


def test_periods_to_ingest_rejects_a_period_of_another_kind():
    with pytest.raises(ValueError, match="not a day"):
        periods_to_ingest("2013-03", "manual", None, [], "day")
    with pytest.raises(ValueError, match="not a period kind"):
        periods_to_ingest(None, "manual", None, [], "week")


def test_count_rows_reads_csv_and_parquet():
    import pandas as pd

    frame = pd.DataFrame({"a": range(7)})
    assert count_rows("x.parquet", frame.to_parquet(index=False)) == len(frame)
    assert count_rows("x.csv", frame.to_csv(index=False).encode()) == len(frame)
    assert count_rows("x.parquet", b"not parquet") == 0


def test_file_stem():
    assert [file_stem(n) for n in ("daily.csv", "a.b.parquet", "noext")] == ["daily", "a.b", "noext"]
