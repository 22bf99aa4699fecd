"""The Assets that link the pipeline's DAGs (data-aware scheduling). Light: safe to import from DAG files."""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from airflow_mlops import settings
from airflow_mlops.triggers.lake_flag import LakeFlagTrigger

#: The flag an upstream system writes into ``landing/`` after a batch's files (see ``airflow_mlops.replay``).
LANDING_FLAG = "_READY"

#: A batch has landed: rung by the landing watcher, or posted through the REST API by an upstream system.
LANDING = Asset(
    name="landing_batch",
    uri="mlops://lake/landing",
    group="mlops",
    watchers=[
        AssetWatcher(
            name="landing_flag",
            trigger=LakeFlagTrigger(
                flag_url=f"{settings.lake_url()}/landing/{LANDING_FLAG}", lake_conn_id=settings.lake_conn_id()
            ),
        )
    ],
)
#: A batch passed validation; extra: month, batch_id, sha256, rows, uri and the data interval.
VALIDATED_BATCH = Asset(name="validated_batch", uri="mlops://lake/validated", group="mlops")
