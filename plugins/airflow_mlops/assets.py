"""The Assets that link a use case's DAGs (data-aware scheduling). Light: safe to import from DAG files.

Every use case has its own set, named ``<use case>.<asset>`` with URIs under ``mlops://<use case>/``, so two use
cases run side by side in one Airflow; an external system posts events to them by name through the REST API.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from airflow.sdk import Asset, AssetWatcher

from airflow_mlops import settings
from airflow_mlops.triggers.lake_flag import LakeFlagTrigger

#: The flag an upstream system writes into a use case's ``landing/`` after a batch's files.
LANDING_FLAG = "_READY"


@dataclass(frozen=True)
class UseCaseAssets:
    """The Assets of one use case.

    * ``landing``: a batch has landed (the landing watcher on ``<lake>/<use case>/landing/_READY``, or a REST post);
    * ``validated_batch``: a batch passed validation; extra: period (and month), batch_id, sha256, rows, uri, interval;
    * ``features``: periods' features are offline and online; extra: periods, interval_start, interval_end, rows;
    * ``training_set``: a point-in-time training set was committed; extra: uri, sha256, rows, periods, manifest_uri;
    * ``outcomes``: the true outcomes of a period are known (posted by the upstream); extra: ``period``;
    * ``retrain_requested``: retraining was asked for (monitoring, or a REST post); extra: reasons, interval, ...;
    * ``model_promoted``: the champion alias moved; extra: model, from_version, to_version, ledger_seq, action;
    * ``scores``: a period's batch was scored by the champion into the lake's ``scores/<period>/`` (the batch-scoring
      DAG); extra: period, uri, folder, part, rows, model_name, model_version, batch_sha256, batch_id, written,
      superseded.
    """

    landing: Asset
    validated_batch: Asset
    features: Asset
    training_set: Asset
    outcomes: Asset
    retrain_requested: Asset
    model_promoted: Asset
    scores: Asset


@cache
def assets_for(name: str, lake_url: str | None = None) -> UseCaseAssets:
    """The Assets of the use case ``name`` whose lake root is ``lake_url`` (default ``<MLOPS_LAKE>/<name>``)."""
    root = (lake_url or f"{settings.lake_url()}/{name}").rstrip("/")

    def asset(kind: str, uri: str, **kwargs: object) -> Asset:
        return Asset(name=f"{name}.{kind}", uri=f"mlops://{name}/{uri}", group=name, **kwargs)

    return UseCaseAssets(
        landing=asset(
            "landing_batch",
            "lake/landing",
            watchers=[
                AssetWatcher(
                    name=f"{name}_landing_flag",
                    trigger=LakeFlagTrigger(
                        flag_url=f"{root}/landing/{LANDING_FLAG}", lake_conn_id=settings.lake_conn_id()
                    ),
                )
            ],
        ),
        validated_batch=asset("validated_batch", "lake/validated"),
        features=asset("features", "feast/features"),
        training_set=asset("training_set", "lake/training_sets"),
        outcomes=asset("outcomes", "upstream/outcomes"),
        retrain_requested=asset("retrain_requested", "mlflow/retrain_requested"),
        model_promoted=asset("model_promoted", "mlflow/model_promoted"),
        scores=asset("scores", "lake/scores"),
    )


# -- the reference DAGs' Assets before the factory (transitional: removed when dags/ moves to the factory) --------
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
VALIDATED_BATCH = Asset(name="validated_batch", uri="mlops://lake/validated", group="mlops")
RETRAIN_REQUESTED = Asset(name="retrain_requested", uri="mlops://mlflow/retrain_requested", group="mlops")
MODEL_PROMOTED = Asset(name="model_promoted", uri="mlops://mlflow/model_promoted", group="mlops")
FEATURES = Asset(name="features", uri="mlops://feast/features", group="mlops")
TRAINING_SET = Asset(name="training_set", uri="mlops://lake/training_sets", group="mlops")
OUTCOMES = Asset(name="outcomes", uri="mlops://upstream/outcomes", group="mlops")
