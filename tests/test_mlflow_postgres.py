"""The production profile: an MLflow tracking server on PostgreSQL, started natively for this test.

A fresh database is created on the PostgreSQL at 127.0.0.1:5432 and dropped afterwards; the server runs in
its own process group and is stopped with it. The suite reaches it through the Airflow connection
``mlflow_default`` (as deployed), not through ``MLFLOW_TRACKING_URI``.

PostgreSQL is a service this machine runs: the test skips only when nothing listens on 127.0.0.1:5432
(``services.require_service``); any other error of it (authentication, a query) fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from airflow_mlops.hooks.bentoml_process import free_port

from services import require_service
from training_fixtures import build_frame, run_pipeline, write_configs, write_snapshot
from waiting import wait_for

pytestmark = pytest.mark.slow

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MODEL = "flight_delay_test"


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    import httpx

    require_service("PostgreSQL", PG["host"], PG["port"], "an MLflow tracking server on PostgreSQL")
    _admin("SELECT 1")  # it listens: an error from here on (authentication...) is the test's failure
    root = tmp_path_factory.mktemp("mlflow-server")
    db = f"mlops_test_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{db}"')
    port = free_port()
    log = (root / "server.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}",
            "--artifacts-destination",
            (root / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (
            f"mlflow server exited {proc.returncode}: {(root / 'server.log').read_text()[-3000:]}"
        )
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 180, f"mlflow server healthy on {url} (log: {root / 'server.log'})", every=1)
        with pytest.MonkeyPatch.context() as mp:
            # Empty, and restored afterwards: mlflow.set_*_uri() writes these into the environment.
            for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLOPS_MLFLOW_ARTIFACTS"):
                mp.setenv(var, "")
            mp.setenv(
                "AIRFLOW_CONN_MLFLOW_DEFAULT",
                json.dumps({"conn_type": "mlflow", "host": "127.0.0.1", "port": port, "schema": "http"}),
            )
            mp.setenv("MLOPS_LAKE", (root / "lake").as_uri())
            yield {"url": url, "root": root, "db": db}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_pipeline_registry_and_race_on_a_postgres_backed_server(mlflow_server):
    import psycopg2

    from airflow_mlops.core.ledger import LedgerConflict, check_sequence
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    hook = MlflowHook()
    assert hook.tracking_uri == mlflow_server["url"] and not hook.is_embedded

    lake = LakeHook()
    lake.ensure_zones()
    frame = build_frame((1, 2, 3), sample=0.3, seed=0)
    good = write_snapshot(lake, frame)
    paths = write_configs(mlflow_server["root"] / "config")

    first = run_pipeline(good, paths, "manual__pg1")
    assert first["promoted"]["to_version"] == "1"
    # A retried registration of the first run reuses its version.
    version, created = hook.register(MODEL, first["trained"]["model_uri"], first["trained"]["run_id"])
    assert (version, created) == ("1", False)

    # Concurrent promotions through the server (each with its own client), all read the same champion:
    # exactly one wins. (The two-process race runs against the SQLite store in test_registry.py.)
    import mlflow

    hook.activate()
    versions = [str(mlflow.register_model(first["trained"]["model_uri"], MODEL).version) for _ in range(4)]
    barrier, outcomes = threading.Barrier(len(versions)), []

    def racer(i: int, version: str) -> None:
        own = MlflowHook()
        expected = own.alias_version(MODEL, "champion")
        barrier.wait(timeout=60)
        try:
            entry, _ = own.transition(
                MODEL,
                "champion",
                to_version=version,
                expected_from=expected,
                action="promote",
                triggered_by={"dag_id": "race", "run_id": f"r{i}", "task_id": "promote_model"},
            )
            outcomes.append(("won", entry.to_version))
        except LedgerConflict as err:
            outcomes.append(("lost", str(err)))

    threads = [threading.Thread(target=racer, args=(i, v)) for i, v in enumerate(versions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(o[0] for o in outcomes) == ["lost", "lost", "lost", "won"], outcomes
    winner = next(o[1] for o in outcomes if o[0] == "won")
    ledger = hook.read_ledger(MODEL)
    check_sequence(ledger)
    assert [e.to_version for e in ledger] == ["1", winner]
    assert hook.alias_version(MODEL, "champion") == winner

    # The state really is in PostgreSQL: the ledger entries and the alias are rows there.
    conn = psycopg2.connect(dbname=mlflow_server["db"], **PG)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM experiments WHERE name LIKE %s", (f"mlops-ledger/{MODEL}/%",))
            assert cur.fetchone()[0] == 2
            cur.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'", (MODEL,))
            assert str(cur.fetchone()[0]) == winner
    finally:
        conn.close()
