"""Benchmarks of the serving stage, in one run, side by side.

    .venv/bin/python benchmarks/bench_serving.py [--requests 400] [--batch-rows 100] [--lookups 1000]

Builds a throw-away stack for the flight_delay example (``tests/serving_fixtures.py``: January 2013 features online
in Feast/SQLite, a champion in a SQLite MLflow) under a temp MLOPS_HOME, then measures over real HTTP on loopback:

* the generic BentoML service (``airflow_mlops.serving_service:MlopsService`` started by ``ServingProcess`` for the
  use case, inference log on) against a bare Starlette app (uvicorn, one worker) doing the same work — parse the
  same generated request model (``serving.request`` of ``mlops.yaml``), the same entity keys (the use case's
  ``entity_keys``) and Feast lookup, the same model — at concurrency 1 and 8: p50 / p99 latency, throughput, 5xx
  count (targets: ≤ 2× at c=1, ≤ 4× at c=8, zero 5xx);
* the online feature lookup inside a prediction, in process (target p99 ≤ 1 ms), next to the use case's
  ``entity_keys`` (request → keys) and the model call;
* the batch endpoint's rows/s (``{"rows": [...]}``; the shipped ``serving.batch_max_size``);
* this machine's own ceilings (issue 21), in the same run: an echo server (bare uvicorn + Starlette answering a
  constant JSON, the HTTP ceiling) at concurrency 1 and 32 against the service at the same concurrency, and the
  in-process batch rate of the same pipeline on the same rows (features looked up once; the faster of the lean
  scorer and the pipeline's own ``predict_proba``) against ``/predict_batch``; the service's peak memory (RSS of its
  process group) is stated. BentoML's own floor (a batchable API answering a constant) is measured beside them, and
  batch scoring (``bench_batch_scoring.py``, the scoring DAG's step on a real month) against its in-process rate. Issue 21's targets are
  printed as met / MISSED: throughput at 32 clients >= 0.3x the echo server's, p50 at 1 client <= 5x the echo
  server's, p99 at 32 clients <= 4x the echo server's, ``/predict_batch`` >= 0.5x the in-process rate.
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
import os, sys, uuid
sys.path[:0] = [{plugins!r}]
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from pydantic import ValidationError
from threadpoolctl import threadpool_limits
from airflow_mlops.core.features import FeatureSpec
from airflow_mlops.core.request_schema import request_model
from airflow_mlops.core.serving_model import enrich_requests, load_version
from airflow_mlops.core.serving_schemas import ServingSettings
from airflow_mlops.hooks.feast_store import FeastHook
from airflow_mlops.hooks.mlflow_registry import MlflowHook
from airflow_mlops.usecase import FeatureContext, config, load_function

threadpool_limits(1)  # as the service: one OpenMP thread per scoring call
usecase = config.load(os.environ["MLOPS_USECASE"])
settings = ServingSettings.from_usecase(usecase)
UseCaseRequest = request_model(settings.request, base_dir=usecase.folder)
spec = FeatureSpec.from_usecase(usecase)
entity_keys = load_function(usecase.module_file, "entity_keys", arity=2)
ctx = FeatureContext(period="", params=spec.params, config=usecase)
hook = MlflowHook()
name = os.environ["MLOPS_SERVING_MODEL_NAME"]
model = load_version(hook.client, name, hook.alias_version(name, "champion"), settings.threshold)
features = FeastHook(usecase.folder, lake_root=config.lake_url(usecase)).online_reader

def answer(body):
    request = UseCaseRequest.model_validate_json(body)
    enriched = enrich_requests([request], UseCaseRequest.__request_spec__, entity_keys, ctx, features, spec)
    value = model.score(enriched.rows)[0]
    return {{"request_id": uuid.uuid4().hex, "id": enriched.ids[0], "prediction": value,
            "label": model.decide(value), "threshold": model.threshold, "model_name": model.name,
            "model_version": model.version, "defaults_used": enriched.defaulted[0]}}

async def predict(request: Request):
    body = await request.body()
    try:
        return JSONResponse(await run_in_threadpool(answer, body))
    except ValidationError as err:
        return JSONResponse({{"detail": err.errors(include_context=False, include_input=False)}}, status_code=400)

async def readyz(request):
    return JSONResponse({{}})

app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)])
"""


ECHO_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

ANSWER = {"request_id": "0", "id": "x", "prediction": 0.5, "label": False, "model_version": "1"}


async def predict(request):
    await request.body()
    return JSONResponse(ANSWER)


async def readyz(request):
    return JSONResponse({})

app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)])
"""

#: BentoML's own floor: the same batchable API shape answering a constant, no work (what BentoML costs by itself).
BENTO_FLOOR_APP = """
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType


@bentoml.service(name="bench_floor", workers=1, threads=2, logging={"access": {"enabled": False}})
class Floor:
    @bentoml.api(route="/predict", batchable=True, max_batch_size=64, max_latency_ms=10000)
    def predict(self, rows: list[dict[str, Any]]) -> Annotated[list[dict], ContentType("application/json")]:
        return [{"request_id": "0", "prediction": 0.5, "model_version": "1"} for _ in rows]
"""


def group_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (the serving process group)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def uvicorn(app_dir: Path, module: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", f"{module}:app", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(command, cwd=app_dir, env={**os.environ, "PYTHONPATH": str(app_dir), **env})


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
    parser.add_argument("--lookups", type=int, default=1000, help="in-process lookups timed (after 200 warm-up)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    # Both servers and the in-process figures score with one OpenMP thread (what the service sets for itself).
    os.environ.update(
        {"MLOPS_HOME": str(home), "PYTHONWARNINGS": "ignore", "GX_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    )
    from airflow_mlops.hooks.bentoml_process import ServingProcess, free_port

    import serving_fixtures as sf

    print(f"building the stack under {home} (features for 2013-01, champion v1) ...", flush=True)
    started = time.perf_counter()
    sf.build_stack(home)
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    bodies = sf.canned()["single"]

    # -- in-process: entity keys, feature lookup, model call --------------------------------------------------
    from airflow_mlops.core.features import FeatureSpec
    from airflow_mlops.core.request_schema import request_frame, request_model
    from airflow_mlops.core.serving_model import load_version, lookup_features
    from airflow_mlops.core.serving_schemas import ServingSettings
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.usecase import FeatureContext, config, load_function

    usecase = config.load(sf.USECASE)
    settings = ServingSettings.from_usecase(usecase)
    request_type = request_model(settings.request, base_dir=usecase.folder)
    request_spec = request_type.__request_spec__
    spec = FeatureSpec.from_usecase(usecase)
    entity_keys = load_function(usecase.module_file, "entity_keys", arity=2)
    ctx = FeatureContext(period="", params=spec.params, config=usecase)
    hook = FeastHook(usecase.folder, lake_root=config.lake_url(usecase))
    features, store = hook.online_reader, hook.store
    model = load_version(MlflowHook().client, sf.MODEL, "1")
    requests = [request_type.model_validate(b) for b in bodies]
    mapping, lookups, scores, generic = [], [], [], []
    warmup = 200
    for i in range(warmup + args.lookups):
        request = requests[i % len(requests)]
        t0 = time.perf_counter()
        # what the service does per request before the lookup: the request's frame, the use case's entity_keys
        request_keys = entity_keys(request_frame([request], request_spec), ctx).reset_index(drop=True)
        t1 = time.perf_counter()
        rows, _ = lookup_features(features, spec, request_keys)
        t2 = time.perf_counter()
        model.score(rows)
        t3 = time.perf_counter()
        # Feast's generic read of the same entities, for comparison (what lookup_features used before).
        store.get_online_features(
            features=spec.feature_refs(), entity_rows=request_keys.loc[:, spec.join_keys()].to_dict("records")
        ).to_dict()
        t4 = time.perf_counter()
        if i >= warmup:
            mapping.append((t1 - t0) * 1000.0)
            lookups.append((t2 - t1) * 1000.0)
            scores.append((t3 - t2) * 1000.0)
            generic.append((t4 - t3) * 1000.0)
    km, lk, sc, gen = percentiles(mapping), percentiles(lookups), percentiles(scores), percentiles(generic)

    # The in-process batch rate of the same pipeline on the batch endpoint's rows: features looked up once, then
    # model.score on the whole frame (the ceiling /predict_batch is measured against).
    batch_requests = [requests[i % len(requests)] for i in range(args.batch_rows)]
    batch_keys = entity_keys(request_frame(batch_requests, request_spec), ctx).reset_index(drop=True)
    batch_rows, _ = lookup_features(features, spec, batch_keys)
    model.score(batch_rows)
    repeats, t0 = 20, time.perf_counter()
    for _ in range(repeats):
        model.score(batch_rows)
    lean_rate = repeats * args.batch_rows / (time.perf_counter() - t0)
    # The pipeline's own batch prediction on the same rows (features_frame + predict_proba): the ceiling.
    import pandas as pd

    from airflow_mlops.core.training import features_frame

    frame = pd.DataFrame.from_records(batch_rows, columns=model.config.features)
    model.model.predict_proba(features_frame(frame, model.config))
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.model.predict_proba(features_frame(frame, model.config))
    pipeline_rate = repeats * args.batch_rows / (time.perf_counter() - t0)
    in_process_rate = max(lean_rate, pipeline_rate)

    # -- servers ---------------------------------------------------------------------------------------------
    bento = ServingProcess(usecase=sf.USECASE, port=free_port(), name="bench-bento", home=home)
    bare_port = free_port()
    app_dir = home / "bare"
    app_dir.mkdir()
    (app_dir / "bare_app.py").write_text(BARE_APP.format(plugins=str(ROOT / "plugins")))
    (app_dir / "echo_app.py").write_text(ECHO_APP)
    (app_dir / "floor_app.py").write_text(BENTO_FLOOR_APP)
    echo_port, floor_port = free_port(), free_port()
    bare = echo = floor = None
    results: dict[str, dict] = {}
    peak_rss = 0
    try:
        bento.start()
        bare = uvicorn(app_dir, "bare_app", bare_port, {"MLOPS_USECASE": str(usecase.folder)})
        echo = uvicorn(app_dir, "echo_app", echo_port, {})
        floor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "floor_app:Floor",
                "--host",
                "127.0.0.1",
                "--port",
                str(floor_port),
            ],
            cwd=app_dir,
            env={**os.environ, "PYTHONPATH": str(app_dir)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        bento.wait_ready(240)
        wait_ready(f"http://127.0.0.1:{bare_port}", bare)
        wait_ready(f"http://127.0.0.1:{echo_port}", echo)
        wait_ready(f"http://127.0.0.1:{floor_port}", floor)
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak_rss
            while not sampling.is_set():
                peak_rss = max(peak_rss, group_rss(bento.pid() or 0))
                sampling.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # The service's /predict takes {"rows": [request]} (BentoML's batchable API); the echo server gets the same
        # bytes; the bare app parses one request.
        wrapped = [{"rows": [b]} for b in bodies]
        servers = (
            ("bentoml", bento.url, (1, 8, 32), wrapped),
            ("starlette", f"http://127.0.0.1:{bare_port}", (1, 8), bodies),
            ("echo", f"http://127.0.0.1:{echo_port}", (1, 32), wrapped),
            ("bentoml-floor", f"http://127.0.0.1:{floor_port}", (1, 32), wrapped),
        )
        for name, url, levels, sent in servers:
            load(url, sent, 1, 50)  # warm-up
            for c in levels:
                results[f"{name} c={c}"] = load(url, sent, c, args.requests if c < 32 else 4 * args.requests)
        batch = {"rows": [bodies[i % len(bodies)] for i in range(args.batch_rows)]}
        calls = 20
        t0 = time.perf_counter()
        batch_result = load(bento.url, [batch], 1, calls, route="/predict_batch")
        batch_wall = time.perf_counter() - t0
        sampling.set()
        sampler.join(5)
    finally:
        bento.stop()
        for server in (bare, echo):
            if server is not None:
                server.terminate()
                server.wait(30)
        if floor is not None:  # bentoml serve runs its workers in its own process group
            import signal

            os.killpg(floor.pid, signal.SIGTERM)
            floor.wait(30)
    # Batch scoring (the scoring DAG's step) on a real month, in its own process (it sets its own environment).
    scoring = json.loads(
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "bench_batch_scoring.py"), "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )

    print(
        f"\nonline feature lookup (Feast SQLite, 5 views, prepared reader): p50 {lk[0]:.2f} ms  p99 {lk[1]:.2f} ms"
        f"   target p99 <= 1 ms: {'met' if lk[1] <= 1.0 else 'MISSED'}"
    )
    print(f"  (Feast's generic get_online_features of the same rows:   p50 {gen[0]:.2f} ms  p99 {gen[1]:.2f} ms)")
    print(f"request -> entity keys (request_frame + entity_keys):       p50 {km[0]:.2f} ms  p99 {km[1]:.2f} ms")
    print(f"model call (lean scorer of the HGB pipeline, 1 row):        p50 {sc[0]:.2f} ms  p99 {sc[1]:.2f} ms\n")
    print(f"{'server':18s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>8s} {'5xx':>5s} {'non-200':>8s}")
    for name, r in results.items():
        print(f"{name:18s} {r['p50']:8.2f} {r['p99']:8.2f} {r['rps']:8.1f} {r['5xx']:5d} {r['non200']:8d}")
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
    served_rate = args.batch_rows * calls / batch_wall
    b1, b32, e1, e32 = (results[k] for k in ("bentoml c=1", "bentoml c=32", "echo c=1", "echo c=32"))
    print("\nagainst this machine's ceilings (issue 21's targets):")
    for label, value, target, better in (
        ("throughput at 32 clients, service / echo server", b32["rps"] / e32["rps"], 0.3, "high"),
        ("p50 at 1 client, service / echo server", b1["p50"] / e1["p50"], 5.0, "low"),
        ("p99 at 32 clients, service / echo server", b32["p99"] / e32["p99"], 4.0, "low"),
        ("/predict_batch rows/s / in-process batch rows/s", served_rate / in_process_rate, 0.5, "high"),
    ):
        ok = value >= target if better == "high" else value <= target
        sign = ">=" if better == "high" else "<="
        print(f"  {label:55s} {value:8.3f}x   target {sign} {target}x: {'met' if ok else 'MISSED'}")
    print(
        f"  in-process batch rate {in_process_rate:.0f} rows/s (lean scorer {lean_rate:.0f}, the pipeline's own "
        f"predict_proba {pipeline_rate:.0f}); served {served_rate:.0f} rows/s"
    )
    f1, f32 = results["bentoml-floor c=1"], results["bentoml-floor c=32"]
    print(
        f"  BentoML's own floor (a batchable API answering a constant): c=1 p50 {f1['p50'] / e1['p50']:.1f}x the echo "
        f"server's, c=32 {f32['rps'] / e32['rps']:.2f}x its throughput, p99 {f32['p99'] / e32['p99']:.1f}x"
    )
    ok = scoring["ratio"] >= 0.5
    print(
        f"  batch scoring ({scoring['period']}, {scoring['rows']} rows): score + commit {scoring['batch_rows_s']:.0f} "
        f"rows/s, {scoring['ratio']:.2f}x the in-process predict_scores ({scoring['in_process_rows_s']:.0f} rows/s)"
        f"   target >= 0.5x: {'met' if ok else 'MISSED'}; with the point-in-time join "
        f"{scoring['end_to_end_rows_s']:.0f} rows/s ({scoring['end_to_end_rows_s'] / scoring['in_process_rows_s']:.2f}x)"
    )
    print(f"  service peak memory (RSS of its process group, sampled every 0.2 s): {peak_rss / 2**20:.0f} MiB")
    ceilings = {
        "in_process_rows_s": in_process_rate,
        "lean_rows_s": lean_rate,
        "pipeline_rows_s": pipeline_rate,
        "served_rows_s": served_rate,
        "peak_rss": peak_rss,
        "batch_scoring": scoring,
    }
    print(
        json.dumps({"lookup_ms": lk, "entity_keys_ms": km, "score_ms": sc, "http": results, **ceilings}, default=float)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
