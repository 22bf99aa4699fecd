"""Test setup: every test session gets its own MLOPS_HOME (Airflow home, lake, logs) in a temporary folder.

The environment is set here, at import, because Airflow reads its configuration when first imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlops-tests-"))

os.environ.update(
    {
        "MLOPS_HOME": str(SESSION_HOME),
        "MLOPS_LAKE": (SESSION_HOME / "lake").as_uri(),
        "AIRFLOW_HOME": str(SESSION_HOME / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{SESSION_HOME / 'airflow' / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(SESSION_HOME / "logs"),
        "GX_ANALYTICS_ENABLED": "False",
        "PYTHONWARNINGS": "ignore",
    }
)
for name in ("MLOPS_CONFIG", "MLOPS_LAKE_CONN_ID", "MLOPS_INCLUDE"):
    os.environ.pop(name, None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB (SQLite) for ``dag.test()``; created once per session."""
    db = SESSION_HOME / "airflow" / "airflow.db"
    if not db.exists():
        airflow = Path(sys.executable).with_name("airflow")
        done = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=os.environ.copy())
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return db


@pytest.fixture
def lake_root(tmp_path, monkeypatch) -> str:
    """A fresh, empty lake for one test (``MLOPS_LAKE`` points at it)."""
    url = (tmp_path / "lake").as_uri()
    monkeypatch.setenv("MLOPS_LAKE", url)
    return url


@pytest.fixture
def lake(lake_root):
    from airflow_mlops.hooks.lake import LakeHook

    hook = LakeHook(root_url=lake_root)
    hook.ensure_zones()
    return hook


def load_dag(dag_id: str):
    """Parse ``dags/`` as the DAG processor does and return one DAG."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def task_states(dag_run) -> dict[tuple[str, int], str]:
    """``(task_id, map_index) → state`` of a finished ``dag.test()`` run."""
    return {
        (ti.task_id, ti.map_index): str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()
    }
