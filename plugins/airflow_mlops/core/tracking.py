"""What the training steps record and decide, without talking to MLflow or the lake.

The training-set contract (which snapshot, its manifest record, the reference handed on), a training run's tags
and parameters, the Airflow lineage of a run, and the challenger evaluation: the candidate and the champion scored
on the same hold-out, the evaluation document the gate reads, the metrics and the plot logged with it. MLflow I/O
is in ``airflow_mlops.hooks.mlflow_tracking``.

Plain functions with no Airflow import; pandas, NumPy and scikit-learn are imported inside the functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    import pandas as pd
    import pyarrow as pa

    from airflow_mlops.core.evaluation import Evaluation
    from airflow_mlops.core.training import Split, TrainingConfig

#: Where the feature stage commits training sets in the lake, and the snapshot's file name.
TRAINING_SETS_ZONE = "training_sets"
TRAINING_SET_FILE = "training_set.parquet"
#: Artifact paths on a training run.
CONFIG_ARTIFACT = "config/training.yaml"
EVALUATION_ARTIFACT = "evaluation/evaluation.json"


# -- lineage -----------------------------------------------------------------------------------------------------
def airflow_lineage(context: Mapping[str, Any]) -> dict[str, str]:
    """Tags tying an MLflow run or ledger entry to the Airflow task that wrote it.

    :param context: the task's context (its ``ti`` and ``dag_run``).
    """
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


# -- the training-set contract -----------------------------------------------------------------------------------
def snapshot_reference(events: Mapping[str, Iterable[Any]] | None) -> str | dict[str, str] | None:
    """The snapshot the triggering asset events name, newest event first: a ``retrain_requested`` event's
    ``training_set_uri``, or the ``uri`` + ``sha256`` of a ``training_set`` event; None when none names one.

    :param events: the context's ``triggering_asset_events`` (asset → its events).
    """
    for asset_events in (events or {}).values():
        for event in reversed(list(asset_events)):
            extra = getattr(event, "extra", None) or {}
            if extra.get("training_set_uri"):
                return extra["training_set_uri"]
            if str(extra.get("uri", "")).endswith(TRAINING_SET_FILE) and extra.get("sha256"):
                return {"uri": extra["uri"], "sha256": extra["sha256"]}
    return None


def snapshot_record(reference: dict | str, name: str, manifest: dict | None, folder: str) -> dict[str, Any]:
    """The manifest's record of the snapshot file ``name`` in ``folder``, checked against the reference.

    :param reference: a URI, or a dict with ``uri`` and optionally ``sha256``.
    :raises ValueError: no manifest (never committed), the file is not listed, or the reference's sha256 differs.
    """
    if manifest is None:
        raise ValueError(f"{folder} has no manifest: the snapshot was never committed")
    record = (manifest.get("files") or {}).get(name)
    if record is None:
        raise ValueError(f"the manifest of {folder} does not list {name}")
    expected = reference.get("sha256") if isinstance(reference, dict) else None
    if expected and expected != record["sha256"]:
        raise ValueError(
            f"{folder}/{name} was asked for with sha256 {expected[:12]} but its manifest records "
            f"{record['sha256'][:12]}"
        )
    return record


def snapshot_info(reference: dict | str, uri: str, record: dict, manifest: dict, manifest_uri: str) -> dict[str, Any]:
    """The verified snapshot's XCom contract: uri, sha256, rows, months, manifest_uri, feature_views (the
    manifest's, else the reference's)."""
    ref = reference if isinstance(reference, dict) else {}
    return {
        "uri": uri,
        "sha256": record["sha256"],
        "rows": int(record.get("rows", 0)),
        "months": list(manifest.get("months") or ref.get("months", [])),
        "manifest_uri": manifest_uri,
        "feature_views": manifest.get("feature_views") or ref.get("feature_views"),
    }


# -- a training run ----------------------------------------------------------------------------------------------
def training_params(config: TrainingConfig, split: Split) -> dict[str, Any]:
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


def training_run_tags(
    config: TrainingConfig,
    split: Split,
    info: dict[str, Any],
    *,
    lineage: dict[str, str],
    feature_views: dict | None,
    commit: str,
    dirty: bool,
) -> dict[str, str]:
    """A training run's tags: the Airflow task, the git commit, the snapshot, the feature view versions, the
    config's hash, the model and the split's months."""
    return {
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


def split_text(split: Split) -> str:
    """``<n> rows (<months>), holding out <m> rows (<months>)``, for the task log."""
    return (
        f"{len(split.train_rows)} rows ({', '.join(split.train_months)}), "
        f"holding out {len(split.holdout_rows)} rows ({', '.join(split.holdout_months)})"
    )


def training_run_name(config: TrainingConfig, lineage: dict[str, str]) -> str:
    return f"{lineage.get('dag_id', 'manual')}.{lineage.get('task_id', 'train')}.{config.sha256[:8]}"


# -- the challenger evaluation -----------------------------------------------------------------------------------
@dataclass
class Challenge:
    """The candidate and (if any) the champion scored on one hold-out."""

    split: Split
    candidate: Evaluation
    champion: Evaluation | None = None
    champion_version: str | None = None
    champion_error: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def score_challenger(
    config: TrainingConfig,
    frame: pd.DataFrame | pa.Table,
    trained: dict[str, Any],
    candidate: Callable[[], Any],
    champion: Callable[[], Any] | None = None,
    champion_version: str | None = None,
) -> Challenge:
    """Score the candidate and the champion on the hold-out of ``frame``; a champion that cannot be loaded or
    scored is recorded (``champion_error``: the gate rejects a comparison it cannot make).

    :param frame: the training set, as a DataFrame or a pyarrow Table (only its hold-out rows are converted).
    :param trained: the training step's XCom (its ``holdout_months`` are checked).
    :param candidate: returns the candidate model; ``champion``: the champion's (None: no champion yet).
    :raises ValueError: the hold-out differs from the one the model was trained against.
    """
    from airflow_mlops.core import training as core

    split = core.split_holdout(frame, config)
    if trained.get("holdout_months") and list(trained["holdout_months"]) != split.holdout_months:
        raise ValueError(
            f"the hold-out is {split.holdout_months} but the model was trained holding out {trained['holdout_months']}"
        )
    scores = {"candidate": core.predict_scores(candidate(), split.holdout, config)}
    result = Challenge(split, _evaluate(config, split, scores["candidate"]), champion_version=champion_version)
    result.scores = scores
    result.lines.append(
        f"candidate on hold-out {', '.join(split.holdout_months)} ({len(split.holdout)} rows): "
        f"{format_metrics(result.candidate.overall)}"
    )
    if champion is None:
        result.lines.append("no champion yet: the gate applies the absolute thresholds only")
        return result
    try:
        champion_scores = core.predict_scores(champion(), split.holdout, config)
        result.champion = _evaluate(config, split, champion_scores)
        scores[f"champion v{champion_version}"] = champion_scores
        result.lines.append(
            f"champion v{champion_version} on the same hold-out: {format_metrics(result.champion.overall)}"
        )
    except Exception as err:  # noqa: BLE001 - recorded; the gate rejects a comparison it cannot make
        result.champion_error = f"{type(err).__name__}: {err}"
        result.lines.append(
            f"champion v{champion_version} could not be scored ({result.champion_error}); the gate will reject"
        )
    return result


def _evaluate(config: TrainingConfig, split: Split, scores: Any) -> Evaluation:
    from airflow_mlops.core import evaluation as ev

    evaluation = ev.evaluate(
        split.holdout, scores, label=config.label, threshold=config.threshold, slices=config.slices, task=config.task
    )
    evaluation.holdout = split.summary()
    return evaluation


def evaluation_document(challenge: Challenge, config: TrainingConfig, name: str, trained: dict) -> dict[str, Any]:
    """The evaluation document the gate reads (``EVALUATION_ARTIFACT``)."""
    return {
        "candidate": challenge.candidate.to_dict(),
        "champion": challenge.champion.to_dict() if challenge.champion else None,
        "champion_version": challenge.champion_version,
        "champion_error": challenge.champion_error,
        "registered_model_name": name,
        "config_sha256": config.sha256,
        "training_set_sha256": trained.get("training_set", {}).get("sha256"),
    }


def evaluation_metrics(challenge: Challenge, config: TrainingConfig) -> dict[str, float]:
    """The candidate's hold-out metrics (with the configured slice metrics) and the champion's overall ones
    (``champion_`` prefixed), for the candidate's run."""
    metrics = challenge.candidate.flat_metrics("holdout", slice_metrics=config.mlflow_slice_metrics)
    if challenge.champion:
        champion = challenge.champion.flat_metrics("holdout", slice_metrics=())
        metrics.update({f"champion_{k}": v for k, v in champion.items()})
    return metrics


def evaluation_files(challenge: Challenge, config: TrainingConfig, name: str, trained: dict) -> dict[str, str]:
    """The evaluation's artifact files (file name → text): the document and, when there is one, the plot."""
    files = {
        EVALUATION_ARTIFACT.rsplit("/", 1)[1]: json.dumps(
            evaluation_document(challenge, config, name, trained), indent=2
        )
    }
    y = challenge.split.holdout[config.label].to_numpy()
    plot = evaluation_plot(config.task, y, challenge.scores)
    if plot is not None:
        files[plot[0]] = plot[1]
    return files


def evaluation_plot(task: str, y: Any, scores: dict[str, Any]) -> tuple[str, str] | None:
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


def format_metrics(metrics: dict[str, Any]) -> str:
    """``name=value, ...`` with floats to 4 decimals, for the task log."""
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
