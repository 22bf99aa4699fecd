"""Stage 5, training: fit the configured scikit-learn pipeline on a verified snapshot and log it to MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops.links_mlflow import RUN_URL_XCOM_KEY, MlflowRunLink
from airflow_mlops.operators.training_set import TrainingStepOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class TrainModelOperator(TrainingStepOperator):
    """Train the configured scikit-learn pipeline on a training-set snapshot and log it to MLflow.

    The config's task (classification or regression) decides the training metrics and what the logged
    model's pyfunc predicts (the positive class's probability, or the prediction). The newest
    ``holdout.months`` month(s) are held out (never trained on). The run records: parameters,
    training metrics, the snapshot as a dataset input (URI + sha256), the resolved config (artifact + hash),
    the model with signature, input example and explicit pip requirements, and tags linking it to the
    Airflow task (dag/run/task id, try number), the git commit and the feature view versions
    (``hooks.mlflow_tracking.train_and_log``).

    :param training_set: the snapshot: the feature stage's / resolver's XCom dict or a URI (templated).
    :param usecase: the use-case folder whose ``model`` section is the training config.
    :param config_path: a ``training.yaml``-style config instead of a use case (templated).
    :param experiment_name: MLflow experiment; default from the config (templated).
    :param feature_views: feature view name → version, if not in the snapshot's manifest (templated).
    :param mlflow_conn_id: MLflow connection; see ``MlflowHook``.
    :param lake_root: lake root URL; default the use case's lake, else ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    Other arguments: those of ``MlopsBaseOperator``.
    :return: (XCom) run_id, experiment_id, artifact_uri (the run's), model_uri, model_id, registered_model_name,
        training_set (uri, sha256, rows), train/holdout months, config_sha256. The run's URL is pushed under
        ``mlflow_run_url`` (the task's extra link).
    :raises TrainingSetError: the snapshot fails verification.
    :raises AirflowFailException: no training config, or an invalid one.
    """

    template_fields = ("training_set", "config_path", "experiment_name", "feature_views")
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#fff2cc"

    def __init__(
        self,
        *,
        training_set: dict | str,
        config_path: str | None = None,
        experiment_name: str | None = None,
        feature_views: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.training_set = training_set
        self.config_path = config_path
        self.experiment_name = experiment_name
        self.feature_views = feature_views

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core import training as core
        from airflow_mlops.core.tracking import airflow_lineage, split_text
        from airflow_mlops.hooks.mlflow_tracking import train_and_log

        config = self.training_config
        # Decoded but not converted: the split converts the training rows alone (the hold-out is evaluated later).
        table, info = self.read_training_table(self.training_set)
        split = core.split_holdout(table, config)
        trained = train_and_log(
            self.mlflow_hook,
            config,
            split,
            info,
            experiment_name=self.experiment_name or config.experiment_name,
            lineage=airflow_lineage(context),
            feature_views=self.feature_views or info.get("feature_views"),
        )
        self.log.info(
            "trained %s (%s) on %s, in %.1fs", config.model_type, config.task, split_text(split), trained.fit_seconds
        )
        run = trained.run
        url = self.mlflow_hook.run_url(run.run_id, run.experiment_id)
        context["ti"].xcom_push(key=RUN_URL_XCOM_KEY, value=url)
        self.log.info("MLflow run %s, model %s%s", run.run_id, trained.model_info.model_uri, f" ({url})" if url else "")
        return {
            "run_id": run.run_id,
            "experiment_id": run.experiment_id,
            "artifact_uri": run.artifact_uri,
            "model_uri": trained.model_info.model_uri,
            "model_id": trained.model_id,
            "registered_model_name": config.registered_model_name,
            "training_set": {k: info[k] for k in ("uri", "sha256", "rows")},
            "train_months": split.train_months,
            "holdout_months": split.holdout_months,
            "config_sha256": config.sha256,
        }
