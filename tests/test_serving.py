"""Real HTTP to a real ``bentoml serve`` of the generic service, serving the flights example: predictions, bad
input, infra validation, a swap under load, the inference log.

One server for the module (started by ``BentoMLDeployOperator`` as the DAG would), on a free loopback port in a
temporary MLOPS stack (serving_fixtures). Candidates for infra validation each get their own pinned server.
Every answered request id is collected; the last test on that server stops it and compares them with the log under
the use case's lake root. The tests run in the module's order, which they need: the swap test moves the server from
v1 to the second version, so the tests asserting v1's answers come before it. Each also passes alone (``-k``): the
module's fixtures make the stack, the champion, the server and the candidates it uses.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import serving_fixtures as sf
from training_fixtures import task_context

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
USECASE = str(sf.USECASE)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from airflow_mlops.hooks.bentoml_process import free_port

    home = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in sf.stack_env(home).items():
            mp.setenv(key, value)
        port = free_port()
        # The use case's default endpoint on this port (not an explicit URL): the embedded server, which the deploy
        # step may start.
        mp.setenv("MLOPS_SERVING_PORT__FLIGHT_DELAY", str(port))
        mp.delenv("MLOPS_SERVING_URL__FLIGHT_DELAY", raising=False)
        built = sf.build_stack(home)
        built.update(port=port, url=f"http://127.0.0.1:{port}", answered=set())
        yield built


@pytest.fixture(scope="module")
def server(stack):
    """The embedded server, started by BentoMLDeployOperator (nothing answers yet → it starts one)."""
    from airflow_mlops.operators.serving import BentoMLDeployOperator
    from airflow_mlops_dev.serving import embedded

    process = embedded(USECASE, stack["port"])
    try:
        out = BentoMLDeployOperator(task_id="deploy", usecase=USECASE, registered_model_name=sf.MODEL).execute(
            task_context("deploy")
        )
        assert out["action"] == "started" and out["version"] == "1" and out["usecase"] == "flight_delay", out
        yield process
    finally:
        process.stop()


@pytest.fixture
def http(server, stack):
    with httpx.Client(base_url=stack["url"], timeout=30.0) as client:
        yield client


def _record(stack, body):
    answers = body["predictions"] if isinstance(body, dict) else body
    stack["answered"].update(a["request_id"] for a in answers)


def test_single_and_batch_predictions(http, stack):
    c = sf.canned()
    one = http.post("/predict", json={"rows": c["single"][:1]})
    assert one.status_code == 200, one.text
    (body,) = one.json()
    assert body["id"] == "20130101T10-UA-1545" and body["model_version"] == "1"  # the use case's entity_keys
    assert 0 <= body["prediction"] <= 1 and body["label"] == (body["prediction"] >= body["threshold"])
    assert "flight_features" not in body["defaults_used"]  # a flight of January: materialized
    _record(stack, [body])
    several = http.post("/predict", json={"rows": c["single"]})  # one call may hold several requests, each its own
    assert several.status_code == 200, several.text
    assert [a["prediction"] for a in several.json()][:1] == pytest.approx([body["prediction"]])
    assert len({a["request_id"] for a in several.json()}) == len(c["single"])
    _record(stack, several.json())
    batch = http.post("/predict_batch", json=c["batch"])
    assert batch.status_code == 200, batch.text
    answers = batch.json()["predictions"]
    asked = len(c["batch"]["rows"])  # the canned batch: an answer and a request id per row
    assert len(answers) == asked and len({a["request_id"] for a in answers}) == asked
    assert answers[0]["prediction"] == pytest.approx(body["prediction"])
    assert {"flight_features", "carrier_history"} <= set(answers[2]["defaults_used"])  # ZZ 9999 in 2025
    _record(stack, batch.json())


GOOD = {"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH", "scheduled_departure": "2013-01-01T05:15:00"}
BAD = {
    "missing-field": ("/predict", {k: v for k, v in GOOD.items() if k != "dest"}, "dest"),
    "wrong-type": ("/predict", {**GOOD, "flight": "soon"}, "flight"),
    "unknown-airport": ("/predict", {**GOOD, "dest": "XQZ"}, "dest"),
    "unknown-origin": ("/predict", {**GOOD, "origin": "ORD"}, "origin"),
    "out-of-range-time": ("/predict", {**GOOD, "scheduled_departure": "1999-01-01T10:00:00"}, "scheduled_departure"),
    "extra-field": ("/predict", {**GOOD, "surprise": 1}, "surprise"),
    "bad-row-in-batch": ("/predict_batch", {"rows": [GOOD, {**GOOD, "carrier": "UNITED"}]}, "rows"),
    "empty-batch": ("/predict_batch", {"rows": []}, "rows"),
    "oversized-batch": ("/predict_batch", None, "rows"),
    "not-json": ("/predict", b"{not json", None),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_4xx_with_field_detail(http, case):
    from airflow_mlops.core.serving_schemas import ServingSettings
    from airflow_mlops.usecase import config

    route, body, field = BAD[case]
    if body is None:
        limit = ServingSettings.from_usecase(config.load(USECASE)).batch_max_size
        body = {"rows": [GOOD] * (limit + 1)}
    response = (
        http.post(route, content=body, headers={"Content-Type": "application/json"})
        if isinstance(body, bytes)
        else http.post(route, json={"rows": [body]} if route == "/predict" else body)
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if field:
        assert response.status_code == 400, response.text
        assert any(field in map(str, d["loc"]) for d in response.json()["detail"]), response.text


def test_a_bad_field_on_the_flights_endpoint_is_a_400_naming_it(http):
    """The generated request model answers before any feature lookup, naming the field and what it allows."""
    response = http.post("/predict", json={"rows": [GOOD, {**GOOD, "origin": "ORD"}]})
    assert response.status_code == 400, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["rows", 1, "origin"] and "EWR, JFK, LGA" in detail["msg"], detail


def test_health_and_metrics(http):
    assert http.get("/readyz").status_code == 200
    assert http.get("/livez").status_code == 200
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    info = http.post("/info", json={}).json()
    assert info["model_version"] == "1" and info["alias"] == "champion" and info["inference_log"]["failed_flushes"] == 0
    assert (info["usecase"], info["task"], info["model_name"]) == ("flight_delay", "classification", sf.MODEL)


def test_admin_reload_needs_the_token(http):
    assert http.post("/admin/reload", json={"version": "1"}).status_code == 403
    assert http.post("/admin/reload", json={"version": "1"}, headers={"X-MLOPS-Token": "wrong"}).status_code == 403


def test_admin_flush_commits_the_inference_log_now(http, stack):
    from airflow_mlops.hooks.bentoml_process import admin_token
    from airflow_mlops_dev import traffic

    assert http.post("/admin/flush_log", json={}).status_code == 403
    one = http.post("/predict", json={"rows": sf.canned()["single"][:1]})
    assert one.status_code == 200, one.text
    _record(stack, one.json())
    before = http.post("/info", json={}).json()["inference_log"]
    flushed = http.post("/admin/flush_log", json={}, headers={"X-MLOPS-Token": admin_token()})
    assert flushed.status_code == 200, flushed.text
    stats = flushed.json()
    assert stats["pending"] == 0 and stats["written_rows"] >= before["written_rows"] + before["pending"] > 0
    assert traffic.wait_logged(stack["url"], token=admin_token())["pending"] == 0


@pytest.fixture(scope="module")
def versions(stack):
    return {"good": sf.register_second(stack), "unloadable": sf.register_unloadable(), "wrong": sf.register_wrong()}


def _registered(version: str) -> dict:
    return {"name": sf.MODEL, "version": version, "run_id": "r", "gate": {"approved": True, "champion_version": "1"}}


@pytest.mark.parametrize("kind", ["unloadable", "wrong"])
def test_infra_validation_rejects_a_bad_candidate_and_champion_stays(server, versions, kind):
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.serving import BentoMLInfraValidateOperator, InfraValidationError

    version = versions[kind]
    context = task_context("infra_validate")
    with pytest.raises(InfraValidationError, match="failed infrastructure validation"):
        BentoMLInfraValidateOperator(
            task_id="infra_validate", usecase=USECASE, registered=_registered(version)
        ).execute(context)
    decision = context["ti"].xcom["infra_validation"]
    assert not decision["approved"] and decision["checks"]["ready"] is False
    assert "cannot serve" in decision["reasons"][0]
    hook = MlflowHook()
    tags = hook.client.get_model_version(sf.MODEL, version).tags
    assert tags["mlops.infra_validation.approved"] == "false"
    assert hook.alias_version(sf.MODEL, "champion") == "1"


def test_infra_validation_approves_a_good_candidate(server, versions):
    from airflow_mlops.operators.serving import BentoMLInfraValidateOperator

    out = BentoMLInfraValidateOperator(
        task_id="infra_validate", usecase=USECASE, registered=_registered(versions["good"])
    ).execute(task_context("infra_validate"))
    decision = out["infra_validation"]
    assert decision["approved"], decision["reasons"]
    assert all(decision["checks"].values()) and decision["latency_ms"]["p95"] <= decision["latency_ms"]["budget_p95"]
    assert out["version"] == versions["good"] and out["gate"]["approved"]  # what MlflowPromoteModelOperator takes


def test_swap_under_load_fails_no_request(server, versions, stack, tmp_path):
    """32 concurrent clients, adaptively batched: the champion is swapped while they run and none of them fails."""
    from airflow_mlops.operators.serving import BentoMLDeployOperator

    stop, out = tmp_path / "stop", tmp_path / "results.json"
    code = f"import serving_fixtures as s; s.client_loop({stack['url']!r}, {str(stop)!r}, {str(out)!r}, threads=32)"
    client = subprocess.Popen([sys.executable, "-c", code], cwd=TESTS)
    try:
        assert sf.wait_for_file(Path(f"{out}.ready"), client), "the clients never got 100 answers"
        deployed = BentoMLDeployOperator(
            task_id="deploy", usecase=USECASE, version=versions["good"], registered_model_name=sf.MODEL
        ).execute(task_context("deploy"))
        assert sf.wait_for_file(Path(f"{out}.swapped"), client), "no 100 answers from the new version"
    finally:
        stop.touch()
        client.wait(timeout=120)
    assert deployed["action"] == "swapped" and deployed["from_version"] == "1"
    results = json.loads(out.read_text())
    failed = [r for r in results if r["status"] != 200]
    assert not failed, failed[:5]
    seen = [r["version"] for r in results]
    assert set(seen) == {"1", versions["good"]}, set(seen)
    assert seen.index(versions["good"]) > 0  # requests were answered by v1 before the swap
    stack["answered"].update(r["request_id"] for r in results)
    again = BentoMLDeployOperator(
        task_id="deploy", usecase=USECASE, version=versions["good"], registered_model_name=sf.MODEL
    ).execute(task_context("deploy"))
    assert again["action"] == "unchanged"


def test_inference_log_holds_exactly_the_answered_requests(server, stack, http):
    """Last of the tests on the module's server (it stops it): a clean shutdown flushes the buffer under the use
    case's lake root; bad requests were never logged.

    The log must hold every request answered by the module's server: those of the tests before it (collected in
    ``stack["answered"]``) and the batch it asks for itself first, so it has answers to find when run alone.
    """
    from airflow_mlops.core.inference_log import read_inference_log

    own = http.post("/predict_batch", json=sf.canned()["batch"])
    assert own.status_code == 200, own.text
    own_ids = {a["request_id"] for a in own.json()["predictions"]}
    assert len(own_ids) == len(sf.canned()["batch"]["rows"])
    _record(stack, own.json())
    assert server.stop()
    frame = read_inference_log(stack["usecase_lake"])
    assert len(frame) == len(stack["answered"])
    assert set(frame["request_id"]) == stack["answered"]
    assert frame["request_id"].is_unique
    expected = {"input_carrier", "input_scheduled_departure", "event_timestamp", "flight_id", "carrier_late_rate_7d"}
    assert expected | {"prediction", "label", "threshold", "model_version"} <= set(frame.columns)
    assert frame["timestamp"].dt.tz is not None and frame["model_version"].notna().all()
    assert (frame["label"] == (frame["prediction"] >= frame["threshold"])).all()
    assert read_inference_log(stack["lake"]).empty  # not at the lake's root


def test_a_server_up_without_a_model_is_loaded_by_the_deploy(stack, monkeypatch):
    """A server started before its first champion (a compose service) answers /livez but not /readyz; the deploy
    loads the model into it instead of failing or starting another one."""

    from airflow_mlops.hooks.bentoml_process import ServingProcess, free_port
    from airflow_mlops.hooks.bentoml_serving import BentoServingHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.serving import BentoMLDeployOperator, mlflow_env

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hook = MlflowHook()
    env = {**mlflow_env(hook), "MLOPS_SERVING_MODEL_NAME": sf.MODEL, "MLOPS_SERVING_ALIAS": "canary"}
    # A name of its own: the default one is the module's embedded server's pid file (start() would find it running).
    process = ServingProcess(usecase=USECASE, port=port, env=env, name=f"serving-external-{port}")
    # Given by URL, as compose gives it: the deploy step reaches it with MLOPS_SERVING_TOKEN, which the server has too.
    monkeypatch.setenv("MLOPS_SERVING_URL__FLIGHT_DELAY", url)
    monkeypatch.setenv("MLOPS_SERVING_TOKEN", secrets.token_hex(16))
    serving = BentoServingHook(USECASE)
    assert not serving.is_embedded
    try:
        process.start()
        deadline = time.monotonic() + 240
        while not serving.is_alive():
            assert time.monotonic() < deadline, "the server never answered /livez"
            assert process.pid() is not None, "the server exited"
            time.sleep(0.5)  # polling a condition (the server's liveness), bounded by the deadline
        assert not serving.is_ready()  # no canary yet: up, waiting for a model
        hook.client.set_registered_model_alias(sf.MODEL, "canary", "1")
        out = BentoMLDeployOperator(
            task_id="deploy", usecase=USECASE, registered_model_name=sf.MODEL, alias="canary", start_if_down=False
        ).execute(task_context("deploy"))
        assert out["action"] == "loaded" and out["version"] == "1", out
        assert serving.is_ready() and serving.info()["model_version"] == "1"
    finally:
        process.stop()
        hook.client.delete_registered_model_alias(sf.MODEL, "canary")
