"""The compose stack's serving, run natively with exactly docker-compose.yaml's settings: it serves and swaps
models with no manual step.

The settings are read from docker-compose.yaml, never written here: the ``serving`` service's environment and
command, and the Airflow side's (``x-airflow-common``: the deploy step's endpoint, its token, MLflow). Only what
names a place is mapped to this machine (``Machine``): the host names (``serving:3000`` → 127.0.0.1 on a free port,
``mlflow:5000`` → an MLflow server on a PostgreSQL database of its own, ``redis:6379`` → the local Redis, its
database index an empty one), the container paths (``/opt/mlops`` → a temporary home, ``/opt/airflow`` → this
checkout) and ``.env``'s token (a generated one, the same on both sides, as .env gives it). A test compares the two
(``test_native_settings_are_the_compose_settings``): anything else that differs is reported.

Then (production marker) the flow compose runs: the serving process starts before any model exists (alive, not
ready: compose's healthcheck is liveness), the first champion is served by the service's alias watch with no deploy
step, a second champion is deployed through the training DAG's deploy operator and rolled back through the rollback
DAG's operators while a client keeps asking (no failed request), the admin API refuses a wrong token, and a deploy
to the endpoint while it is down fails without starting a server of its own (the endpoint is given by URL).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_mlops.hooks.bentoml_process import free_port

from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
#: .env's serving token as the compose file takes it.
TOKEN_REF = re.compile(r"\$\{MLOPS_SERVING_TOKEN:\?[^}]*\}")
#: The environment the Airflow side of compose gives the deploy step and the tasks that make models: where the
#: serving endpoint, MLflow, the lake and Feast are (x-airflow-common; the Airflow components' own settings aside).
AIRFLOW_SIDE = re.compile(
    r"MLOPS_.*|MLFLOW_TRACKING_URI|AIRFLOW_CONN_MLFLOW_DEFAULT|BENTOML_.*|FEAST_USAGE|DO_NOT_TRACK"
)
#: What the mapping may change in the serving service's environment: the values that name a place or the secret.
MAPPED_SERVING_KEYS = {
    "PYTHONPATH",
    "MLOPS_HOME",
    "MLOPS_LAKE",
    "MLOPS_FEAST_REDIS",
    "MLFLOW_TRACKING_URI",
    "BENTOML_HOME",
    "MLOPS_USECASE",
    "MLOPS_SERVING_LAKE_ROOT",
    "MLOPS_SERVING_TOKEN",
}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def env_of(node: dict[str, Any]) -> dict[str, str]:
    env = node.get("environment") or {}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@dataclass(frozen=True)
class Machine:
    """Where the compose stack's places are on this machine.

    :param root: ``/opt/airflow`` (the project's bind mounts: dags, plugins, examples).
    :param home: ``/opt/mlops`` (the named volume ``mlops-data``).
    :param mlflow_url: ``http://mlflow:5000``.
    :param serving_url: ``http://serving:3000``.
    :param redis_db: the index that replaces Feast's ``db=1`` on the local Redis.
    :param token: ``MLOPS_SERVING_TOKEN`` of ``.env``.
    """

    root: Path
    home: Path
    mlflow_url: str
    serving_url: str
    redis_db: int
    token: str

    def pairs(self) -> list[tuple[str, str]]:
        """(compose, here), most specific first."""
        return [
            ("http://serving:3000", self.serving_url),
            ("http://mlflow:5000", self.mlflow_url),
            ("redis:6379,db=1", f"127.0.0.1:6379,db={self.redis_db}"),
            ("file:///opt/mlops", self.home.as_uri()),
            ("/opt/mlops", str(self.home)),
            ("/opt/airflow", str(self.root)),
        ]

    def native(self, value: str) -> str:
        value = TOKEN_REF.sub(self.token, value)
        for there, here in self.pairs():
            value = value.replace(there, here)
        return value

    def back(self, value: str) -> str:
        """``native`` undone: a value that comes back to compose's differed in a mapped place only."""
        for there, here in self.pairs():
            value = value.replace(here, there)
        return value.replace(self.token, "${MLOPS_SERVING_TOKEN:?set MLOPS_SERVING_TOKEN in .env}")

    @property
    def serving_port(self) -> int:
        return int(self.serving_url.rsplit(":", 1)[1])


def serving_settings(machine: Machine) -> dict[str, Any]:
    """The compose ``serving`` service as this machine runs it: its environment, command and working directory."""
    service = compose()["services"]["serving"]
    command = service["command"]
    assert command[:2] == ["bash", "-c"] and command[2].startswith("exec "), command
    argv = shlex.split(command[2].removeprefix("exec "))
    assert argv[0] == "bentoml", argv
    argv[0] = str(Path(sys.executable).with_name("bentoml"))
    # Listen where ``serving:3000`` maps to: the host's loopback on the mapped port.
    argv[argv.index("--host") + 1] = "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "3000", argv
    argv[argv.index("--port") + 1] = str(machine.serving_port)
    return {
        "env": {key: machine.native(value) for key, value in env_of(service).items()},
        "argv": argv,
        "cwd": machine.native(service["working_dir"]),
    }


def airflow_settings(machine: Machine) -> dict[str, str]:
    """What x-airflow-common gives the deploy step and the model-making tasks, as this machine runs it."""
    common = env_of(compose()["x-airflow-common"])
    return {key: machine.native(value) for key, value in common.items() if AIRFLOW_SIDE.fullmatch(key)}


def example_machine(tmp_path: Path) -> Machine:
    return Machine(
        root=ROOT,
        home=tmp_path / "mlops",
        mlflow_url="http://127.0.0.1:45001",
        serving_url="http://127.0.0.1:45002",
        redis_db=7,
        token="tok-" + os.urandom(8).hex(),
    )


# ------------------------------------------------------------------- the settings are compose's
def test_native_settings_are_the_compose_settings(tmp_path):
    """The native run changes nothing but places and the secret: every other value is compose's, the watch
    included, and each mapped value maps back to compose's."""
    machine = example_machine(tmp_path)
    service = compose()["services"]["serving"]
    there, here = env_of(service), serving_settings(machine)["env"]
    assert here.keys() == there.keys()
    changed = {key for key in there if here[key] != there[key]}
    assert changed == MAPPED_SERVING_KEYS, changed ^ MAPPED_SERVING_KEYS
    assert all(machine.back(here[key]) == there[key] for key in changed)
    # The settings this issue is about, spelled out: the watch (the first champion served on its own), the token
    # shared with the Airflow side, the use case and its lake root.
    assert float(here["MLOPS_SERVING_WATCH_INTERVAL_S"]) > 0
    assert here["MLOPS_USECASE"] == str(ROOT / "examples" / "flight_delay")
    assert here["MLOPS_SERVING_LAKE_ROOT"] == f"{machine.home.as_uri()}/lake/flight_delay"

    common = env_of(compose()["x-airflow-common"])
    airflow = airflow_settings(machine)
    assert {"MLOPS_SERVING_URL__FLIGHT_DELAY", "MLOPS_SERVING_TOKEN", "AIRFLOW_CONN_MLFLOW_DEFAULT"} <= airflow.keys()
    assert all(machine.back(value) == common[key] for key, value in airflow.items())
    assert airflow["MLOPS_SERVING_URL__FLIGHT_DELAY"] == machine.serving_url
    assert airflow["MLOPS_SERVING_TOKEN"] == here["MLOPS_SERVING_TOKEN"] == machine.token
    assert airflow["MLFLOW_TRACKING_URI"] == here["MLFLOW_TRACKING_URI"] == machine.mlflow_url

    settings = serving_settings(machine)
    assert settings["argv"][1:] == [
        "serve",
        "airflow_mlops.serving_service:MlopsService",
        "--host",
        "127.0.0.1",
        "--port",
        str(machine.serving_port),
    ]
    assert settings["cwd"] == str(ROOT)


def test_the_deploy_step_never_starts_the_compose_endpoint(tmp_path, monkeypatch):
    """Given by URL (compose's ``http://serving:3000``, or its native 127.0.0.1 mapping), the endpoint is run by
    someone else: not embedded, whatever its host; without the URL the default loopback endpoint is embedded."""
    from airflow_mlops.hooks.bentoml_serving import BentoServingHook

    folder = ROOT / "examples" / "flight_delay"
    monkeypatch.delenv("AIRFLOW_CONN_BENTOML_DEFAULT", raising=False)
    common = env_of(compose()["x-airflow-common"])
    for url in (
        common["MLOPS_SERVING_URL__FLIGHT_DELAY"],
        airflow_settings(example_machine(tmp_path))["MLOPS_SERVING_URL__FLIGHT_DELAY"],
    ):
        monkeypatch.setenv("MLOPS_SERVING_URL__FLIGHT_DELAY", url)
        hook = BentoServingHook(folder)
        assert hook.url == url and not hook.is_embedded
    monkeypatch.delenv("MLOPS_SERVING_URL__FLIGHT_DELAY")
    monkeypatch.setenv("MLOPS_SERVING_PORT__FLIGHT_DELAY", "45003")
    hook = BentoServingHook(folder)
    assert hook.url == "http://127.0.0.1:45003" and hook.is_embedded


# ------------------------------------------------------------------------- the native run
@pytest.fixture
def machine(tmp_path):
    """PostgreSQL (a database of its own for MLflow), Redis (an empty index for Feast) and an MLflow server on
    them, with the mapping of compose's places to them."""
    from production_fixtures import PG, REDIS, mlflow_server, postgres_database, redis_database

    from services import require_service

    require_service("PostgreSQL", PG["host"], PG["port"], "the compose serving flow (MLflow's backend store)")
    require_service("Redis", REDIS["host"], REDIS["port"], "the compose serving flow (Feast's online store)")
    root = tmp_path / "mlflow"
    root.mkdir()
    with postgres_database() as database, redis_database() as index, mlflow_server(root, database) as url:
        yield Machine(
            root=ROOT,
            home=tmp_path / "mlops",
            mlflow_url=url,
            serving_url=f"http://127.0.0.1:{free_port()}",
            redis_db=index,
            token=os.urandom(24).hex(),
        )


class Traffic:
    """A client asking ``/predict`` the canned request over and over in a thread: every answer's status and version."""

    def __init__(self, url: str, request: dict[str, Any]) -> None:
        self.url, self.request = url, request
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                try:
                    response = http.post("/predict", json={"rows": [self.request]})
                except httpx.HTTPError as err:
                    self.answers.append((0, repr(err)))
                    continue
                body = response.json() if response.status_code == 200 else None
                self.answers.append((response.status_code, body[0]["model_version"] if body else response.text))

    def __enter__(self) -> Traffic:
        self._thread.start()
        wait_for(lambda: len(self.answers) > 0, 120, "the first answer to the traffic")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive()

    @property
    def failed(self) -> list[tuple[int, str | None]]:
        return [answer for answer in self.answers if answer[0] != 200]


@pytest.mark.production
def test_compose_serving_serves_swaps_and_rolls_back_with_no_manual_step(machine, tmp_path, monkeypatch):
    import subprocess

    import httpx
    from production_fixtures import stop_group

    from airflow_mlops.core.serving_schemas import ServingSettings
    from airflow_mlops.hooks.bentoml_process import ServingError
    from airflow_mlops.hooks.bentoml_serving import BentoServingHook
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.registry import MlflowRollbackModelOperator
    from airflow_mlops.operators.serving import BentoMLDeployOperator, ServingDeployError
    from airflow_mlops.usecase import config

    from serving_fixtures import USECASE, build_features, canned
    from training_fixtures import make_champion, task_context

    # The Airflow side: x-airflow-common's settings only (no test store, no other endpoint or connection).
    for key in [k for k in os.environ if k.startswith(("MLOPS_", "MLFLOW_", "AIRFLOW_CONN_", "BENTOML_"))]:
        monkeypatch.delenv(key)
    for key, value in airflow_settings(machine).items():
        monkeypatch.setenv(key, value)
    usecase = config.load(USECASE)
    name = ServingSettings.from_usecase(usecase).model_name
    hook = BentoServingHook(USECASE)
    assert hook.url == machine.serving_url and not hook.is_embedded and hook.token == machine.token
    # The features DAG's work (validated January, its features, applied and materialized into Feast on Redis).
    build_features()

    # The serving container: compose's command, working directory and environment (the image's own variables
    # aside: PATH with this interpreter's scripts, AIRFLOW_HOME).
    settings = serving_settings(machine)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "AIRFLOW_CONN_", "BENTOML_"))}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    logfile = tmp_path / "serving.log"
    with logfile.open("wb") as log:
        server = subprocess.Popen(
            settings["argv"],
            cwd=settings["cwd"],
            env={**base, **settings["env"]},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    http = httpx.Client(base_url=machine.serving_url, timeout=30)

    def answers(path: str) -> int:
        assert server.poll() is None, f"serving exited {server.returncode}: {logfile.read_text()[-3000:]}"
        try:
            return http.get(path).status_code
        except httpx.HTTPError:
            return 0

    def served() -> str | None:
        assert server.poll() is None, f"serving exited {server.returncode}: {logfile.read_text()[-3000:]}"
        return http.post("/info", json={}).json().get("model_version")

    try:
        # Before any model: alive (compose's healthcheck, /livez, comes true), not ready.
        wait_for(lambda: answers("/livez") == 200, 300, f"serving alive (log: {logfile})")
        assert answers("/readyz") != 200 and served() is None
        assert hook.is_alive() and not hook.is_ready()

        # The first champion: served by the alias watch alone, no deploy step.
        lake = LakeHook(root_url=os.environ["MLOPS_LAKE"])
        first = make_champion(lake, tmp_path / "config-1", name, seed=0, run_id="manual__first")
        v1 = str(first["made"]["promoted"]["to_version"])
        wait_for(lambda: served() == v1, 300, f"v{v1} served by the watch (log: {logfile})", every=1)
        assert answers("/readyz") == 200

        request = canned()["single"][0]
        with Traffic(machine.serving_url, request) as traffic:
            # The training DAG: a second champion promoted, then its deploy step (the watch may have swapped it
            # in first: then the deploy finds it served; either way the endpoint serves it, with no failed request).
            second = make_champion(lake, tmp_path / "config-2", name, seed=1, run_id="manual__second", force_bless=True)
            promoted = second["made"]["promoted"]
            v2 = str(promoted["to_version"])
            deployed = BentoMLDeployOperator(task_id="deploy_model", version=promoted, usecase=str(USECASE)).execute(
                task_context("deploy_model", "manual__second")
            )
            assert deployed["version"] == v2 and deployed["action"] in ("swapped", "unchanged"), deployed
            if deployed["action"] == "swapped":
                assert deployed["from_version"] == v1, deployed
            assert served() == v2

            # The rollback DAG: the previous champion back, then its deploy step.
            rolled = MlflowRollbackModelOperator(
                task_id="rollback_model", registered_model_name=name, reason="compose serving test"
            ).execute(task_context("rollback_model", "manual__rollback"))
            assert str(rolled["to_version"]) == v1 and MlflowHook().alias_version(name, "champion") == v1
            back = BentoMLDeployOperator(task_id="deploy_model", version=rolled, usecase=str(USECASE)).execute(
                task_context("deploy_model", "manual__rollback")
            )
            assert back["version"] == v1 and back["action"] in ("swapped", "unchanged"), back
            assert served() == v1

            # The admin API with compose's token swaps whatever version it is asked for (the deploy step's reload,
            # without the watch's race); the watch then brings the alias's version back.
            swapped = hook.reload(v2)
            assert swapped["swapped"] and (swapped["from_version"], swapped["to_version"]) == (v1, v2), swapped
            wait_for(lambda: served() == v1, 300, f"the watch back on the alias's v{v1} (log: {logfile})", every=1)
        assert traffic.answers and traffic.failed == [], traffic.failed[:5]
        assert {version for _, version in traffic.answers} <= {v1, v2}

        # The admin API: compose's token reloads (the alias's version, already served); none or a wrong one is refused.
        assert hook.reload()["checks"] == ["already serving"]
        assert http.post("/admin/reload", json={"version": v2}).status_code == 403
        assert http.post("/admin/reload", json={"version": v2}, headers={"X-MLOPS-Token": "wrong"}).status_code == 403
        monkeypatch.setenv("MLOPS_SERVING_TOKEN", "not-the-servers")
        with pytest.raises(ServingError, match="MLOPS_SERVING_TOKEN"):
            BentoServingHook(USECASE).reload(v2)
        assert served() == v1
        monkeypatch.setenv("MLOPS_SERVING_TOKEN", machine.token)
    finally:
        http.close()
        stop_group(server)

    # Down, and given by URL: the deploy step fails naming what to do, and starts nothing of its own.
    with pytest.raises(ServingDeployError, match="does not start it"):
        BentoMLDeployOperator(task_id="deploy_model", version=v1, usecase=str(USECASE)).execute(
            task_context("deploy_model", "manual__down")
        )
    assert answers_nothing(machine.serving_url)
    assert not (machine.home / "run").exists() or not list((machine.home / "run").glob("*.pid"))


def answers_nothing(url: str) -> bool:
    import httpx

    try:
        httpx.get(f"{url}/livez", timeout=2)
    except httpx.HTTPError:
        return True
    return False
