"""The Airflow plugin: the lake's reports served inside the Airflow UI, and the suite's operator links."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_mlops.lake_reports_app import create_app
from airflow_mlops.links import DataDocsLink
from airflow_mlops.links_mlflow import MlflowModelVersionLink, MlflowRunLink
from airflow_mlops.links_monitoring import MonitoringReportLink


class MlopsPlugin(AirflowPlugin):
    name = "airflow_mlops"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/mlops", "name": "airflow-mlops lake reports"}]
    operator_extra_links = [DataDocsLink(), MlflowRunLink(), MlflowModelVersionLink(), MonitoringReportLink()]
