"""Serving core without a server: request schemas and domain, feature enrichment, model swap, inference log, infra checks."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from pydantic import ValidationError

from airflow_mlops.core import infra_validation as iv
from airflow_mlops.core.inference_log import InferenceLogBuffer, LakePartWriter, committed_parts, read_inference_log
from airflow_mlops.core.serving_model import LoadedModel, ModelSlot, check_answers, lookup_features
from airflow_mlops.core.serving_schemas import BatchRequest, FlightRequest, domain

GOOD = {"carrier": "ua", "flight": 1545, "origin": "EWR", "dest": "IAH", "scheduled_departure": "2013-01-01T05:15:00"}


def test_flight_id_matches_the_feature_stage_and_naive_times_are_local():
    flight = FlightRequest(**GOOD)
    assert flight.carrier == "UA" and flight.flight_id() == "20130101T10-UA-1545"
    assert flight.departure_local().hour == 5
    summer = FlightRequest(**{**GOOD, "scheduled_departure": "2013-07-01T23:30:00-04:00"})
    assert summer.flight_id() == "20130702T03-UA-1545"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dest": None}, "dest"),
        ({"flight": "abc"}, "flight"),
        ({"flight": 0}, "flight"),
        ({"origin": "ORD"}, "origin"),
        ({"dest": "XQZ"}, "dest"),
        ({"scheduled_departure": "1999-01-01T10:00:00"}, "scheduled_departure"),
        ({"scheduled_departure": "not a time"}, "scheduled_departure"),
        ({"carrier": "UNITED"}, "carrier"),
        ({"surprise": 1}, "surprise"),
    ],
    ids=[
        "missing",
        "wrong-type",
        "out-of-range",
        "unknown-origin",
        "unknown-airport",
        "too-early",
        "bad-time",
        "bad-carrier",
        "extra",
    ],
)
def test_bad_requests_name_the_field(change, field):
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ValidationError) as err:
        FlightRequest(**body)
    assert field in {str(e["loc"][0]) for e in err.value.errors()}


def test_batch_size_limits():
    with pytest.raises(ValidationError, match="at least 1"):
        BatchRequest(flights=[])
    with pytest.raises(ValidationError, match="at most"):
        BatchRequest(flights=[GOOD] * (domain().batch_max_size + 1))
    assert len(BatchRequest(flights=[GOOD, GOOD]).flights) == 2


class FakeStore:
    """Answers like Feast's online store: None for keys it does not know."""

    def __init__(self, known_flight: bool):
        self.known_flight = known_flight

    def read(self, entity_rows):
        from airflow_mlops.core.features import load_spec

        names = [ref.split(":")[1] for ref in load_spec().feature_refs()]
        values = {name: [1.0] * len(entity_rows) for name in names}
        values["dest"] = ["IAH"] * len(entity_rows)
        if not self.known_flight:
            for name in ("dest", "sched_hour", "weekday", "distance", "plane_age", "plane_seats", "plane_known"):
                values[name] = [None] * len(entity_rows)
        for name in [n for n in names if n.startswith("route_")]:
            values[name] = [None] * len(entity_rows)
        return values


def test_lookup_names_defaulted_entities_and_keeps_what_the_request_states():
    from airflow_mlops.core.features import load_spec

    spec = load_spec()
    flight = FlightRequest(**GOOD)
    rows, defaulted = lookup_features(FakeStore(known_flight=False), spec, [flight])
    assert defaulted == [["flight", "route_history"]]
    row = rows[0]
    assert (row["carrier"], row["origin"], row["dest"]) == ("UA", "EWR", "IAH")
    assert (row["sched_hour"], row["weekday"]) == (5, 1)  # from the request, not the defaults
    assert row["route_flights_30d"] == 0 and row["plane_known"] == 0
    rows, defaulted = lookup_features(FakeStore(known_flight=True), spec, [flight])
    assert defaulted == [["route_history"]] and rows[0]["distance"] == 1.0


class ConstModel:
    def __init__(self, p):
        self.p = p

    def predict_proba(self, frame):
        import numpy as np

        return np.column_stack([1 - np.full(len(frame), self.p), np.full(len(frame), self.p)])


def _loaded(version: str, p: float) -> LoadedModel:
    from airflow_mlops.core.training import TrainingConfig

    config = TrainingConfig(categorical=("carrier",), numeric=("distance",))
    return LoadedModel(name="m", version=version, model=ConstModel(p), config=config, threshold=0.5)


def test_swap_is_atomic_and_a_failed_check_keeps_the_old_model():
    slot = ModelSlot(_loaded("1", 0.2))
    held = slot.current
    old, new, problems, _ = slot.swap(lambda: _loaded("2", float("nan")), lambda m: check_answers(m.score([{}]), 1))
    assert problems and slot.current is held and slot.swaps == 0
    old, new, problems, _ = slot.swap(lambda: _loaded("2", 0.7), lambda m: check_answers(m.score([{}]), 1))
    assert not problems and slot.current.version == "2" and old is held
    assert held.score([{"carrier": "UA", "distance": 1.0}]) == [pytest.approx(0.2)]  # in-flight keeps its model


def _row(i: int, day: str = "2026-01-01") -> dict:
    return {
        "request_id": f"r{i}",
        "timestamp": f"{day}T00:00:{i % 60:02d}Z",
        "model_version": "1",
        "probability_late": 0.1,
    }


def test_inference_log_flushes_by_rows_by_time_and_on_close(lake):
    writer = LakePartWriter(lake)
    buffer = InferenceLogBuffer(writer, flush_rows=5, flush_interval_s=0.3)
    buffer.append([_row(i) for i in range(5)])  # full: flushed by the flusher thread
    deadline = time.monotonic() + 5
    while buffer.written_rows < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert buffer.written_rows == 5
    buffer.append([_row(5)])
    time.sleep(1.0)  # one row: flushed by the interval
    assert buffer.written_rows == 6
    buffer.append([_row(6), _row(7, day="2026-01-02")])
    assert buffer.close() == 0
    frame = read_inference_log(lake)
    assert sorted(frame["request_id"]) == sorted(f"r{i}" for i in range(8))
    assert str(frame["timestamp"].dtype) == "datetime64[us, UTC]"
    assert {p["day"] for p in committed_parts(lake)} == {"2026-01-01", "2026-01-02"}
    assert read_inference_log(lake, days=["2026-01-02"])["request_id"].tolist() == ["r7"]


def test_inference_log_keeps_rows_when_a_write_fails(lake):
    calls = {"n": 0}
    real = LakePartWriter(lake)

    def flaky(rows):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("lake unavailable")
        return real(rows)

    buffer = InferenceLogBuffer(flaky, flush_rows=1000, flush_interval_s=60)
    buffer.append([_row(1), _row(2)])
    assert buffer.flush() == 0 and buffer.pending == 2
    assert buffer.close() == 0
    assert sorted(read_inference_log(lake)["request_id"]) == ["r1", "r2"]


def test_rows_being_written_still_count_as_pending(lake):
    """While a flush's write runs, its rows are neither buffered nor written: they must still show as pending."""
    real = LakePartWriter(lake)
    writing, release = threading.Event(), threading.Event()

    def slow(rows):
        writing.set()
        assert release.wait(10)
        return real(rows)

    buffer = InferenceLogBuffer(slow, flush_rows=1000, flush_interval_s=60)
    buffer.append([_row(1), _row(2)])
    flusher = threading.Thread(target=buffer.flush)
    flusher.start()
    assert writing.wait(10)
    assert buffer.pending == 2 and buffer.stats()["pending"] == 2 and buffer.stats()["written_rows"] == 0
    buffer.append([_row(3)])
    assert buffer.pending == 3
    release.set()
    flusher.join(10)
    assert buffer.stats()["pending"] == 1 and buffer.stats()["written_rows"] == 2
    assert buffer.close() == 0 and buffer.pending == 0
    assert sorted(read_inference_log(lake)["request_id"]) == ["r1", "r2", "r3"]


def test_a_month_of_flights_reads_only_the_parts_that_may_hold_it(lake):
    """Parts record their flights' departure span; a month's read skips the other parts, same rows as a full read."""
    from datetime import UTC, datetime

    from airflow_mlops.core.drift import select_period

    def flight(i: int, departs: str) -> dict:
        hour = departs[:13].replace("-", "").replace(":", "")
        return {**_row(i), "flight_id": f"{hour}-UA-{i}", "input_scheduled_departure": f"{departs}Z"}

    writer = LakePartWriter(lake)
    writer([flight(1, "2013-01-31T23:10:00"), flight(2, "2013-01-15T08:00:00")])  # January only
    writer([flight(3, "2013-01-31T23:50:00"), flight(4, "2013-02-01T00:05:00")])  # straddles the boundary
    writer([flight(5, "2013-02-20T12:00:00")])  # February only
    writer([{**_row(6), "flight_id": "no-time"}])  # no event time: always read
    spans = sorted((p.get("event_first", ""), p.get("event_last", ""), p["rows"]) for p in committed_parts(lake))
    assert spans == [
        ("", "", 1),  # no event time: always read
        ("2013-01-15T08:00:00+00:00", "2013-01-31T23:10:00+00:00", 2),
        ("2013-01-31T23:50:00+00:00", "2013-02-01T00:05:00+00:00", 2),
        ("2013-02-20T12:00:00+00:00", "2013-02-20T12:00:00+00:00", 1),
    ]

    february = (datetime(2013, 2, 1, tzinfo=UTC), datetime(2013, 3, 1, tzinfo=UTC))
    read, verified = [], lake.read_verified
    lake.read_verified = lambda record: read.append(record) or verified(record)
    try:
        narrowed = read_inference_log(lake, events=february)
    finally:
        del lake.read_verified
    assert len(read) == 3 and sorted(narrowed["request_id"]) == ["r3", "r4", "r5", "r6"]
    whole = read_inference_log(lake)
    assert len(whole) == 6
    assert select_period(narrowed, *february).equals(select_period(whole, *february))
    assert sorted(select_period(narrowed, *february)["request_id"]) == ["r4", "r5"]


def test_appends_from_many_threads_lose_nothing(lake):
    buffer = InferenceLogBuffer(LakePartWriter(lake), flush_rows=25, flush_interval_s=0.2)
    threads = [
        threading.Thread(target=lambda k=k: [buffer.append([_row(k * 100 + i)]) for i in range(50)]) for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    buffer.close()
    assert read_inference_log(lake)["request_id"].nunique() == 200


# -- infrastructure validation checks against a scripted HTTP server ------------------------------------------
CANNED = {
    "single": [GOOD],
    "batch": {"flights": [GOOD, GOOD]},
    "bad": [{"why": "missing field", "route": "/predict", "body": {"carrier": "UA"}}],
}


def _server(version="7", p=0.4, bad_status=400, delay=0.0):
    def handler(request: httpx.Request) -> httpx.Response:
        import json

        body = json.loads(request.content or b"{}")
        if delay:
            time.sleep(delay)
        answer = {
            "request_id": "x",
            "probability_late": p,
            "late": p >= 0.35,
            "threshold": 0.35,
            "model_version": version,
        }
        if request.url.path == "/predict":
            return (
                httpx.Response(200, json=answer) if "dest" in body else httpx.Response(bad_status, json={"error": "x"})
            )
        if request.url.path == "/predict_batch":
            return httpx.Response(200, json={"predictions": [answer] * len(body["flights"])})
        return httpx.Response(404)

    return httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))


def _decide(http, budget=1000.0):
    return iv.validate_endpoint(
        http, model_name="m", version="7", canned=CANNED, latency_budget_ms=budget, latency_requests=5
    )


def test_a_good_candidate_is_approved():
    decision = _decide(_server())
    assert decision.approved, decision.reasons
    assert set(decision.checks) == {"ready", "canned_single", "canned_batch", "bad_request_4xx", "latency"}
    assert decision.tags()["mlops.infra_validation.approved"] == "true"


@pytest.mark.parametrize(
    ("server", "budget", "check"),
    [
        ({"version": "6"}, 1000.0, "canned_single"),
        ({"p": 1.5}, 1000.0, "canned_batch"),
        ({"bad_status": 500}, 1000.0, "bad_request_4xx"),
        ({"delay": 0.01}, 1.0, "latency"),
    ],
    ids=["wrong-version", "not-a-probability", "bad-request-5xx", "too-slow"],
)
def test_a_failing_check_rejects_with_its_reason(server, budget, check):
    decision = _decide(_server(**server), budget)
    assert not decision.approved and decision.checks[check] is False and decision.reasons


def test_not_ready_and_empty_canned_reject():
    assert not iv.not_ready("m", "7", "never ready").approved
    decision = iv.validate_endpoint(_server(), model_name="m", version="7", canned={}, latency_budget_ms=100)
    assert not decision.approved
