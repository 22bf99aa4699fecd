"""Where the suite keeps its state, read from the environment (no heavy imports, no I/O at import).

``MLOPS_HOME``  one directory for all embedded state (default ``./.mlops``): Airflow home, lake, logs.
``MLOPS_LAKE``  the lake root URL for ``ObjectStoragePath`` (default ``file://$MLOPS_HOME/lake``);
                ``s3://bucket/prefix`` in production needs no code change.
``MLOPS_LAKE_CONN_ID``  the Airflow connection holding the lake's credentials (e.g. ``aws_default``).
``MLOPS_PROJECTS``  the folder whose sub-folders are the use cases (see ``airflow_mlops.usecase.config``).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Zones of the lake, in the order data moves through them.
LAKE_ZONES = ("landing", "raw", "validated", "quarantine", "reports")


def project_root() -> Path:
    """The checkout this package lives in (``plugins/airflow_mlops/settings.py`` → two levels up)."""
    return Path(__file__).resolve().parents[2]


def mlops_home() -> Path:
    return Path(os.environ.get("MLOPS_HOME", project_root() / ".mlops")).resolve()


def lake_url() -> str:
    url = os.environ.get("MLOPS_LAKE")
    if url:
        return url.rstrip("/")
    return (mlops_home() / "lake").as_uri()


def lake_conn_id() -> str | None:
    return os.environ.get("MLOPS_LAKE_CONN_ID") or None
