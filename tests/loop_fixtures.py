"""Helpers of the whole-loop tests (tests/test_tutorial_byod.py, tests/test_example_seattle.py): a use case's DAGs
parsed from ``dags/`` over ``MLOPS_PROJECTS`` and run with ``dag.test()``, and its embedded serving process on a
free port, stopped (and checked gone) at the end.

Only the provider's public API: the serving process is ``airflow_mlops.hooks.bentoml_process.ServingProcess``.
"""

from __future__ import annotations

import socket
from datetime import date, timedelta
from pathlib import Path

from conftest import ROOT


def dag(dag_id: str):
    """The DAG as the DAG processor parses ``dags/`` now (afresh per run: ``dag.test`` keeps the conf in params)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def state(run) -> str:
    """A finished run's state as a plain string (``success``, ``failed``)."""
    return str(getattr(run.state, "value", run.state))


def xcom(run, task_id: str, key: str = "return_value"):
    """What ``task_id`` of a finished ``dag.test()`` run pushed under ``key``."""
    return run.get_task_instance(task_id).xcom_pull(task_ids=task_id, key=key)


def days(first: str, count: int) -> list[str]:
    """``count`` consecutive days (``YYYY-MM-DD``) from ``first``."""
    start = date.fromisoformat(first)
    return [(start + timedelta(days=i)).isoformat() for i in range(count)]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    from airflow_mlops.hooks.bentoml_process import free_port as provider_free_port

    return provider_free_port()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def loop_environment(monkeypatch, tmp_path: Path, projects: Path, name: str) -> int:
    """Point the use case's DAGs and serving at temporary state: ``MLOPS_PROJECTS`` = ``projects``, ``MLOPS_HOME``,
    the lake and Feast under ``tmp_path``, a free serving port for the use case ``name``. Returns the port."""
    port = free_port()
    for key, value in {
        "MLOPS_PROJECTS": str(projects),
        "MLOPS_HOME": str(tmp_path / "home"),
        "MLOPS_LAKE": (tmp_path / "lake").as_uri(),
        "MLOPS_FEAST_HOME": str(tmp_path / "feast"),
        f"MLOPS_SERVING_PORT__{name.upper()}": str(port),
        "FEAST_USAGE": "False",
    }.items():
        monkeypatch.setenv(key, value)
    for key in (
        "MLOPS_USECASE",
        f"MLOPS_SERVING_URL__{name.upper()}",
        "MLOPS_SERVING_TOKEN",
        "MLOPS_SERVING_MODEL_NAME",
    ):
        monkeypatch.delenv(key, raising=False)
    return port


def stop_serving(folder: Path, port: int, home: Path) -> None:
    """Stop the use case's embedded serving process (deploy started it) and check nothing is left running: its
    pid file gone, its port free, no other pid file under ``home/run`` (the infra validation's server)."""
    from airflow_mlops.hooks.bentoml_process import ServingProcess

    server = ServingProcess(usecase=folder, port=port, home=home)
    server.stop()
    assert not server.pidfile.exists()
    assert not port_in_use(port)
    run_dir = home / "run"
    leftovers = sorted(p.name for p in run_dir.glob("*.pid")) if run_dir.exists() else []
    assert leftovers == [], f"serving processes left running: {leftovers}"
