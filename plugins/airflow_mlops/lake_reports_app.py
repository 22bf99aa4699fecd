"""A FastAPI app, mounted in the Airflow API server, that serves the lake's reports to signed-in users.

``GET /mlops/lake/<path>`` serves ``<MLOPS_LAKE>/<path>`` when ``<path>`` lies in a served zone of a use case's
lake root (``<use case>/reports/...``, ``<use case>/quarantine/...``: every use case's zones live under
``<MLOPS_LAKE>/<name>``, see ``usecase.config.lake_url``) or of the lake root itself (``reports/...``). Data zones
are never served, nor quarantined data files (only their reports).
"""

from __future__ import annotations

import logging
import mimetypes

from fastapi import Depends, FastAPI, HTTPException, Response

from airflow_mlops.hooks.lake import LakeHook

log = logging.getLogger(__name__)

#: Zones of a lake root whose files may be served (data zones are never served over HTTP).
SERVED_ZONES = ("reports", "quarantine")


def _require_login():
    """Airflow's own authentication (the UI's session cookie or a bearer token)."""
    from airflow.api_fastapi.core_api.security import requires_authenticated

    return Depends(requires_authenticated())


def usecase_names() -> set[str]:
    """The names of the use cases in the projects folder: each has its lake root ``<MLOPS_LAKE>/<name>``."""
    from airflow_mlops.usecase import config

    names = set()
    for folder in config.discover():
        try:
            names.add(config.load(folder).name)
        except config.UseCaseConfigError as err:
            log.warning("use case %s not loaded: %s", folder, err)
    return names


def served_parts(key: str) -> list[str]:
    """The parts of ``key`` under ``MLOPS_LAKE`` if it may be served; else ``HTTPException`` 404 saying why.

    :param key: the requested path under ``/mlops/lake/`` (``<use case>/reports/...`` or ``reports/...``).
    """
    parts = [p for p in key.split("/") if p]
    if not parts or any(p in (".", "..") or "\\" in p for p in parts):
        raise HTTPException(status_code=404, detail="not a lake path")
    zone = 0 if parts[0] in SERVED_ZONES else None
    if zone is None and len(parts) > 1 and parts[1] in SERVED_ZONES and parts[0] in usecase_names():
        zone = 1
    if zone is None:
        served = ", ".join(SERVED_ZONES)
        raise HTTPException(
            status_code=404, detail=f"only {served} (of the lake or of a use case: <name>/...) are served"
        )
    if parts[zone] == "quarantine" and parts[-1].endswith((".csv", ".parquet")):
        raise HTTPException(status_code=404, detail="quarantined data is not served, only its reports")
    return parts


def create_app() -> FastAPI:
    app = FastAPI(title="airflow-mlops lake reports", dependencies=[_require_login()])

    @app.get("/lake/{key:path}")
    def lake_file(key: str) -> Response:
        parts = served_parts(key)
        path = LakeHook().path(*parts)
        if not path.is_file():
            raise HTTPException(status_code=404, detail=f"no report at {key}")
        media = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
        return Response(content=path.read_bytes(), media_type=media)

    return app
