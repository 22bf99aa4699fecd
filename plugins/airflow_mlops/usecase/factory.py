"""The DAG factory: the DAGs of every use case in the projects folder (the five of the loop and batch scoring), ids
and Assets prefixed by its name.

``dags/mlops.py`` calls :func:`dags_for_projects`. Light at parse time: each use case is checked as
``python -m airflow_mlops check`` does (but for running its ``entity_keys``, which needs pandas), and the operators
are wired; no heavy library is imported. A use case with a problem becomes one DAG import error naming its file and
key (a stand-in DAG that fails validation); the others are unaffected.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, AssetOrTimeSchedule, Param

from airflow_mlops.assets import assets_for
from airflow_mlops.usecase import config as usecase_config

log = logging.getLogger(__name__)

#: The DAGs of the loop (what the demo's replay drives).
STAGES = ("ingest_validate", "features", "monitoring", "training", "rollback")
#: The DAGs beside the loop: batch scoring of each validated period.
BATCH_STAGES = ("scoring",)
_PERIOD_PATTERNS = {"month": r"^\d{4}-\d{2}$", "day": r"^\d{4}-\d{2}-\d{2}$"}


class BrokenUseCaseDag(DAG):
    """Stands in for a use case whose config is invalid: Airflow's DAG bag records its validation error as the
    file's import error (with the file and key to fix), and keeps the other use cases' DAGs."""

    def validate(self) -> None:  # type: ignore[override]
        raise usecase_config.UseCaseConfigError(self.description or "invalid use case")


def dags_for_projects(root: str | Path | None = None) -> dict[str, DAG]:
    """Every use case's DAGs under ``root`` (default ``MLOPS_PROJECTS``), by dag id."""
    out: dict[str, DAG] = {}
    names: dict[str, Path] = {}
    for folder in usecase_config.discover(root):
        from airflow_mlops.usecase.checks import check

        problems = check(folder, light=True)
        try:
            if not problems:
                usecase = usecase_config.load(folder)
                if usecase.name in names:
                    problems = [
                        f"mlops.yaml: name: {usecase.name!r} is already the name of the use case in "
                        f"{names[usecase.name]} (it prefixes DAG ids, Assets, the lake and the Feast project)"
                    ]
                else:
                    names[usecase.name] = folder
                    out.update(dags_for(usecase))
        except (usecase_config.UseCaseConfigError, ValueError) as err:
            problems = [str(err)]
        if problems:
            message = f"use case {folder} is invalid (python -m airflow_mlops check {folder}): " + "; ".join(problems)
            log.error("%s", message)
            dag_id = f"{folder.name}_invalid_use_case"
            out[dag_id] = BrokenUseCaseDag(dag_id=dag_id, description=message, schedule=None)
    return out


def _period_param(usecase: usecase_config.UseCase, what: str) -> Param:
    kind = usecase.source.period
    example = "2013-03" if kind == "month" else "2013-03-05"
    return Param(
        None,
        type=["null", "string"],
        pattern=_PERIOD_PATTERNS[kind],
        description=f"{what}, a {kind} like {example}. Empty: decided by the run (schedule or asset events).",
    )


def dags_for(usecase: usecase_config.UseCase) -> dict[str, DAG]:
    """The DAGs of one use case: the five of the loop (``STAGES``), then batch scoring (``BATCH_STAGES``)."""
    builders = (ingest_validate_dag, features_dag, monitoring_dag, training_dag, rollback_dag, scoring_dag)
    return {dag.dag_id: dag for dag in (build(usecase) for build in builders)}


# Every DAG renders its templates to native objects (render_template_as_native_obj): "{{ params.period }}" reaches
# an operator as None or the period, "{{ params.force_bless }}" as a bool; XCom dicts travel as XComArgs
# (task.output). Each operator takes the use-case folder and finds the rest (lake, Feast project, model, endpoint)
# in its config.


def on_failure(usecase: usecase_config.UseCase) -> Any:
    """Every task's ``on_failure_callback``: the use case's ``task_failed`` notification
    (``airflow_mlops.notifications.MlopsNotifier``); None when the use case is not notified of failed tasks."""
    from airflow_mlops.notifications import TASK_FAILED, MlopsNotifier

    if TASK_FAILED not in (usecase.notifications.get("events") or ()):
        return None
    return MlopsNotifier(usecase.folder)


def _doc(usecase: usecase_config.UseCase, text: str) -> str:
    return f"**Use case `{usecase.name}`** — {usecase.description or usecase.folder}\n\n{text.strip()}\n"


def ingest_validate_dag(usecase: usecase_config.UseCase) -> DAG:
    from airflow.timetables.events import EventsTimetable

    from airflow_mlops.core.batches import schedule_periods
    from airflow_mlops.operators.ingest import IngestBatchOperator
    from airflow_mlops.operators.validation import ValidateBatchOperator

    assets = assets_for(usecase.name, usecase_config.lake_url(usecase))
    folder = str(usecase.folder)
    source = usecase.source
    schedule: Any = assets.landing
    start = None
    if source.schedule_first:
        # The SDK's EventsTimetable does not serialize in Airflow 3.3.2 (its encoder drops `_summary`); the core one does.
        starts = schedule_periods(source.schedule_first, source.schedule_last)
        schedule = AssetOrTimeSchedule(
            timetable=EventsTimetable(
                event_dates=starts,
                presorted=True,
                description=f"every {source.period}, {source.schedule_first}..{source.schedule_last}",
            ),
            assets=assets.landing,
        )
        start = starts[0]
    with DAG(
        render_template_as_native_obj=True,
        dag_id=usecase.dag_id("ingest_validate"),
        description=f"{usecase.name}: land → raw → Great Expectations → validated or quarantine",
        schedule=schedule,
        start_date=start,
        catchup=start is not None,
        max_active_runs=1,
        params={"period": _period_param(usecase, "Period to ingest and validate")},
        default_args={
            "owner": "data-engineering",
            "retries": 2,
            "retry_delay": timedelta(seconds=20),
            "on_failure_callback": on_failure(usecase),
        },
        tags=["mlops", usecase.name, "ingest", "validation"],
        doc_md=_doc(usecase, INGEST_DOC),
    ) as dag:
        # [START howto_operator_ingest_batch]
        ingest = IngestBatchOperator(task_id="ingest_batch", usecase=folder, period="{{ params.period }}")
        # [END howto_operator_ingest_batch]
        # [START howto_operator_validate_batch]
        ValidateBatchOperator.partial(
            task_id="validate_batch",
            files=list(source.files),
            primary=source.primary,
            period_kind=source.period,
            suites=dict(source.suites),
            expectations_dir=str(usecase.folder / "expectations"),
            timestamp_columns={source.event_time_file: source.event_time_column},
            timestamp_format=source.event_time_format or "ISO8601",
            module_file=str(usecase.module_file),
            validated_asset=assets.validated_batch,
            outlets=[assets.validated_batch],
            usecase=folder,
        ).expand(batch=ingest.output)
        # [END howto_operator_validate_batch]
    return dag


def features_dag(usecase: usecase_config.UseCase) -> DAG:
    from airflow_mlops.operators.feature_store import (
        FeastApplyOperator,
        FeastMaterializeOperator,
        FeastTrainingSetOperator,
    )
    from airflow_mlops.operators.features import BuildFeaturesOperator

    assets = assets_for(usecase.name, usecase_config.lake_url(usecase))
    folder = str(usecase.folder)
    with DAG(
        render_template_as_native_obj=True,
        dag_id=usecase.dag_id("features"),
        description=f"{usecase.name}: validated batch → features (lake) → Feast apply → materialize → PIT training set",
        schedule=[assets.validated_batch],
        catchup=False,
        max_active_runs=1,
        params={
            "period": _period_param(usecase, "Period to build"),
            "window": Param(
                None,
                type=["null", "integer"],
                minimum=1,
                description="Training-set window in periods, ending with the period. Empty: features.window_periods.",
            ),
        },
        default_args={
            "owner": "data-engineering",
            "retries": 2,
            "retry_delay": timedelta(seconds=20),
            "on_failure_callback": on_failure(usecase),
        },
        tags=["mlops", usecase.name, "features", "feast"],
        doc_md=_doc(usecase, FEATURES_DOC),
    ) as dag:
        # [START howto_operator_build_features]
        build = BuildFeaturesOperator(
            task_id="build_features", usecase=folder, period="{{ params.period }}", multiple_outputs=True
        )
        # [END howto_operator_build_features]
        # [START howto_operator_feast_apply]
        apply = FeastApplyOperator(task_id="apply_feature_repo", usecase=folder)
        # [END howto_operator_feast_apply]
        # [START howto_operator_feast_materialize]
        materialize = FeastMaterializeOperator(
            task_id="materialize_features",
            usecase=folder,
            interval_start=build.output["interval_start"],
            interval_end=build.output["interval_end"],
            periods=build.output["periods"],
            outlets=[assets.features],
        )
        # [END howto_operator_feast_materialize]
        # [START howto_operator_feast_training_set]
        training_set = FeastTrainingSetOperator(
            task_id="training_set",
            usecase=folder,
            end_period=build.output["period"],
            window="{{ params.window }}",
            outlets=[assets.training_set],
        )
        # [END howto_operator_feast_training_set]
        [build, apply] >> materialize >> training_set
    return dag


def monitoring_dag(usecase: usecase_config.UseCase) -> DAG:
    from airflow_mlops.operators.monitoring import (
        DriftCheckOperator,
        PerformanceCheckOperator,
        RetrainingPolicyOperator,
    )

    assets = assets_for(usecase.name, usecase_config.lake_url(usecase))
    folder = str(usecase.folder)
    with DAG(
        render_template_as_native_obj=True,
        dag_id=usecase.dag_id("monitoring"),
        description=f"{usecase.name}: champion vs live traffic: drift → performance → retraining policy",
        schedule=(assets.features & assets.outcomes),
        catchup=False,
        max_active_runs=1,
        params={"period": _period_param(usecase, "Period to check")},
        default_args={
            "owner": "ml-engineering",
            "retries": 1,
            "retry_delay": timedelta(seconds=30),
            "on_failure_callback": on_failure(usecase),
        },
        tags=["mlops", usecase.name, "monitoring", "evidently"],
        doc_md=_doc(usecase, MONITORING_DOC),
    ) as dag:
        period = "{{ params.period }}"
        # [START howto_operator_drift_check]
        drift = DriftCheckOperator(task_id="drift_check", usecase=folder, month=period)
        # [END howto_operator_drift_check]
        # [START howto_operator_performance_check]
        performance = PerformanceCheckOperator(task_id="performance_check", usecase=folder, month=period)
        # [END howto_operator_performance_check]
        # [START howto_operator_retraining_policy]
        policy = RetrainingPolicyOperator(
            task_id="retraining_policy",
            drift=drift.output,
            performance=performance.output,
            month=period,
            outlets=[assets.retrain_requested],
            # Runs when the checks were skipped (no champion yet): the policy's bootstrap rule decides then.
            trigger_rule="none_failed",
            usecase=folder,
        )
        # [END howto_operator_retraining_policy]
        drift >> performance >> policy
    return dag


def training_dag(usecase: usecase_config.UseCase) -> DAG:
    from airflow.timetables.trigger import CronTriggerTimetable

    from airflow_mlops.operators.approval import ModelApprovalOperator
    from airflow_mlops.operators.gate import ModelGateOperator
    from airflow_mlops.operators.registry import MlflowPromoteModelOperator, MlflowRegisterModelOperator
    from airflow_mlops.operators.serving import BentoMLDeployOperator, BentoMLInfraValidateOperator
    from airflow_mlops.operators.training import (
        EvaluateChallengerOperator,
        ResolveTrainingSetOperator,
        TrainModelOperator,
    )

    assets = assets_for(usecase.name, usecase_config.lake_url(usecase))
    folder = str(usecase.folder)
    cron = usecase.model.get("schedule_cron")
    schedule: Any = (
        AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=assets.retrain_requested)
        if cron
        else assets.retrain_requested
    )
    with DAG(
        render_template_as_native_obj=True,
        dag_id=usecase.dag_id("training"),
        description=f"{usecase.name}: training set → train → evaluate vs champion → gate → register → "
        "infra-validate → approve (per the approval policy) → promote → deploy",
        # No start_date: when the DAG is unpaused its clock waits for the next slot instead of running the last one.
        schedule=schedule,
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
                description="Why the gate is overridden (required with force_bless; kept on the run and the ledger).",
            ),
        },
        default_args={
            "owner": "ml-engineering",
            "retries": 1,
            "retry_delay": timedelta(seconds=30),
            "on_failure_callback": on_failure(usecase),
        },
        tags=["mlops", usecase.name, "training", "mlflow"],
        doc_md=_doc(usecase, TRAINING_DOC),
    ) as dag:
        # [START howto_operator_resolve_training_set]
        training_set = ResolveTrainingSetOperator(
            task_id="training_set", usecase=folder, training_set="{{ params.training_set_uri }}"
        )
        # [END howto_operator_resolve_training_set]
        # [START howto_operator_train_model]
        trained = TrainModelOperator(task_id="train_model", training_set=training_set.output, usecase=folder)
        # [END howto_operator_train_model]
        # [START howto_operator_evaluate_challenger]
        evaluated = EvaluateChallengerOperator(task_id="evaluate_challenger", trained=trained.output, usecase=folder)
        # [END howto_operator_evaluate_challenger]
        # [START howto_operator_model_gate]
        gate = ModelGateOperator(
            task_id="model_gate",
            evaluation=evaluated.output,
            force_bless="{{ params.force_bless }}",
            force_bless_reason="{{ params.force_bless_reason }}",
            usecase=folder,
        )
        # [END howto_operator_model_gate]
        # [START howto_operator_mlflow_register_model]
        registered = MlflowRegisterModelOperator(task_id="register_model", gate=gate.output)
        # [END howto_operator_mlflow_register_model]
        # A candidate must answer correctly in the real serving stack before it may become champion.
        # [START howto_operator_bentoml_infra_validate]
        validated = BentoMLInfraValidateOperator(task_id="infra_validate", registered=registered.output, usecase=folder)
        # [END howto_operator_bentoml_infra_validate]
        # The use case's approval policy: skipped when no person need decide (auto); else the Required Actions form
        # with the evidence. A rejection or no answer in time skips the promotion (fail closed).
        # [START howto_operator_model_approval]
        approved = ModelApprovalOperator(task_id="approve_model", registered=validated.output, usecase=folder)
        # [END howto_operator_model_approval]
        # Promotion is compare-and-set on the ledger: a retry finds its own entry and never promotes twice.
        # It runs after infra validation whether the approval step was skipped (no person needed) or approved.
        # [START howto_operator_mlflow_promote_model]
        promoted = MlflowPromoteModelOperator(
            task_id="promote_model",
            registered=validated.output,
            approval=approved.output,
            trigger_rule="none_failed_min_one_success",
            outlets=[assets.model_promoted],
            usecase=folder,
        )
        # [END howto_operator_mlflow_promote_model]
        # [START howto_operator_bentoml_deploy]
        BentoMLDeployOperator(task_id="deploy_model", version=promoted.output, usecase=folder)
        # [END howto_operator_bentoml_deploy]
    return dag


def rollback_dag(usecase: usecase_config.UseCase) -> DAG:
    from airflow_mlops.operators.registry import MlflowRollbackModelOperator
    from airflow_mlops.operators.serving import BentoMLDeployOperator

    assets = assets_for(usecase.name, usecase_config.lake_url(usecase))
    folder = str(usecase.folder)
    with DAG(
        render_template_as_native_obj=True,
        dag_id=usecase.dag_id("rollback"),
        description=f"{usecase.name}: restore the previous champion in one step (recorded in the promotion ledger)",
        schedule=None,
        start_date=datetime(2025, 1, 1),
        catchup=False,
        max_active_runs=1,
        params={
            "to_version": Param(
                None,
                type=["null", "string"],
                pattern=r"^\d+$",
                description="Version to restore. Empty: the champion before the current one.",
            ),
            "reason": Param("manual rollback", type="string", minLength=3, description="Why (kept in the ledger)."),
        },
        # A retried rollback finds its own ledger entry and does not roll back twice.
        default_args={
            "owner": "ml-engineering",
            "retries": 1,
            "retry_delay": timedelta(seconds=10),
            "on_failure_callback": on_failure(usecase),
        },
        tags=["mlops", usecase.name, "registry", "rollback", "mlflow"],
        doc_md=_doc(usecase, ROLLBACK_DOC),
    ) as dag:
        # [START howto_operator_mlflow_rollback_model]
        rollback = MlflowRollbackModelOperator(
            task_id="rollback_model",
            registered_model_name=usecase.registered_model_name,
            to_version="{{ params.to_version }}",
            reason="{{ params.reason }}",
            outlets=[assets.model_promoted],
            usecase=folder,
        )
        # [END howto_operator_mlflow_rollback_model]
        BentoMLDeployOperator(task_id="deploy_model", version=rollback.output, usecase=folder)
    return dag


def scoring_dag(usecase: usecase_config.UseCase) -> DAG:
    from airflow.timetables.trigger import CronTriggerTimetable

    from airflow_mlops.operators.batch_scoring import BatchScoreOperator
    from airflow_mlops.operators.monitoring import DriftCheckOperator, PerformanceCheckOperator

    assets = assets_for(usecase.name, usecase_config.lake_url(usecase))
    folder = str(usecase.folder)
    cron = (usecase.serving.get("batch_scoring") or {}).get("schedule_cron")
    schedule: Any = (
        AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=assets.features)
        if cron
        else assets.features
    )
    with DAG(
        render_template_as_native_obj=True,
        dag_id=usecase.dag_id("scoring"),
        description=f"{usecase.name}: validated batch → champion scores from the offline features → scores/ "
        "→ drift → performance",
        schedule=schedule,
        catchup=False,
        max_active_runs=1,
        params={"period": _period_param(usecase, "Period to score")},
        default_args={
            "owner": "ml-engineering",
            "retries": 1,
            "retry_delay": timedelta(seconds=30),
            "on_failure_callback": on_failure(usecase),
        },
        tags=["mlops", usecase.name, "scoring", "monitoring"],
        doc_md=_doc(usecase, SCORING_DOC),
    ) as dag:
        period = "{{ params.period }}"
        # [START howto_operator_batch_score]
        score = BatchScoreOperator(
            task_id="score_batch", usecase=folder, period=period, outlets=[assets.scores], multiple_outputs=True
        )
        # [END howto_operator_batch_score]
        # [START howto_batch_scoring_checks]
        # The checks read the scores as traffic (inference_log_zone) and publish apart from the online ones (scope),
        # for the period score_batch scored (the param, the features event's, or on the clock the newest).
        scored = {"usecase": folder, "month": score.output["period"], "inference_log_zone": "scores", "scope": "batch"}
        drift = DriftCheckOperator(task_id="drift_check", **scored)
        # No outcomes yet is a reported status of the check (its summary), not a failure.
        performance = PerformanceCheckOperator(task_id="performance_check", **scored)
        score >> drift >> performance
        # [END howto_batch_scoring_checks]
    return dag


INGEST_DOC = """
### Ingest and validate a batch (stages 1–2)

A batch is one period (`source.period`: month or day) of the files in `source.files`, landed by an upstream
system in the use case's `landing/<period>/`.

**Runs on** (any of): a batch landing (the upstream writes its files, a `_SUCCESS` marker, then `landing/_READY`;
the landing watcher turns the flag into a run that ingests *every* complete batch waiting); the REST API or the UI
with `{"period": ...}` as conf; the schedule of `source.schedule` (that period, if its batch is waiting).

**Does**: `ingest_batch` moves each batch into `raw/<period>/<sha12>/` (content-addressed); `validate_batch` (one
mapped task per batch) runs the use case's Great Expectations suites (`expectations/`). A passing batch is
published as Parquet to `validated/<period>/` and emits the `validated_batch` Asset event; a failing batch goes to
`quarantine/<period>/<sha12>/` with its GX result and Data Docs page, and the task fails naming each failed
expectation; nothing downstream runs. Each validation task links to its **Data Docs** page.
"""

FEATURES_DOC = """
### Features and feature store (stages 3–4)

**Runs on** the `validated_batch` Asset (the periods of the triggering events, plus any validated period still
without features), or the REST API / UI with `{"period": ...}`.

**Does**: `build_features` calls the use case's `build_features` and `label_rows` and writes `features/<period>/`
(one Parquet file per declared view plus the label rows, committed by a manifest with content hashes);
`apply_feature_repo` registers the Feast repository derived from `features.views` (idempotent);
`materialize_features` loads exactly the periods' data interval into the online store and emits `features`;
`training_set` joins the label rows of the trailing window point-in-time with the offline store, validates the set
and commits it to `training_sets/<sha12>/`, emitting `training_set`.
"""

MONITORING_DOC = """
### Monitor the champion and close the loop (stages 9–10)

**Runs on** the `features` **and** `outcomes` Assets (a period's features are in the store and the upstream
announced its outcomes: `POST /api/v2/assets/events` with the `outcomes` asset and `{"period": ...}`), or the UI /
REST API with `{"period": ...}`.

**Does**: `drift_check` compares the period's traffic (inference log) and batch with the champion's reference
(its training data); `performance_check` joins predictions with the period's outcomes and compares live metrics
with the hold-out's; each writes an Evidently report (task link **Monitoring report**) and logs to MLflow.
`retraining_policy` applies the `monitoring.policy` thresholds, cooldown and cap: a retrain emits
`retrain_requested`, which runs the training DAG. No champion yet: the bootstrap rule asks for the first model.
"""

TRAINING_DOC = """
### Train, evaluate, gate, register and promote (stages 5–7)

**Runs on** the `model.schedule_cron` clock, a `retrain_requested` Asset event, or the UI / REST API with params.

**Does**: `training_set` resolves and verifies a committed snapshot; `train_model` fits the use case's model on
all but the newest `model.holdout_periods` and logs it to MLflow with its lineage; `evaluate_challenger` scores it
and the current `champion` on that hold-out, overall and per slice; `model_gate` applies the `gate` policy and
records the decision. A **rejected model is a normal outcome**: the later tasks are skipped and the run stays
green. An approved model becomes `challenger`, passes infra validation in the real serving stack, then becomes
`champion` (compare-and-set on the promotion ledger) and is deployed. Roll back with the rollback DAG.

**Approval**: with the use case's `approval` policy `manual` (or `manual_if` and a condition holds), `approve_model`
waits for a person in Airflow's Required Actions (the task's form, or `PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}
/taskInstances/approve_model/-1/hitlDetails` with `{"chosen_options": ["Approve"], "params_input": {"comment":
"..."}}`). Reject, or no answer within `approval.timeout_hours`, leaves the champion in place. With `auto` it is
skipped.
"""

ROLLBACK_DOC = """
### Roll the champion back

One step: `champion` returns to the version it held before the current one (the promotion ledger is replayed:
promotions push, rollbacks pop), or to `to_version`. The move is compare-and-set on the ledger and appended to it
with who triggered it and why; the served model follows.
"""

SCORING_DOC = """
### Score each validated batch (batch inference)

**Runs on** the `features` Asset (a validated period's features are in the offline store), the optional
`serving.batch_scoring.schedule_cron` clock (the newest period with features), or the UI / REST API with
`{"period": ...}`.

**Does**: `score_batch` joins the period's rows (the label rows of its feature partition) point-in-time with the
offline store, scores them with the `champion` in one vectorised call and commits
`scores/<period>/v<version>-<batch sha12>/` in the inference log's format (model version and batch hash in its
manifest), emitting `scores`; the same batch and champion give the same part (a retry rewrites nothing), a new
champion or a re-validated batch replaces the period's older part. `drift_check` and `performance_check` then read
the scores as they read live traffic, publishing as `batch_drift` / `batch_performance` (not read by the retraining
policy). No champion yet: skipped. No validated batch or features for the period: fails once, naming what to run.
"""
