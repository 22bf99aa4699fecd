"""Provider metadata, read by Airflow through the ``apache_airflow_provider`` entry point.

The plugin registers through its own ``airflow.plugins`` entry point (see pyproject.toml): listed here too,
Airflow would load it twice when providers load eagerly.
"""

from __future__ import annotations

from airflow_mlops import __version__


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-mlops",
        "name": "airflow-mlops",
        "description": "Operators, sensors, triggers and DAGs for the automated MLOps loop.",
        "versions": [__version__],
        "integrations": [{"integration-name": "airflow-mlops", "tags": ["software"]}],
        "operators": [
            {
                "integration-name": "airflow-mlops",
                "python-modules": ["airflow_mlops.operators.ingest", "airflow_mlops.operators.validation"],
            }
        ],
        "hooks": [{"integration-name": "airflow-mlops", "python-modules": ["airflow_mlops.hooks.lake"]}],
        "triggers": [{"integration-name": "airflow-mlops", "python-modules": ["airflow_mlops.triggers.lake_flag"]}],
        "extra-links": ["airflow_mlops.links.DataDocsLink"],
    }
