"""
### Roll the champion back

One step: `champion` returns to the version it held before the current one (the promotion ledger is
replayed: promotions push, rollbacks pop, so two rollbacks go two champions back), or to `to_version` if
given. The move is compare-and-set against the ledger and is appended to it with who triggered it and why;
it emits `model_promoted`, so the deployment stage follows.

Trigger from the UI (with params) or `POST /api/v2/dags/mlops_rollback/dagRuns`
`{"logical_date": null, "conf": {"reason": "...", "to_version": null}}`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import yaml
from airflow.sdk import DAG, Param

from airflow_mlops import settings
from airflow_mlops.operators.registry import RollbackModelOperator
from airflow_mlops.operators.serving import DeployModelOperator


def _model_name() -> str:
    path = Path(settings.include_dir()) / "config" / "training.yaml"
    try:
        return (yaml.safe_load(path.read_text()) or {}).get("registered_model_name") or "flight_delay"
    except OSError:
        return "flight_delay"


with DAG(
    dag_id="mlops_rollback",
    description="Restore the previous champion in one step (recorded in the promotion ledger)",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "registered_model_name": Param(_model_name(), type="string", minLength=1, description="The registered model."),
        "to_version": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d+$",
            description="Version to restore. Empty: the champion before the current one.",
        ),
        "reason": Param(
            "manual rollback",
            type="string",
            minLength=3,
            description="Why (kept in the promotion ledger).",
        ),
    },
    # A retried rollback finds its own ledger entry and does not roll back twice.
    default_args={"owner": "ml-engineering", "retries": 1, "retry_delay": timedelta(seconds=10)},
    tags=["mlops", "registry", "rollback", "mlflow"],
    doc_md=__doc__,
) as dag:
    rollback = RollbackModelOperator(
        task_id="rollback_model",
        registered_model_name="{{ params.registered_model_name }}",
        to_version="{{ params.to_version or '' }}",
        reason="{{ params.reason }}",
    )
    DeployModelOperator(task_id="deploy_model", version=rollback.output)
