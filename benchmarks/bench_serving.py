"""Benchmarks of the serving stage, in one run, side by side.

    .venv/bin/python benchmarks/bench_serving.py [--requests 400] [--batch-rows 100]

Builds a throw-away stack (January 2013 features online in Feast/SQLite, a champion in a SQLite MLflow) under a
temp MLOPS_HOME, then measures over real HTTP on loopback:

* the BentoML service (``bentoml serve include/serving/service.py``, inference log on) against a bare Starlette
  app (uvicorn, one worker) doing the same work — parse the same typed request, the same Feast lookup, the same
  model — at concurrency 1 and 8: p50 / p99 latency, throughput, 5xx count (targets: ≤ 2× at c=1, ≤ 4× at c=8,
  zero 5xx);
* the online feature lookup inside a prediction, in process (target p99 ≤ 1 ms), next to the model call;
* the batch endpoint's rows/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]
logging.disable(logging.WARNING)

BARE_APP = """
import os, sys
sys.path[:0] = [{plugins!r}]
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from pydantic import ValidationError
from airflow_mlops.core.features import load_spec
from airflow_mlops.core.serving_model import load_version, lookup_features
from airflow_mlops.core.serving_schemas import FlightRequest
from airflow_mlops.hooks.feast_store import FeastHook
from airflow_mlops.hooks.mlflow_registry import MlflowHook

hook = MlflowHook()
model = load_version(hook.client, os.environ["MLOPS_SERVING_MODEL_NAME"], hook.alias_version(os.environ["MLOPS_SERVING_MODEL_NAME"], "champion"))
spec, features = load_spec(), FeastHook().online_reader

def answer(body):
    flight = FlightRequest.model_validate_json(body)
    rows, defaulted = lookup_features(features, spec, [flight])
    p = model.score(rows)[0]
    return {{"flight_id": rows[0]["flight_id"], "probability_late": p, "late": p >= model.threshold,
            "model_version": model.version, "defaults_used": defaulted[0]}}

async def predict(request: Request):
    body = await request.body()
    try:
        return JSONResponse(await run_in_threadpool(answer, body))
    except ValidationError as err:
        return JSONResponse({{"detail": err.errors(include_context=False)}}, status_code=400)

async def readyz(request):
    return JSONResponse({{}})

app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)])
"""


def load(url: str, bodies: list[dict], concurrency: int, total: int, route: str = "/predict") -> dict:
    import httpx

    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60.0) as http:
            http.post(route, json=bodies[0])  # connection warm-up, not counted
            for i in counter:
                started = time.perf_counter()
                response = http.post(route, json=bodies[i % len(bodies)])
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed * 1000.0)
                    statuses.append(response.status_code)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "rps": len(latencies) / wall,
        "5xx": sum(s >= 500 for s in statuses),
        "non200": sum(s != 200 for s in statuses),
    }


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server at {url} exited ({proc.returncode})")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[min(len(values) - 1, int(0.99 * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level and server")
    parser.add_argument("--batch-rows", type=int, default=100)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    # Both servers and the in-process figures score with one OpenMP thread (what the service sets for itself).
    os.environ.update(
        {"MLOPS_HOME": str(home), "PYTHONWARNINGS": "ignore", "GX_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    )
    import serving_fixtures as sf

    from airflow_mlops.serving_process import ServingProcess, free_port

    print(f"building the stack under {home} (features for 2013-01, champion v1) ...", flush=True)
    started = time.perf_counter()
    sf.build_stack(home)
    # Benchmark the shipped limits, not the tests' small batch size.
    sf.write_serving_config(home, request__batch_max_size=500)
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    bodies = sf.canned()["single"]

    # -- in-process: feature lookup vs model call -------------------------------------------------------------
    from airflow_mlops.core.features import load_spec
    from airflow_mlops.core.serving_model import entity_rows, load_version, lookup_features
    from airflow_mlops.core.serving_schemas import FlightRequest
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    hook = FeastHook()
    spec, features, store = load_spec(), hook.online_reader, hook.store
    model = load_version(MlflowHook().client, sf.MODEL, "1")
    flights = [FlightRequest(**b) for b in bodies]
    lookups, scores, generic = [], [], []
    for i in range(1200):
        flight = flights[i % len(flights)]
        t0 = time.perf_counter()
        rows, _ = lookup_features(features, spec, [flight])
        t1 = time.perf_counter()
        model.score(rows)
        t2 = time.perf_counter()
        # Feast's generic read of the same entities, for comparison (what lookup_features used before).
        store.get_online_features(features=spec.feature_refs(), entity_rows=entity_rows([flight], spec)).to_dict()
        t3 = time.perf_counter()
        if i >= 200:
            lookups.append((t1 - t0) * 1000.0)
            scores.append((t2 - t1) * 1000.0)
            generic.append((t3 - t2) * 1000.0)
    lk, sc, gen = percentiles(lookups), percentiles(scores), percentiles(generic)

    # -- servers ---------------------------------------------------------------------------------------------
    bento = ServingProcess(port=free_port(), name="bench-bento", home=home)
    bare_port = free_port()
    app_dir = home / "bare"
    app_dir.mkdir()
    (app_dir / "bare_app.py").write_text(BARE_APP.format(plugins=str(ROOT / "plugins")))
    bare = None
    results: dict[str, dict] = {}
    try:
        bento.start()
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(bare_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=app_dir,
            env={**os.environ, "PYTHONPATH": str(app_dir)},
        )
        bento.wait_ready(240)
        wait_ready(f"http://127.0.0.1:{bare_port}", bare)
        for name, url in (("bentoml", bento.url), ("starlette", f"http://127.0.0.1:{bare_port}")):
            load(url, bodies, 1, 50)  # warm-up
            for c in (1, 8):
                results[f"{name} c={c}"] = load(url, bodies, c, args.requests)
        batch = {"flights": [bodies[i % len(bodies)] for i in range(args.batch_rows)]}
        calls = 20
        t0 = time.perf_counter()
        batch_result = load(bento.url, [batch], 1, calls, route="/predict_batch")
        batch_wall = time.perf_counter() - t0
    finally:
        bento.stop()
        if bare is not None:
            bare.terminate()
            bare.wait(30)

    print(
        f"\nonline feature lookup (Feast SQLite, 5 views, prepared reader): p50 {lk[0]:.2f} ms  p99 {lk[1]:.2f} ms"
        f"   target p99 <= 1 ms: {'met' if lk[1] <= 1.0 else 'MISSED'}"
    )
    print(f"  (Feast's generic get_online_features of the same rows:   p50 {gen[0]:.2f} ms  p99 {gen[1]:.2f} ms)")
    print(f"model call (HistGradientBoosting pipeline, 1 row):         p50 {sc[0]:.2f} ms  p99 {sc[1]:.2f} ms\n")
    print(f"{'server':18s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>8s} {'5xx':>5s}")
    for name, r in results.items():
        print(f"{name:18s} {r['p50']:8.2f} {r['p99']:8.2f} {r['rps']:8.1f} {r['5xx']:5d}")
    print()
    verdicts = []
    for c, target in ((1, 2.0), (8, 4.0)):
        b, s = results[f"bentoml c={c}"], results[f"starlette c={c}"]
        ratio = b["p50"] / s["p50"]
        ok = ratio <= target
        verdicts.append(ok)
        print(
            f"c={c}: BentoML / Starlette p50 latency {ratio:.2f}x (p99 {b['p99'] / s['p99']:.2f}x, throughput "
            f"{s['rps'] / b['rps']:.2f}x lower)   target <= {target:.0f}x: {'met' if ok else 'MISSED'}"
        )
    fivexx = sum(r["5xx"] for r in results.values()) + batch_result["5xx"]
    print(f"5xx answers: {fivexx}   target 0: {'met' if fivexx == 0 else 'MISSED'}")
    print(
        f"batch endpoint: {args.batch_rows} rows per call, {calls} calls: "
        f"{args.batch_rows * calls / batch_wall:.0f} rows/s (p50 {batch_result['p50']:.1f} ms per call)"
    )
    print(json.dumps({"lookup_ms": lk, "score_ms": sc, "http": results}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
