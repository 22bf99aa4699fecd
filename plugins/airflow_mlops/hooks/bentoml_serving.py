"""A use case's BentoML serving endpoint: where it is, and the calls the suite makes to it (info, reload, predict).

Named ``bentoml_serving`` (not ``bentoml``): the plugin loader registers plugin files under their bare names.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    import httpx

    from airflow_mlops.usecase.config import UseCase


class BentoServingHook(BaseHook):
    """Talk to a use case's prediction service (``airflow_mlops.serving_service``).

    Where it is, in order: an explicit ``url``; the Airflow connection ``bentoml_conn_id`` if it exists
    (``host``/``port``/``schema``, or extra ``url``; the admin token as ``password``) — one endpoint, so meant for
    a single-use-case deployment; else the use case's ``airflow_mlops.usecase.config.serving_url``
    (``MLOPS_SERVING_URL__<NAME>``, else ``http://127.0.0.1:<MLOPS_SERVING_PORT__<NAME> or serving.server.port>``).
    The admin token: the connection's password, else the embedded server's (loopback: ``MLOPS_SERVING_TOKEN`` or
    the token file under ``MLOPS_HOME/run``), else ``MLOPS_SERVING_TOKEN``.

    :param usecase: the use-case folder (holding ``mlops.yaml``).
    :param bentoml_conn_id: the connection of the serving endpoint; default ``bentoml_default``.
    :param url: an explicit URL (overrides the connection), e.g. a validation server on a free port.
    :param timeout: seconds per call.
    """

    conn_name_attr = "bentoml_conn_id"
    default_conn_name = "bentoml_default"
    conn_type = "http"
    hook_name = "BentoML serving"

    def __init__(
        self,
        usecase: str | Path,
        bentoml_conn_id: str = default_conn_name,
        url: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.usecase = usecase
        self.bentoml_conn_id = bentoml_conn_id
        self._url = url
        self.timeout = timeout

    @cached_property
    def config(self) -> UseCase:
        from airflow_mlops.usecase import config

        return config.load(self.usecase)

    @cached_property
    def _conn(self) -> Any:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.bentoml_conn_id)
        except AirflowNotFoundException:
            return None

    @cached_property
    def url(self) -> str:
        if self._url:
            return self._url.rstrip("/")
        conn = self._conn
        if conn is not None:
            extra = conn.extra_dejson or {}
            if extra.get("url"):
                return str(extra["url"]).rstrip("/")
            if conn.host:
                host = conn.host if "://" in conn.host else f"{conn.schema or 'http'}://{conn.host}"
                return f"{host}:{conn.port}" if conn.port else host
        from airflow_mlops.usecase import config

        return config.serving_url(self.config)

    @property
    def is_embedded(self) -> bool:
        """Served by the suite's own process on loopback (it may start and stop it)."""
        return self.url.startswith(("http://127.0.0.1:", "http://localhost:"))

    @cached_property
    def token(self) -> str | None:
        if self._conn is not None and self._conn.password:
            return self._conn.password
        if self.is_embedded:
            from airflow_mlops.serving_process import embedded_token

            return embedded_token()
        return os.environ.get("MLOPS_SERVING_TOKEN") or None

    def client(self, timeout: float | None = None) -> httpx.Client:
        import httpx

        return httpx.Client(base_url=self.url, timeout=timeout or self.timeout)

    # -- calls -----------------------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        import httpx

        try:
            with self.client(timeout=5) as http:
                return http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def is_alive(self) -> bool:
        """The server answers (``/livez``), ready or not: a server started before its first champion is alive and
        waits for a reload."""
        import httpx

        try:
            with self.client(timeout=5) as http:
                return http.get("/livez").status_code == 200
        except httpx.HTTPError:
            return False

    def info(self) -> dict[str, Any]:
        with self.client() as http:
            response = http.post("/info", json={})
            response.raise_for_status()
            return response.json()

    def reload(self, version: str | None = None, timeout: float = 300.0) -> dict[str, Any]:
        """Ask the server to load ``version`` (default: its alias's), check it, and swap. Raises on refusal."""
        with self.client(timeout=timeout) as http:
            response = http.post(
                "/admin/reload",
                json={"version": str(version) if version else None},
                headers={"X-MLOPS-Token": self.token or ""},
            )
        if response.status_code != 200:
            raise RuntimeError(
                f"{self.url} refused to load version {version}: HTTP {response.status_code} {response.text[:500]}"
            )
        return response.json()

    def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        """One prediction: ``request`` is a body of the use case's request model."""
        with self.client() as http:
            response = http.post("/predict", json=request)
            response.raise_for_status()
            return response.json()
