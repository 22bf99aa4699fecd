"""Operator extra links to MLflow: the run a task logged, the model version it registered or promoted.

Tasks push the URLs (built by ``MlflowHook`` from the MLflow UI address) under the XCom keys below; with no
MLflow UI configured (embedded SQLite store without ``MLFLOW_UI_URL``) the links are empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import BaseOperator

#: XCom key of the MLflow run page of the run a task wrote to.
RUN_URL_XCOM_KEY = "mlflow_run_url"
#: XCom key of the MLflow registry page of the model version a task registered or moved an alias to.
MODEL_VERSION_URL_XCOM_KEY = "mlflow_model_version_url"


class MlflowRunLink(BaseOperatorLink):
    """The MLflow run a training, evaluation or gate task logged to."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=RUN_URL_XCOM_KEY) or ""


class MlflowModelVersionLink(BaseOperatorLink):
    """The registered model version a task registered, promoted or rolled back to."""

    name = "MLflow model version"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=MODEL_VERSION_URL_XCOM_KEY) or ""
