"""A use case's BentoML serving endpoint: where it is, the calls the suite makes to it (info, reload, predict), and
the two serving steps over it: validate a candidate in a pinned server of its own, deploy a version with no downtime.

Named ``bentoml_serving`` (not ``bentoml``): the plugin loader registers plugin files under their bare names.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops.hooks.bentoml_process import ServingError, ServingProcess, embedded_token, free_port

if TYPE_CHECKING:
    import httpx

    from airflow_mlops.core.infra_validation import InfraDecision
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.usecase.config import UseCase


def mlflow_env(hook: MlflowHook) -> dict[str, str]:
    """The MLflow location a serving process needs (resolved here: it cannot read Airflow connections).

    :param hook: the MLflow hook of the task (its connection's tracking and registry URIs, artifact root).
    """
    env = {"MLFLOW_TRACKING_URI": hook.tracking_uri, "MLFLOW_REGISTRY_URI": hook.registry_uri}
    if hook.artifact_root:
        env["MLOPS_MLFLOW_ARTIFACTS"] = hook.artifact_root
    return env


class BentoServingHook(BaseHook):
    """Talk to a use case's prediction service (``airflow_mlops.serving_service``).

    Where it is, in order: an explicit ``url``; the Airflow connection ``bentoml_conn_id`` if it exists
    (``host``/``port``/``schema``, or extra ``url``; the admin token as ``password``) — one endpoint, so meant for
    a single-use-case deployment; else the use case's ``airflow_mlops.usecase.config.serving_url``
    (``MLOPS_SERVING_URL__<NAME>``, else ``http://127.0.0.1:<MLOPS_SERVING_PORT__<NAME> or serving.server.port>``).
    Only that last one, the default endpoint on loopback, is the embedded server (``is_embedded``: the suite may
    start it); an endpoint given explicitly (``url``, the connection, ``MLOPS_SERVING_URL__<NAME>``) is run by
    someone else, e.g. the compose stack's ``serving`` container, even on 127.0.0.1.
    The admin token: the connection's password, else ``MLOPS_SERVING_TOKEN``, else (embedded) the token file under
    ``MLOPS_HOME/run``.

    The serving steps: ``deploy`` (make the endpoint serve a version, starting the embedded server if it is down)
    and ``validate_candidate`` (a pinned server of its own, checked and stopped); the suite's serving processes are
    ``airflow_mlops.hooks.bentoml_process.ServingProcess``.

    :param usecase: the use-case folder (holding ``mlops.yaml``).
    :param bentoml_conn_id: the connection of the serving endpoint; default ``bentoml_default``.
    :param url: an explicit URL (overrides the connection), e.g. a validation server on a free port.
    :param timeout: seconds per call.
    """

    conn_name_attr = "bentoml_conn_id"
    default_conn_name = "bentoml_default"
    conn_type = "bentoml"
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
    def _endpoint(self) -> tuple[str, bool]:
        """The URL, and whether it is the embedded server's (see the class docstring)."""
        if self._url:
            return self._url.rstrip("/"), False
        conn = self._conn
        if conn is not None:
            extra = conn.extra_dejson or {}
            if extra.get("url"):
                return str(extra["url"]).rstrip("/"), False
            if conn.host:
                host = conn.host if "://" in conn.host else f"{conn.schema or 'http'}://{conn.host}"
                return (f"{host}:{conn.port}" if conn.port else host), False
        from airflow_mlops.usecase import config

        return config.serving_endpoint(self.config)

    @property
    def url(self) -> str:
        return self._endpoint[0]

    @property
    def is_embedded(self) -> bool:
        """The suite's own server (the use case's default endpoint on loopback): the deploy step starts it when it
        is down. An endpoint given explicitly is never started here, whatever its host."""
        return self._endpoint[1]

    @cached_property
    def token(self) -> str | None:
        if self._conn is not None and self._conn.password:
            return self._conn.password
        if self.is_embedded:
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
        """Ask the server to load ``version`` (default: its alias's), check it, and swap.

        :raises ServingError: the server refused (its answer is in the message).
        """
        with self.client(timeout=timeout) as http:
            response = http.post(
                "/admin/reload",
                json={"version": str(version) if version else None},
                headers={"X-MLOPS-Token": self.token or ""},
            )
        if response.status_code == 403:
            raise ServingError(
                f"{self.url} refused the admin token (HTTP 403): give the deploy step the server's token "
                f"(MLOPS_SERVING_TOKEN, or the password of the connection {self.bentoml_conn_id!r})"
            )
        if response.status_code != 200:
            raise ServingError(
                f"{self.url} refused to load version {version}: HTTP {response.status_code} {response.text[:500]}"
            )
        return response.json()

    def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        """One prediction: ``request`` is a body of the use case's request model (``/predict`` takes ``{"rows": [...]}``)."""
        with self.client() as http:
            response = http.post("/predict", json={"rows": [request]})
            response.raise_for_status()
            return response.json()[0]

    # -- the serving steps -----------------------------------------------------------------------------------
    def deploy(
        self, version: str, *, env: dict[str, str], start_if_down: bool = True, readiness_timeout_s: float = 120.0
    ) -> dict[str, Any]:
        """Make this endpoint serve ``version`` with no failed request.

        Ready: swap the version in (``reload``; requests being answered finish on the old model), unless it is
        served already. Alive without a model (started before the first champion): load it. Down and embedded (the
        default endpoint, ``is_embedded``): start the use case's serving process (``ServingProcess``) with ``env``;
        down and given explicitly: fail (whoever runs it must start it). Then ``/info`` must report ``version``.

        :param version: the model version to serve.
        :param env: the started server's environment (``mlflow_env``, the model name and alias).
        :param start_if_down: start the embedded server when nothing answers.
        :param readiness_timeout_s: how long a started server may take to be ready.
        :return: ``action`` (unchanged, swapped, loaded or started) and, as they apply, ``from_version``,
            ``load_seconds`` and ``pid``.
        :raises ServingError: the endpoint cannot be started, refuses the model, or serves another version.
        """
        target = str(version)
        if self.is_ready():
            if str(self.info().get("model_version")) == target:
                outcome: dict[str, Any] = {"action": "unchanged"}
            else:
                swapped = self.reload(target)
                outcome = {"action": "swapped", "from_version": swapped.get("from_version")}
                outcome["load_seconds"] = swapped.get("load_seconds")
        elif self.is_alive():
            outcome = {"action": "loaded", "load_seconds": self.reload(target).get("load_seconds")}
        elif self.is_embedded and start_if_down:
            outcome = self._start(target, env, readiness_timeout_s)
        elif not self.is_embedded:
            raise ServingError(
                f"the serving endpoint {self.url} of {self.config.name} does not answer /livez; it is given explicitly "
                f"(MLOPS_SERVING_URL__{self.config.name.upper()} or the connection {self.bentoml_conn_id!r}), so the "
                "deploy step does not start it: start that server (docker compose: the `serving` service)"
            )
        else:
            raise ServingError(f"the serving endpoint {self.url} of {self.config.name} does not answer /livez")
        served = self.info().get("model_version")
        if str(served) != target:
            raise ServingError(f"{self.url} serves version {served}, not {target}")
        return outcome

    def _start(self, target: str, env: dict[str, str], timeout: float) -> dict[str, Any]:
        """Start the embedded server on this endpoint's port, wait for it, make it serve ``target``."""
        process = ServingProcess(usecase=self.config.folder, port=int(self.url.rsplit(":", 1)[1]), env=env)
        try:
            process.start()
            load_seconds = round(process.wait_ready(timeout), 2)
        except ServingError:
            process.stop()
            raise
        outcome = {"action": "started", "load_seconds": load_seconds, "pid": process.pid()}
        if str(self.info().get("model_version")) != target:
            # The alias moved between the lookup and the start, or a version other than the alias's was asked.
            self.reload(target)
        return outcome

    def validate_candidate(
        self,
        name: str,
        version: str,
        *,
        canned: dict[str, Any],
        env: dict[str, str],
        readiness_timeout_s: float,
        latency_budget_ms: float,
        latency_requests: int = 50,
        task: str = "classification",
    ) -> InfraDecision:
        """Serve ``name`` v``version`` pinned, in a server of its own on a free loopback port (no inference log),
        run ``core.infra_validation``'s checks against it, and stop it (always).

        :param canned: the use case's canned requests for infrastructure validation.
        :param env: the server's environment (``mlflow_env``); the model name and version are pinned on top.
        :param readiness_timeout_s: not ready within it: rejected.
        :param latency_budget_ms: the p95 budget of ``latency_requests`` single requests.
        :param task: the model's task (how a prediction is checked).
        :return: the decision (approved or not, with the reason of each failed check).
        """
        import httpx

        from airflow_mlops.core import infra_validation as iv

        port = free_port()
        pinned = {
            **env,
            "MLOPS_SERVING_MODEL_NAME": name,
            "MLOPS_SERVING_MODEL_VERSION": str(version),
            "MLOPS_INFERENCE_LOG": "off",
        }
        process_name = f"serving-validate-{self.config.name}-v{version}-{port}"
        process = ServingProcess(usecase=self.config.folder, port=port, name=process_name, env=pinned)
        try:
            process.start()
            self.log.info("validating %s v%s on %s (log %s)", name, version, process.url, process.logfile)
            try:
                waited = process.wait_ready(readiness_timeout_s, on_poll=_give_up_on_load_error)
            except ServingError as err:
                return iv.not_ready(name, version, f"not ready: {str(err).strip()[:1500]}")
            with httpx.Client(base_url=process.url, timeout=30.0) as http:
                return iv.validate_endpoint(
                    http,
                    model_name=name,
                    version=version,
                    canned=canned,
                    task=task,
                    latency_budget_ms=latency_budget_ms,
                    latency_requests=latency_requests,
                    ready_seconds=round(waited, 2),
                )
        finally:
            process.stop()


def _give_up_on_load_error(http: httpx.Client) -> None:
    """Between readiness polls: a server that reports a load error will never be ready (stop waiting)."""
    import httpx

    try:
        state = http.post("/info", json={})
    except httpx.HTTPError:
        return
    if state.status_code == 200 and state.json().get("load_error"):
        raise ServingError(state.json()["load_error"])
