"""Serving steps of a use case: validate a candidate in the real serving stack, and deploy the champion with no
downtime (``airflow_mlops.serving_service``, one service per use case). The work is ``BentoServingHook``'s
(``deploy``, ``validate_candidate``) and ``core.infra_validation``'s; the operators wire them to the use case."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_mlops.hooks.bentoml_serving import mlflow_env
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.sdk import Context

    from airflow_mlops.core.serving_schemas import ServingSettings

__all__ = [
    "INFRA_XCOM_KEY",
    "BentoMLDeployOperator",
    "BentoMLInfraValidateOperator",
    "InfraValidationError",
    "ServingDeployError",
    "mlflow_env",
]

INFRA_XCOM_KEY = "infra_validation"


class InfraValidationError(AirflowFailException):
    """The candidate failed infrastructure validation; the decision is on its model version. Never promoted."""


class ServingDeployError(AirflowException):
    """The serving endpoint could not be started, refused the new model, or answers with another version."""


class _ServingOperator(MlopsBaseOperator):
    """The use case's serving settings (``serving`` of ``mlops.yaml``); a bad section fails without retries."""

    def serving_settings(self) -> ServingSettings:
        from airflow_mlops.core.serving_schemas import ServingSettings

        return self.checked(ServingSettings.from_usecase, self.require_usecase())


class BentoMLInfraValidateOperator(_ServingOperator):
    """Run the registered candidate in its own ``bentoml serve`` of the use case's service on a free loopback port,
    pinned to its version, and check it (``BentoServingHook.validate_candidate``).

    Readiness within the timeout, the canned requests answered validly by the candidate's version, a bad
    request answered 4xx, the latency budget met (the use case's ``serving.infra_validation``; see
    ``core.infra_validation``). The decision is recorded on the model version as tags
    (``mlops.infra_validation.*``) and pushed to XCom key ``infra_validation``; the server is always stopped.

    :param usecase: the use-case folder (holding ``mlops.yaml``).
    :param registered: the XCom of ``MlflowRegisterModelOperator``, a dict (templated).
    :param readiness_timeout_s: overrides ``serving.infra_validation.readiness_timeout_s``.
    :param latency_budget_ms: overrides ``serving.infra_validation.latency_budget_ms``.
    :param mlflow_conn_id: MLflow connection (see ``MlopsBaseOperator``); the other arguments of the base too.
    :return: (XCom) ``registered`` plus ``infra_validation`` (the decision): what ``MlflowPromoteModelOperator`` takes.
    :raises AirflowSkipException: the candidate was not approved by the gate.
    :raises AirflowFailException: ``registered`` is not a dict, or the use case's serving section is invalid.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(usecase=str(usecase), **kwargs)
        self.registered = registered
        self.readiness_timeout_s = readiness_timeout_s
        self.latency_budget_ms = latency_budget_ms

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        registered = self.registered
        if not isinstance(registered, dict):
            self.fail(f"registered must be MlflowRegisterModelOperator's XCom (a dict), not {str(registered)[:200]!r}")
        if not (registered.get("gate") or {}).get("approved"):
            raise AirflowSkipException(
                f"infrastructure validation skipped: version {registered.get('version')} is not approved"
            )
        name, version = registered["name"], str(registered["version"])
        settings = self.serving_settings()
        canned = self.checked(settings.canned, infra=True)
        decision = self.serving_hook.validate_candidate(
            name,
            version,
            canned=canned,
            env=mlflow_env(self.mlflow_hook),
            readiness_timeout_s=float(self.readiness_timeout_s or settings.infra_readiness_timeout_s),
            latency_budget_ms=float(self.latency_budget_ms or settings.latency_budget_ms),
            latency_requests=settings.latency_requests,
            task=settings.task,
        )
        for key, value in decision.tags().items():
            self.mlflow_hook.client.set_model_version_tag(name, version, key, value)
        context["ti"].xcom_push(key=INFRA_XCOM_KEY, value=decision.to_dict())
        for reason in decision.reasons:
            self.log.info("infra validation of %s v%s: %s", name, version, reason)
        if not decision.approved:
            raise InfraValidationError(
                f"{name} v{version} failed infrastructure validation ({len(decision.reasons)} reason(s)): "
                + "; ".join(decision.reasons)
            )
        return {**registered, "infra_validation": decision.to_dict()}


class BentoMLDeployOperator(_ServingOperator):
    """Make the use case's serving endpoint answer with ``version`` (default: the alias's), with no failed request.

    If the endpoint answers, it is asked to load the version, check it with canned requests and swap it in
    (requests being answered finish on the old model). If it does not answer and it is the embedded endpoint (the
    default one on loopback, no ``MLOPS_SERVING_URL__<NAME>`` nor connection), the use case's serving process is
    started (``airflow_mlops.hooks.bentoml_process``); an endpoint given explicitly is never started here. Then
    ``/info`` must report the version (``BentoServingHook.deploy``).

    :param usecase: the use-case folder (holding ``mlops.yaml``).
    :param version: the version to serve (templated): the XCom of ``MlflowPromoteModelOperator`` /
        ``MlflowRollbackModelOperator`` (a dict: its ``to_version`` and ``model``), a number, or empty (None, ``""``, or
        ``"None"`` as a template renders it) for the alias's current version.
    :param registered_model_name: the model (templated); default the XCom's ``model``, else ``serving.model.name``,
        else the use case's ``model.registered_model_name``.
    :param alias: the alias served; default ``serving.model.alias`` (``champion``).
    :param start_if_down: start the embedded server when nothing answers (default True).
    :param readiness_timeout_s: wait for a started server; default ``serving.server.readiness_timeout_s``.
    :param bentoml_conn_id: the serving endpoint (see ``BentoServingHook``); ``mlflow_conn_id`` and the other
        arguments of ``MlopsBaseOperator`` too.
    :return: (XCom) url, use case, model name, version, action (started / swapped / loaded / unchanged), load
        seconds (and ``from_version`` after a swap, ``pid`` after a start).
    :raises AirflowFailException: the use case's serving section is invalid.
    :raises ServingDeployError: the alias has no version, or the endpoint cannot be started, refuses the model, or
        serves another version.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(usecase=str(usecase), **kwargs)
        self.version = version
        self.registered_model_name = registered_model_name
        self.alias = alias
        self.start_if_down = start_if_down
        self.readiness_timeout_s = readiness_timeout_s

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.hooks.bentoml_process import ServingError

        settings = self.serving_settings()
        version, model = _requested(self.version)
        name = self.registered_model_name or model or settings.model_name
        alias = self.alias or settings.alias
        target = version or self.mlflow_hook.alias_version(name, alias)
        if target is None:
            raise ServingDeployError(f"{name}@{alias} does not exist: nothing to deploy")
        env = {**mlflow_env(self.mlflow_hook), "MLOPS_SERVING_MODEL_NAME": name, "MLOPS_SERVING_ALIAS": alias}
        timeout = float(self.readiness_timeout_s or settings.readiness_timeout_s)
        serving = self.serving_hook
        try:
            outcome = serving.deploy(
                str(target), env=env, start_if_down=self.start_if_down, readiness_timeout_s=timeout
            )
        except ServingError as err:
            raise ServingDeployError(str(err)) from err
        self.log.info(
            "%s v%s is served at %s for %s (%s)", name, target, serving.url, settings.usecase, outcome["action"]
        )
        result = {"url": serving.url, "usecase": settings.usecase, "model_name": name, "version": str(target)}
        return {**result, "load_seconds": None, **outcome}


def _requested(value: Any) -> tuple[str | None, str | None]:
    """The version and model ``BentoMLDeployOperator`` was given: a promotion / rollback XCom (``to_version`` or
    ``version``, ``model`` or ``name``), else a version as is; empty (None, ``""``, a rendered ``"None"``) is None."""
    model = None
    if isinstance(value, dict):
        value, model = value.get("to_version") or value.get("version"), value.get("model") or value.get("name")
    text = "" if value is None else str(value).strip()
    return (None if text in ("", "None") else text), (model or None)
