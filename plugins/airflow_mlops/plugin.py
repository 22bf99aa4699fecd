"""The Airflow plugin: the MLOps page (every registered model, with its use case), the lake's reports served inside
the Airflow UI (every use case's, under ``/mlops/lake/<use case>/reports/...``), the operator links."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_mlops.lake_reports_app import create_app
from airflow_mlops.links import DataDocsLink
from airflow_mlops.links_mlflow import MlflowModelVersionLink, MlflowRunLink
from airflow_mlops.links_monitoring import MonitoringReportLink
from airflow_mlops.mlops_ui_app import URL_PREFIX as MLOPS_UI_PREFIX
from airflow_mlops.mlops_ui_app import create_app as create_mlops_ui_app


class MlopsPlugin(AirflowPlugin):
    name = "airflow_mlops"
    # The MLOps page first: mounts are matched in order, and "/mlops" would otherwise swallow "/mlops/ui/...".
    fastapi_apps = [
        {"app": create_mlops_ui_app(), "url_prefix": MLOPS_UI_PREFIX, "name": "airflow-mlops MLOps page"},
        {"app": create_app(), "url_prefix": "/mlops", "name": "airflow-mlops lake reports"},
    ]
    # A nav entry in the Airflow UI that shows the page in the UI's frame at /plugin/mlops (href without a
    # leading slash: resolved against the UI's base URL, so it also works behind a path prefix).
    external_views = [
        {
            "name": "MLOps",
            "href": f"{MLOPS_UI_PREFIX.lstrip('/')}/",
            "url_route": "mlops",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]
    operator_extra_links = [DataDocsLink(), MlflowRunLink(), MlflowModelVersionLink(), MonitoringReportLink()]
