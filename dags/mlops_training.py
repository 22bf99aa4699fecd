"""
### Train, evaluate, gate, register and promote the flight-delay model

Stages 5–7 of the MLOps loop, tracked in MLflow (connection `mlflow_default`; embedded default: SQLite
under `MLOPS_HOME`, artifacts in the lake).

**Runs on** (any of):
* the weekly schedule (`training.schedule_cron` in `include/config/pipeline.yaml`);
* a `retrain_requested` Asset event (the monitoring stage, or `POST /api/v2/assets/events`; an
  extra `training_set_uri` picks the snapshot);
* the UI / REST API with params: `training_set_uri`, and `force_bless` + `force_bless_reason` to override
  a rejection (recorded for audit).

**Does**: `training_set` resolves and verifies a committed training-set snapshot (`training_sets/<sha12>/`,
sha256 checked against its manifest: the param, the asset event's extra, else the newest);
`train_model` fits the pipeline of `include/config/training.yaml` on all but the newest month and logs it
with its lineage; `evaluate_challenger` scores it and the current `champion` on that held-out month, overall
and per slice; `model_gate` applies `include/config/gate_policy.yaml` and records the decision on the run. A
**rejected model is a normal outcome**: `register_model` and `promote_model` are skipped and the run stays
green; the reasons are in the gate's log and on the MLflow run. An approved model becomes `challenger`,
then `champion` — only if `champion` still points at the version the gate compared against (promotion
ledger, compare-and-set). Roll back with the `mlops_rollback` DAG.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, Param
from airflow.timetables.trigger import CronTriggerTimetable

from airflow_mlops import config
from airflow_mlops.assets import RETRAIN_REQUESTED
from airflow_mlops.operators.gate import ModelGateOperator
from airflow_mlops.operators.registry import PromoteModelOperator, RegisterModelOperator
from airflow_mlops.operators.serving import DeployModelOperator, InfraValidateOperator
from airflow_mlops.operators.training import (
    EvaluateChallengerOperator,
    ResolveTrainingSetOperator,
    TrainModelOperator,
)

CRON = config.section("training").get("schedule_cron")

with DAG(
    dag_id="mlops_training",
    description="Training set → train → evaluate vs champion → gate → register (challenger) → infra-validate → promote (champion) → deploy",
    # No start_date: when the DAG is unpaused its clock waits for the next slot instead of running the last one.
    schedule=(
        AssetOrTimeSchedule(timetable=CronTriggerTimetable(CRON, timezone="UTC"), assets=RETRAIN_REQUESTED)
        if CRON
        else RETRAIN_REQUESTED
    ),
    catchup=False,
    max_active_runs=1,
    params={
        "training_set_uri": Param(
            None,
            type=["null", "string"],
            description="URI of a committed training_set.parquet (or its folder). Empty: the triggering "
            "asset event's training_set_uri, else the newest snapshot in training_sets/.",
        ),
        "force_bless": Param(
            False,
            type="boolean",
            description="Approve the model even if the gate rejects it. Requires force_bless_reason; audited.",
        ),
        "force_bless_reason": Param(
            None,
            type=["null", "string"],
            description="Why the gate is overridden (required with force_bless; kept on the run and in the ledger).",
        ),
    },
    default_args={"owner": "ml-engineering", "retries": 1, "retry_delay": timedelta(seconds=30)},
    tags=["mlops", "training", "mlflow"],
    doc_md=__doc__,
) as dag:
    training_set = ResolveTrainingSetOperator(
        task_id="training_set", training_set="{{ params.training_set_uri or '' }}"
    )
    trained = TrainModelOperator(task_id="train_model", training_set=training_set.output)
    evaluated = EvaluateChallengerOperator(task_id="evaluate_challenger", trained=trained.output)
    gate = ModelGateOperator(
        task_id="model_gate",
        evaluation=evaluated.output,
        force_bless="{{ params.force_bless }}",
        force_bless_reason="{{ params.force_bless_reason or '' }}",
    )
    registered = RegisterModelOperator(task_id="register_model", gate=gate.output)
    # A candidate must answer correctly in the real serving stack before it may become champion.
    validated = InfraValidateOperator(task_id="infra_validate", registered=registered.output)
    # Promotion is compare-and-set on the ledger: a retry finds its own entry and never promotes twice.
    promoted = PromoteModelOperator(task_id="promote_model", registered=validated.output)
    DeployModelOperator(task_id="deploy_model", version=promoted.output)
