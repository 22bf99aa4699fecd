"""Serving steps of a use case: validate a candidate in the real serving stack, and deploy the champion with no
downtime (``airflow_mlops.serving_service``, one service per use case)."""

from __future__ import annotations

import json
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_mlops.hooks.bentoml_serving import BentoServingHook
from airflow_mlops.hooks.mlflow_registry import MlflowHook

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.sdk import Context

    from airflow_mlops.core.infra_validation import InfraDecision
    from airflow_mlops.core.serving_schemas import ServingSettings
    from airflow_mlops.usecase.config import UseCase

INFRA_XCOM_KEY = "infra_validation"


class InfraValidationError(AirflowFailException):
    """The candidate failed infrastructure validation; the decision is on its model version. Never promoted."""


class ServingDeployError(AirflowException):
    """The serving endpoint could not be started, refused the new model, or answers with another version."""


def _parse(value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        return json.loads(value)
    return value


def mlflow_env(hook: MlflowHook) -> dict[str, str]:
    """The MLflow location a serving process needs (resolved here: it cannot read Airflow connections)."""
    env = {"MLFLOW_TRACKING_URI": hook.tracking_uri, "MLFLOW_REGISTRY_URI": hook.registry_uri}
    if hook.artifact_root:
        env["MLOPS_MLFLOW_ARTIFACTS"] = hook.artifact_root
    return env


def load_usecase(folder: str | Path) -> tuple[UseCase, ServingSettings]:
    """The use case and its serving settings; a bad folder or config fails the task without retries."""
    from airflow_mlops.core.serving_schemas import ServingSettings
    from airflow_mlops.usecase import config

    try:
        usecase = config.load(folder)
        return usecase, ServingSettings.from_usecase(usecase)
    except ValueError as err:
        raise AirflowFailException(str(err)) from err


class InfraValidateOperator(BaseOperator):
    """Run the registered candidate in its own ``bentoml serve`` of the use case's service on a free loopback port,
    pinned to its version, and check it.

    Readiness within the timeout, the canned requests answered validly by the candidate's version, a bad
    request answered 4xx, the latency budget met (the use case's ``serving.infra_validation``; see
    ``core.infra_validation``). The decision is recorded on the model version as tags
    (``mlops.infra_validation.*``) and pushed to XCom key ``infra_validation``; the server is always stopped.

    :param usecase: the use-case folder (holding ``mlops.yaml``).
    :param registered: the XCom of ``RegisterModelOperator`` (templated).
    :param readiness_timeout_s: overrides ``serving.infra_validation.readiness_timeout_s``.
    :param latency_budget_ms: overrides ``serving.infra_validation.latency_budget_ms``.
    :param mlflow_conn_id: MLflow connection; see ``MlflowHook``.
    :return: (XCom) ``registered`` plus ``infra_validation`` (the decision): what ``PromoteModelOperator`` takes.
    :raises InfraValidationError: the candidate failed a check (after the decision was recorded).
    """

    template_fields = ("registered",)
    ui_color = "#cfe2f3"

    def __init__(
        self,
        *,
        usecase: str | Path,
        registered: dict | str,
        readiness_timeout_s: float | None = None,
        latency_budget_ms: float | None = None,
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.usecase = str(usecase)
        self.registered = registered
        self.readiness_timeout_s = readiness_timeout_s
        self.latency_budget_ms = latency_budget_ms
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        registered = _parse(self.registered)
        if not (registered.get("gate") or {}).get("approved"):
            raise AirflowSkipException(
                f"infrastructure validation skipped: version {registered.get('version')} is not approved"
            )
        name, version = registered["name"], str(registered["version"])
        decision = validate_candidate(
            self.usecase,
            name,
            version,
            self.mlflow_hook,
            readiness_timeout_s=self.readiness_timeout_s,
            latency_budget_ms=self.latency_budget_ms,
            log=self.log,
        )
        client = self.mlflow_hook.client
        for key, value in decision.tags().items():
            client.set_model_version_tag(name, version, key, value)
        context["ti"].xcom_push(key=INFRA_XCOM_KEY, value=decision.to_dict())
        for reason in decision.reasons:
            self.log.info("infra validation of %s v%s: %s", name, version, reason)
        if not decision.approved:
            raise InfraValidationError(
                f"{name} v{version} failed infrastructure validation ({len(decision.reasons)} reason(s)): "
                + "; ".join(decision.reasons)
            )
        return {**registered, "infra_validation": decision.to_dict()}


def validate_candidate(
    usecase: str | Path,
    name: str,
    version: str,
    mlflow_hook: MlflowHook,
    *,
    readiness_timeout_s: float | None = None,
    latency_budget_ms: float | None = None,
    log: Any = None,
) -> InfraDecision:
    """Start a pinned server of the use case for ``name`` v``version`` on a free port, check it, stop it; returns
    the decision (see ``InfraValidateOperator``)."""
    import httpx

    from airflow_mlops.core import infra_validation as iv
    from airflow_mlops.serving_process import ServingError, ServingProcess, free_port

    config, settings = load_usecase(usecase)
    timeout = float(readiness_timeout_s or settings.infra_readiness_timeout_s)
    budget = float(latency_budget_ms or settings.latency_budget_ms)
    try:
        canned = settings.canned(infra=True)
    except ValueError as err:
        raise AirflowFailException(f"{config.config_file}: {err}") from err
    port = free_port()
    env = {
        **mlflow_env(mlflow_hook),
        "MLOPS_SERVING_MODEL_NAME": name,
        "MLOPS_SERVING_MODEL_VERSION": str(version),
        "MLOPS_INFERENCE_LOG": "off",
    }
    process = ServingProcess(
        usecase=config.folder, port=port, name=f"serving-validate-{config.name}-v{version}-{port}", env=env
    )

    def give_up_on_load_error(http: httpx.Client) -> None:
        try:
            state = http.post("/info", json={})
        except httpx.HTTPError:
            return
        if state.status_code == 200 and state.json().get("load_error"):
            raise ServingError(state.json()["load_error"])

    try:
        process.start()
        if log:
            log.info("validating %s v%s of %s on %s (log %s)", name, version, config.name, process.url, process.logfile)
        try:
            waited = process.wait_ready(timeout, on_poll=give_up_on_load_error)
        except ServingError as err:
            return iv.not_ready(name, version, f"not ready: {str(err).strip()[:1500]}")
        with httpx.Client(base_url=process.url, timeout=30.0) as http:
            return iv.validate_endpoint(
                http,
                model_name=name,
                version=version,
                canned=canned,
                task=config.task,
                latency_budget_ms=budget,
                latency_requests=settings.latency_requests,
                ready_seconds=round(waited, 2),
            )
    finally:
        process.stop()


class DeployModelOperator(BaseOperator):
    """Make the use case's serving endpoint answer with ``version`` (default: the alias's), with no failed request.

    If the endpoint answers, it is asked to load the version, check it with canned requests and swap it in
    (requests being answered finish on the old model). If it does not answer and it is the embedded endpoint on
    loopback, the use case's serving process is started (``airflow_mlops.serving_process``). Then ``/info`` must
    report the version.

    :param usecase: the use-case folder (holding ``mlops.yaml``).
    :param version: the version to serve (templated): a number, or the XCom of ``PromoteModelOperator`` /
        ``RollbackModelOperator`` (its ``to_version`` and ``model``); empty = the alias's current version.
    :param registered_model_name: the model (templated); default the XCom's ``model``, else ``serving.model.name``,
        else the use case's ``model.registered_model_name``.
    :param alias: the alias served; default ``serving.model.alias`` (``champion``).
    :param start_if_down: start the embedded server when nothing answers (default True).
    :param readiness_timeout_s: wait for a started server; default ``serving.server.readiness_timeout_s``.
    :param bentoml_conn_id: the serving endpoint; see ``BentoServingHook``.
    :param mlflow_conn_id: MLflow connection; see ``MlflowHook``.
    :return: (XCom) url, model name, version, action (started / swapped / unchanged), load seconds.
    :raises ServingDeployError: the endpoint cannot be started, refuses the model, or serves another version.
    """

    template_fields = ("version", "registered_model_name")
    ui_color = "#d9d2e9"

    def __init__(
        self,
        *,
        usecase: str | Path,
        version: str | int | dict | None = None,
        registered_model_name: str | None = None,
        alias: str | None = None,
        start_if_down: bool = True,
        readiness_timeout_s: float | None = None,
        bentoml_conn_id: str = BentoServingHook.default_conn_name,
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.usecase = str(usecase)
        self.version = version
        self.registered_model_name = registered_model_name
        self.alias = alias
        self.start_if_down = start_if_down
        self.readiness_timeout_s = readiness_timeout_s
        self.bentoml_conn_id = bentoml_conn_id
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def serving_hook(self) -> BentoServingHook:
        return BentoServingHook(self.usecase, bentoml_conn_id=self.bentoml_conn_id)

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        version = _parse(self.version)
        name = self.registered_model_name or (
            version.get("model") or version.get("name") if isinstance(version, dict) else None
        )
        return deploy(
            self.serving_hook,
            self.mlflow_hook,
            usecase=self.usecase,
            version=_version_of(version),
            name=name or None,
            alias=self.alias,
            start_if_down=self.start_if_down,
            readiness_timeout_s=self.readiness_timeout_s,
            log=self.log,
        )


def _version_of(value: Any) -> str | None:
    """A version given as a number, a string, or a promotion / registration XCom (``to_version`` / ``version``)."""
    if isinstance(value, dict):
        value = value.get("to_version") or value.get("version")
    text = "" if value is None else str(value).strip()
    return None if text in ("", "None") else text


def deploy(
    serving: BentoServingHook,
    mlflow_hook: MlflowHook,
    *,
    usecase: str | Path,
    version: str | None = None,
    name: str | None = None,
    alias: str | None = None,
    start_if_down: bool = True,
    readiness_timeout_s: float | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Start or update the use case's serving endpoint so that it serves ``version`` (see ``DeployModelOperator``)."""
    from airflow_mlops.serving_process import ServingError, ServingProcess

    config, settings = load_usecase(usecase)
    name = name or settings.model_name
    alias = alias or settings.alias
    target = version or mlflow_hook.alias_version(name, alias)
    if target is None:
        raise ServingDeployError(f"{name}@{alias} does not exist: nothing to deploy")
    result: dict[str, Any] = {
        "url": serving.url,
        "usecase": config.name,
        "model_name": name,
        "version": str(target),
        "load_seconds": None,
    }
    if serving.is_ready():
        current = serving.info().get("model_version")
        if str(current) == str(target):
            result["action"] = "unchanged"
        else:
            try:
                swapped = serving.reload(str(target))
            except RuntimeError as err:
                raise ServingDeployError(str(err)) from err
            result.update(
                action="swapped", from_version=swapped.get("from_version"), load_seconds=swapped.get("load_seconds")
            )
    elif serving.is_alive():
        # Up without a model (started before the first champion, e.g. a compose service): load it now.
        try:
            loaded = serving.reload(str(target))
        except RuntimeError as err:
            raise ServingDeployError(str(err)) from err
        result.update(action="loaded", load_seconds=loaded.get("load_seconds"))
    elif serving.is_embedded and start_if_down:
        port = int(serving.url.rsplit(":", 1)[1])
        env = {**mlflow_env(mlflow_hook), "MLOPS_SERVING_MODEL_NAME": name, "MLOPS_SERVING_ALIAS": alias}
        process = ServingProcess(usecase=config.folder, port=port, env=env)
        timeout = float(readiness_timeout_s or settings.readiness_timeout_s)
        try:
            process.start()
            result["load_seconds"] = round(process.wait_ready(timeout), 2)
        except ServingError as err:
            process.stop()
            raise ServingDeployError(str(err)) from err
        result["action"] = "started"
        result["pid"] = process.pid()
        current = serving.info().get("model_version")
        if str(current) != str(target):
            # The alias moved between the lookup and the start, or a version other than the alias's was asked.
            serving.reload(str(target))
    else:
        raise ServingDeployError(f"the serving endpoint {serving.url} of {config.name} does not answer /livez")
    served = serving.info().get("model_version")
    if str(served) != str(target):
        raise ServingDeployError(f"{serving.url} serves version {served}, not {target}")
    if log:
        log.info("%s v%s is served at %s for %s (%s)", name, target, serving.url, config.name, result["action"])
    return result
