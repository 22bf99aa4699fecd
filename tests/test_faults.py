"""Faults that lose nothing: components SIGKILLed in the middle of a month of the loop on the embedded profile.

One embedded stack (``devstack.Stack``: API server, scheduler, DAG processor, triggerer as processes) in a temporary
``MLOPS_HOME`` on free ports, driving a copy of ``examples/flight_delay`` (no schedule: runs come from the landing
flag and the REST API; approval ``manual``, so the training run waits for a person; a looser infra-validation
latency budget, as in test_production_profile). January and February land and go through to a
champion, approved over REST and served by the deploy step. Then March, with faults; each killed component's whole
process group gets SIGKILL at a condition seen through the REST API (or the server's metrics), then the user restarts
everything as ``make up`` does (``python -m airflow_mlops_dev.devstack up`` then ``python -m
airflow_mlops_dev.serving up``, as subprocesses):

0. the triggerer (it runs the landing-flag watcher) just before March lands: the flag written while it is dead
   starts March's ingest run once it is back;
1. the scheduler while March's ingest or validation task runs (the task dies with it);
2. the scheduler while ``train_model`` runs;
3. (no kill) ``approve_model`` awaits input (Airflow 3.3 parks a human-in-the-loop task in the metadata DB, not in
   the triggerer) and is approved over REST while a client sends traffic;
4. the serving process as soon as the deploy step runs (it swaps v2 in; the kill lands before or during its
   ``/admin/reload``), with a client sending March's flights that retries every refused or failed call until it
   is answered.

The month converges: the batch validated once, every committed lake directory matches its manifest, one registry
version per training run and one promotion per approved version, and every request the client sent was answered,
each answered request in the inference log exactly once. The figures (tries, refused calls, recovery times) are
printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml
from production_fixtures import processes_with
from test_production_profile import _lake_problems, _processes_with_group

from airflow_mlops.hooks.bentoml_process import free_port
from airflow_mlops.processes import process_running
from airflow_mlops.usecase import config
from airflow_mlops_dev import replay
from airflow_mlops_dev.devstack import AirflowClient, Stack

from conftest import ROOT

# The months before the faults (champion fixture) count in the test's time: a bound of its own.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]
EXAMPLE = ROOT / "examples" / "flight_delay"
NAME = config.load(EXAMPLE).name
INGEST, FEATURES, TRAINING = (
    config.load(EXAMPLE).dag_id(stage) for stage in ("ingest_validate", "features", "training")
)
#: What the faulted training run does, in order (approval manual: a person answers, here over REST).
TRAINING_TASKS = (
    "training_set",
    "train_model",
    "evaluate_challenger",
    "model_gate",
    "register_model",
    "infra_validate",
    "approve_model",
    "promote_model",
    "deploy_model",
)
FIGURES: dict[str, object] = {}


@pytest.fixture(scope="module")
def usecase(tmp_path_factory) -> config.UseCase:
    """A copy of ``examples/flight_delay``: no schedule (runs from the landing flag and REST only), every promotion
    approved by a person over REST, a looser latency budget for a shared 2-core host."""
    folder = tmp_path_factory.mktemp("projects") / NAME
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((folder / config.CONFIG_FILE).read_text())
    raw["source"]["schedule"] = None
    raw["model"]["schedule_cron"] = None
    raw["serving"]["infra_validation"]["latency_budget_ms"] = 2000
    raw["approval"] = "manual"
    (folder / config.CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    return config.load(folder)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, usecase):
    home = tmp_path_factory.mktemp("faults-home")
    serving_port = free_port()
    stack = None
    with pytest.MonkeyPatch.context() as patch:
        for name in [
            k
            for k in os.environ
            if k.startswith(("AIRFLOW", "MLFLOW_", "MLOPS_SERVING_")) or k in ("MLOPS_USECASE", "MLOPS_FEAST_HOME")
        ]:
            patch.delenv(name)
        patch.setenv("MLOPS_PROFILE", "embedded")
        patch.setenv("MLOPS_HOME", str(home))
        patch.setenv("MLOPS_LAKE", (home / "lake").as_uri())
        patch.setenv("MLOPS_PROJECTS", str(usecase.folder.parent))
        key = NAME.upper()
        # The embedded endpoint (the deploy step starts it when down) on a free port.
        patch.setenv(f"MLOPS_SERVING_PORT__{key}", str(serving_port))
        # `make up` (the restart) finds this stack by MLOPS_HOME and this port.
        patch.setenv("MLOPS_AIRFLOW_PORT", str(free_port()))
        # A task whose process died with the scheduler is failed (and retried) after 30 s without heartbeat (a live
        # task heartbeats every 5 s); the restarted scheduler resets the dead one's orphaned tasks every 30 s
        # (defaults 300 s: measured, the first recovery then takes ~5 min).
        patch.setenv("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "30")
        patch.setenv("AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL", "30")
        try:
            stack = Stack.from_env()
            stack.up(timeout=600)
            yield stack
        finally:
            from airflow_mlops_dev import serving as serving_process

            try:
                serving_process.embedded(usecase.folder).stop()
                if stack is not None:
                    stack.down()
            finally:  # whatever failed above, no process of the stack outlives the module
                leftovers = processes_with(home)
                for pid in leftovers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if FIGURES:
                print("\nfault figures:")
                for key, value in FIGURES.items():
                    print(f"  {key}: {value}")
    assert stack.pids() == {}
    assert leftovers == [], f"processes of the stack still ran after down: {leftovers}"


@pytest.fixture(scope="module")
def client(stack) -> AirflowClient:
    client = AirflowClient(stack.url, "admin", stack.admin_password())
    for dag_id in (INGEST, FEATURES, TRAINING):
        client.wait_dag(dag_id, timeout=300)
        client.unpause(dag_id)
    return client


# ------------------------------------------------------------------------------------------------ helpers
def _wait(predicate, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} after {timeout:.0f} s")


def _tries(client: AirflowClient, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
    return {
        ti["task_id"]: (ti["state"], ti["try_number"])
        for ti in client.task_instances(dag_id, run_id)
        if ti["map_index"] in (-1, 0)
    }


def _new_run(client: AirflowClient, dag_id: str, seen: set[str]) -> dict | None:
    return next((r for r in client.runs(dag_id) if r["dag_run_id"] not in seen), None)


def _succeeded(client: AirflowClient, dag_id: str, run_id: str, timeout: float = 900) -> dict[str, tuple[str, int]]:
    assert client.wait_run(dag_id, run_id, timeout=timeout) == "success", client.task_instances(dag_id, run_id)
    return _tries(client, dag_id, run_id)


def _kill(stack: Stack, component: str) -> float:
    """SIGKILL ``component``'s process group (the tasks it runs die with it); returns the kill's monotonic time."""
    pid = stack.pids()[component]
    os.killpg(pid, signal.SIGKILL)
    killed = time.monotonic()
    _wait(lambda: component not in stack.pids(), 60, f"{component} survived SIGKILL", 0.2)
    _wait(lambda: not _processes_with_group(pid), 60, f"processes of {component}'s group survived SIGKILL", 0.2)
    return killed


def _kill_serving(usecase) -> float:
    """SIGKILL the whole serving process: the server's group and its workers (BentoML runs each in a group of its
    own), as a crash of the machine or container would; returns the kill's monotonic time."""
    import psutil

    from airflow_mlops_dev.serving import embedded

    pid = embedded(usecase.folder).pid()
    assert pid is not None, "the serving process does not run"
    workers = psutil.Process(pid).children(recursive=True)
    assert workers, "the serving process has no worker"
    os.killpg(pid, signal.SIGKILL)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    killed = time.monotonic()
    _wait(lambda: not _processes_with_group(pid), 60, "processes of the serving group survived SIGKILL", 0.2)
    _wait(lambda: not any(map(process_running, workers)), 60, "a serving worker survived SIGKILL", 0.2)
    return killed


def _make_up() -> None:
    """What ``make up`` runs, as the user would after a crash."""
    for module in ("airflow_mlops_dev.devstack", "airflow_mlops_dev.serving"):
        done = subprocess.run(
            [sys.executable, "-m", module, "up"], env=dict(os.environ), capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"{module} up: {done.stdout[-3000:]}{done.stderr[-3000:]}"


def _running(client: AirflowClient, dag_id: str, run_id: str, tasks: tuple[str, ...]) -> str | None:
    states = _tries(client, dag_id, run_id)
    return next((t for t in tasks if states.get(t, ("", 0))[0] == "running"), None)


def _approve(stack: Stack, client: AirflowClient, run_id: str) -> None:
    def asked() -> bool:
        run = client._ok(client.http.get(f"/api/v2/dags/{TRAINING}/dagRuns/{run_id}"))
        assert run["state"] not in ("success", "failed"), client.task_instances(TRAINING, run_id)
        return bool(client.pending_approvals(TRAINING, run_id))

    _wait(asked, 1200, "approve_model never asked", 1.0)
    # Airflow 3.3 race (as in test_approval): an answer that resumes the task before the scheduler has handled the
    # parked worker's exit fails that try ("state changed externally") and a retry asks again. A person never
    # answers that fast; a script waits until the scheduler logged the parked try as finished.
    parked = f"task_id=approve_model, run_id={run_id}, "
    log = stack.home / "logs" / "scheduler.log"

    def handled() -> bool:
        lines = log.read_text(errors="replace").splitlines()
        return any("TaskInstance Finished" in ln and parked in ln and "state=awaiting_input" in ln for ln in lines)

    _wait(handled, 300, "the scheduler never handled the parked approve_model", 0.5)
    client.respond(TRAINING, run_id, "approve_model", "Approve", comment="test_faults")


class RetryingClient:
    """``threads`` callers sending ``bodies`` in batches to ``/predict_batch``, each batch retried (connection refused,
    reset, 5xx) until it is answered; 4xx is an error of the test. Paced (one call per ``pace`` s per thread)."""

    def __init__(self, url: str, bodies: list[dict], threads: int = 2, batch: int = 20, pace: float = 0.1) -> None:
        self.url, self.bodies, self.batch, self.pace = url, bodies, batch, pace
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.next = 0
        self.answered: dict[str, str] = {}  # request id -> model version
        self.calls = self.refused = self.retried_batches = self.errors_4xx = 0
        self.refusals: dict[str, int] = {}
        self.unanswered = 0
        self.first_failure: float | None = None
        self.outages: list[float] = []
        self.pool = [threading.Thread(target=self._worker, daemon=True) for _ in range(threads)]

    def start(self) -> RetryingClient:
        for thread in self.pool:
            thread.start()
        return self

    def versions_since(self, version: str) -> int:
        with self.lock:
            return sum(1 for v in self.answered.values() if v == version)

    def _take(self) -> list[dict]:
        with self.lock:
            start = self.next % len(self.bodies)
            self.next += self.batch
        return self.bodies[start : start + self.batch]

    def _worker(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                rows, retried = self._take(), False
                deadline = time.monotonic() + 600
                while True:  # until answered: a call already sent is never given up when the test stops
                    with self.lock:
                        self.calls += 1
                    try:
                        response = http.post("/predict_batch", json={"rows": rows})
                        kind = None if response.status_code == 200 else f"HTTP {response.status_code}"
                    except httpx.HTTPError as err:
                        response, kind = None, type(err).__name__
                    if kind is None:
                        with self.lock:
                            for answer in response.json()["predictions"]:
                                self.answered[answer["request_id"]] = answer["model_version"]
                            if self.first_failure is not None:
                                self.outages.append(time.monotonic() - self.first_failure)
                                self.first_failure = None
                        break
                    if response is not None and 400 <= response.status_code < 500:
                        with self.lock:
                            self.errors_4xx += 1
                        break
                    with self.lock:
                        self.refused += 1
                        self.refusals[kind] = self.refusals.get(kind, 0) + 1
                        self.retried_batches += not retried
                        self.first_failure = self.first_failure or time.monotonic()
                    retried = True
                    if time.monotonic() > deadline:
                        with self.lock:
                            self.unanswered += len(rows)
                        break
                    time.sleep(0.2)  # backoff before the retry
                self.stop.wait(self.pace)

    def close(self) -> None:
        self.stop.set()
        for thread in self.pool:
            thread.join(timeout=700)
        assert not any(t.is_alive() for t in self.pool), "a client thread still runs"


@pytest.fixture(scope="module")
def champion(stack, client, usecase):
    """January, then February (training holds one month out: two at least), land and go through the loop: an
    ingest run and a features run each, then one training run approved over REST, promoted, served by the deploy
    step. (Landed together, Airflow may start the features run on January's event and fold February's into it
    unbuilt: the next event's run builds it, but this fixture would wait for a run that does not come.)"""
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    seen: dict[str, set[str]] = {INGEST: set(), FEATURES: set()}

    def through(dag_id: str, period: str, timeout: float) -> str:
        run = _wait(lambda: _new_run(client, dag_id, seen[dag_id]), 600, f"{period} started no {dag_id} run")
        seen[dag_id].add(run["dag_run_id"])
        _succeeded(client, dag_id, run["dag_run_id"], timeout=timeout)
        return run["dag_run_id"]

    for period in ("2013-01", "2013-02"):
        replay.land(period, usecase=usecase)
        through(INGEST, period, 900)
        built = client.xcom(FEATURES, through(FEATURES, period, 1200), "training_set")
    assert built["periods"] == ["2013-01", "2013-02"], built
    run_id = client.trigger(TRAINING, {"training_set_uri": built["uri"]})
    _approve(stack, client, run_id)
    _succeeded(client, TRAINING, run_id, timeout=1200)
    deployed = client.xcom(TRAINING, run_id, "deploy_model")
    assert deployed["action"] == "started" and str(deployed["version"]) == "1", deployed
    assert MlflowHook().alias_version(usecase.registered_model_name, "champion") == "1"
    return {"ingest": seen[INGEST], "features": seen[FEATURES], "training": {run_id}}


# -------------------------------------------------------------------------------------------------- test
def test_a_month_with_killed_components_converges(stack, client, usecase, champion):
    from airflow_mlops.assets import assets_for
    from airflow_mlops.core.inference_log import read_inference_log
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.features import read_validated
    from airflow_mlops_dev import replay_source, traffic
    from airflow_mlops_dev.replay_loop import event_covers
    from airflow_mlops_dev.serving import embedded, embedded_token

    lake = LakeHook(root_url=config.lake_url(usecase))
    name = usecase.registered_model_name
    server = embedded(usecase.folder)

    # 0. The triggerer (the landing-flag watcher runs in it), just before March lands: no flag is lost.
    killed = _kill(stack, "triggerer")
    landed = replay.land("2013-03", usecase=usecase)
    _make_up()
    FIGURES["0 restart (make up) s"] = round(time.monotonic() - killed, 1)
    ingest_run = _wait(lambda: _new_run(client, INGEST, champion["ingest"]), 600, "March started no ingest run")
    FIGURES["0 kill -> March's ingest run s"] = round(time.monotonic() - killed, 1)

    # 1. The scheduler, while March's batch is ingested or validated.
    run_id = ingest_run["dag_run_id"]
    stage = _wait(
        lambda: _running(client, INGEST, run_id, ("validate_batch", "ingest_batch")), 600, "no ingest task ran", 0.2
    )
    killed = _kill(stack, "scheduler")
    _make_up()
    restarted = time.monotonic() - killed
    tries = _succeeded(client, INGEST, run_id)
    FIGURES["1 scheduler killed during"] = stage
    FIGURES["1 restart (make up) s"] = round(restarted, 1)
    FIGURES["1 kill -> ingest run success s"] = round(time.monotonic() - killed, 1)
    FIGURES["1 ingest tries"] = {t: n for t, (_, n) in tries.items()}
    assert tries[stage][1] >= 2, tries  # the killed try, then the retry
    manifest = lake.read_manifest(lake.path("validated", "2013-03"))
    primary = usecase.source.primary
    assert manifest["files"][f"{config.stem(primary)}.parquet"]["rows"] == landed["files"][primary]["rows"]
    assert not list(lake.path("quarantine").glob("2013-03*")), "March was quarantined"

    features = _wait(lambda: _new_run(client, FEATURES, champion["features"]), 600, "no features run for March")
    _succeeded(client, FEATURES, features["dag_run_id"], timeout=1200)
    # (Read once the run the event started has started: Airflow 3's API answers 500 for an event whose run has no
    # start date yet.)
    validated_events = [
        e
        for e in client.asset_events(assets_for(usecase.name).validated_batch.name)
        if event_covers(e.get("extra") or {}, "2013-03")
    ]
    assert len(validated_events) == 1, validated_events  # validated once
    training_set = client.xcom(FEATURES, features["dag_run_id"], "training_set")
    assert training_set["periods"][-1] == "2013-03", training_set

    # 2. The scheduler again, while the model trains.
    # Forced past the gate: the swap under faults needs a second version whatever March's metrics say (audited).
    training_run = client.trigger(
        TRAINING,
        {
            "training_set_uri": training_set["uri"],
            "force_bless": True,
            "force_bless_reason": "test_faults: a second version to swap in under faults",
        },
    )
    _wait(lambda: _running(client, TRAINING, training_run, ("train_model",)), 900, "train_model never ran", 0.2)
    killed = _kill(stack, "scheduler")
    _make_up()
    FIGURES["2 restart (make up) s"] = round(time.monotonic() - killed, 1)

    # 3. The approval awaits input; the person answers (over REST) while a client sends traffic.
    _wait(
        lambda: _tries(client, TRAINING, training_run).get("approve_model", ("", 0))[0] == "awaiting_input",
        1200,
        "approve_model never awaited input",
    )
    FIGURES["2 kill -> approval asked s"] = round(time.monotonic() - killed, 1)
    # Live traffic from here on: March's flights, answered by v1 until the deploy swaps v2 in.
    frames = read_validated(lake, "2013-03", usecase.source.files)
    bodies = traffic.requests_from_frame(replay_source.demo_requests(usecase, "2013-03", frames), usecase)
    caller = RetryingClient(server.url, bodies).start()
    try:
        _wait(lambda: caller.versions_since("1") >= 100, 300, "the client got no answers from v1")
        _approve(stack, client, training_run)

        # 4. The serving process, as soon as the deploy step runs (it swaps v2 in) under the client's traffic.
        _wait(lambda: _running(client, TRAINING, training_run, ("deploy_model",)), 1200, "deploy never ran", 0.1)
        killed = _kill_serving(usecase)
        _make_up()
        FIGURES["4 restart (make up) s"] = round(time.monotonic() - killed, 1)
        FIGURES["4 kill -> training run success s"] = None
        tries = _succeeded(client, TRAINING, training_run, timeout=1200)
        FIGURES["4 kill -> training run success s"] = round(time.monotonic() - killed, 1)
        _wait(lambda: caller.versions_since("2") >= 100, 300, "the client got no answers from v2")
    finally:
        caller.close()
    FIGURES["2-4 training tries"] = {t: n for t, (_, n) in tries.items()}
    FIGURES["client calls / refused (retried) / batches retried"] = (
        caller.calls,
        caller.refused,
        caller.retried_batches,
    )
    FIGURES["client refusals by kind"] = caller.refusals
    FIGURES["client outages s"] = [round(s, 1) for s in caller.outages]
    FIGURES["client answered rows by version"] = {
        v: sum(1 for x in caller.answered.values() if x == v) for v in set(caller.answered.values())
    }
    assert set(tries) == set(TRAINING_TASKS) and all(s == "success" for s, _ in tries.values()), tries
    assert tries["train_model"][1] >= 2, tries  # killed with the scheduler, then retried
    deployed = client.xcom(TRAINING, training_run, "deploy_model")
    FIGURES["4 deploy_model outcome"] = deployed.get("action")
    assert deployed["version"] == "2", deployed

    # The client: every call answered in the end, some of them after being refused while the server was down.
    assert caller.errors_4xx == 0 and caller.unanswered == 0
    assert caller.refused >= 1 and caller.outages, "the serving process died and no call noticed"
    assert set(caller.answered.values()) == {"1", "2"}

    # The registry: one version per training run, one promotion per approved version, the ledger where the alias is.
    hook = MlflowHook()
    versions = hook.client.search_model_versions(f"name = '{name}'")
    assert sorted(int(v.version) for v in versions) == [1, 2], [(v.version, v.run_id) for v in versions]
    assert len({v.run_id for v in versions}) == 2
    assert client.xcom(TRAINING, training_run, "train_model")["run_id"] in {v.run_id for v in versions}
    ledger = hook.read_ledger(name)
    assert [(e.seq, e.action, e.from_version, e.to_version) for e in ledger] == [
        (1, "promote", None, "1"),
        (2, "promote", "1", "2"),
    ]
    assert hook.alias_version(name, "champion") == "2"
    assert server.pid() is not None and httpx.post(f"{server.url}/info", json={}).json()["model_version"] == "2"

    # The lake: committed directories match their manifests; the inference log holds each answered request once.
    assert _lake_problems(stack.home / "lake" / NAME) == []
    traffic.wait_logged(server.url, token=embedded_token(), timeout=120)
    log = read_inference_log(lake)
    logged = log["request_id"].tolist()
    assert log["request_id"].is_unique, log["request_id"][log["request_id"].duplicated()].tolist()[:10]
    missing = set(caller.answered) - set(logged)
    FIGURES["inference log rows / answered / answered but not logged / logged but not received"] = (
        len(logged),
        len(caller.answered),
        len(missing),
        len(set(logged) - set(caller.answered)),
    )
    assert not missing, f"{len(missing)} answered requests are not in the inference log"
    # Logged, never received: only what the killed server answered while its answers were cut (one batch a thread).
    assert len(set(logged) - set(caller.answered)) <= len(caller.pool) * caller.batch
