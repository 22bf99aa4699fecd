"""End to end through the real embedded Airflow: scheduler, DAG processor, triggerer, API server as processes.

An external system's view: authenticate to the REST API, unpause, trigger a run with conf, watch the landing
flag start a run, and read a task's Data Docs link, all over loopback HTTP.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest
import yaml

from airflow_mlops import replay
from airflow_mlops.devstack import COMPONENTS, AirflowClient, Stack
from airflow_mlops.hooks.lake import LakeHook
from airflow_mlops.serving_process import free_port

from conftest import ROOT

pytestmark = pytest.mark.e2e
DAG_ID = "mlops_ingest_validate"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e-home")
    # One scheduled month keeps the catch-up short; everything else is the shipped configuration.
    config = yaml.safe_load((ROOT / "include" / "config" / "pipeline.yaml").read_text())
    config["ingest"].update(schedule_first_month="2013-01", schedule_last_month="2013-01")
    (home / "pipeline.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_CONFIG", str(home / "pipeline.yaml"))
        # The scheduler preloads only what the ingest DAG's tasks import (the whole list costs ~40 s of a
        # 2-core start).
        patch.setenv("MLOPS_PRELOAD_MODULES", "pandas,pyarrow.parquet,great_expectations")
        patch.setenv("MLOPS_LAKE", (home / "lake").as_uri())
        patch.setenv("MLOPS_HOME", str(home))
        for name in [k for k in os.environ if k.startswith("AIRFLOW")]:
            patch.delenv(name)
        stack = Stack(home=home, port=free_port())
        try:
            stack.up(timeout=240)
            yield stack
        finally:
            stack.down()
            assert stack.pids() == {}


@pytest.fixture(scope="module")
def client(stack) -> AirflowClient:
    client = AirflowClient(stack.url, "admin", stack.admin_password())
    client.wait_dag(DAG_ID)
    return client


def test_rest_trigger_with_conf_validates_the_month(stack, client):
    lake = LakeHook(root_url=(stack.home / "lake").as_uri())
    replay.land("2013-01", ring=False, lake_root=lake.root_url)
    client.unpause(DAG_ID)
    run_id = client.trigger(DAG_ID, {"month": "2013-01"})
    assert client.wait_run(DAG_ID, run_id, timeout=300) == "success"
    manifest = lake.read_manifest(lake.path("validated", "2013-01"))
    assert manifest["files"]["flights.parquet"]["rows"] == 27004
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in client.task_instances(DAG_ID, run_id)}
    assert states == {("ingest_batch", -1): "success", ("validate_batch", 0): "success"}


def test_landing_flag_starts_a_run_that_quarantines_a_broken_batch(stack, client):
    lake = LakeHook(root_url=(stack.home / "lake").as_uri())
    client.wait_idle(DAG_ID, timeout=300)
    before = {r["dag_run_id"] for r in client.runs(DAG_ID)}
    replay.land("2013-02", corrupt="null_column", lake_root=lake.root_url)  # rings landing/_READY
    deadline, new = time.monotonic() + 240, []
    while time.monotonic() < deadline and not new:
        new = [r for r in client.runs(DAG_ID) if r["dag_run_id"] not in before and r["run_type"] == "asset_triggered"]
        time.sleep(2)
    assert new, "the landing flag did not start a run"
    assert client.wait_run(DAG_ID, new[0]["dag_run_id"], timeout=300) == "failed"
    assert not lake.path("landing", "_READY").exists()
    (quarantined,) = list(lake.path("quarantine", "2013-02").iterdir())
    assert (quarantined / "data_docs.html").exists()
    assert lake.read_manifest(lake.path("validated", "2013-02")) is None

    # The failed task links to its Data Docs page, served by the plugin behind Airflow's login.
    links = client.http.get(
        f"/api/v2/dags/{DAG_ID}/dagRuns/{new[0]['dag_run_id']}/taskInstances/validate_batch/links",
        params={"map_index": 0},
    ).json()["extra_links"]
    url = links.get("Data Docs")
    assert url and url.startswith("/mlops/lake/reports/data_docs/validations/flights_batch/"), links
    page = client.http.get(url)
    assert page.status_code == 200 and "values must never be null" in page.text  # GX's rendering of not-null
    assert httpx.get(f"{stack.url}{url}").status_code in (401, 403)
    assert client.http.get("/mlops/lake/raw/2013-01/x/flights.csv").status_code == 404


def test_components_run_in_their_own_process_groups(stack):
    assert set(stack.pids()) == set(COMPONENTS)
    assert all(os.getpgid(pid) == pid for pid in stack.pids().values())


def test_the_embedded_metadata_db_waits_for_locks_and_lets_readers_run(stack):
    import sqlite3
    import subprocess
    import sys
    from contextlib import closing

    from airflow_mlops.devstack import SQLITE_CONNECT_ARGS

    with closing(sqlite3.connect(stack.sqlite_db)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # What every component's engine gets from the stack's configuration: a writer waits for a lock.
    probe = (
        "from airflow import settings\n"
        "with settings.engine.connect() as c:\n"
        "    print(c.exec_driver_sql('PRAGMA busy_timeout').scalar())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=stack.env(), capture_output=True, text=True, check=True, timeout=120
    )
    assert int(done.stdout.split()[-1]) == SQLITE_CONNECT_ARGS["timeout"] * 1000
