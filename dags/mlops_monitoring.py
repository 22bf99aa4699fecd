"""
### Monitor the champion and close the loop

Stages 9–10 of the MLOps loop: is the champion still right for the traffic it answers, and should it be retrained?

**Runs on** (any of):
* the `features` **and** `outcomes` Assets (data-aware scheduling, both updated since the last run): a month's
  features are in the store and the upstream system announced that month's outcomes (arrival delays), e.g.
  `POST /api/v2/assets/events` with `{"asset_id": <outcomes>, "extra": {"month": "2013-03"}}`; the month is
  the newest in the events' extra (`month` / `months`);
* the UI or the REST API with `{"month": "2013-03"}` as conf.

**Does**: `drift_check` compares the month's traffic (inference-log predictions of flights departing in the
month: every model feature and `probability_late`) and the month's validated batch with the champion's
reference, its training-set snapshot, reduced once per champion to statistics in
`monitoring/reference/<model>/<version>/`: per-feature drift, prediction drift, data quality.
`performance_check` joins the predictions with the batch's outcomes and compares the champion's live
metrics, overall and per slice, with its hold-out figures. Each writes an Evidently report to the lake (task
link **Monitoring report**) and a run to the Evidently workspace (`evidently ui --workspace $MLOPS_HOME/evidently`),
and logs its metrics to MLflow, linked to the champion's model. `retraining_policy` applies
`include/config/monitoring.yaml` (thresholds, cooldown in days of data, cap per period, one trigger per data
interval): a retrain emits the `retrain_requested` Asset event (extra: reasons, interval, month, model,
champion_version), which runs `mlops_training`; otherwise the task is skipped and nothing is emitted.
No champion yet: the checks are skipped and the policy applies its bootstrap rule (`policy.bootstrap`): once
enough validated months exist it asks for the first model.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from airflow_mlops.assets import FEATURES, OUTCOMES, RETRAIN_REQUESTED
from airflow_mlops.operators.drift_check import DriftCheckOperator
from airflow_mlops.operators.performance_check import PerformanceCheckOperator
from airflow_mlops.operators.retraining_policy import RetrainingPolicyOperator

with DAG(
    dag_id="mlops_monitoring",
    description="Champion vs live traffic: drift → performance → retraining policy (→ retrain_requested)",
    schedule=(FEATURES & OUTCOMES),
    catchup=False,
    max_active_runs=1,
    params={
        "month": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-\d{2}$",
            description="Month to check, YYYY-MM. Empty: the newest month of the triggering features event.",
        )
    },
    default_args={"owner": "ml-engineering", "retries": 1, "retry_delay": timedelta(seconds=30)},
    tags=["mlops", "monitoring", "evidently"],
    doc_md=__doc__,
) as dag:
    drift = DriftCheckOperator(task_id="drift_check", month="{{ params.month or '' }}")
    performance = PerformanceCheckOperator(task_id="performance_check", month="{{ params.month or '' }}")
    policy = RetrainingPolicyOperator(
        task_id="retraining_policy",
        drift=drift.output,
        performance=performance.output,
        month="{{ params.month or '' }}",
        outlets=[RETRAIN_REQUESTED],
        # Runs when the checks were skipped (no champion yet): the policy's bootstrap rule decides then.
        trigger_rule="none_failed",
    )
    drift >> performance >> policy
