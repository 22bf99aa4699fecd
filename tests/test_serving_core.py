"""Serving core without a server, on the flights example: the generated request and its bad fields, the settings,
requests through ``entity_keys`` to feature rows, scoring by task and the atomic swap, the inference log, and the
infrastructure-validation checks."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from airflow_mlops.core import infra_validation as iv
from airflow_mlops.core.inference_log import (
    InferenceLogBuffer,
    LakePartWriter,
    committed_parts,
    log_records,
    read_inference_log,
)
from airflow_mlops.core.request_schema import batch_model, request_model
from airflow_mlops.core.serving_model import LoadedModel, ModelSlot, check_answers, enrich_requests
from airflow_mlops.core.serving_schemas import Prediction, ServingSettings
from airflow_mlops.usecase import FeatureContext, config, load_function

from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
USECASE = ROOT / "examples" / "flight_delay"
GOOD = {"carrier": "ua", "flight": 1545, "origin": "EWR", "dest": "IAH", "scheduled_departure": "2013-01-01T05:15:00"}


@pytest.fixture(scope="module")
def usecase():
    return config.load(USECASE)


@pytest.fixture(scope="module")
def settings(usecase):
    return ServingSettings.from_usecase(usecase)


@pytest.fixture(scope="module")
def model(settings, usecase):
    return request_model(settings.request, base_dir=usecase.folder)


def test_the_flights_request_is_typed_and_normalized(model):
    from datetime import UTC, datetime

    request = model(**GOOD)
    assert (request.carrier, request.origin, request.dest, request.tailnum) == ("UA", "EWR", "IAH", None)
    # 05:15 in New York in January is 10:15 UTC.
    assert request.scheduled_departure == datetime(2013, 1, 1, 10, 15, tzinfo=UTC)


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
def test_bad_requests_name_the_field(model, change, field):
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ValidationError) as err:
        model(**body)
    assert field in {str(e["loc"][0]) for e in err.value.errors()}


def test_batch_size_limits(model, settings):
    batch = batch_model(model, settings.batch_max_size)
    with pytest.raises(ValidationError, match="at least 1"):
        batch(rows=[])
    with pytest.raises(ValidationError, match="at most"):
        batch(rows=[GOOD] * (settings.batch_max_size + 1))
    assert len(batch(rows=[GOOD, GOOD]).rows) == 2


def test_settings_come_from_the_usecase(usecase, settings, model):
    serving = usecase.serving
    assert settings.model_name == usecase.registered_model_name and settings.task == usecase.task
    assert settings.alias == serving["model"]["alias"] and settings.batch_max_size == serving["batch_max_size"]
    assert settings.log_flush_rows == serving["inference_log"]["flush_rows"]
    assert settings.latency_budget_ms == serving["infra_validation"]["latency_budget_ms"]
    assert settings.canned_file == usecase.folder / serving["swap"]["canned_requests_file"]
    assert settings.service_name == f"mlops_{usecase.name}"
    canned = settings.canned(infra=True)
    assert all(model.model_validate(r) for r in [*canned["single"], *canned["batch"]["rows"]])


@pytest.mark.parametrize(
    ("serving", "with_request", "says"),
    [
        ({"surprise": 1}, True, "serving.surprise"),
        ({"model": {}}, False, "serving.request"),
        ({"threshold": 2.0}, True, "serving.threshold"),
    ],
    ids=["unknown-key", "no-request", "bad-threshold"],
)
def test_a_bad_serving_section_names_the_key(usecase, serving, with_request, says):
    section = {"request": usecase.serving["request"], **serving} if with_request else serving
    with pytest.raises(ValueError, match=says.replace(".", r"\.")):
        ServingSettings.from_usecase(dataclasses.replace(usecase, serving=section))


def test_missing_canned_requests_name_the_file(usecase):
    changed = dataclasses.replace(usecase, serving={**usecase.serving, "swap": {"canned_requests_file": "none.json"}})
    with pytest.raises(ValueError, match="serving.swap.canned_requests_file: .*none.json does not exist"):
        ServingSettings.from_usecase(changed).canned()


def test_traffic_bodies_from_a_frame_of_request_fields(usecase, model):
    import numpy as np
    import pandas as pd

    from airflow_mlops_dev.traffic import requests_from_frame

    frame = pd.DataFrame(
        {
            "carrier": ["UA", "AA"],
            "flight": np.array([1545, 1141], dtype="int64"),
            "origin": ["EWR", "JFK"],
            "dest": ["IAH", "MIA"],
            "scheduled_departure": [pd.Timestamp("2013-01-01T07:00:00"), pd.Timestamp("2013-01-01T05:40:00")],
            "tailnum": ["N14228", np.nan],
            "arr_delay": [3.0, 40.0],  # not a request field: never sent
        }
    )
    bodies = requests_from_frame(frame, usecase)
    assert bodies == [  # in order of the event-time field; a missing optional value left out
        {"carrier": "AA", "flight": 1141, "origin": "JFK", "dest": "MIA", "scheduled_departure": "2013-01-01T05:40:00"},
        {
            "carrier": "UA",
            "flight": 1545,
            "origin": "EWR",
            "dest": "IAH",
            "scheduled_departure": "2013-01-01T07:00:00",
            "tailnum": "N14228",
        },
    ]
    assert all(model.model_validate(b) for b in bodies) and type(bodies[0]["flight"]) is int
    with pytest.raises(ValueError, match="no dest, scheduled_departure"):
        requests_from_frame(frame.drop(columns=["dest", "scheduled_departure"]), usecase)


class FakeStore:
    """Answers like Feast's online store: None for the keys it does not know (``unknown``: view names)."""

    def __init__(self, spec, unknown=()):
        self.spec, self.unknown = spec, set(unknown)

    def read(self, entity_rows):
        served = self.spec.view_of()
        values = {}
        for ref in self.spec.feature_refs():
            view, name = ref.split(":")
            known = view not in self.unknown
            value = "IAH" if served[name].fields[name] == "string" else 1.0
            values[name] = [value if known else None for _ in entity_rows]
        return values


def _enrich(usecase, settings, requests, store):
    from airflow_mlops.core.features import FeatureSpec

    spec = FeatureSpec.from_usecase(usecase)
    model = request_model(settings.request, base_dir=usecase.folder)
    entity_keys = load_function(usecase.module_file, "entity_keys", arity=2)
    ctx = FeatureContext(period="", params=spec.params, config=usecase)
    validated = [model(**r) for r in requests]
    return spec, enrich_requests(validated, model.__request_spec__, entity_keys, ctx, store(spec), spec)


def test_requests_go_through_entity_keys_to_feature_rows(usecase, settings):
    summer = {**GOOD, "scheduled_departure": "2013-07-01T23:30:00-04:00"}
    unknown = ("flight_features", "route_history")
    spec, enriched = _enrich(usecase, settings, [GOOD, summer], lambda s: FakeStore(s, unknown))
    assert enriched.ids == ["20130101T10-UA-1545", "20130702T03-UA-1545"]
    assert enriched.defaulted == [list(unknown), list(unknown)]
    row = enriched.rows[0]
    assert (row["carrier"], row["origin"], row["dest"]) == ("UA", "EWR", "IAH")  # what the request states
    assert (row["sched_hour"], row["weekday"]) == (5, 1)  # local hour and weekday: from the request, not defaults
    assert row["route_flights_30d"] == 0 and row["plane_known"] == 0  # the declared defaults
    assert (enriched.rows[1]["sched_hour"], enriched.rows[1]["weekday"]) == (23, 0)
    assert list(enriched.frame.columns) == [*settings.request["fields"], "event_timestamp"]

    _, known = _enrich(usecase, settings, [GOOD], lambda s: FakeStore(s, ["route_history"]))
    assert known.defaulted == [["route_history"]] and known.rows[0]["distance"] == 1.0


def test_entity_keys_must_answer_every_request_with_its_id(usecase, settings):
    from airflow_mlops.core.features import FeatureSpec

    spec = FeatureSpec.from_usecase(usecase)
    model = request_model(settings.request, base_dir=usecase.folder)
    requests = [model(**GOOD)]
    for keys, says in [
        (lambda rows, ctx: rows.iloc[:0], "0 rows for 1 requests"),
        (lambda rows, ctx: rows, f"no {spec.id_column}"),
        (lambda rows, ctx: {"x": 1}, "not a DataFrame"),
    ]:
        with pytest.raises(ValueError, match=says):
            enrich_requests(requests, model.__request_spec__, keys, None, FakeStore(spec), spec)


class ConstModel:
    def __init__(self, p):
        self.p = p

    def predict_proba(self, frame):
        import numpy as np

        return np.column_stack([1 - np.full(len(frame), self.p), np.full(len(frame), self.p)])

    def predict(self, frame):
        import numpy as np

        return np.full(len(frame), self.p)


def _loaded(version: str, p: float, task: str = "classification") -> LoadedModel:
    from airflow_mlops.core.training import TrainingConfig

    config = TrainingConfig(categorical=("carrier",), numeric=("distance",), task=task)
    threshold = 0.5 if task == "classification" else None
    return LoadedModel(name="m", version=version, model=ConstModel(p), config=config, threshold=threshold)


def test_swap_is_atomic_and_a_failed_check_keeps_the_old_model():
    slot = ModelSlot(_loaded("1", 0.2))
    held = slot.current
    old, new, problems, _ = slot.swap(lambda: _loaded("2", float("nan")), lambda m: check_answers(m.score([{}]), 1))
    assert problems and slot.current is held and slot.swaps == 0
    old, new, problems, _ = slot.swap(lambda: _loaded("2", 0.7), lambda m: check_answers(m.score([{}]), 1))
    assert not problems and slot.current.version == "2" and old is held
    assert held.score([{"carrier": "UA", "distance": 1.0}]) == [pytest.approx(0.2)]  # in-flight keeps its model
    assert (held.decide(0.2), slot.current.decide(0.7)) == (False, True)


def test_scores_and_checks_follow_the_task():
    regression = _loaded("1", 42.5, task="regression")
    assert regression.score([{"carrier": "UA", "distance": 1.0}] * 2) == [42.5, 42.5]
    assert regression.decide(42.5) is None and regression.threshold is None
    assert check_answers([42.5, -3.0], 2, "regression") == []
    assert check_answers([42.5], 2, "regression") == ["1 answers for 2 requests"]
    assert "not finite" in check_answers([float("inf")], 1, "regression")[0]
    assert "outside [0, 1]" in check_answers([1.5], 1, "classification")[0]


def _row(i: int, day: str = "2026-01-01") -> dict:
    return {
        "request_id": f"r{i}",
        "timestamp": f"{day}T00:00:{i % 60:02d}Z",
        "model_version": "1",
        "prediction": 0.1,
    }


def test_inference_log_flushes_by_rows_by_time_and_on_close(lake):
    writer = LakePartWriter(lake)
    buffer = InferenceLogBuffer(writer, flush_rows=5, flush_interval_s=0.3)
    buffer.append([_row(i) for i in range(5)])  # full: flushed by the flusher thread
    wait_for(lambda: buffer.written_rows >= 5, 30, "5 rows (flush_rows) written", every=0.05)
    assert buffer.written_rows == 5 and len(committed_parts(lake)) == 1
    buffer.append([_row(5)])
    # One row, far from flush_rows: only the interval flushes it (close() is not called before the part appears).
    wait_for(lambda: buffer.written_rows >= 6, 30, "the lone row written by the flush interval", every=0.05)
    assert buffer.written_rows == 6 and len(committed_parts(lake)) == 2
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


def test_a_month_of_requests_reads_only_the_parts_that_may_hold_it(lake):
    """Parts record their requests' event-time span; a month's read skips the other parts, same rows as a full
    read."""
    from datetime import UTC, datetime

    from airflow_mlops.core.drift import select_period

    def request(i: int, departs: str) -> dict:
        at = datetime.fromisoformat(departs).replace(tzinfo=UTC)
        return {
            **_row(i),
            "flight_id": f"{at:%Y%m%dT%H}-UA-{i}",
            "event_timestamp": at,
            "input_scheduled_departure": at,
        }

    writer = LakePartWriter(lake)
    writer([request(1, "2013-01-31T23:10:00"), request(2, "2013-01-15T08:00:00")])  # January only
    writer([request(3, "2013-01-31T23:50:00"), request(4, "2013-02-01T00:05:00")])  # straddles the boundary
    writer([request(5, "2013-02-20T12:00:00")])  # February only
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
    assert str(whole["event_timestamp"].dtype) == str(whole["input_scheduled_departure"].dtype) == "datetime64[us, UTC]"
    assert select_period(narrowed, *february).equals(select_period(whole, *february))
    assert sorted(select_period(narrowed, *february)["request_id"]) == ["r4", "r5"]


def test_log_records_hold_inputs_id_features_and_answer(usecase, settings, lake):
    spec, enriched = _enrich(usecase, settings, [GOOD, {**GOOD, "tailnum": "N14228"}], lambda s: FakeStore(s))
    answers = [
        Prediction(
            request_id=f"b-{i}",
            id=ident,
            prediction=p,
            label=p >= 0.35,
            threshold=0.35,
            model_name="m",
            model_version="3",
            defaults_used=unknown,
        )
        for i, (ident, p, unknown) in enumerate(zip(enriched.ids, [0.2, 0.5], enriched.defaulted, strict=True))
    ]
    features = spec.feature_columns
    records = log_records(
        enriched.frame,
        enriched.ids,
        enriched.rows,
        answers,
        id_column=spec.id_column,
        features=features,
        batch_id="b",
        latency_ms=3.0,
    )
    LakePartWriter(lake)(records)
    frame = read_inference_log(lake)
    inputs = [f"input_{name}" for name in settings.request["fields"]]
    assert list(frame.columns) == [
        "request_id",
        "batch_id",
        "timestamp",
        *inputs,
        "event_timestamp",
        spec.id_column,
        *features,
        "defaults_used",
        "prediction",
        "label",
        "threshold",
        "model_name",
        "model_version",
        "latency_ms",
    ]
    assert frame[spec.id_column].tolist() == enriched.ids and frame["batch_id"].tolist() == ["b", "b"]
    assert frame["input_tailnum"].tolist() == [None, "N14228"] and frame["input_carrier"].tolist() == ["UA", "UA"]
    assert frame["label"].tolist() == [False, True] and frame["prediction"].tolist() == [0.2, 0.5]
    assert str(frame["input_scheduled_departure"].dtype) == "datetime64[us, UTC]"
    assert (frame["event_timestamp"] == frame["input_scheduled_departure"]).all()
    (part,) = committed_parts(lake)
    assert part["event_first"] == part["event_last"] == "2013-01-01T10:15:00+00:00"


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


_KILLED_SERVER = """
import os, signal, sys, time
from airflow_mlops.core.inference_log import InferenceLogBuffer, InferenceLogSpool, LakePartWriter
from airflow_mlops.hooks.lake import LakeHook
lake_root, spool, mode = sys.argv[1:4]
rows = lambda a, b: [{"request_id": f"r{i}", "timestamp": f"2026-01-01T00:00:{i:02d}Z", "model_version": "1",
                      "prediction": 0.1} for i in range(a, b)]
real = LakePartWriter(LakeHook(root_url=lake_root))
def dying(batch):  # the part is committed, then the process dies before its segment is deleted
    real(batch)
    os.kill(os.getpid(), signal.SIGKILL)
buffer = InferenceLogBuffer(real if mode == "buffered" else dying, flush_rows=1000, flush_interval_s=600,
                            spool=InferenceLogSpool(spool))
buffer.append(rows(0, 5))
buffer.flush()
buffer.append(rows(5, 10))
print("answered", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["buffered", "committed-not-released"])
def test_a_killed_server_loses_no_answered_row_and_logs_none_twice(lake, tmp_path, mode):
    """SIGKILL with answered rows only in memory (buffered), or between a part's commit and its segment's deletion:
    the next buffer on the spool commits what is missing, once."""
    import os
    import signal
    import subprocess
    import sys

    from airflow_mlops.core.inference_log import InferenceLogSpool

    spool = tmp_path / "spool"
    server = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SERVER, lake.root_url, str(spool), mode],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        if mode == "buffered":
            assert server.stdout.readline().strip() == "answered"
            os.killpg(server.pid, signal.SIGKILL)
        assert server.wait(timeout=120) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        server.stdout.close()
    before = set(read_inference_log(lake)["request_id"])
    assert before == {f"r{i}" for i in range(5)}
    # The segment with rows (committed ones when the kill came after the commit); a write the kill cut short is
    # added to it: its answer never left, it is not recovered.
    leftover = max(spool.glob("*.spool"), key=lambda p: p.stat().st_size)
    assert leftover.stat().st_size > 0
    with leftover.open("ab") as out:
        out.write((1 << 20).to_bytes(8, "big") + b"partial")

    buffer = InferenceLogBuffer(
        LakePartWriter(lake), flush_rows=1000, flush_interval_s=600, spool=InferenceLogSpool(spool)
    )
    assert buffer.recovered_rows == (5 if mode == "buffered" else 0)
    assert not leftover.exists()
    buffer.append([_row(100)])
    assert buffer.close() == 0
    frame = read_inference_log(lake)
    assert frame["request_id"].is_unique
    expected = {f"r{i}" for i in range(10 if mode == "buffered" else 5)} | {"r100"}
    assert set(frame["request_id"]) == expected
    assert list(spool.iterdir()) == []  # everything committed, every segment deleted


def test_a_live_buffer_s_spool_is_not_taken_by_another(lake, tmp_path):
    """Two workers of one server share the spool folder: a starting one never commits the other's rows."""
    from airflow_mlops.core.inference_log import InferenceLogSpool

    spool = tmp_path / "spool"
    first = InferenceLogBuffer(
        LakePartWriter(lake), flush_rows=1000, flush_interval_s=600, spool=InferenceLogSpool(spool)
    )
    first.append([_row(1), _row(2)])
    second = InferenceLogBuffer(
        LakePartWriter(lake), flush_rows=1000, flush_interval_s=600, spool=InferenceLogSpool(spool)
    )
    assert second.recovered_rows == 0 and read_inference_log(lake).empty
    assert first.close() == 0 and second.close() == 0
    assert sorted(read_inference_log(lake)["request_id"]) == ["r1", "r2"]
    assert list(spool.iterdir()) == []


# -- infrastructure validation checks against a scripted HTTP server ------------------------------------------
CANNED = {
    "single": [GOOD],
    "batch": {"rows": [GOOD, GOOD]},
    "bad": [{"why": "missing field", "route": "/predict", "body": {"carrier": "UA"}}],
}


def _server(version="7", p=0.4, bad_status=400, delay=0.0, task="classification", label=None):
    def handler(request: httpx.Request) -> httpx.Response:
        import json

        body = json.loads(request.content or b"{}")
        if delay:
            time.sleep(delay)
        answer = {"request_id": "x", "id": "k", "prediction": p, "model_version": version}
        if task == "classification":
            answer.update(label=p >= 0.35 if label is None else label, threshold=0.35)
        else:
            answer.update(label=label, threshold=None)
        if request.url.path == "/predict":  # {"rows": [request, ...]}, as the batchable API takes
            rows = body.get("rows") if isinstance(body, dict) else None
            good = isinstance(rows, list) and all("dest" in one for one in rows)
            return (
                httpx.Response(200, json=[answer] * len(rows))
                if good
                else httpx.Response(bad_status, json={"error": "x"})
            )
        if request.url.path == "/predict_batch":
            return httpx.Response(200, json={"predictions": [answer] * len(body["rows"])})
        return httpx.Response(404)

    return httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))


def _decide(http, budget=1000.0, canned=CANNED, task="classification"):
    return iv.validate_endpoint(
        http, model_name="m", version="7", canned=canned, latency_budget_ms=budget, latency_requests=5, task=task
    )


def test_a_good_candidate_is_approved():
    decision = _decide(_server())
    assert decision.approved, decision.reasons
    assert set(decision.checks) == {"ready", "canned_single", "canned_batch", "bad_request_4xx", "latency"}
    assert decision.tags()["mlops.infra_validation.approved"] == "true"


def test_a_regression_candidate_is_judged_by_its_task():
    assert _decide(_server(p=1234.5, task="regression"), task="regression").approved
    decision = _decide(_server(p=1234.5, task="regression", label=True), task="regression")
    assert not decision.approved and any("answered a label" in r for r in decision.reasons)
    assert not _decide(_server(p=1234.5, task="regression")).approved  # not a probability


def test_without_a_batch_the_single_requests_are_the_batch():
    decision = _decide(_server(), canned={k: v for k, v in CANNED.items() if k != "batch"})
    assert decision.approved, decision.reasons
    stale = _decide(_server(), canned={**CANNED, "batch": {"flights": [GOOD]}})
    assert not stale.approved and stale.checks["canned_batch"] is False


@pytest.mark.parametrize(
    ("server", "budget", "check"),
    [
        ({"version": "6"}, 1000.0, "canned_single"),
        ({"p": 1.5}, 1000.0, "canned_batch"),
        ({"label": True, "p": 0.1}, 1000.0, "canned_single"),
        ({"bad_status": 500}, 1000.0, "bad_request_4xx"),
        ({"delay": 0.01}, 1.0, "latency"),
    ],
    ids=["wrong-version", "not-a-probability", "label-against-threshold", "bad-request-5xx", "too-slow"],
)
def test_a_failing_check_rejects_with_its_reason(server, budget, check):
    decision = _decide(_server(**server), budget)
    assert not decision.approved and decision.checks[check] is False and decision.reasons


def test_not_ready_and_empty_canned_reject():
    assert not iv.not_ready("m", "7", "never ready").approved
    decision = iv.validate_endpoint(_server(), model_name="m", version="7", canned={}, latency_budget_ms=100)
    assert not decision.approved
