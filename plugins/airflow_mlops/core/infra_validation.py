"""Infrastructure validation: does a candidate work in the real serving stack? Plain functions over HTTP (httpx).

The candidate runs in its own ``bentoml serve`` on a free loopback port, pinned to its version (the operator
starts and stops it). The checks, each adding a reason when it fails — any failure rejects:

* **readiness**: ``/readyz`` answers 200 within the timeout (a model that cannot load never gets there);
* **canned requests**: each single request and the batch answer 200 with the candidate's version, a request id,
  one answer per request, and a valid prediction: for a classification a probability in [0, 1] with the label
  ``prediction >= threshold``, for a regression a finite number (and no label);
* **bad request**: each canned bad request is answered 4xx (not 2xx, not 5xx);
* **latency**: the p95 of ``latency_requests`` single requests is within the budget.

The decision is a small dataclass that serializes to JSON for XCom and MLflow model-version tags, like the
gate's. No checks run → not approved (fail closed).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class InfraDecision:
    """The verdict on a candidate in the serving stack, with the reason for every failed check."""

    approved: bool
    model_name: str
    version: str
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    ready_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def tags(self) -> dict[str, str]:
        """MLflow model-version tags recording the decision."""
        return {
            "mlops.infra_validation.approved": str(self.approved).lower(),
            "mlops.infra_validation.decision": self.to_json()[:5000],
        }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[index]


def check_prediction(answer: Any, version: str, task: str = "classification") -> list[str]:
    """Problems with one answer of ``/predict`` (empty: valid).

    :param task: ``classification`` (a probability and its label at the threshold) or ``regression`` (a finite
        number, no label).
    """
    if not isinstance(answer, dict):
        return [f"not a JSON object: {str(answer)[:200]}"]
    problems = []
    value, threshold, label = answer.get("prediction"), answer.get("threshold"), answer.get("label")
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if task == "classification":
        if not number or not 0.0 <= value <= 1.0:
            problems.append(f"prediction {value!r} is not a probability")
        elif not isinstance(threshold, int | float) or label is not (value >= threshold):
            problems.append(f"label={label!r} does not follow prediction={value} at threshold {threshold!r}")
    else:
        if not number:
            problems.append(f"prediction {value!r} is not a finite number")
        if label is not None:
            problems.append(f"a regression answered a label ({label!r})")
    if str(answer.get("model_version")) != str(version):
        problems.append(f"answered by version {answer.get('model_version')!r}, not the candidate {version}")
    if not answer.get("request_id"):
        problems.append("no request_id")
    return problems


def predict_body(route: str, body: Any) -> Any:
    """What is posted for a canned body: ``/predict`` takes ``{"rows": [request, ...]}``, so one request goes as
    the rows of one and a bad one is refused for its field, not for the body's shape."""
    return {"rows": [body]} if route == "/predict" and isinstance(body, dict) and "rows" not in body else body


def validate_endpoint(
    http: Any,
    *,
    model_name: str,
    version: str,
    canned: dict[str, Any],
    latency_budget_ms: float,
    latency_requests: int = 50,
    ready_seconds: float | None = None,
    task: str = "classification",
) -> InfraDecision:
    """Run the canned, bad-request and latency checks against a ready server.

    :param http: an ``httpx.Client`` with the server's ``base_url``.
    :param canned: ``{"single": [request, ...], "batch": {"rows": [...]}, "bad": [{"why", "route", "body"}]}``;
        without ``batch`` the single requests are sent as one batch.
    :param task: the model's task (``check_prediction``).
    """
    decision = InfraDecision(approved=False, model_name=model_name, version=str(version), ready_seconds=ready_seconds)
    decision.checks["ready"] = True
    reasons = decision.reasons

    single_ok = bool(canned.get("single"))
    for i, request in enumerate(canned.get("single") or []):
        response = http.post("/predict", json={"rows": [request]})
        if response.status_code != 200:
            single_ok = False
            reasons.append(f"canned request {i} answered HTTP {response.status_code}: {response.text[:300]}")
            continue
        answers = response.json()
        if not isinstance(answers, list) or len(answers) != 1:
            single_ok = False
            reasons.append(f"canned request {i}: /predict answered {str(answers)[:200]}, not a list of one answer")
            continue
        problems = check_prediction(answers[0], version, task)
        if problems:
            single_ok = False
            reasons.append(f"canned request {i}: {'; '.join(problems)}")
    if not canned.get("single"):
        reasons.append("no canned single requests to check")
    decision.checks["canned_single"] = single_ok

    batch = canned.get("batch") or ({"rows": list(canned["single"])} if canned.get("single") else None)
    rows = batch.get("rows") if isinstance(batch, dict) else None
    batch_ok = isinstance(rows, list) and bool(rows)
    if batch and not batch_ok:
        reasons.append('the canned batch must be {"rows": [request, ...]}')
    elif batch:
        response = http.post("/predict_batch", json=batch)
        if response.status_code != 200:
            batch_ok = False
            reasons.append(f"canned batch answered HTTP {response.status_code}: {response.text[:300]}")
        else:
            body = response.json()
            answers = body.get("predictions") if isinstance(body, dict) else None
            if not isinstance(answers, list) or len(answers) != len(rows):
                batch_ok = False
                reasons.append(f"canned batch of {len(rows)} got {len(answers or [])} answers")
            else:
                problems = [p for a in answers for p in check_prediction(a, version, task)]
                if problems:
                    batch_ok = False
                    reasons.append(f"canned batch: {'; '.join(sorted(set(problems)))}")
    else:
        reasons.append("no canned batch to check")
    decision.checks["canned_batch"] = batch_ok

    bad_ok = bool(canned.get("bad"))
    for case in canned.get("bad") or []:
        response = http.post(case["route"], json=predict_body(case["route"], case["body"]))
        if not 400 <= response.status_code < 500:
            bad_ok = False
            reasons.append(f"bad request ({case.get('why')}) answered HTTP {response.status_code}, expected 4xx")
    if not canned.get("bad"):
        reasons.append("no canned bad requests to check")
    decision.checks["bad_request_4xx"] = bad_ok

    timings, failures = [], 0
    if canned.get("single"):
        requests = canned["single"]
        http.post("/predict", json={"rows": [requests[0]]})  # warm the connection
        for i in range(latency_requests):
            started = time.perf_counter()
            response = http.post("/predict", json={"rows": [requests[i % len(requests)]]})
            timings.append((time.perf_counter() - started) * 1000.0)
            failures += response.status_code != 200
    if timings:
        decision.latency_ms = {
            "p50": round(percentile(timings, 50), 2),
            "p95": round(percentile(timings, 95), 2),
            "max": round(max(timings), 2),
            "budget_p95": float(latency_budget_ms),
            "requests": len(timings),
        }
    latency_ok = bool(timings) and failures == 0 and decision.latency_ms["p95"] <= latency_budget_ms
    if timings and decision.latency_ms["p95"] > latency_budget_ms:
        reasons.append(
            f"latency p95 {decision.latency_ms['p95']:.1f} ms exceeds the budget of {latency_budget_ms:.0f} ms"
        )
    if failures:
        reasons.append(f"{failures} of {len(timings)} latency requests failed")
    decision.checks["latency"] = latency_ok

    decision.approved = bool(decision.checks) and all(decision.checks.values())
    if decision.approved:
        reasons.append(
            f"all {len(decision.checks)} checks passed: ready in {ready_seconds or 0:.1f} s, "
            f"p95 {decision.latency_ms['p95']:.1f} ms <= {latency_budget_ms:.0f} ms"
        )
    return decision


def not_ready(model_name: str, version: str, reason: str, ready_seconds: float | None = None) -> InfraDecision:
    """The decision for a candidate whose server never became ready."""
    return InfraDecision(
        approved=False,
        model_name=model_name,
        version=str(version),
        reasons=[reason],
        checks={"ready": False},
        ready_seconds=ready_seconds,
    )
