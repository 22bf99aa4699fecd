"""The serving request generated from ``serving.request``: types, constraints, local times, batches, bad specs,
the request frame, and a 400 naming the field through a real BentoML app (in-process, no server)."""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, date, datetime

import pytest
import yaml
from pydantic import ValidationError

from airflow_mlops.core.request_schema import (
    SHOWN_VALUES,
    TS,
    batch_model,
    event_timestamp,
    parse_spec,
    request_frame,
    request_model,
)

SPEC_YAML = """
event_time: departure
id: null
fields:
  carrier: {type: string, pattern: "^[A-Z0-9]{2}$", upper: true, description: IATA carrier code}
  flight: {type: int, min: 1, max: 9999}
  origin: {type: string, allowed: [EWR, JFK, LGA], upper: true}
  dest: {type: string, allowed_file: serving/airports.json, upper: true}
  departure: {type: datetime, min: "2013-01-01", max: "2030-12-31", timezone: America/New_York}
  distance: {type: float, min: 0, required: false, default: null}
  day: {type: date, min: 2013-01-01, max: "2013-12-31"}
  express: {type: bool, required: false, default: false}
"""
#: 25 codes: more than an error message lists.
AIRPORTS = [f"A{i:02d}" for i in range(25, 0, -1)] + ["IAH"]
DROP = object()
GOOD = {
    "carrier": "ua",
    "flight": 1545,
    "origin": "ewr",
    "dest": "iah",
    "departure": "2013-01-01T05:15:00",
    "day": "2013-01-01",
}


@pytest.fixture
def usecase(tmp_path):
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "airports.json").write_text(json.dumps(AIRPORTS))
    return tmp_path


@pytest.fixture
def spec() -> dict:
    return yaml.safe_load(SPEC_YAML)


@pytest.fixture
def model(spec, usecase):
    return request_model(spec, base_dir=usecase)


def _errors(model, body: dict) -> dict[str, str]:
    """``{field: message}`` of a refused request."""
    with pytest.raises(ValidationError) as err:
        model.model_validate(body)
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in err.value.errors()}


# -- types and constraints ---------------------------------------------------------------------------------------
def test_a_good_request_is_typed_normalized_and_utc(model):
    request = model(**GOOD)
    assert (request.carrier, request.origin, request.dest) == ("UA", "EWR", "IAH")
    assert request.flight == 1545 and request.day == date(2013, 1, 1)
    # 05:15 in New York in January is EST (UTC-5).
    assert request.departure == datetime(2013, 1, 1, 10, 15, tzinfo=UTC)
    assert request.distance is None and request.express is False
    assert model(**{**GOOD, "distance": None}).distance is None  # an optional field with a null default takes null
    assert model(**{**GOOD, "distance": "12.5", "express": "true"}).distance == 12.5
    assert event_timestamp(request) == datetime(2013, 1, 1, 10, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"dest": DROP}, "dest", "required"),
        ({"carrier": None}, "carrier", "valid string"),
        ({"flight": "abc"}, "flight", "valid integer"),
        ({"flight": 0}, "flight", "greater than or equal to 1"),
        ({"flight": 10000}, "flight", "less than or equal to 9999"),
        ({"flight": True}, "flight", "not a boolean"),
        ({"distance": -1.0}, "distance", "greater than or equal to 0"),
        ({"distance": "NaN"}, "distance", "finite"),
        ({"distance": False}, "distance", "not a boolean"),
        ({"express": "maybe"}, "express", "valid boolean"),
        ({"express": None}, "express", "valid boolean"),
        ({"origin": "ord"}, "origin", "origin must be one of EWR, JFK, LGA; got 'ORD'"),
        ({"carrier": "UNITED"}, "carrier", "carrier must match the pattern ^[A-Z0-9]{2}$"),
        ({"departure": "not a time"}, "departure", "valid datetime"),
        (
            {"departure": "2012-12-31T23:59:00"},
            "departure",
            "within 2013-01-01 .. 2030-12-31 (in America/New_York)",
        ),
        ({"day": "2014-01-01"}, "day", "less than or equal to 2013-12-31"),
        ({"day": "2012-12-31"}, "day", "greater than or equal to 2013-01-01"),
        ({"day": "31/12/2013"}, "day", "valid date"),
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)
def test_a_bad_field_is_named_and_says_what_is_allowed(model, change, field, says):
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not DROP}
    errors = _errors(model, body)
    assert list(errors) == [field]
    assert says in errors[field]


def test_allowed_values_from_a_file_are_truncated_in_the_message(model):
    message = _errors(model, {**GOOD, "dest": "xqz"})["dest"]
    shown = sorted(AIRPORTS)[:SHOWN_VALUES]
    assert message.startswith("dest must be one of " + ", ".join(shown) + ", ...")
    assert f"({len(AIRPORTS)} in all; from serving/airports.json); got 'XQZ'" in message
    assert sorted(AIRPORTS)[SHOWN_VALUES] not in message


def test_allowed_values_are_normalized_like_the_input_and_strip_applies(usecase):
    spec = {
        "event_time": "on",
        "fields": {
            "code": {"type": "string", "allowed": [" ab ", "cd"], "upper": True, "strip": True},
            "level": {"type": "int", "allowed": [1, 2, 3]},
            "on": {"type": "date"},
        },
    }
    model = request_model(spec)
    assert model(code="  ab\t", level=2, on="2024-01-01").code == "AB"
    assert list(_errors(model, {"code": "ab", "level": 4, "on": "2024-01-01"})) == ["level"]
    assert (
        "level must be one of 1, 2, 3; got 4" in _errors(model, {"code": "ab", "level": 4, "on": "2024-01-01"})["level"]
    )
    assert "got 'EF'" in _errors(model, {"code": "ef", "level": 1, "on": "2024-01-01"})["code"]
    assert model.model_json_schema()["properties"]["level"]["enum"] == [1, 2, 3]


# -- local times ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "utc"),
    [
        # Before the spring change (2013-03-10 02:00 EST → 03:00 EDT): UTC-5, after: UTC-4.
        ("2013-03-10T01:30:00", datetime(2013, 3, 10, 6, 30, tzinfo=UTC)),
        ("2013-03-10T03:30:00", datetime(2013, 3, 10, 7, 30, tzinfo=UTC)),
        # In the gap (02:30 does not exist): read with the offset before the change, i.e. 03:30 EDT.
        ("2013-03-10T02:30:00", datetime(2013, 3, 10, 7, 30, tzinfo=UTC)),
        # The autumn overlap (01:30 happens twice on 2013-11-03): the first occurrence, EDT.
        ("2013-11-03T01:30:00", datetime(2013, 11, 3, 5, 30, tzinfo=UTC)),
        ("2013-11-03T03:00:00", datetime(2013, 11, 3, 8, 0, tzinfo=UTC)),
        # An explicit offset wins over the field's timezone.
        ("2013-07-01T23:30:00-04:00", datetime(2013, 7, 2, 3, 30, tzinfo=UTC)),
        ("2013-07-01T12:00:00Z", datetime(2013, 7, 1, 12, 0, tzinfo=UTC)),
    ],
)
def test_naive_times_are_local_across_dst_changes(model, given, utc):
    value = model(**{**GOOD, "departure": given}).departure
    assert value == utc and value.utcoffset().total_seconds() == 0


def test_date_bounds_are_local_calendar_dates(model):
    # The last minutes of 2030-12-31 in New York are already 2031 in UTC: still inside the range.
    assert model(**{**GOOD, "departure": "2030-12-31T23:30:00"}).departure.year == 2031
    # 2013-01-01T04:30Z is 2012-12-31 23:30 in New York: before the first allowed local date.
    assert list(_errors(model, {**GOOD, "departure": "2013-01-01T04:30:00Z"})) == ["departure"]
    assert model(**{**GOOD, "departure": "2013-01-01T05:00:00Z"}).departure.hour == 5


def test_datetime_bounds_with_a_time_and_no_timezone_are_utc_instants():
    spec = {
        "event_time": "at",
        "fields": {"at": {"type": "datetime", "min": "2024-01-01T12:00:00", "max": "2024-01-02"}},
    }
    model = request_model(spec)
    assert model(at="2024-01-01T12:00:00").at == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert model(at="2024-01-02T23:59:59").at.day == 2
    assert list(_errors(model, {"at": "2024-01-01T11:59:59"})) == ["at"]
    assert list(_errors(model, {"at": "2024-01-01T13:00:00+02:00"})) == ["at"]  # 11:00 UTC
    assert list(_errors(model, {"at": "2024-01-03T00:00:00"})) == ["at"]


# -- batches -------------------------------------------------------------------------------------------------
def test_batch_size_limits_and_row_errors(model):
    batch = batch_model(model, 3)
    assert batch_model(model, 3) is batch
    assert [r.flight for r in batch(rows=[GOOD, {**GOOD, "flight": 2}]).rows] == [1545, 2]
    assert len(batch(rows=[GOOD] * 3).rows) == 3
    assert "at least 1" in _errors(batch, {"rows": []})["rows"]
    assert _errors(batch, {"rows": [GOOD] * 4}) == {"rows": "a batch holds at most 3 rows; got 4"}
    # an oversized batch is refused before its rows are validated: only the size error
    assert list(_errors(batch, {"rows": [{"flight": 0}] * 4})) == ["rows"]
    assert list(_errors(batch, {"rows": [GOOD, {**GOOD, "origin": "ORD"}]})) == ["rows.1.origin"]
    assert list(_errors(batch, {"rows": [GOOD], "more": 1})) == ["more"]
    with pytest.raises(ValueError, match="max_size"):
        batch_model(model, 0)


# -- bad specs -----------------------------------------------------------------------------------------------
def _set(path: str, value):
    def change(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        node[last] = value

    return change


def _drop(path: str):
    def change(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        del node[last]

    return change


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (_set("fields.flight.type", "integer"), "serving.request.fields.flight.type"),
        (_set("fields.flight.minimum", 1), "serving.request.fields.flight.minimum"),
        (_set("fields.carrier.timezone", "UTC"), "serving.request.fields.carrier.timezone"),
        (_set("fields.distance.pattern", "x"), "serving.request.fields.distance.pattern"),
        (_set("fields.flight.min", 10000), "serving.request.fields.flight.min"),
        (_set("fields.flight.max", "lots"), "serving.request.fields.flight.max"),
        (_set("fields.departure.min", "2031-01-01"), "serving.request.fields.departure.min"),
        (_set("fields.departure.max", "end of time"), "serving.request.fields.departure.max"),
        (_set("fields.day.max", "2012-12-31"), "serving.request.fields.day.min"),
        (_set("fields.day.min", "2013-01-01T10:00:00"), "serving.request.fields.day.min"),
        (_set("fields.departure.timezone", "Mars/Olympus"), "serving.request.fields.departure.timezone"),
        (_set("fields.carrier.pattern", "(["), "serving.request.fields.carrier.pattern"),
        (_set("fields.carrier.upper", "yes"), "serving.request.fields.carrier.upper"),
        (_set("fields.origin.allowed", "EWR"), "serving.request.fields.origin.allowed"),
        (_set("fields.origin.allowed", ["EWR", False]), "serving.request.fields.origin.allowed[1]"),
        (_set("fields.dest.allowed_file", "serving/missing.json"), "serving.request.fields.dest.allowed_file"),
        (_set("fields.distance.default", "far"), "serving.request.fields.distance.default"),
        (_set("fields.distance.required", True), "serving.request.fields.distance.default"),
        (_set("fields.flight", "int"), "serving.request.fields.flight"),
        (_set("fields.model_dump", {"type": "int"}), "serving.request.fields.model_dump"),
        (_set("fields.event_timestamp", {"type": "int"}), "serving.request.fields.event_timestamp"),
        (_set("event_time", "flight"), "serving.request.event_time"),
        (_set("event_time", "arrival"), "serving.request.event_time"),
        (_drop("event_time"), "serving.request.event_time"),
        (_set("fields.departure.required", False), "serving.request.event_time"),
        (_set("id", "distance"), "serving.request.id"),
        (_set("id", "express"), "serving.request.id"),
        (_set("batch", 10), "serving.request.batch"),
        (_set("fields", {}), "serving.request.fields"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_bad_spec_names_the_key_to_fix(spec, usecase, change, key):
    change(spec)
    with pytest.raises(ValueError) as err:
        request_model(spec, base_dir=usecase)
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_allowed_file_needs_the_use_case_folder(spec):
    with pytest.raises(ValueError, match=r"^serving\.request\.fields\.dest\.allowed_file: .*no base_dir"):
        request_model(spec)


def test_a_datetime_default_is_validated_once_and_an_id_field():
    spec = {
        "event_time": "at",
        "id": "ref",
        "fields": {
            "ref": {"type": "string", "pattern": "^[0-9a-f]{4}$"},
            "at": {"type": "datetime", "timezone": "Europe/Paris"},
            "when": {"type": "datetime", "default": "2024-06-01T12:00:00", "timezone": "Europe/Paris"},
        },
    }
    model = request_model(spec)
    request = model(ref="0a1b", at="2024-01-15T12:00:00")
    assert request.when == datetime(2024, 6, 1, 10, tzinfo=UTC)  # the default is validated (CEST, UTC+2) once
    assert request.at == datetime(2024, 1, 15, 11, tzinfo=UTC)  # CET, UTC+1
    assert parse_spec(spec).id == "ref"


# -- caching and speed -----------------------------------------------------------------------------------------
def test_models_are_built_once_per_spec_and_folder(spec, usecase, tmp_path_factory):
    model = request_model(spec, base_dir=usecase)
    assert request_model(copy.deepcopy(spec), base_dir=str(usecase)) is model
    other = tmp_path_factory.mktemp("other")
    (other / "serving").mkdir()
    (other / "serving" / "airports.json").write_text(json.dumps({"airports": ["IAH"]}))
    elsewhere = request_model(spec, base_dir=other)
    assert elsewhere is not model and list(_errors(elsewhere, {**GOOD, "dest": "A01"})) == ["dest"]
    assert request_model(spec, base_dir=usecase, name="Other") is not model


def test_validating_one_request_costs_well_under_100_microseconds(model):
    body = json.dumps(GOOD).encode()
    model.model_validate_json(body)
    rounds = []
    for _ in range(5):  # the best round: robust to a busy machine
        started = time.perf_counter()
        for _ in range(500):
            model.model_validate_json(body)
        rounds.append((time.perf_counter() - started) / 500)
    assert min(rounds) < 100e-6, f"{min(rounds) * 1e6:.1f} µs per request"


# -- the frame -------------------------------------------------------------------------------------------------
def test_request_frame_columns_and_dtypes(model, spec):
    requests = [model(**GOOD), model(**{**GOOD, "distance": 200, "express": True, "departure": "2013-07-01T08:00"})]
    frame = request_frame(requests, spec)
    assert list(frame.columns) == [*spec["fields"], "event_timestamp"]
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == {
        "carrier": "object",
        "flight": "int64",
        "origin": "object",
        "dest": "object",
        "departure": TS,
        "distance": "float64",
        "day": "datetime64[us]",
        "express": "bool",
        "event_timestamp": TS,
    }
    assert frame["event_timestamp"].tolist() == [r.departure for r in requests]
    assert frame["distance"].isna().tolist() == [True, False]
    assert frame["carrier"].tolist() == ["UA", "UA"]
    empty = request_frame([], spec)
    assert len(empty) == 0 and str(empty["event_timestamp"].dtype) == TS and str(empty["flight"].dtype) == "int64"


def test_request_frame_of_a_date_event_time_and_nullable_columns():
    spec = {
        "event_time": "day",
        "fields": {
            "day": {"type": "date"},
            "count": {"type": "int", "required": False},
            "flag": {"type": "bool", "required": False},
            "at": {"type": "datetime", "required": False},
        },
    }
    model = request_model(spec)
    requests = [model(day="2024-03-05", count=3, flag=True), model(day=date(2024, 3, 6))]
    frame = request_frame(requests, spec)
    assert frame["event_timestamp"].tolist() == [datetime(2024, 3, 5, tzinfo=UTC), datetime(2024, 3, 6, tzinfo=UTC)]
    assert str(frame["event_timestamp"].dtype) == TS
    assert str(frame["count"].dtype) == "float64" and frame["count"].isna().tolist() == [False, True]
    assert frame["flag"].tolist() == [True, None] and str(frame["at"].dtype) == TS and frame["at"].isna().all()
    assert event_timestamp(requests[1]) == datetime(2024, 3, 6, tzinfo=UTC)


# -- through BentoML ---------------------------------------------------------------------------------------------
def test_a_bentoml_api_typed_with_the_model_answers_400_naming_the_field(model):
    """A real BentoML 1.4 app served in-process (its ASGI app under Starlette's TestClient), no server process."""
    import bentoml
    from starlette.testclient import TestClient

    def predict(self, request, /):
        return {"event_timestamp": event_timestamp(request).isoformat(), "origin": request.origin}

    # Annotations set directly: this module's string annotations could not name a model built at run time.
    predict.__annotations__ = {"request": model, "return": dict}
    service = bentoml.service(type("RequestSchemaProbe", (), {"predict": bentoml.api(route="/predict")(predict)}))
    with TestClient(service.to_asgi()) as client:
        answer = client.post("/predict", json=GOOD)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"event_timestamp": "2013-01-01T10:15:00+00:00", "origin": "EWR"}
        for body, field, says in [
            ({**GOOD, "origin": "ORD"}, "origin", "EWR, JFK, LGA"),
            ({**GOOD, "flight": 0}, "flight", "greater than or equal to 1"),
            ({**GOOD, "extra": 1}, "extra", "Extra inputs"),
        ]:
            refused = client.post("/predict", json=body)
            assert refused.status_code == 400, refused.text
            detail = refused.json()["detail"]
            assert [d["loc"] for d in detail] == [[field]] and says in detail[0]["msg"]
