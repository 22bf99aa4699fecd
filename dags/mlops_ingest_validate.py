"""
### Ingest and validate a monthly batch

Stage 1–2 of the MLOps loop. A batch is one month of flights and hourly weather, landed by an upstream
system in the lake's `landing/<month>/` zone.

**Runs on** (any of):
* a batch landing: the upstream writes its files, a `_SUCCESS` marker, then `landing/_READY`; the landing
  watcher (an `AssetWatcher`) turns that flag into a run, which ingests *every* complete batch waiting;
* the REST API or the UI, with `{"month": "2013-03"}` as conf: that month (re-validated if already ingested);
* the monthly schedule (`include/config/pipeline.yaml`, 2013 with catch-up): that month, if its batch is waiting.

**Does**: `ingest_batch` moves each batch into `raw/<month>/<sha12>/` (content-addressed; the same bytes
twice is a no-op); `validate_batch` (one mapped task per batch) runs the Great Expectations suites in
`include/expectations/`. A passing batch is published as Parquet to `validated/<month>/` and emits the
`validated_batch` Asset event (extra: uri, sha256, rows, interval). A failing batch goes to
`quarantine/<month>/<sha12>/` with its GX result and Data Docs page, and the task fails naming each failed
expectation; nothing downstream runs. Each validation task links to its **Data Docs** page.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, Param

# The SDK's EventsTimetable does not serialize in Airflow 3.3.2 (its encoder drops `_summary`); the core one does.
from airflow.timetables.events import EventsTimetable

from airflow_mlops import config, settings
from airflow_mlops.assets import LANDING, VALIDATED_BATCH
from airflow_mlops.operators.ingest import IngestBatchOperator
from airflow_mlops.operators.validation import ValidateBatchOperator

INGEST = config.section("ingest")
MONTHS = config.schedule_months()
#: The reference use case's folder: its usecase.py derives the joinability columns the flights suite checks.
USE_CASE = settings.project_root() / "examples" / "flight_delay"
#: Columns parsed as UTC timestamps before validation (the suites and the published Parquet see datetimes).
TIMESTAMP_COLUMNS = {"flights.csv": "time_hour", "weather.csv": "time_hour"}

with DAG(
    dag_id="mlops_ingest_validate",
    description="Land → raw → Great Expectations → validated or quarantine",
    schedule=AssetOrTimeSchedule(
        timetable=EventsTimetable(
            event_dates=MONTHS, presorted=True, description=f"monthly, {MONTHS[0]:%Y-%m}..{MONTHS[-1]:%Y-%m}"
        ),
        assets=LANDING,
    ),
    start_date=MONTHS[0],
    catchup=True,
    max_active_runs=1,
    params={
        "month": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-\d{2}$",
            description="Month to ingest and validate, YYYY-MM. Empty: decided by the run (schedule or landing).",
        )
    },
    default_args={"owner": "data-engineering", "retries": 2, "retry_delay": timedelta(seconds=20)},
    tags=["mlops", "ingest", "validation"],
    doc_md=__doc__,
) as dag:
    ingest = IngestBatchOperator(
        task_id="ingest_batch",
        month="{{ params.month or '' }}",
        files=INGEST["batch_files"],
        primary=INGEST.get("primary"),
        period_kind="month",
    )
    ValidateBatchOperator.partial(
        task_id="validate_batch",
        files=INGEST["batch_files"],
        primary=INGEST.get("primary"),
        period_kind="month",
        suites=config.section("validation")["suites"],
        timestamp_columns=TIMESTAMP_COLUMNS,
        module_file=str(USE_CASE / "usecase.py"),
        outlets=[VALIDATED_BATCH],
    ).expand(batch=ingest.output)
