"""MLflow tracking of the training steps: the training run, its dataset input, the logged model, the evaluation.

Functions taking an ``MlflowHook`` (``airflow_mlops.hooks.mlflow_registry``): the hook knows where MLflow is;
these say what a training run records there. What is recorded (tags, parameters, the evaluation's document and
metrics) is decided in ``airflow_mlops.core.tracking``. MLflow is imported inside the functions.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops import settings
from airflow_mlops.core import tracking

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future

    import pandas as pd
    import pyarrow as pa
    from mlflow.entities import RunInfo

    from airflow_mlops.core.training import Split, TrainingConfig
    from airflow_mlops.hooks.mlflow_registry import MlflowHook


# -- a training run ----------------------------------------------------------------------------------------------
@dataclass
class TrainedRun:
    """A finished training run: its ``RunInfo``, the fitted model, MLflow's ``ModelInfo`` and the metrics."""

    run: Any
    model: Any
    model_info: Any
    fit_seconds: float
    metrics: dict[str, Any]

    @property
    def model_id(self) -> str | None:
        return getattr(self.model_info, "model_id", None)


def train_and_log(
    hook: MlflowHook,
    config: TrainingConfig,
    split: Split,
    info: dict[str, Any],
    *,
    experiment_name: str,
    lineage: dict[str, str],
    feature_views: dict | None,
) -> TrainedRun:
    """Fit the configured model on ``split`` inside a training run, log it, and end the run ``FINISHED``.

    Tracking overlaps the computation. While the model fits: the run (tags, params, dataset input, config),
    its logged model (pending) and what describes the model (signature, input example). While the training
    metrics are computed: the fitted model saved and uploaded. What this hides is the tracking's waits (store
    commits, artifact copies); its Python work shares the interpreter lock with the computation. On any failure
    the run and its logged model are marked failed and the error is raised.

    :param info: the verified snapshot (``core.tracking.snapshot_info``).
    :param lineage: the Airflow task's tags (``core.tracking.airflow_lineage``).
    """
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.entities import Metric

    from airflow_mlops.core import training as core

    hook.activate()
    params = tracking.training_params(config, split)
    with ThreadPoolExecutor(1, thread_name_prefix="mlflow-run") as pool:
        opening = pool.submit(
            prepare_training_run,
            hook,
            config,
            split,
            info,
            experiment_name=experiment_name,
            lineage=lineage,
            feature_views=feature_views,
            params=params,
        )
        try:
            model, fit_seconds = core.fit(split, config)
            run, logged_model, save_kwargs = opening.result()
            uploading = pool.submit(log_fitted_model, hook, logged_model, config, model, save_kwargs)
            metrics = {**core.training_metrics(model, split, config), "fit_seconds": fit_seconds}
            trained = TrainedRun(run, model, uploading.result(), fit_seconds, metrics)
        except BaseException:
            # The run and its model are marked failed (if preparing them failed, they were marked then).
            with contextlib.suppress(Exception):
                run, logged_model, _ = opening.result()
                hook.fail_logged_model(logged_model.model_id)
                hook.client.set_terminated(run.run_id, "FAILED")
            raise
    # The metrics carry the model's id (its page lists them); one round trip, and the run ends.
    stamp = int(time.time() * 1000)
    hook.client.log_batch(
        run.run_id,
        metrics=[Metric(k, float(v), stamp, 0, model_id=trained.model_id) for k, v in metrics.items() if v is not None],
    )
    hook.client.set_terminated(run.run_id, "FINISHED")
    return trained


def open_training_run(
    hook: MlflowHook,
    config: TrainingConfig,
    split: Split,
    info: dict[str, Any],
    *,
    experiment_name: str,
    lineage: dict[str, str],
    feature_views: dict | None,
    params: dict[str, Any] | None = None,
) -> RunInfo:
    """Create the training run (in ``experiment_name``, created if absent) with what is known before fitting;
    returns its ``RunInfo`` (run and experiment id, artifact URI).

    Tags: ``core.tracking.training_run_tags``; params are ``params`` (default ``core.tracking.training_params``);
    the snapshot is the run's dataset input (URI + sha256 + schema); the resolved config is an artifact. Uses the
    client API only (no fluent active run), so it can run on another thread. On failure the run is marked failed.
    """
    import yaml
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag, Param

    from airflow_mlops.core import training as core

    commit, dirty = core.git_commit(settings.checkout_root())
    tags = tracking.training_run_tags(
        config, split, info, lineage=lineage, feature_views=feature_views, commit=commit, dirty=dirty
    )
    params = tracking.training_params(config, split) if params is None else params
    client = hook.client
    experiment_id = hook.get_or_create_experiment(experiment_name)
    run = client.create_run(experiment_id, tags=tags, run_name=tracking.training_run_name(config, lineage)).info
    try:
        client.log_batch(run.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        # Metadata only (URI + sha256 + schema): inferring the schema of the whole frame, as from_pandas does,
        # took 2 s of a 5 s training task; the bytes are addressed by their hash anyway.
        dataset = MetaDataset(
            resolve_dataset_source(info["uri"]),
            name=f"training_set-{info['sha256'][:12]}",
            digest=info["sha256"][:32],
            schema=dataset_schema(split),
        )
        input_tags = {
            "mlflow.data.context": "training",
            "sha256": info["sha256"],
            "rows": str(info["rows"]),
            "holdout_months": ",".join(split.holdout_months),
        }
        client.log_inputs(
            run.run_id,
            datasets=[DatasetInput(dataset._to_mlflow_entity(), [InputTag(k, v) for k, v in input_tags.items()])],
        )
        folder, name = tracking.CONFIG_ARTIFACT.rsplit("/", 1)
        with tempfile.TemporaryDirectory(prefix="config-") as tmp:
            (Path(tmp) / name).write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
            hook.upload_artifacts(run.artifact_uri, tmp, folder)
    except BaseException:
        client.set_terminated(run.run_id, "FAILED")
        raise
    return run


def dataset_schema(split: Any) -> Any:
    """The MLflow schema of the training set a split was taken from (a run's dataset input).

    Of an Arrow table (what the operators read), its own schema: every column with the type the Parquet
    file declares (``Any`` for a type MLflow has no name for, e.g. uint64, which MLflow cannot infer either),
    required when the column holds no null (counts Arrow keeps, nothing is scanned). Of a DataFrame, what
    MLflow infers from 200 training rows.
    """
    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    source = split.source
    if not hasattr(source, "column_names"):
        return infer_signature(split.train.head(200)).inputs
    return Schema(
        [
            ColSpec(_mlflow_type(column.type) or AnyType(), name, required=column.null_count == 0)
            for name, column in zip(source.column_names, source.columns, strict=True)
        ]
    )


def _mlflow_type(arrow_type: Any) -> str | None:
    """The MLflow column type of an Arrow type, as MLflow infers it from the pandas column it converts to."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type):
        bits, signed = arrow_type.bit_width, pa.types.is_signed_integer(arrow_type)
        if bits < 32 or (signed and bits == 32):
            return "integer"
        return "long" if bits < 64 or signed else None  # MLflow has no type for uint64
    if pa.types.is_floating(arrow_type):
        return "float" if arrow_type.bit_width <= 32 else "double"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "binary"
    if pa.types.is_timestamp(arrow_type):
        return "datetime"
    return None


def prepare_training_run(
    hook: MlflowHook,
    config: TrainingConfig,
    split: Split,
    info: dict[str, Any],
    *,
    experiment_name: str,
    lineage: dict[str, str],
    feature_views: dict | None,
    params: dict[str, Any],
) -> tuple[RunInfo, Any, dict[str, Any]]:
    """What can be logged before the model is fitted: the run (``open_training_run``), its logged model
    (pending) and the arguments that save the model into it (``model_save_kwargs``). On failure the run (and
    the logged model, if created) are marked failed."""
    run = open_training_run(
        hook,
        config,
        split,
        info,
        experiment_name=experiment_name,
        lineage=lineage,
        feature_views=feature_views,
        params=params,
    )
    logged_model = None
    try:
        logged_model = hook.create_logged_model(run.run_id, experiment_id=run.experiment_id, params=params)
        return run, logged_model, model_save_kwargs(config, split)
    except BaseException:
        if logged_model is not None:
            hook.fail_logged_model(logged_model.model_id)
        hook.client.set_terminated(run.run_id, "FAILED")
        raise


# -- the logged model --------------------------------------------------------------------------------------------
def model_save_kwargs(config: TrainingConfig, split: Split) -> dict[str, Any]:
    """How the model is saved, all known before it is fitted: ``model_signature`` (for a classification the
    classes are the training labels' distinct values, as scikit-learn's classifiers order them), an input
    example of 5 training rows, explicit pip requirements, the configured serialization, and what pyfunc
    calls: ``predict_proba`` for a classification, ``predict`` for a regression."""
    import numpy as np

    from airflow_mlops.core import training as core

    classify = config.task == "classification"
    classes = np.unique(split.train[config.label].to_numpy()) if classify else None
    return {
        "signature": model_signature(split.train, config, classes),
        "input_example": core.features_frame(split.train.head(5), config),
        "pip_requirements": core.pip_requirements(),
        "serialization_format": config.serialization_format,
        "pyfunc_predict_fn": "predict_proba" if classify else "predict",
    }


def log_fitted_model(
    hook: MlflowHook, logged_model: Any, config: TrainingConfig, model: Any, save_kwargs: dict[str, Any]
) -> Any:
    """Save the fitted pipeline into the run's logged model (``MlflowHook.save_sklearn_model``) with
    ``save_kwargs`` (``model_save_kwargs``); returns MLflow's ``ModelInfo``. The run's status is left to the
    caller."""
    kwargs = dict(save_kwargs)
    if config.serialization_format == "skops":
        import skops.io

        kwargs["skops_trusted_types"] = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    if config.task == "classification" and len(model.classes_) != save_kwargs["signature"].outputs.inputs[0].shape[-1]:
        raise ValueError(f"the model has {len(model.classes_)} classes, its signature another number")
    return hook.save_sklearn_model(logged_model, model, **kwargs)


def model_signature(train: pd.DataFrame, config: TrainingConfig, classes: Any) -> Any:
    """The logged model's MLflow signature: what MLflow infers from every training row, without scanning them.

    Input types are MLflow's inference on one row that holds each feature's first present value, converted
    as ``core.training.features_frame`` converts every row for the model (so a categorical coded as numbers
    keeps its type).
    A column is required only when no training row lacks it: inferred from a sample, a feature missing in
    some rows but not in the sample is marked required, and MLflow's schema enforcement then refuses input
    that leaves it out, though the model was trained on rows without it. The output is ``predict_proba``'s:
    one float64 column per class; with ``classes`` ``None`` (a regression) it is ``predict``'s, one float64
    per row.

    :param train: the training rows.
    :param config: the training config (features, task).
    :param classes: a classification's classes, ``None`` for a regression.
    """
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema, TensorSpec

    from airflow_mlops.core.training import features_frame

    at, required = {}, {}
    for name in config.features:
        present = ~pd.isna(train[name].to_numpy())
        required[name], at[name] = bool(present.all()), int(present.argmax())
    # The few rows that hold some feature's first present value, converted as the model gets them.
    rows = sorted(set(at.values()))
    sample, position = features_frame(train.iloc[rows], config), {row: k for k, row in enumerate(rows)}
    first = {name: sample[name].to_numpy()[position[row] : position[row] + 1] for name, row in at.items()}
    types = infer_signature(pd.DataFrame(first)).inputs
    inputs = Schema([ColSpec(spec.type, spec.name, required=required[spec.name]) for spec in types.inputs])
    shape = (-1,) if classes is None else (-1, len(classes))
    return ModelSignature(inputs, Schema([TensorSpec(np.dtype("float64"), shape)]))


def load_model(hook: MlflowHook, uri: str) -> Any:
    """The scikit-learn pipeline logged at ``uri`` (``runs:/``, ``models:/`` ...)."""
    import mlflow

    hook.activate()
    return mlflow.sklearn.load_model(uri)


# -- the challenger evaluation -----------------------------------------------------------------------------------
def evaluate_challenger(
    hook: MlflowHook,
    config: TrainingConfig,
    frame: pd.DataFrame | pa.Table,
    trained: dict[str, Any],
    name: str,
    champion_version: str | None,
    models: dict[str, Future] | None = None,
) -> dict[str, Any]:
    """Score candidate and champion on the hold-out (``core.tracking.score_challenger``) and log the evaluation
    to the candidate's run (``log_evaluation``); returns the overall metrics of both, the hold-out and log lines.

    :param frame: the training set, as a DataFrame or a pyarrow Table (only its hold-out rows are converted).
    :param trained: the training step's XCom (run_id, model_uri, artifact_uri, holdout_months, training_set).
    :param models: ``candidate`` (and ``champion``) models being loaded; default: loaded here.
    :raises ValueError: the hold-out differs from the one the model was trained against.
    """
    models = models or {}
    hook.activate()

    def loader(key: str, uri: str) -> Callable[[], Any]:
        return models[key].result if key in models else lambda: load_model(hook, uri)

    champion = None if champion_version is None else loader("champion", f"models:/{name}/{champion_version}")
    challenge = tracking.score_challenger(
        config, frame, trained, loader("candidate", trained["model_uri"]), champion, champion_version
    )
    log_evaluation(
        hook,
        trained,
        metrics=tracking.evaluation_metrics(challenge, config),
        tags={"mlops.evaluation.champion_version": champion_version or "none"},
        files=lambda: tracking.evaluation_files(challenge, config, name, trained),
    )
    return {
        "candidate": challenge.candidate.overall,
        "champion": challenge.champion.overall if challenge.champion else None,
        "holdout": challenge.split.summary(),
        "log": challenge.lines,
    }


def log_evaluation(
    hook: MlflowHook,
    trained: dict[str, Any],
    *,
    metrics: dict[str, float],
    tags: dict[str, str],
    files: Callable[[], dict[str, str]],
) -> None:
    """Log an evaluation to the training run: every metric and tag in batches of 900 (MLflow takes up to 1000
    per batch), written on a thread while ``files()`` draws the artifact files (name → text), which are then
    uploaded in one go under ``evaluation/`` (where the training task said the run's artifacts are)."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.entities import Metric, RunTag

    client, run_id = hook.client, trained["run_id"]
    stamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
    run_tags = [RunTag(k, v) for k, v in tags.items()]

    def log_metrics() -> None:
        for start in range(0, max(len(batch), 1), 900):
            client.log_batch(run_id, metrics=batch[start : start + 900], tags=run_tags if start == 0 else [])

    folder = tracking.EVALUATION_ARTIFACT.rsplit("/", 1)[0]
    with ThreadPoolExecutor(1, thread_name_prefix="mlflow-metrics") as pool:
        logging_metrics = pool.submit(log_metrics)
        with tempfile.TemporaryDirectory(prefix="eval-") as tmp:
            for name, text in files().items():
                (Path(tmp) / name).write_text(text)
            if trained.get("artifact_uri"):
                hook.upload_artifacts(trained["artifact_uri"], tmp, folder)
            else:
                client.log_artifacts(run_id, tmp, folder)
        logging_metrics.result()
