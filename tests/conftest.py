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
#: The reference use case (monthly 2013 New York flights), whose DAGs the ``dag.test()`` tests run.
FLIGHTS = ROOT / "examples" / "flight_delay"
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


#: MLflow's default artifact folder in the working directory: a test that writes there leaks outside its temp dirs.
STRAY_MLRUNS = ROOT / "mlruns"
_MLRUNS_BEFORE = STRAY_MLRUNS.exists()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_HOME, ignore_errors=True)
    if STRAY_MLRUNS.exists() and not _MLRUNS_BEFORE:
        shutil.rmtree(STRAY_MLRUNS, ignore_errors=True)
        print(f"\nERROR: a test wrote MLflow artifacts to {STRAY_MLRUNS} (an experiment without an artifact location)")
        session.exitstatus = 1


#: Variables MLflow writes into this process's environment (``mlflow.set_tracking_uri`` / ``set_registry_uri``,
#: which ``MlflowHook`` calls): without a reset, a test's MLflow server outlives it in every later test and in the
#: servers they start.
MLFLOW_WRITES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _mlflow_environment_restored():
    """Give ``MLFLOW_WRITES`` back their values from before the test, whatever the test or MLflow wrote."""
    before = {name: os.environ.get(name) for name in MLFLOW_WRITES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


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


@pytest.fixture
def usecase_lake(lake_root):
    """The flight_delay example's own lake in this test's fresh lake: ``<MLOPS_LAKE>/flight_delay``, where the
    factory points its DAGs' tasks (parse those DAGs after this fixture: the lake root is fixed at parse time)."""
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase import config

    url = config.lake_url(config.load(FLIGHTS))
    assert url == f"{lake_root}/flight_delay", url
    hook = LakeHook(root_url=url)
    hook.ensure_zones()
    return hook


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> Path:
    """A fresh, empty MLflow store for one test: tracking and registry in one SQLite file, artifacts beside it
    (``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` / ``MLOPS_MLFLOW_ARTIFACTS``, restored afterwards).

    A test that asserts on a first model, a champion or a ledger makes them itself in this store: what another
    test left in a shared store cannot decide which path it takes. Returns the store's folder.
    """
    root = tmp_path / "mlflow"
    root.mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)  # mlflow.set_registry_uri writes it: restored after
    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACTS", (root / "artifacts").as_uri())
    return root


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


def asset_event_extras(asset_name: str, run) -> list[dict]:
    """The extras of the events of the Asset named ``asset_name`` (e.g. ``flight_delay.validated_batch``) that the
    tasks of ``run`` (a finished ``dag.test()`` run) emitted: not those of other runs sharing the session's DB."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == asset_name, AssetEvent.source_run_id == run.run_id)
            .order_by(AssetEvent.id)
        ).all()
        return [dict(event.extra or {}) for event in events]
