"""A FastAPI app, mounted in the Airflow API server, that serves the lake's reports to signed-in users."""

from __future__ import annotations

import mimetypes

from fastapi import Depends, FastAPI, HTTPException, Response

from airflow_mlops.hooks.lake import LakeHook

#: Zones of the lake whose files may be served (data zones are never served over HTTP).
SERVED_ZONES = ("reports", "quarantine")


def _require_login():
    """Airflow's own authentication (the UI's session cookie or a bearer token)."""
    from airflow.api_fastapi.core_api.security import requires_authenticated

    return Depends(requires_authenticated())


def create_app() -> FastAPI:
    app = FastAPI(title="airflow-mlops lake reports", dependencies=[_require_login()])

    @app.get("/lake/{key:path}")
    def lake_file(key: str) -> Response:
        parts = [p for p in key.split("/") if p]
        if not parts or parts[0] not in SERVED_ZONES or any(p in (".", "..") for p in parts):
            raise HTTPException(status_code=404, detail=f"only {', '.join(SERVED_ZONES)} are served")
        if parts[0] == "quarantine" and parts[-1].endswith((".csv", ".parquet")):
            raise HTTPException(status_code=404, detail="quarantined data is not served, only its reports")
        path = LakeHook().path(*parts)
        if not path.is_file():
            raise HTTPException(status_code=404, detail=f"no report at {key}")
        media = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
        return Response(content=path.read_bytes(), media_type=media)

    return app
