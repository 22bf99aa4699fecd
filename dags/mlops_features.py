"""
### Features and feature store

Stages 3–4 of the MLOps loop: from a validated month to Feast (offline + online) and a training set.

**Runs on** (any of):
* the `validated_batch` Asset (data-aware scheduling): the months of the triggering events, plus any validated
  month before them still without features (events folded into one run, a re-sent quarantined month);
* the REST API or the UI with `{"month": "2013-03"}` as conf: that month (rebuilt only if its inputs changed).

**Does**: `build_features` writes `features/<month>/` in the lake (flight, weather and history features plus the
label rows, Parquet, committed by a manifest with content hashes; history reads earlier validated months);
`apply_feature_repo` runs an idempotent `feast apply` of `include/feature_repo`; `materialize_features` loads
exactly the months' data interval into the online store (SQLite here, Redis in production) and emits the
`features` Asset; `training_set` joins the label rows of the trailing window (`include/config/features.yaml`,
overridable with `{"window_months": N}`) point-in-time with the offline store (DuckDB), validates the set with
its GX suite and commits it to `training_sets/<sha12>/`, emitting the `training_set` Asset.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from airflow_mlops import settings
from airflow_mlops.assets import FEATURES, TRAINING_SET, VALIDATED_BATCH
from airflow_mlops.operators.feature_store import (
    ApplyFeatureRepoOperator,
    MaterializeFeaturesOperator,
    TrainingSetOperator,
)
from airflow_mlops.operators.features import BuildFeaturesOperator

BUILT = "ti.xcom_pull(task_ids='build_features')"
USECASE = str(settings.project_root() / "examples" / "flight_delay")

with DAG(
    dag_id="mlops_features",
    description="Validated month → features (lake) → Feast apply → materialize → PIT training set",
    schedule=[VALIDATED_BATCH],
    catchup=False,
    max_active_runs=1,
    params={
        "month": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-\d{2}$",
            description="Month to build, YYYY-MM. Empty: the months of the triggering validated_batch events.",
        ),
        "window_months": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="Training-set window in months, ending with the month. Empty: features.yaml.",
        ),
    },
    default_args={"owner": "data-engineering", "retries": 2, "retry_delay": timedelta(seconds=20)},
    tags=["mlops", "features", "feast"],
    doc_md=__doc__,
) as dag:
    build = BuildFeaturesOperator(task_id="build_features", usecase=USECASE, period="{{ params.month or '' }}")
    apply = ApplyFeatureRepoOperator(task_id="apply_feature_repo", usecase=USECASE)
    materialize = MaterializeFeaturesOperator(
        task_id="materialize_features",
        usecase=USECASE,
        interval_start="{{ " + BUILT + "['interval_start'] }}",
        interval_end="{{ " + BUILT + "['interval_end'] }}",
        outlets=[FEATURES],
    )
    training_set = TrainingSetOperator(
        task_id="training_set",
        usecase=USECASE,
        end_period="{{ " + BUILT + "['month'] }}",
        window="{{ params.window_months or '' }}",
        outlets=[TRAINING_SET],
    )
    [build, apply] >> materialize >> training_set
