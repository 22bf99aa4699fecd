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
#: Retraining was asked for (by the monitoring stage, or posted through the REST API); extra: reasons, interval,
#: optionally ``training_set_uri``.
RETRAIN_REQUESTED = Asset(name="retrain_requested", uri="mlops://mlflow/retrain_requested", group="mlops")
#: The champion alias moved (promotion or rollback); extra: model, from_version, to_version, ledger_seq, action.
MODEL_PROMOTED = Asset(name="model_promoted", uri="mlops://mlflow/model_promoted", group="mlops")
#: Features of one or more validated months are in the offline store (lake) and materialized online; extra:
#: months, interval_start, interval_end, rows per feature view.
FEATURES = Asset(name="features", uri="mlops://feast/features", group="mlops")
#: A point-in-time training set was committed to the lake; extra: uri, sha256, rows, months, manifest_uri.
TRAINING_SET = Asset(name="training_set", uri="mlops://lake/training_sets", group="mlops")
#: The true outcomes (arrival delays) of a month's flights are known: posted through the REST API by the upstream
#: system that records them (in the replay: after the month's traffic was answered); extra: ``month``.
OUTCOMES = Asset(name="outcomes", uri="mlops://upstream/outcomes", group="mlops")
