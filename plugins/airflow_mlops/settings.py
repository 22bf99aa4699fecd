"""Where the suite keeps its state, read from the environment (no heavy imports, no I/O at import).

``MLOPS_HOME``  one directory for the suite's state: lake, MLflow store, Feast, logs (default: :func:`mlops_home`).
``MLOPS_LAKE``  the lake root URL for ``ObjectStoragePath`` (default ``file://$MLOPS_HOME/lake``);
                ``s3://bucket/prefix`` in production needs no code change.
``MLOPS_LAKE_CONN_ID``  the Airflow connection holding the lake's credentials (e.g. ``aws_default``).
``MLOPS_PROJECTS``  the folder whose sub-folders are the use cases (see ``airflow_mlops.usecase.config``).
"""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path

#: Zones of the lake, in the order data moves through them.
LAKE_ZONES = ("landing", "raw", "validated", "quarantine", "reports")


#: The distribution name a checkout's ``pyproject.toml`` declares.
DISTRIBUTION = "airflow-mlops"


@cache
def checkout_root() -> Path | None:
    """The source checkout this package is imported from, or None when it is installed (a wheel in site-packages).

    A checkout is the folder two levels above ``plugins/airflow_mlops/settings.py`` whose ``pyproject.toml``
    names the ``airflow-mlops`` distribution (an editable install imports from there too).
    """
    root = Path(__file__).resolve().parents[2]
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("project") or {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return root if project.get("name") == DISTRIBUTION else None


def project_root() -> Path:
    """Deprecated alias: the checkout if there is one (:func:`checkout_root`), else :func:`mlops_home`.

    Installed from a wheel there is no checkout: code that needs one (the git commit of the code, the developer
    stack's ``dags/`` and ``plugins/``) calls :func:`checkout_root` and handles None; state goes to :func:`mlops_home`.
    """
    return checkout_root() or mlops_home()


def airflow_home() -> Path:
    """``AIRFLOW_HOME``, else ``~/airflow`` (Airflow's own default)."""
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow").expanduser()


def mlops_home() -> Path:
    """``MLOPS_HOME``; else ``<checkout>/.mlops`` in a source checkout; else ``$AIRFLOW_HOME/mlops`` when installed."""
    configured = os.environ.get("MLOPS_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    root = checkout_root()
    return (root / ".mlops" if root else airflow_home() / "mlops").resolve()


def lake_url() -> str:
    url = os.environ.get("MLOPS_LAKE")
    if url:
        return url.rstrip("/")
    return (mlops_home() / "lake").as_uri()


def lake_conn_id() -> str | None:
    return os.environ.get("MLOPS_LAKE_CONN_ID") or None
