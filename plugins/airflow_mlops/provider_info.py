"""Provider metadata, read by Airflow through the ``apache_airflow_provider`` entry point.

The plugin registers through its own ``airflow.plugins`` entry point (see pyproject.toml): listed here too,
Airflow would load it twice when providers load eagerly. The lake has no connection type of its own: its
``lake_conn_id`` is the storage's connection (``aws_default`` for ``s3://``), whose provider defines the form.
"""

from __future__ import annotations

from pathlib import Path

from airflow_mlops import __version__

INTEGRATION = "airflow-mlops"


def _text(label: str, description: str) -> dict:
    return {"label": label, "description": description, "schema": {"type": ["string", "null"]}}


#: The connection types whose form the Airflow UI offers (declared, so the UI needs no hook import): the hook reads
#: these fields, the extra fields (``conn-fields``) are stored unprefixed in the connection's ``extra``.
CONNECTION_TYPES = [
    {
        "connection-type": "mlflow",
        "hook-class-name": "airflow_mlops.hooks.mlflow_registry.MlflowHook",
        "hook-name": "MLflow",
        "ui-field-behaviour": {
            "hidden-fields": ["login", "password"],
            "relabeling": {"host": "Tracking server host", "schema": "Scheme"},
            "placeholders": {"host": "mlflow.internal", "port": "5000", "schema": "http"},
        },
        "conn-fields": {
            "tracking_uri": _text("Tracking URI", "Overrides host/port/scheme, e.g. http://mlflow:5000"),
            "registry_uri": _text("Registry URI", "Model registry, when not the tracking server"),
            "artifact_location": _text("Artifact location", "Where new experiments keep their artifacts"),
            "ui_url": _text("UI URL", "The MLflow UI the task links point to"),
        },
    },
    {
        "connection-type": "bentoml",
        "hook-class-name": "airflow_mlops.hooks.bentoml_serving.BentoServingHook",
        "hook-name": "BentoML serving",
        "ui-field-behaviour": {
            "hidden-fields": ["login"],
            "relabeling": {"schema": "Scheme", "password": "Admin token"},
            "placeholders": {"host": "serving.internal", "port": "3000", "schema": "http"},
        },
        "conn-fields": {"url": _text("Endpoint URL", "Overrides host/port/scheme, e.g. http://serving:3000")},
    },
    {
        "connection-type": "feast",
        "hook-class-name": "airflow_mlops.hooks.feast_store.FeastHook",
        "hook-name": "MLOps Feast store",
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "login"],
            "relabeling": {"host": "Redis host", "port": "Redis port", "password": "Redis password"},
            "placeholders": {"host": "redis", "port": "6379"},
        },
        "conn-fields": {
            "db": {"label": "Redis DB", "schema": {"type": ["integer", "null"]}},
            "online_store": {
                "label": "Online store",
                "description": 'A Feast online_store config replacing host/port, e.g. {"type": "redis", ...}',
                "schema": {"type": ["object", "null"]},
            },
        },
    },
]


def _modules(kind: str) -> list[str]:
    """Every module of a sub-package (``operators``, ``hooks``...), read from the folder (nothing imported)."""
    folder = Path(__file__).resolve().parent / kind
    return sorted(f"airflow_mlops.{kind}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")


def get_provider_info() -> dict:
    def group(kind: str) -> list[dict]:
        return [{"integration-name": INTEGRATION, "python-modules": _modules(kind)}]

    return {
        "package-name": "airflow-mlops",
        "name": "airflow-mlops",
        "description": "Operators, sensors, triggers and DAGs for the automated MLOps loop.",
        "versions": [__version__],
        "integrations": [{"integration-name": INTEGRATION, "tags": ["software"]}],
        "operators": group("operators"),
        "hooks": group("hooks"),
        "connection-types": CONNECTION_TYPES,
        "sensors": group("sensors"),
        "triggers": group("triggers"),
        "extra-links": [
            "airflow_mlops.links.DataDocsLink",
            "airflow_mlops.links_mlflow.MlflowRunLink",
            "airflow_mlops.links_mlflow.MlflowModelVersionLink",
            "airflow_mlops.links_monitoring.MonitoringReportLink",
        ],
    }
