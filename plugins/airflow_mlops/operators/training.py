"""Resolve a training-set snapshot, train the configured model on it, and score it against the champion."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_mlops import settings
from airflow_mlops.exceptions import TrainingSetError
from airflow_mlops.hooks.lake import LakeHook
from airflow_mlops.hooks.mlflow_registry import MlflowHook
from airflow_mlops.links_mlflow import RUN_URL_XCOM_KEY, MlflowRunLink

if TYPE_CHECKING:
    from concurrent.futures import Future

    import pandas as pd
    import pyarrow as pa
    from airflow.sdk import Context
    from mlflow.entities import RunInfo

    from airflow_mlops.core.training import TrainingConfig

#: Where the feature stage commits training sets in the lake, and the snapshot's file name.
TRAINING_SETS_ZONE = "training_sets"
TRAINING_SET_FILE = "training_set.parquet"
#: Artifact paths on a training run.
CONFIG_ARTIFACT = "config/training.yaml"
EVALUATION_ARTIFACT = "evaluation/evaluation.json"


def training_config(usecase: str | None, config_path: str | None) -> Any:
    """The training config of a use case folder, or of a ``training.yaml``-style file.

    :raises AirflowFailException: neither is given, or the config is invalid (retrying cannot help).
    """
    from airflow_mlops.core import training as core
    from airflow_mlops.usecase import config

    try:
        if usecase:
            return config.load(usecase).training_config()
        if config_path:
            return core.load_config(config_path)
    except ValueError as err:
        raise AirflowFailException(str(err)) from err
    raise AirflowFailException("no training config: pass usecase=<use-case folder> (or config_path=<yaml>)")


def airflow_lineage(context: Context) -> dict[str, str]:
    """Tags tying an MLflow run or ledger entry to the Airflow task that wrote it."""
    ti = context["ti"]
    dag_run = context.get("dag_run")
    tags = {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "try_number": str(getattr(ti, "try_number", "")),
        "run_type": str(getattr(dag_run, "run_type", "") or ""),
    }
    user = getattr(dag_run, "triggering_user_name", None)
    if user:
        tags["triggered_by_user"] = str(user)
    return tags


def _parse(value: Any) -> Any:
    """A templated argument rendered from XCom may arrive as its JSON string."""
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        return json.loads(value)
    return value


class TrainingSetMixin:
    """Read a committed training-set snapshot and prove its bytes are the ones its manifest recorded."""

    lake_root: str | None
    lake_conn_id: str | None

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)

    def resolve_training_set(self, reference: dict | str) -> dict[str, Any]:
        """The snapshot's XCom contract (uri, sha256, rows, months, manifest_uri, feature_views), verified.

        :raises TrainingSetError: no manifest (uncommitted), file not listed, or bytes/hash mismatch.
        """
        from airflow.sdk import ObjectStoragePath

        ref = _parse(reference)
        uri = ref.get("uri") if isinstance(ref, dict) else ref
        if not uri:
            raise TrainingSetError(f"no training-set URI in {reference!r}")
        path = ObjectStoragePath(str(uri), conn_id=self.lake_conn_id)
        if path.name != TRAINING_SET_FILE and (path / TRAINING_SET_FILE).exists():
            path = path / TRAINING_SET_FILE
        manifest = self.lake.read_manifest(path.parent)
        if manifest is None:
            raise TrainingSetError(f"{path.parent} has no manifest: the snapshot was never committed")
        record = (manifest.get("files") or {}).get(path.name)
        if record is None:
            raise TrainingSetError(f"the manifest of {path.parent} does not list {path.name}")
        expected = ref.get("sha256") if isinstance(ref, dict) else None
        if expected and expected != record["sha256"]:
            raise TrainingSetError(
                f"{path} was asked for with sha256 {expected[:12]} but its manifest records {record['sha256'][:12]}"
            )
        try:
            self._bytes = self.lake.read_verified({**record, "uri": str(path)})
        except ValueError as err:
            raise TrainingSetError(str(err)) from err
        return {
            "uri": str(path),
            "sha256": record["sha256"],
            "rows": int(record.get("rows", 0)),
            "months": list(manifest.get("months") or (ref.get("months", []) if isinstance(ref, dict) else [])),
            "manifest_uri": str(path.parent / "_manifest.json"),
            "feature_views": manifest.get("feature_views")
            or (ref.get("feature_views") if isinstance(ref, dict) else None),
        }

    def read_training_set(self, reference: dict | str) -> tuple[pd.DataFrame, dict[str, Any]]:
        from airflow_mlops.core.training import read_parquet_bytes

        info = self.resolve_training_set(reference)
        return read_parquet_bytes(self._bytes), info

    def read_training_table(self, reference: dict | str) -> tuple[pa.Table, dict[str, Any]]:
        """As ``read_training_set``, decoded but not converted to pandas (``split_holdout`` of a table converts
        only the rows asked for)."""
        from airflow_mlops.core.training import read_parquet_table

        info = self.resolve_training_set(reference)
        return read_parquet_table(self._bytes), info


class ResolveTrainingSetOperator(TrainingSetMixin, BaseOperator):
    """Find a committed training-set snapshot in the lake, verify it, and hand its reference on.

    Which snapshot: ``training_set`` if given (a URI or the feature stage's XCom); else the
    ``training_set_uri`` in the extra of the Asset event that triggered the run; else the newest committed
    snapshot under ``training_sets/``.

    :param training_set: URI of ``training_set.parquet`` (or its folder), or the feature stage's dict (templated).
    :param lake_root: lake root URL; default from ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :return: (XCom) uri, sha256, rows, months, manifest_uri, feature_views.
    :raises TrainingSetError: nothing to train on, or the snapshot fails verification.
    """

    template_fields = ("training_set",)
    ui_color = "#fdf5e6"

    def __init__(
        self,
        *,
        training_set: dict | str | None = None,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.training_set = training_set
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        reference = _parse(self.training_set) or self._from_asset_event(context) or self._newest()
        info = self.resolve_training_set(reference)
        self.log.info("training set %s (sha256 %s, %d rows) verified", info["uri"], info["sha256"][:12], info["rows"])
        return info

    def _from_asset_event(self, context: Context) -> str | dict | None:
        """``training_set_uri`` from a ``retrain_requested`` event, or the ``uri`` + ``sha256`` of a ``training_set`` one."""
        events = context.get("triggering_asset_events") or {}
        for asset_events in events.values():
            for event in reversed(list(asset_events)):
                extra = getattr(event, "extra", None) or {}
                if extra.get("training_set_uri"):
                    self.log.info("training set from the triggering asset event: %s", extra["training_set_uri"])
                    return extra["training_set_uri"]
                if str(extra.get("uri", "")).endswith(TRAINING_SET_FILE) and extra.get("sha256"):
                    self.log.info("training set from the triggering asset event: %s", extra["uri"])
                    return {"uri": extra["uri"], "sha256": extra["sha256"]}
        return None

    def _newest(self) -> str:
        zone = self.lake.path(TRAINING_SETS_ZONE)
        candidates = []
        if zone.exists():
            for folder in zone.iterdir():
                manifest = self.lake.read_manifest(folder) if folder.is_dir() else None
                if manifest and TRAINING_SET_FILE in (manifest.get("files") or {}):
                    candidates.append((manifest.get("written_at", ""), str(folder / TRAINING_SET_FILE)))
        if not candidates:
            raise TrainingSetError(
                f"no committed training set under {self.lake.url(zone)}: run the feature stage, or trigger "
                'with {"training_set_uri": "..."}'
            )
        newest = max(candidates)[1]
        self.log.info("no training set named: using the newest committed snapshot %s", newest)
        return newest


class TrainModelOperator(TrainingSetMixin, BaseOperator):
    """Train the configured scikit-learn pipeline on a training-set snapshot and log it to MLflow.

    The config's task (classification or regression) decides the training metrics and what the logged
    model's pyfunc predicts (the positive class's probability, or the prediction). The newest
    ``holdout.months`` month(s) are held out (never trained on). The run records: parameters,
    training metrics, the snapshot as a dataset input (URI + sha256), the resolved config (artifact + hash),
    the model with signature, input example and explicit pip requirements, and tags linking it to the
    Airflow task (dag/run/task id, try number), the git commit and the feature view versions.

    :param training_set: the snapshot: the feature stage's / resolver's XCom dict or a URI (templated).
    :param usecase: the use-case folder whose ``model`` section is the training config.
    :param config_path: a ``training.yaml``-style config instead of a use case (templated).
    :param experiment_name: MLflow experiment; default from the config (templated).
    :param feature_views: feature view name → version, if not in the snapshot's manifest (templated).
    :param mlflow_conn_id: MLflow connection; see ``MlflowHook``.
    :param lake_root: lake root URL; default from ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :return: (XCom) run_id, experiment_id, artifact_uri (the run's), model_uri, model_id, training_set, train/holdout months, config hash.
    :raises TrainingSetError: the snapshot fails verification.
    """

    template_fields = ("training_set", "config_path", "experiment_name", "feature_views")
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#fff2cc"

    def __init__(
        self,
        *,
        training_set: dict | str,
        usecase: str | None = None,
        config_path: str | None = None,
        experiment_name: str | None = None,
        feature_views: dict | None = None,
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.training_set = training_set
        self.usecase = usecase
        self.config_path = config_path
        self.experiment_name = experiment_name
        self.feature_views = feature_views
        self.mlflow_conn_id = mlflow_conn_id
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from concurrent.futures import ThreadPoolExecutor

        from mlflow.entities import Metric

        from airflow_mlops.core import training as core

        config = training_config(self.usecase, self.config_path)
        # Decoded but not converted: the split converts the training rows alone (the hold-out is evaluated later).
        table, info = self.read_training_table(self.training_set)
        split = core.split_holdout(table, config)
        feature_views = _parse(self.feature_views) or info.get("feature_views")
        hook = self.mlflow_hook
        hook.activate()
        # Tracking overlaps the computation. While the model fits: the run (tags, params, dataset input, config),
        # its logged model (pending) and what describes the model (signature, input example). While the training
        # metrics are computed: the fitted model saved and uploaded. What this hides is the tracking's waits
        # (store commits, artifact copies); its Python work shares the interpreter lock with the computation,
        # and the fit's long Python loop shares it at less cost than the training metrics' many NumPy calls.
        params = training_params(config, split)
        with ThreadPoolExecutor(1, thread_name_prefix="mlflow-run") as pool:
            opening = pool.submit(
                prepare_training_run,
                hook,
                config,
                split,
                info,
                experiment_name=self.experiment_name or config.experiment_name,
                lineage=airflow_lineage(context),
                feature_views=feature_views,
                params=params,
            )
            try:
                model, fit_seconds = core.fit(split, config)
                run, logged_model, save_kwargs = opening.result()
                uploading = pool.submit(log_fitted_model, hook, logged_model, config, model, save_kwargs)
                train_metrics = core.training_metrics(model, split, config)
                model_info = uploading.result()
            except BaseException:
                # The run and its model are marked failed (if preparing them failed, they were marked then).
                with contextlib.suppress(Exception):
                    run, logged_model, _ = opening.result()
                    hook.fail_logged_model(logged_model.model_id)
                    hook.client.set_terminated(run.run_id, "FAILED")
                raise
        run_id, experiment_id = run.run_id, run.experiment_id
        self.log.info(
            "trained %s (%s) on %d rows (%s), holding out %d rows (%s), in %.1fs",
            config.model_type,
            config.task,
            len(split.train_rows),
            ", ".join(split.train_months),
            len(split.holdout_rows),
            ", ".join(split.holdout_months),
            fit_seconds,
        )
        # The metrics carry the model's id (its page lists them); one round trip, and the run ends.
        model_id = getattr(model_info, "model_id", None)
        stamp = int(time.time() * 1000)
        metrics = {**train_metrics, "fit_seconds": fit_seconds}
        hook.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), stamp, 0, model_id=model_id) for k, v in metrics.items() if v is not None],
        )
        hook.client.set_terminated(run_id, "FINISHED")
        logged = {
            "run_id": run_id,
            "experiment_id": experiment_id,
            "artifact_uri": run.artifact_uri,
            "model_uri": model_info.model_uri,
            "model_id": model_id,
            "registered_model_name": config.registered_model_name,
            "training_set": {k: info[k] for k in ("uri", "sha256", "rows")},
            "train_months": split.train_months,
            "holdout_months": split.holdout_months,
            "config_sha256": config.sha256,
        }
        url = hook.run_url(run_id, experiment_id)
        context["ti"].xcom_push(key=RUN_URL_XCOM_KEY, value=url)
        self.log.info("MLflow run %s, model %s%s", run_id, logged["model_uri"], f" ({url})" if url else "")
        return logged


def open_training_run(
    hook: MlflowHook,
    config: TrainingConfig,
    split: Any,
    info: dict[str, Any],
    *,
    experiment_name: str,
    lineage: dict[str, str],
    feature_views: dict | None,
    params: dict[str, Any] | None = None,
) -> RunInfo:
    """Create the training run (in ``experiment_name``, created if absent) with what is known before fitting;
    returns its ``RunInfo`` (run and experiment id, artifact URI).

    Tags tie it to the Airflow task, the git commit, the snapshot and the feature view versions; params are
    ``params`` (default ``training_params``); the snapshot is the run's dataset input (URI + sha256
    + schema); the resolved config is an artifact. Uses the client API only (no fluent active run), so it
    can run on another thread.
    """
    import yaml
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag, Param

    from airflow_mlops.core import training as core

    commit, dirty = core.git_commit(settings.project_root())
    tags = {
        **{f"mlops.airflow.{k}": v for k, v in lineage.items()},
        "mlops.git.commit": commit,
        "mlops.git.dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
        "mlops.training_set.uri": info["uri"],
        "mlops.training_set.sha256": info["sha256"],
        "mlops.training_set.rows": str(info["rows"]),
        "mlops.training_set.manifest": info.get("manifest_uri") or "",
        "mlops.feature_views": json.dumps(feature_views or {}, sort_keys=True),
        "mlops.config.sha256": config.sha256,
        "mlops.model.type": config.model_type,
        "mlops.model.task": config.task,
        "mlops.train.months": ",".join(split.train_months),
        "mlops.holdout.months": ",".join(split.holdout_months),
    }
    run_name = f"{lineage.get('dag_id', 'manual')}.{lineage.get('task_id', 'train')}.{config.sha256[:8]}"
    params = training_params(config, split) if params is None else params
    client = hook.client
    experiment_id = hook.get_or_create_experiment(experiment_name)
    run = client.create_run(experiment_id, tags=tags, run_name=run_name).info
    run_id = run.run_id
    try:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
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
            run_id,
            datasets=[DatasetInput(dataset._to_mlflow_entity(), [InputTag(k, v) for k, v in input_tags.items()])],
        )
        folder, name = CONFIG_ARTIFACT.rsplit("/", 1)
        with tempfile.TemporaryDirectory(prefix="config-") as tmp:
            (Path(tmp) / name).write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
            hook.upload_artifacts(run.artifact_uri, tmp, folder)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
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


def training_params(config: TrainingConfig, split: Any) -> dict[str, Any]:
    """A training run's parameters: the model's configuration and the split's sizes."""
    return {
        "task": config.task,
        "model_type": config.model_type,
        "seed": config.seed,
        **{f"model.{k}": v for k, v in config.model_params.items()},
        "features.categorical": ",".join(config.categorical),
        "features.numeric": ",".join(config.numeric),
        "holdout_months": config.holdout_months,
        **({"threshold": config.threshold} if config.task == "classification" else {}),
        "train_rows": len(split.train_rows),
        "holdout_rows": len(split.holdout_rows),
    }


def prepare_training_run(
    hook: MlflowHook,
    config: TrainingConfig,
    split: Any,
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


def model_save_kwargs(config: TrainingConfig, split: Any) -> dict[str, Any]:
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


class EvaluateChallengerOperator(TrainingSetMixin, BaseOperator):
    """Score the new model and the current champion on the same time-based hold-out; log both to MLflow.

    Overall metrics of the config's task (classification: ROC AUC, log loss, Brier, precision/recall at the
    configured threshold; regression: RMSE, MAE, R²) and the same per slice (configured columns) with slice
    sizes. The candidate's run gets the metrics, ``evaluation/evaluation.json`` (what the gate reads) and a
    plot: ROC / calibration curves (``curves.svg``) of a classification, binned predicted-vs-actual values
    (``predicted_vs_actual.svg``) of a regression. The champion is loaded by the version its alias pointed at
    when read, so both sides of the comparison are pinned.

    :param trained: the XCom of ``TrainModelOperator`` (templated).
    :param training_set: the snapshot; default the one the model was trained on (templated).
    :param registered_model_name: default from the config (templated).
    :param champion_alias: alias of the model to beat.
    :param usecase: the use-case folder whose ``model`` section is the training config.
    :param config_path: a ``training.yaml``-style config instead of a use case (templated).
    :param mlflow_conn_id: MLflow connection; see ``MlflowHook``.
    :return: (XCom) run_id, model_uri, registered_model_name, champion_version, overall metrics of both.
    :raises TrainingSetError: the snapshot fails verification.
    :raises ValueError: the hold-out differs from the one the model was trained against.
    """

    template_fields = ("trained", "training_set", "registered_model_name", "config_path")
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#fff2cc"

    def __init__(
        self,
        *,
        trained: dict | str,
        training_set: dict | str | None = None,
        registered_model_name: str | None = None,
        champion_alias: str = "champion",
        usecase: str | None = None,
        config_path: str | None = None,
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.trained = trained
        self.training_set = training_set
        self.registered_model_name = registered_model_name
        self.champion_alias = champion_alias
        self.usecase = usecase
        self.config_path = config_path
        self.mlflow_conn_id = mlflow_conn_id
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from concurrent.futures import ThreadPoolExecutor


        trained = _parse(self.trained)
        config = training_config(self.usecase, self.config_path)
        name = self.registered_model_name or trained.get("registered_model_name") or config.registered_model_name
        champion_version = self.mlflow_hook.alias_version(name, self.champion_alias)
        # Both models load (artifact copy, unpickling) while the snapshot is read and verified.
        with ThreadPoolExecutor(2, thread_name_prefix="load-model") as pool:
            models = {"candidate": pool.submit(load_model, self.mlflow_hook, trained["model_uri"])}
            if champion_version is not None:
                models["champion"] = pool.submit(load_model, self.mlflow_hook, f"models:/{name}/{champion_version}")
            # Decoded but not converted: the split converts the hold-out rows alone.
            table, info = self.read_training_table(_parse(self.training_set) or trained["training_set"])
            report = evaluate_challenger(self.mlflow_hook, config, table, trained, name, champion_version, models)
        for line in report["log"]:
            self.log.info("%s", line)
        url = self.mlflow_hook.run_url(trained["run_id"], trained.get("experiment_id"))
        context["ti"].xcom_push(key=RUN_URL_XCOM_KEY, value=url)
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


def load_model(hook: MlflowHook, uri: str) -> Any:
    """The scikit-learn pipeline logged at ``uri`` (``runs:/``, ``models:/`` ...)."""
    import mlflow

    hook.activate()
    return mlflow.sklearn.load_model(uri)


def evaluate_challenger(
    hook: MlflowHook,
    config: TrainingConfig,
    frame: pd.DataFrame | pa.Table,
    trained: dict[str, Any],
    name: str,
    champion_version: str | None,
    models: dict[str, Future] | None = None,
) -> dict[str, Any]:
    """Score candidate and champion on the hold-out, log to the candidate's run; returns overall metrics + log lines.

    :param frame: the training set, as a DataFrame or a pyarrow Table (only its hold-out rows are converted).
    :param models: ``candidate`` (and ``champion``) models being loaded; default: loaded here.
    """
    from concurrent.futures import ThreadPoolExecutor

    from airflow_mlops.core import evaluation as ev
    from airflow_mlops.core import training as core

    split = core.split_holdout(frame, config)
    if trained.get("holdout_months") and list(trained["holdout_months"]) != split.holdout_months:
        raise ValueError(
            f"the hold-out is {split.holdout_months} but the model was trained holding out {trained['holdout_months']}"
        )
    holdout = split.holdout
    y = holdout[config.label].to_numpy()
    models = models or {}
    hook.activate()
    candidate_model = models["candidate"].result() if "candidate" in models else load_model(hook, trained["model_uri"])
    candidate_proba = core.predict_scores(candidate_model, holdout, config)
    candidate = ev.evaluate(
        holdout,
        candidate_proba,
        label=config.label,
        threshold=config.threshold,
        slices=config.slices,
        task=config.task,
    )
    candidate.holdout = split.summary()
    lines = [
        f"candidate on hold-out {', '.join(split.holdout_months)} ({len(holdout)} rows): {_fmt(candidate.overall)}"
    ]

    champion, champion_error, curves = None, None, {"candidate": candidate_proba}
    if champion_version is not None:
        try:
            champion_model = (
                models["champion"].result()
                if "champion" in models
                else load_model(hook, f"models:/{name}/{champion_version}")
            )
            champion_proba = core.predict_scores(champion_model, holdout, config)
            champion = ev.evaluate(
                holdout,
                champion_proba,
                label=config.label,
                threshold=config.threshold,
                slices=config.slices,
                task=config.task,
            )
            champion.holdout = split.summary()
            curves[f"champion v{champion_version}"] = champion_proba
            lines.append(f"champion v{champion_version} on the same hold-out: {_fmt(champion.overall)}")
        except Exception as err:  # noqa: BLE001 - recorded; the gate rejects a comparison it cannot make
            champion_error = f"{type(err).__name__}: {err}"
            lines.append(f"champion v{champion_version} could not be scored ({champion_error}); the gate will reject")
    else:
        lines.append("no champion yet: the gate applies the absolute thresholds only")

    document = {
        "candidate": candidate.to_dict(),
        "champion": champion.to_dict() if champion else None,
        "champion_version": champion_version,
        "champion_error": champion_error,
        "registered_model_name": name,
        "config_sha256": config.sha256,
        "training_set_sha256": trained.get("training_set", {}).get("sha256"),
    }
    client = hook.client
    run_id = trained["run_id"]
    metrics = candidate.flat_metrics("holdout", slice_metrics=config.mlflow_slice_metrics)
    if champion:
        metrics.update({f"champion_{k}": v for k, v in champion.flat_metrics("holdout", slice_metrics=()).items()})
    from mlflow.entities import Metric, RunTag

    # Every metric and the tag in one round trip (MLflow takes up to 1000 metrics per batch), written while the
    # document and the curves are drawn.
    stamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
    tags = [RunTag("mlops.evaluation.champion_version", champion_version or "none")]

    def log_metrics() -> None:
        for start in range(0, max(len(batch), 1), 900):
            client.log_batch(run_id, metrics=batch[start : start + 900], tags=tags if start == 0 else [])

    folder, name = EVALUATION_ARTIFACT.rsplit("/", 1)
    with ThreadPoolExecutor(1, thread_name_prefix="mlflow-metrics") as pool:
        logging_metrics = pool.submit(log_metrics)
        with tempfile.TemporaryDirectory(prefix="eval-") as tmp:
            (Path(tmp) / name).write_text(json.dumps(document, indent=2))
            plot = _evaluation_plot(config.task, y, curves)
            if plot is not None:
                (Path(tmp) / plot[0]).write_text(plot[1])
            # The document and the plot in one upload, where the training task said the run's artifacts are.
            if trained.get("artifact_uri"):
                hook.upload_artifacts(trained["artifact_uri"], tmp, folder)
            else:
                client.log_artifacts(run_id, tmp, folder)
        logging_metrics.result()
    return {
        "candidate": candidate.overall,
        "champion": champion.overall if champion else None,
        "holdout": split.summary(),
        "log": lines,
    }


def _evaluation_plot(task: str, y: Any, scores: dict[str, Any]) -> tuple[str, str] | None:
    """The hold-out's plot as (file name, SVG): ROC / calibration curves of a classification (both classes
    present), binned predicted-vs-actual values of a regression (finite, at least two rows); ``None`` when
    there is nothing to draw.

    :param task: the config's task.
    :param y: the hold-out's labels.
    :param scores: model name → its scores on the hold-out.
    """
    import numpy as np

    from airflow_mlops.core import evaluation as ev

    if task == "classification":
        return ("curves.svg", ev.curves_svg(y, scores)) if len(set(y)) == 2 else None
    finite = len(y) >= 2 and all(np.isfinite(np.asarray(v, dtype="float64")).all() for v in [y, *scores.values()])
    return ("predicted_vs_actual.svg", ev.predicted_vs_actual_svg(y, scores)) if finite else None


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
