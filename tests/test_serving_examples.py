"""Every example's endpoint refuses a bad request with a 4xx naming the field: the real ``bentoml serve`` of the
generic service, started for each use case without a model yet (a request is validated before any model runs)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from waiting import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if (p / "mlops.yaml").is_file())


@pytest.mark.parametrize("folder", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_a_bad_request_to_an_example_endpoint_is_a_4xx_naming_the_field(folder, tmp_path, monkeypatch):
    from airflow_mlops.hooks.bentoml_process import ServingProcess, free_port
    from airflow_mlops.usecase import config

    usecase = config.load(folder)
    canned = json.loads((folder / usecase.serving["swap"]["canned_requests_file"]).read_text())
    request = usecase.serving["request"]
    good = canned["single"][0]
    # Field → a request that is wrong in that field alone: the event time missing, a value outside `allowed`.
    cases = {request["event_time"]: {k: v for k, v in good.items() if k != request["event_time"]}}
    allowed = [name for name, spec in request["fields"].items() if spec.get("allowed")]
    assert allowed, f"{folder.name}: no request field with allowed values to send a wrong one"
    cases[allowed[0]] = {**good, allowed[0]: "NOT-ALLOWED-9"}
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLOPS_LAKE", (tmp_path / "lake").as_uri())
    monkeypatch.setenv("MLOPS_FEAST_HOME", str(tmp_path / "feast"))
    port = free_port()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLOPS_SERVING_ALIAS": "champion"}
    process = ServingProcess(usecase=folder, port=port, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        process.start()
        with httpx.Client(base_url=url, timeout=30) as http:

            def alive() -> bool:  # the server answers (no model: alive, not ready)
                assert process.pid() is not None, f"{folder.name}'s server exited"
                try:
                    return http.get("/livez").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(alive, 240, f"{folder.name}'s server answers /livez")
            assert http.post("/predict", json={"rows": [good]}).status_code != 400  # the good one passes validation
            for field, body in cases.items():
                response = http.post("/predict", json={"rows": [body]})
                assert 400 <= response.status_code < 500, (field, response.status_code, response.text)
                assert field in response.text, (field, response.text)
    finally:
        process.stop()
    assert process.pid() is None
