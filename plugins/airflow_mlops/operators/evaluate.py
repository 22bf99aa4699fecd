"""Stage 5, evaluation: the new model and the current champion scored on the same hold-out, logged to MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops.core.tracking import EVALUATION_ARTIFACT
from airflow_mlops.links_mlflow import RUN_URL_XCOM_KEY, MlflowRunLink
from airflow_mlops.operators.training_set import TrainingStepOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class EvaluateChallengerOperator(TrainingStepOperator):
    """Score the new model and the current champion on the same time-based hold-out; log both to MLflow.

    Overall metrics of the config's task (classification: ROC AUC, log loss, Brier, precision/recall at the
    configured threshold; regression: RMSE, MAE, R²) and the same per slice (configured columns) with slice
    sizes. The candidate's run gets the metrics, ``evaluation/evaluation.json`` (what the gate reads) and a
    plot: ROC / calibration curves (``curves.svg``) of a classification, binned predicted-vs-actual values
    (``predicted_vs_actual.svg``) of a regression. The champion is loaded by the version its alias pointed at
    when read, so both sides of the comparison are pinned. A champion that cannot be scored is recorded in the
    document (``champion_error``) and the gate rejects.

    :param trained: the XCom of ``TrainModelOperator`` (templated; an XComArg resolves to the dict).
    :param training_set: the snapshot; default the one the model was trained on (templated).
    :param registered_model_name: default the trained model's, else the config's (templated).
    :param champion_alias: alias of the model to beat.
    :param usecase: the use-case folder whose ``model`` section is the training config.
    :param config_path: a ``training.yaml``-style config instead of a use case (templated).
    :param mlflow_conn_id: MLflow connection; see ``MlflowHook``.
    Other arguments: those of ``MlopsBaseOperator``.
    :return: (XCom) run_id, model_uri, registered_model_name, champion_alias, champion_version, candidate and
        champion overall metrics, holdout, evaluation_artifact, training_set (uri, sha256, rows). The run's URL
        is pushed under ``mlflow_run_url``.
    :raises TrainingSetError: the snapshot fails verification.
    :raises ValueError: the hold-out differs from the one the model was trained against.
    """

    template_fields = ("trained", "training_set", "registered_model_name", "config_path")
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#fff2cc"

    def __init__(
        self,
        *,
        trained: dict,
        training_set: dict | str | None = None,
        registered_model_name: str | None = None,
        champion_alias: str = "champion",
        config_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.trained = trained
        self.training_set = training_set
        self.registered_model_name = registered_model_name
        self.champion_alias = champion_alias
        self.config_path = config_path

    def execute(self, context: Context) -> dict[str, Any]:
        from concurrent.futures import ThreadPoolExecutor

        from airflow_mlops.hooks.mlflow_tracking import evaluate_challenger, load_model

        trained, config, hook = self.trained, self.training_config, self.mlflow_hook
        if not isinstance(trained, dict) or not trained.get("model_uri"):
            self.fail(f"trained= must be TrainModelOperator's XCom (a dict with model_uri), got {trained!r}")
        name = self.registered_model_name or trained.get("registered_model_name") or config.registered_model_name
        champion_version = hook.alias_version(name, self.champion_alias)
        # Both models load (artifact copy, unpickling) while the snapshot is read and verified.
        with ThreadPoolExecutor(2, thread_name_prefix="load-model") as pool:
            models = {"candidate": pool.submit(load_model, hook, trained["model_uri"])}
            if champion_version is not None:
                models["champion"] = pool.submit(load_model, hook, f"models:/{name}/{champion_version}")
            # Decoded but not converted: the split converts the hold-out rows alone.
            table, info = self.read_training_table(self.training_set or trained["training_set"])
            report = evaluate_challenger(hook, config, table, trained, name, champion_version, models)
        for line in report["log"]:
            self.log.info("%s", line)
        context["ti"].xcom_push(
            key=RUN_URL_XCOM_KEY, value=hook.run_url(trained["run_id"], trained.get("experiment_id"))
        )
        return {
            "run_id": trained["run_id"],
            "model_uri": trained["model_uri"],
            "registered_model_name": name,
            "champion_alias": self.champion_alias,
            "champion_version": champion_version,
            "candidate": report["candidate"],
            "champion": report["champion"],
            "holdout": report["holdout"],
            "evaluation_artifact": EVALUATION_ARTIFACT,
            "training_set": {k: info[k] for k in ("uri", "sha256", "rows")},
        }
