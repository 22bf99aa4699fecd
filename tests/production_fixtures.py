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
from contextlib import contextmanager
from pathlib import Path

from airflow_mlops.hooks.bentoml_process import free_port

from waiting import wait_for

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
