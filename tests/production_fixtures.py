"""Production-profile services for tests, isolated per test: a database of its own on the PostgreSQL at
127.0.0.1:5432, an empty Redis database index on 127.0.0.1:6379, and an MLflow tracking server on PostgreSQL.

Every helper cleans up what it made (the database dropped, the Redis index flushed, the server's process group
stopped), so a test can run twice in a row and next to another one.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_mlops.hooks.bentoml_process import free_port

from waiting import wait_for

if TYPE_CHECKING:
    from airflow_mlops_dev.devstack import Stack

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
PG_URL = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}"
REDIS = {"host": "127.0.0.1", "port": 6379}
REDIS_URL = f"redis://{REDIS['host']}:{REDIS['port']}"


def pg_admin(sql: str) -> None:
    """Run ``sql`` on the server's ``postgres`` database (autocommit: CREATE/DROP DATABASE)."""
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextmanager
def postgres_database(prefix: str = "mlops_test") -> Iterator[str]:
    """A fresh database (its name), dropped afterwards with whatever is still connected to it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_database() -> Iterator[int]:
    """An empty Redis database index in 2..15, claimed with a marker key (a concurrent test picks another one),
    flushed afterwards."""
    import redis

    token = uuid.uuid4().hex
    for index in random.sample(range(2, 16), 14):
        client = redis.Redis.from_url(f"{REDIS_URL}/{index}", socket_connect_timeout=5)
        try:
            if client.dbsize() == 0 and client.set("mlops-test-claim", token, nx=True) and client.dbsize() == 1:
                break
        finally:
            client.close()
    else:
        raise RuntimeError("no empty Redis database index in 2..15")
    try:
        yield index
    finally:
        client = redis.Redis.from_url(f"{REDIS_URL}/{index}", socket_connect_timeout=5)
        try:
            client.flushdb()
        finally:
            client.close()


@contextmanager
def mlflow_server(root: Path, database: str, *, allowed_hosts: str | None = None) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1:<free port> with ``database`` of the PostgreSQL as backend store and
    ``root/artifacts`` as artifact destination (served through the server); yields its URL.

    :param allowed_hosts: ``MLFLOW_SERVER_ALLOWED_HOSTS`` of the server (its DNS-rebinding guard), if set.
    """
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logfile = root / "mlflow-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if allowed_hosts:
        env["MLFLOW_SERVER_ALLOWED_HOSTS"] = allowed_hosts
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{database}",
        "--artifacts-destination",
        (root / "artifacts").as_uri(),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with logfile.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def healthy() -> bool:
        assert proc.poll() is None, f"mlflow server exited {proc.returncode}: {logfile.read_text()[-3000:]}"
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 180, f"mlflow server healthy on {url} (log: {logfile})", every=1)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM ``proc``'s process group (it was started with ``start_new_session``), SIGKILL after ``grace``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # Workers left in the group after the leader exited.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def processes_with(home: Path) -> list[int]:
    """Pids of live processes whose environment names ``home`` as MLOPS_HOME (what a stack in ``home`` started)."""
    needle = f"MLOPS_HOME={home}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                stat = (entry / "stat").read_text()
                if stat[stat.rfind(")") + 2] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@contextmanager
def production_stack(home: Path, projects: Path, env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A production stack (``devstack.Stack``, ``MLOPS_PROFILE=production``) in ``home``, started and healthy:
    PostgreSQL databases of its own (random names), an empty Redis database index of its own (the Celery broker
    and Feast's online store), free ports for every component, the use cases of ``projects``, ``env`` on top.

    The process's environment is the stack's while the context is open (set with a ``MonkeyPatch``; variables of
    another Airflow, MLflow or serving setup removed). Afterwards the stack is stopped, any process of it still
    alive is killed, the databases are dropped and the Redis index flushed; then it asserts that nothing was
    still running.

    Skips only when nothing listens on PostgreSQL's or Redis's port (``services.require_service``); any other
    error of theirs fails the caller.
    """
    import pytest
    import redis

    from airflow_mlops_dev.devstack import Stack

    from services import require_service

    require_service("PostgreSQL", PG["host"], PG["port"], "the production profile (Airflow's and MLflow's databases)")
    require_service("Redis", REDIS["host"], REDIS["port"], "the production profile (the Celery broker, Feast)")
    # Both listen: from here on, an error of theirs (authentication, a query) is the caller's failure.
    pg_admin("SELECT 1")
    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()

    suffix = uuid.uuid4().hex[:10]
    databases = {"MLOPS_AIRFLOW_DB": f"mlops_test_af_{suffix}", "MLOPS_MLFLOW_DB": f"mlops_test_mlf_{suffix}"}
    stack = None
    leftovers: list[int] = []
    with redis_database() as redis_db, pytest.MonkeyPatch.context() as patch:
        for name in [
            k
            for k in os.environ
            if k.startswith(("AIRFLOW", "MLFLOW_", "MLOPS_SERVING_")) or k in ("MLOPS_USECASE", "MLOPS_FEAST_HOME")
        ]:
            patch.delenv(name)
        settings = {
            "MLOPS_PROFILE": "production",
            "MLOPS_HOME": str(home),
            "MLOPS_LAKE": (home / "lake").as_uri(),
            # The DAG factory of every component builds the DAGs of the use cases there.
            "MLOPS_PROJECTS": str(projects),
            "MLOPS_POSTGRES_URL": PG_URL,
            "MLOPS_REDIS_URL": REDIS_URL,
            **databases,
            # Celery's broker keys and Feast's entity keys do not collide: one index, flushed at the end.
            "MLOPS_CELERY_REDIS_DB": str(redis_db),
            "MLOPS_FEAST_REDIS_DB": str(redis_db),
            "MLOPS_MLFLOW_PORT": str(free_port()),
            # Every port a component listens on is free, so the stack can run next to another one.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
            **(env or {}),
        }
        for name, value in settings.items():
            patch.setenv(name, value)
        try:
            stack = Stack(home=home, port=free_port(), profile="production")
            stack.up(timeout=600)
            yield stack
        finally:
            try:
                if stack is not None:
                    stack.down()
            finally:  # whatever failed above, no process or database outlives the stack
                leftovers = processes_with(home)
                for pid in leftovers:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                for database in databases.values():
                    pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert stack.pids() == {}
    assert leftovers == [], f"processes of the stack still ran after down: {leftovers}"
