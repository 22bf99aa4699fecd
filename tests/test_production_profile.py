"""The production profile, natively: ``MLOPS_PROFILE=production`` and nothing else changes.

Airflow runs with the CeleryExecutor on this machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379),
with ``airflow celery worker`` and an MLflow tracking server (PostgreSQL backend, artifacts in the lake) as
components, and the Feast online store on Redis. The module starts one stack (``devstack.Stack``) on free ports in
a temporary ``MLOPS_HOME``, with its own PostgreSQL databases (random names, dropped afterwards) and its own Redis
database index (flushed afterwards), and stops every process it started.

The use case driven is the flights example, ``examples/flight_delay``: a copy of it is the only use case of
``MLOPS_PROJECTS``, so the DAG factory builds its five DAGs (``flight_delay_ingest_validate``, ...), its lake root
is ``<MLOPS_LAKE>/flight_delay`` and its Assets are named ``flight_delay.<kind>``. The copy differs in what keeps
the module's runs deterministic and bounded: no schedule (runs come from the landing flag and the REST API only)
and a looser infra-validation latency budget.

* ``test_months_through_the_loop``: January, then February, land with ``airflow_mlops_dev.replay``; the landing flag,
  the scheduler and the Celery worker take them through ingest → validation → features → training, and the first
  model becomes champion (the ``through_the_loop`` fixture drives them, once per module; the test asserts).
* ``test_killed_worker``: the worker is SIGKILLed (its whole process group) while a features task and the
  training task run; a new worker finishes both runs through retries: no duplicate model version, every committed
  lake directory matches its manifest, nothing lost.
* ``test_a_served_month_is_monitored``: March lands; its flights go to the champion's serving endpoint (online
  features from Redis, the model from the MLflow server), the outcomes are announced through the REST API, and the
  monitoring DAG on Celery computes drift and live performance and records the policy's decision.

The last three start from January and February through the loop (the ``through_the_loop`` fixture): each passes
alone (``-k``), the fixture bringing the stack there first. Together they run in the module's order, which they
need: ``test_months_through_the_loop`` asserts on the state the loop left (model 1 champion) before
``test_killed_worker``'s retraining may move the champion.

PostgreSQL and Redis are services this machine runs: the module skips only when nothing listens on their ports
(``production_fixtures.production_stack``); any other error of theirs fails it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from production_fixtures import PG_URL, REDIS_URL, production_stack

from airflow_mlops.hooks.bentoml_process import free_port
from airflow_mlops.usecase import config
from airflow_mlops_dev import replay
from airflow_mlops_dev.devstack import (
    AUTH_MANAGERS,
    PROFILES,
    AirflowClient,
    ProductionServices,
    Stack,
    profile_env,
)

from conftest import ROOT
from waiting import wait_for

#: The use case this module drives (a copy of it, see ``usecase``).
EXAMPLE = ROOT / "examples" / "flight_delay"
NAME = config.load(EXAMPLE).name
INGEST, FEATURES, TRAINING, MONITORING = (
    config.load(EXAMPLE).dag_id(stage) for stage in ("ingest_validate", "features", "training", "monitoring")
)
#: Zones the suite commits with manifests (``reports/`` belongs to GX and monitoring; MLflow's artifacts are outside
#: the use case's lake root).
COMMITTED_ZONES = ("raw", "validated", "features", "training_sets")


def _pg_query(database: str, sql: str, args: tuple = ()) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(f"{PG_URL}/{database}", connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def usecase(tmp_path_factory) -> config.UseCase:
    """A copy of ``examples/flight_delay``, the only use case of the module's projects folder.

    No schedule: the ingest DAG would otherwise catch up every scheduled month when unpaused, and the training
    DAG's weekly clock could start a run in the middle of the module; runs come from the landing flag, Asset events
    and the REST API. Infra validation's p95 latency budget (500 ms) is a performance gate, tested by test_serving
    and the benchmarks; on a 2-core machine shared with other suites it measured 157 ms here. This module is about
    the profile: a looser budget, everything else as shipped.
    """
    folder = tmp_path_factory.mktemp("projects") / NAME
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((folder / config.CONFIG_FILE).read_text())
    raw["source"]["schedule"] = None
    raw["model"]["schedule_cron"] = None
    raw["serving"]["infra_validation"]["latency_budget_ms"] = 2000
    (folder / config.CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    return config.load(folder)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, usecase):
    """One production stack for the module: databases, Redis index, ports and home of its own
    (``production_fixtures.production_stack``)."""
    from airflow_mlops_dev import serving as serving_process

    home = tmp_path_factory.mktemp("production-home")
    key = NAME.upper()
    env = {
        # The use case's embedded endpoint (what the deploy step starts and updates) on a free port.
        f"MLOPS_SERVING_PORT__{key}": str(free_port()),
        # A task whose worker died is failed (and retried) after 30 s without heartbeat instead of 300 s (a live
        # task heartbeats every 5 s).
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    }
    with production_stack(home, usecase.folder.parent, env) as stack, pytest.MonkeyPatch.context() as patch:
        # This process reads the stack's MLflow server and Feast store as its tasks do.
        for name, value in profile_env().items():
            patch.setenv(name, value)
        try:
            yield stack
        finally:
            serving_process.embedded(usecase.folder).stop()


@pytest.fixture(scope="module")
def client(stack) -> AirflowClient:
    client = AirflowClient(stack.url, "admin", stack.admin_password())
    for dag_id in (INGEST, FEATURES, TRAINING):
        client.wait_dag(dag_id, timeout=300)
        client.unpause(dag_id)
    return client


# ------------------------------------------------------------------------------------------------ helpers
def _wait(predicate, timeout: float, what: str, every: float = 2.0):
    """``waiting.wait_for``, polling the stack's REST API and databases every 2 s by default."""
    return wait_for(predicate, timeout, what, every)


def _finished(client: AirflowClient, dag_id: str, run_type: str, seen: set[str]) -> dict | None:
    """A finished run of ``dag_id`` of ``run_type`` not in ``seen``; fails fast on a failed one."""
    for run in client.runs(dag_id):
        if run["dag_run_id"] in seen or run["run_type"] != run_type or run["state"] not in ("success", "failed"):
            continue
        assert run["state"] == "success", (run, client.task_instances(dag_id, run["dag_run_id"]))
        return run
    return None


def _xcom(client: AirflowClient, dag_id: str, run_id: str, task_id: str):
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    return client._ok(client.http.get(path))["value"]


def _tries(client: AirflowClient, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
    return {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in client.task_instances(dag_id, run_id)}


def _run_training(client: AirflowClient, training_set_uri: str) -> str:
    """Start a training run on the snapshot: the DAG's own trigger when it listens to training sets, else REST."""
    details = client._ok(client.http.get(f"/api/v2/dags/{TRAINING}/details"))
    if "training_set" in json.dumps(details.get("asset_expression") or {}):
        run = _wait(
            lambda: next((r for r in client.runs(TRAINING) if r["run_type"] == "asset_triggered"), None),
            300,
            "no asset-triggered training run",
        )
        return run["dag_run_id"]
    return client.trigger(TRAINING, {"training_set_uri": training_set_uri})


def _lake_problems(lake_dir: Path) -> list[str]:
    """Committed directories whose manifest lists a missing or altered file, or files of a zone outside any
    manifest that are not hidden temporary files (what a crashed writer may leave, and no reader trusts)."""
    problems, listed = [], set()
    for manifest_path in lake_dir.rglob("_manifest.json"):
        if manifest_path.relative_to(lake_dir).parts[0] not in COMMITTED_ZONES:
            continue
        manifest = json.loads(manifest_path.read_text())
        for name, record in manifest["files"].items():
            path = manifest_path.parent / name
            listed.add(path)
            if not path.is_file():
                problems.append(f"{path}: listed in its manifest but missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != record["sha256"]:
                problems.append(f"{path}: bytes differ from the manifest's sha256")
    for zone in COMMITTED_ZONES:
        for path in (lake_dir / zone).rglob("*"):
            if path.is_file() and path.name != "_manifest.json" and path not in listed:
                if not (path.name.startswith(".") and path.name.endswith(".tmp")):
                    problems.append(f"{path}: a visible file no manifest lists")
    return problems


# -------------------------------------------------------------------------------------------------- tests
def test_native_profile_matches_compose(tmp_path, monkeypatch):
    """What ``MLOPS_PROFILE=production make up`` runs is what ``docker compose up`` runs, host names aside."""
    for name in [k for k in os.environ if k.startswith(("MLOPS_", "AIRFLOW__CELERY__"))]:
        monkeypatch.delenv(name)
    native = Stack(home=tmp_path, profile="production")
    env = native.env()
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    common = compose["x-airflow-common"]["environment"]

    def scheme_and_database(url: str) -> tuple[str, str]:
        return url.split("://", 1)[0], url.rsplit("/", 1)[1]

    assert env["AIRFLOW__CORE__EXECUTOR"] == common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # Users and roles of the FAB auth manager in both; nothing left of the SimpleAuthManager.
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == common["AIRFLOW__CORE__AUTH_MANAGER"] == AUTH_MANAGERS["production"]
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS" not in env
    assert not [k for k in common if "SIMPLE_AUTH_MANAGER" in k]
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW__CELERY__BROKER_URL",
    ):
        assert scheme_and_database(env[key]) == scheme_and_database(common[key]), key
    # The embedded profile's SQLite lock wait is no PostgreSQL connection option.
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS" not in env
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == common["AIRFLOW__CELERY__WORKER_CONCURRENCY"]
    assert env["AIRFLOW__CORE__PARALLELISM"] == common["AIRFLOW__CORE__PARALLELISM"]
    assert (
        env["AIRFLOW_CONN_MLFLOW_DEFAULT"].rsplit(":", 1)[1] == common["AIRFLOW_CONN_MLFLOW_DEFAULT"].rsplit(":", 1)[1]
    )
    assert env["MLOPS_PROFILE"] == common["MLOPS_PROFILE"] == "production"
    assert env["MLOPS_FEAST_ONLINE_STORE"] == common["MLOPS_FEAST_ONLINE_STORE"] == "redis"
    assert env["MLOPS_FEAST_REDIS"].split(",")[1:] == common["MLOPS_FEAST_REDIS"].split(",")[1:] == ["db=1"]

    services = compose["services"]
    # The worker preloads the heavy libraries its forked tasks share, natively and in compose.
    assert (
        native.command("celery-worker")[1:]
        == services["airflow-worker"]["command"].split()[1:]
        == ["-m", "airflow_mlops.preload", "celery", "worker"]
    )
    # The scheduler hands tasks to Celery and runs none: it does not preload, natively and in compose.
    assert native.command("scheduler")[1:] == [services["airflow-scheduler"]["command"]] == ["scheduler"]
    # The embedded scheduler forks the tasks (LocalExecutor): it preloads their libraries.
    assert Stack(home=tmp_path, profile="embedded").command("scheduler")[1:] == [
        "-m",
        "airflow_mlops.preload",
        "scheduler",
    ]
    # The MLflow server runs without its GenAI job runner, natively and in compose.
    assert (
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]
        == services["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]
        == "false"
    )
    mlflow_native = native.command("mlflow-server")
    mlflow_compose = " ".join(services["mlflow"]["command"])
    backend = mlflow_native[mlflow_native.index("--backend-store-uri") + 1]
    assert scheme_and_database(backend) == scheme_and_database(
        services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    )
    artifacts = mlflow_native[mlflow_native.index("--artifacts-destination") + 1]
    assert artifacts == f"{(tmp_path / 'lake').as_uri()}/mlflow-artifacts"
    assert "--artifacts-destination /opt/mlops/lake/mlflow-artifacts" in mlflow_compose
    assert "--serve-artifacts" in mlflow_native and "--serve-artifacts" in mlflow_compose
    assert native.components == (
        "api-server",
        "scheduler",
        "dag-processor",
        "triggerer",
        "celery-worker",
        "mlflow-server",
    )

    # Serving: the generic service natively (ServingProcess, started by the deploy step) and in compose, for the
    # flights example; the deploy step finds it through the use case's serving URL variable in both.
    from airflow_mlops.hooks.bentoml_process import SERVICE

    serving = services["serving"]
    assert f"bentoml serve {SERVICE} " in " ".join(serving["command"])
    usecase = config.load(EXAMPLE)
    assert Path(serving["environment"]["MLOPS_USECASE"]).name == EXAMPLE.name
    assert serving["environment"]["MLOPS_SERVING_LAKE_ROOT"] == f"{common['MLOPS_LAKE']}/{usecase.name}"
    assert Path(common["MLOPS_PROJECTS"]).name == config.projects_dir().name == "examples"
    monkeypatch.setenv(
        f"MLOPS_SERVING_URL__{usecase.name.upper()}", common[f"MLOPS_SERVING_URL__{usecase.name.upper()}"]
    )
    assert config.serving_url(usecase) == "http://serving:3000"


@pytest.mark.production
def test_profile_is_configuration_only(stack):
    """The same components as docker-compose.yaml, told apart by configuration alone."""
    env = stack.env()
    services = ProductionServices.from_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert (
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        == f"postgresql+psycopg2://postgres@127.0.0.1:5432/{services.airflow_db}"
    )
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+postgresql://postgres@127.0.0.1:5432/{services.airflow_db}"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"{REDIS_URL}/{services.celery_redis_db}"
    assert env["MLOPS_FEAST_ONLINE_STORE"] == "redis"
    assert env["MLOPS_FEAST_REDIS"] == f"127.0.0.1:6379,db={services.feast_redis_db}"
    assert set(stack.pids()) == set(PROFILES["production"])
    assert all(os.getpgid(pid) == pid for pid in stack.pids().values())
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]
    commands = {
        name: " ".join(s["command"]) if isinstance(s["command"], list) else s["command"]
        for name, s in compose.items()
        if s.get("command")
    }
    assert "celery worker" in commands["airflow-worker"] and "mlflow server" in commands["mlflow"]


@pytest.fixture(scope="module")
def through_the_loop(stack, client, usecase) -> dict:
    """January then February through the loop, once per module: landed with ``replay``, ingested and validated,
    their features built, and the training set of both trained on, to the first champion.

    What ``test_months_through_the_loop`` asserts on, and where ``test_killed_worker`` and
    ``test_a_served_month_is_monitored`` start from: whichever of them runs first brings the stack here.

    :return: ``landed`` (month → replay's marker), ``features_runs`` (how many features runs the two months took),
        ``training_set`` (the features stage's XCom of February's snapshot, trained on) and ``training_run``.
    """
    seen: dict[str, set[str]] = {INGEST: set(), FEATURES: set()}
    landed = {}
    for month in ("2013-01", "2013-02"):
        # The files, their _SUCCESS, then the flag the triggerer watches; the next month lands once this one is
        # ingested (as a monthly upstream would), while the features of this one are being built.
        landed[month] = replay.land(month, usecase=usecase)
        ingest = _wait(lambda: _finished(client, INGEST, "asset_triggered", seen[INGEST]), 600, f"{month} not ingested")
        seen[INGEST].add(ingest["dag_run_id"])

    # The validated_batch events started features runs (one per month, unless the scheduler folded both events into
    # one run): every month gets its features, and the run of February commits the training set of both.
    built: dict[str, dict] = {}
    features_runs = 0
    while set(built) != {"2013-01", "2013-02"}:
        run = _wait(lambda: _finished(client, FEATURES, "asset_triggered", seen[FEATURES]), 900, f"features: {built}")
        seen[FEATURES].add(run["dag_run_id"])
        features_runs += 1
        periods = _xcom(client, FEATURES, run["dag_run_id"], "build_features")["periods"]
        built.update(dict.fromkeys(periods, _xcom(client, FEATURES, run["dag_run_id"], "training_set")))
    training_set = built["2013-02"]

    run_id = _run_training(client, training_set["uri"])
    assert client.wait_run(TRAINING, run_id, timeout=900) == "success", client.task_instances(TRAINING, run_id)
    return {"landed": landed, "features_runs": features_runs, "training_set": training_set, "training_run": run_id}


@pytest.mark.production
def test_months_through_the_loop(stack, client, usecase, through_the_loop):
    """January then February land; the chain runs through the scheduler and the Celery worker to a champion."""
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.usecase import FeatureContext, load_function

    lake = LakeHook(root_url=config.lake_url(usecase))
    primary = usecase.source.primary
    for month, landed in through_the_loop["landed"].items():
        manifest = lake.read_manifest(lake.path("validated", month))
        assert manifest is not None, f"{month} is not in {lake.url(lake.path('validated'))}"
        assert manifest["files"][f"{config.stem(primary)}.parquet"]["rows"] == landed["files"][primary]["rows"]
    features_runs, training_set = through_the_loop["features_runs"], through_the_loop["training_set"]
    assert training_set["periods"] == ["2013-01", "2013-02"]

    run_id = through_the_loop["training_run"]
    assert {task: state for task, (state, _) in _tries(client, TRAINING, run_id).items()} == dict.fromkeys(
        (
            "training_set",
            "train_model",
            "evaluate_challenger",
            "model_gate",
            "register_model",
            "infra_validate",
            "promote_model",
            "deploy_model",
        ),
        "success",
    ) | {"approve_model": "skipped"}  # approval: auto (the example's): no person asked

    # Every task went through Celery: its result backend (PostgreSQL) holds one row per task executed.
    services = ProductionServices.from_env()
    # (A task's row is written when its Celery task returns, just after Airflow sees the task succeed.)
    _wait(
        lambda: (
            _pg_query(services.airflow_db, "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")[0][0]
            >= 2 * 2 + features_runs * 4 + 8
        ),  # ingest + validate per month, 4 tasks per features run, 8 training tasks
        60,
        "fewer Celery task results than tasks run",
    )

    # Online features of February are in Redis (the use case's Feast project) and answer for a February flight
    # asked for as the service does: its request row through the use case's own entity_keys.
    import pandas as pd
    import redis

    assert redis.Redis.from_url(f"{REDIS_URL}/{services.feast_redis_db}").dbsize() > 10_000
    frame = pd.read_parquet(training_set["uri"].removeprefix("file://"))
    feb = frame[frame["event_timestamp"] < pd.Timestamp("2013-03-01", tz="UTC")].sort_values("event_timestamp")
    flight = feb.iloc[-1]
    request = pd.DataFrame(
        [
            {
                "carrier": flight["carrier"],
                "flight": int(str(flight["flight_id"]).rsplit("-", 1)[1]),
                "origin": flight["origin"],
                "dest": flight["dest"],
                "event_timestamp": flight["event_timestamp"],
            }
        ]
    )
    entity_keys = load_function(usecase.module_file, "entity_keys", arity=2)
    ctx = FeatureContext(period="2013-02", params=dict(usecase.features.get("params") or {}), config=usecase)
    keys = entity_keys(request, ctx)
    assert keys["flight_id"].tolist() == [flight["flight_id"]]
    (online,) = FeastHook(usecase.folder, lake_root=config.lake_url(usecase)).online_features(keys)
    assert online["distance"] == flight["distance"] and online["sched_hour"] == flight["sched_hour"]
    # the slots of its departure, read from Redis: what its training row was joined with
    assert online["carrier_flights_30d"] == flight["carrier_flights_30d"]
    assert online["weather_known"] == flight["weather_known"] == 1 and online["temp"] == flight["temp"]

    # The first model is champion in the MLflow server on PostgreSQL, its files in the lake.
    name = usecase.registered_model_name
    hook = MlflowHook()
    assert hook.tracking_uri == services.mlflow_url and not hook.is_embedded
    assert hook.alias_version(name, "champion") == "1"
    ledger = hook.read_ledger(name)
    assert [(e.action, e.from_version, e.to_version) for e in ledger] == [("promote", None, "1")]
    assert _pg_query(
        services.mlflow_db,
        "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'",
        (name,),
    ) == [(1,)]
    version = hook.client.get_model_version(name, "1")
    assert version.run_id == _xcom(client, TRAINING, run_id, "train_model")["run_id"]
    assert list((stack.home / "lake" / "mlflow-artifacts").rglob("MLmodel")), "no model files in the lake"
    deployed = _xcom(client, TRAINING, run_id, "deploy_model")
    assert str(deployed["version"]) == "1" and deployed["url"] == config.serving_url(usecase)
    assert _lake_problems(stack.home / "lake" / NAME) == []


@pytest.mark.production
def test_killed_worker(stack, client, usecase, through_the_loop):
    """SIGKILL the worker's process group mid-task; a new worker finishes both runs through retries."""
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    name = usecase.registered_model_name
    hook = MlflowHook()
    assert hook.alias_version(name, "champion") is not None  # the loop's first model
    lake_dir = stack.home / "lake" / NAME
    # The snapshot of January and February the loop trained on (February's features run committed it).
    newest = through_the_loop["training_set"]["sha256"][:12]
    training_set_uri = through_the_loop["training_set"]["uri"]

    # February's features again (re-materialized, training set re-committed) and a retraining, side by side.
    features_run = client.trigger(FEATURES, {"period": "2013-02"})
    training_run = client.trigger(TRAINING, {"training_set_uri": training_set_uri})

    def running_pair():
        feats = [t for t, (s, _) in _tries(client, FEATURES, features_run).items() if s == "running"]
        train = _tries(client, TRAINING, training_run)["train_model"][0] == "running"
        return (feats, "train_model") if feats and train else None

    # Killed as soon as both are seen running (a sleep "into the middle" outlived a quick train_model).
    killed_features_tasks, _ = _wait(running_pair, 600, "train_model and a features task never ran together", 0.2)
    worker = stack.pids()["celery-worker"]
    os.killpg(worker, signal.SIGKILL)
    _wait(lambda: "celery-worker" not in stack.pids(), 30, "the worker survived SIGKILL", 0.5)
    assert not _processes_with_group(worker)
    stack.start("celery-worker")

    assert client.wait_run(FEATURES, features_run, timeout=900) == "success", client.task_instances(
        FEATURES, features_run
    )
    assert client.wait_run(TRAINING, training_run, timeout=900) == "success", client.task_instances(
        TRAINING, training_run
    )
    features_tries, training_tries = _tries(client, FEATURES, features_run), _tries(client, TRAINING, training_run)
    assert training_tries["train_model"] == ("success", 2), training_tries  # the killed try, then the retry
    assert any(features_tries[t][1] >= 2 for t in killed_features_tasks), (killed_features_tasks, features_tries)
    assert all(state == "success" for state, _ in features_tries.values()), features_tries

    # Nothing lost, nothing doubled: February's training set is re-committed with the same bytes, the lake's
    # committed directories all match their manifests, and each MLflow run has at most one model version.
    rebuilt = _xcom(client, FEATURES, features_run, "training_set")
    assert rebuilt["sha256"][:12] == newest and rebuilt["periods"] == ["2013-01", "2013-02"]
    assert _lake_problems(lake_dir) == []
    versions = hook.client.search_model_versions(f"name = '{name}'")
    run_ids = [v.run_id for v in versions]
    assert len(run_ids) == len(set(run_ids)), run_ids
    trained = _xcom(client, TRAINING, training_run, "train_model")
    gate = _xcom(client, TRAINING, training_run, "model_gate")
    if training_tries["register_model"][0] == "success":
        assert sorted(int(v.version) for v in versions) == [1, 2] and trained["run_id"] in run_ids
        assert hook.alias_version(name, "champion") == "2", gate
    else:
        assert [v.version for v in versions] == ["1"], gate
    ledger = hook.read_ledger(name)
    assert [e.seq for e in ledger] == list(range(1, len(ledger) + 1))
    assert hook.alias_version(name, "champion") == ledger[-1].to_version


@pytest.mark.production
def test_a_served_month_is_monitored(stack, client, usecase, through_the_loop):
    """The rest of the loop on the production profile: live traffic, outcomes, monitoring, the policy."""
    from airflow_mlops.assets import assets_for
    from airflow_mlops.core.batches import batch_hash
    from airflow_mlops.core.inference_log import read_inference_log
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.features import read_validated
    from airflow_mlops_dev import replay_source, traffic
    from airflow_mlops_dev.replay_loop import batch_outcome, event_covers
    from airflow_mlops_dev.serving import embedded, embedded_token

    name = usecase.registered_model_name
    champion = MlflowHook().alias_version(name, "champion")
    assert champion is not None  # the loop's first model, or the retrained one of test_killed_worker
    # External systems name the use case's Assets: flight_delay.features, flight_delay.outcomes, ...
    assets = assets_for(usecase.name)
    # A retrain the policy may ask for is the training DAG's business (tested above): held here, so the
    # module's time stays bounded; its event is checked instead.
    client.pause(TRAINING)
    client.wait_dag(MONITORING, timeout=300)
    client.unpause(MONITORING)
    lake = LakeHook(root_url=config.lake_url(usecase))

    marker = replay.land("2013-03", usecase=usecase)
    digest = batch_hash({file: rec["sha256"] for file, rec in marker["files"].items()})
    outcome = _wait(
        lambda: (o := batch_outcome(lake, "2013-03", digest))["status"] != "pending" and o, 600, "March not ingested"
    )
    assert outcome["status"] == "validated", outcome
    _wait(
        lambda: any(event_covers(e.get("extra") or {}, "2013-03") for e in client.asset_events(assets.features.name)),
        900,
        "no features event for March",
    )

    # March's scheduled flights (the use case's demo_requests of the validated batch), answered by the champion the
    # deploy task started on the use case's endpoint
    server = embedded(usecase.folder)
    assert server.url == config.serving_url(usecase) and server.pid() is not None
    frames = read_validated(lake, "2013-03", usecase.source.files)
    bodies = traffic.requests_from_frame(replay_source.demo_requests(usecase, "2013-03", frames), usecase)
    flights = marker["files"][usecase.source.primary]["rows"]
    assert len(bodies) == flights  # one request per scheduled flight of the batch
    sent = traffic.send(server.url, bodies, period="2013-03", batch_size=500)
    assert (sent.sent, sent.answered, sent.refused, sent.failed) == (flights, flights, 0, 0), sent
    assert sent.versions == {champion: flights}
    assert traffic.wait_logged(server.url, token=embedded_token())["pending"] == 0
    assert len(read_inference_log(lake)) == flights  # exactly the answered requests, in the use case's lake

    before = {r["dag_run_id"] for r in client.runs(MONITORING)}
    client.post_asset_event(assets.outcomes.name, {"period": "2013-03", "month": "2013-03", "source": "test"})
    run = _wait(
        lambda: next(
            (
                r
                for r in client.runs(MONITORING)
                if r["dag_run_id"] not in before and r["state"] in ("success", "failed")
            ),
            None,
        ),
        900,
        "no monitoring run for March",
    )
    assert run["state"] == "success", client.task_instances(MONITORING, run["dag_run_id"])
    drift = _xcom(client, MONITORING, run["dag_run_id"], "drift_check")
    performance = _xcom(client, MONITORING, run["dag_run_id"], "performance_check")
    decision = client.xcom(MONITORING, run["dag_run_id"], "retraining_policy", "decision")
    decision = json.loads(decision) if isinstance(decision, str) else decision
    # The month's traffic (departures in March UTC: a few late-evening local flights of March 31 are April's), and
    # its predictions joined with the labelled flights of the month.
    labelled = lake.read_manifest(lake.path("features", "2013-03"))["files"]["labels.parquet"]["rows"]
    assert drift["source"] == "traffic" and 0.9 * flights <= drift["rows"] <= flights, drift
    assert 0.0 <= drift["drift_share"] <= 1.0, drift
    assert 0.9 * labelled <= performance["rows"] <= labelled, (labelled, performance)
    assert 0.5 < performance["live"]["roc_auc"] < 1.0, performance
    assert decision["champion_version"] == champion and decision["reasons"], decision
    assert (stack.home / "lake" / NAME / drift["report_key"]).is_file()
    retrains = [
        e
        for e in client.asset_events(assets.retrain_requested.name)
        if (e.get("extra") or {}).get("interval_start", "").startswith("2013-03")
    ]
    assert len(retrains) == (1 if decision["retrain"] else 0), (decision, retrains)


def _processes_with_group(pgid: int) -> list[int]:
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rfind(")") + 2 :].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    alive.append(int(entry.name))
    return alive
