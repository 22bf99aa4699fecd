"""Wait for a registered model's alias (e.g. ``champion``) to point at a new version."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator

from airflow_mlops.links_mlflow import MODEL_VERSION_URL_XCOM_KEY, MlflowModelVersionLink
from airflow_mlops.operators.base import MlopsBaseOperator
from airflow_mlops.templating import is_blank
from airflow_mlops.triggers.model_alias import ModelAliasTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

#: XCom key holding the version the alias pointed at when the sensor started (survives reschedules).
BASELINE_XCOM_KEY = "alias_baseline"


class MlflowModelAliasSensor(MlopsBaseOperator, BaseSensorOperator):
    """Succeed once ``registered_model_name@alias`` points at a version other than ``from_version``.

    With ``from_version`` empty the baseline is wherever the alias pointed when the sensor first ran, so the
    sensor waits for the *next* move (a missing alias counts as "nowhere": its creation is a move). Deferrable
    by default: the wait happens in the triggerer and holds no worker slot.

    Arguments: those of ``BaseSensorOperator`` (``poke_interval``, ``timeout``, ``mode``, ...) and of
    ``MlopsBaseOperator`` (``mlflow_conn_id``: the MLflow connection, whose hook is ``mlflow_hook``), and:

    :param registered_model_name: the model (templated).
    :param alias: the alias to watch, default ``champion`` (templated).
    :param from_version: the version to move away from (templated); empty: the alias's version at start.
    :param deferrable: wait in the triggerer (default) instead of poking from a worker.
    :return: (XCom) name, alias, version (the new one), from_version. The version's MLflow URL is pushed under
        ``mlflow_model_version_url``; the baseline under ``alias_baseline`` (kept across reschedules).
    :raises AirflowException: the trigger reported anything but a move.
    """

    template_fields = ("registered_model_name", "alias", "from_version")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#cfe2f3"

    def __init__(
        self,
        *,
        registered_model_name: str,
        alias: str = "champion",
        from_version: str | int | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.registered_model_name = registered_model_name
        self.alias = alias
        self.from_version = from_version
        self.deferrable = deferrable

    def _baseline(self, context: Context) -> str | None:
        if not is_blank(self.from_version):
            return str(self.from_version).strip()
        ti = context["ti"]
        stored = ti.xcom_pull(task_ids=ti.task_id, key=BASELINE_XCOM_KEY)
        if stored is not None:
            return stored.get("version")
        current = self.mlflow_hook.alias_version(self.registered_model_name, self.alias)
        ti.xcom_push(key=BASELINE_XCOM_KEY, value={"version": current})
        return current

    def poke(self, context: Context) -> bool:
        baseline = self._baseline(context)
        version = self.mlflow_hook.alias_version(self.registered_model_name, self.alias)
        self.log.info("%s@%s is at %s (waiting to leave %s)", self.registered_model_name, self.alias, version, baseline)
        if version is not None and version != baseline:
            self._result = self._done(context, version, baseline)
            return True
        return False

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            super().execute(context)
            return self._result
        baseline = self._baseline(context)
        version = self.mlflow_hook.alias_version(self.registered_model_name, self.alias)
        if version is not None and version != baseline:
            return self._done(context, version, baseline)
        self.defer(
            trigger=ModelAliasTrigger(
                tracking_uri=self.mlflow_hook.tracking_uri,
                registry_uri=self.mlflow_hook.registry_uri,
                registered_model_name=self.registered_model_name,
                alias=self.alias,
                from_version=baseline,
                poll_interval=self.poke_interval,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) if self.timeout else None,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        if not event or event.get("status") != "moved":
            raise AirflowException(f"waiting for {self.registered_model_name}@{self.alias} failed: {event}")
        return self._done(context, event["version"], event.get("from_version"))

    def _done(self, context: Context, version: str, baseline: str | None) -> dict[str, Any]:
        url = self.mlflow_hook.model_version_url(self.registered_model_name, version)
        context["ti"].xcom_push(key=MODEL_VERSION_URL_XCOM_KEY, value=url)
        self.log.info("%s@%s now points at version %s", self.registered_model_name, self.alias, version)
        return {"name": self.registered_model_name, "alias": self.alias, "version": version, "from_version": baseline}
