"""Provider metadata, read by Airflow through the ``apache_airflow_provider`` entry point.

The plugin registers through its own ``airflow.plugins`` entry point (see pyproject.toml): listed here too,
Airflow would load it twice when providers load eagerly.
"""

from __future__ import annotations

from airflow_mlops import __version__

INTEGRATION = "airflow-mlops"


def get_provider_info() -> dict:
    def group(*modules: str) -> list[dict]:
        return [{"integration-name": INTEGRATION, "python-modules": list(modules)}]

    return {
        "package-name": "airflow-mlops",
        "name": "airflow-mlops",
        "description": "Operators, sensors, triggers and DAGs for the automated MLOps loop.",
        "versions": [__version__],
        "integrations": [{"integration-name": INTEGRATION, "tags": ["software"]}],
        "operators": group(
            "airflow_mlops.operators.ingest",
            "airflow_mlops.operators.validation",
            "airflow_mlops.operators.features",
            "airflow_mlops.operators.feature_store",
            "airflow_mlops.operators.training",
            "airflow_mlops.operators.gate",
            "airflow_mlops.operators.registry",
            "airflow_mlops.operators.serving",
            "airflow_mlops.operators.monitoring",
            "airflow_mlops.operators.drift_check",
            "airflow_mlops.operators.performance_check",
            "airflow_mlops.operators.retraining_policy",
        ),
        "hooks": group(
            "airflow_mlops.hooks.lake",
            "airflow_mlops.hooks.feast_store",
            "airflow_mlops.hooks.mlflow_registry",
            "airflow_mlops.hooks.bentoml_serving",
            "airflow_mlops.hooks.evidently_workspace",
            "airflow_mlops.hooks.monitoring_lake",
        ),
        "sensors": group("airflow_mlops.sensors.model_alias"),
        "triggers": group("airflow_mlops.triggers.lake_flag", "airflow_mlops.triggers.model_alias"),
        "extra-links": [
            "airflow_mlops.links.DataDocsLink",
            "airflow_mlops.links_mlflow.MlflowRunLink",
            "airflow_mlops.links_mlflow.MlflowModelVersionLink",
            "airflow_mlops.links_monitoring.MonitoringReportLink",
        ],
    }
