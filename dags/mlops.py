"""
### airflow-mlops: the DAGs of every use case

Each folder under the projects folder (`MLOPS_PROJECTS`, default `examples/`) that holds an `mlops.yaml` is a use
case; it gets five DAGs, prefixed by its name: `<name>_ingest_validate`, `<name>_features`, `<name>_monitoring`,
`<name>_training` and `<name>_rollback`, linked by its own Assets (`<name>.validated_batch`, ...). A use case whose
config is invalid shows as one import error naming its file and key; the others keep running.
`python -m airflow_mlops check <folder>` runs the same checks from a shell.
"""

from __future__ import annotations

from airflow_mlops.usecase.factory import dags_for_projects

globals().update(dags_for_projects())
