"""airflow-mlops: an Airflow-native suite of operators, sensors and DAGs for the automated MLOps loop.

Nothing heavy is imported here: DAG files import this package while Airflow parses them.
"""

from __future__ import annotations

__version__ = "0.1.0"
