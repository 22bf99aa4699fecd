"""A registered version's model card: its facts gathered from MLflow and the lake, the card attached to the version.

Functions taking an ``MlflowHook`` (``hooks.mlflow_registry``), as ``hooks.mlflow_tracking`` does: the hook knows
where MLflow is; what the card says is ``core.model_card``'s. The card's two files are artifacts of the version's
training run under ``model_card/v<version>/``, and the version's tags ``mlops.model_card`` and
``mlops.model_card_html`` hold their ``runs:/`` URIs. Attaching again regenerates the same files in place (a retry,
or a refresh after promotion), so a version has one card, current as of its last registry step.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.core import model_card

if TYPE_CHECKING:
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.usecase.config import UseCase

#: The version tags holding the card's URIs (Markdown, HTML).
MODEL_CARD_TAG = "mlops.model_card"
MODEL_CARD_HTML_TAG = "mlops.model_card_html"
CARD_FILES = {"markdown": "model_card.md", "html": "model_card.html"}


def card_folder(version: str | int) -> str:
    """Where a version's card lies among its training run's artifacts."""
    return f"model_card/v{version}"


def usecase_for_model(name: str) -> UseCase | None:
    """The deployed use case (``usecase.config.discover``) whose registered model is ``name``; None if none is."""
    from airflow_mlops.usecase import config

    for folder in config.discover():
        try:
            usecase = config.load(folder)
        except config.UseCaseConfigError:
            continue
        if usecase.registered_model_name == name:
            return usecase
    return None


def card_facts(
    hook: MlflowHook, name: str, version: str | int, usecase: UseCase | None = None, lake_conn_id: str | None = None
) -> dict[str, Any]:
    """What ``core.model_card.build_card`` reads about version ``version`` of ``name``.

    From the version: status, aliases, the gate decision (``mlops.gate.decision``), infra validation, approval
    (``mlops.approval.*``; none: automatic) and monitoring tags. From its training run: params, tags, the evaluation
    document (both models on one hold-out), drift measured at training time (metrics ``drift_*``, tags
    ``mlops.drift.*``). From the lake: the training set's manifest and the validated batches of its periods. From
    the use case: intended use, label, ``model.known_limits``, the gate's ``min_slice_size``, the monitoring policy.
    """
    from airflow_mlops.core.tracking import EVALUATION_ARTIFACT

    client = hook.client
    mv = client.get_model_version(name, str(version))
    aliases = client.get_registered_model(name).aliases or {}
    tags = dict(mv.tags or {})
    run = client.get_run(mv.run_id) if mv.run_id else None
    run_tags = dict(run.data.tags) if run else {}
    evaluation = hook.run_artifact_text(mv.run_id, EVALUATION_ARTIFACT) if run else None
    training_set = _training_set(run_tags.get("mlops.training_set.manifest"), lake_conn_id)
    return {
        "model": {
            "name": name,
            "version": str(mv.version),
            "status": mv.status,
            "created": mv.creation_timestamp,
            "source": mv.source,
            "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
        },
        "usecase": _usecase(usecase),
        "run": {
            "run_id": mv.run_id,
            "experiment_id": run.info.experiment_id if run else None,
            "params": dict(run.data.params) if run else {},
            "tags": {k: v for k, v in run_tags.items() if k.startswith("mlops.")},
        },
        "training_set": training_set,
        "validated": _validated(training_set, lake_conn_id),
        "evaluation": json.loads(evaluation) if evaluation else None,
        "gate": _json_tag(tags.get("mlops.gate.decision")),
        "infra_validation": _json_tag(tags.get("mlops.infra_validation.decision")),
        "approval": {k.removeprefix("mlops.approval."): v for k, v in tags.items() if k.startswith("mlops.approval.")},
        "drift": {
            **{k: v for k, v in (run.data.metrics if run else {}).items() if k.startswith("drift_")},
            **{k: v for k, v in run_tags.items() if k.startswith("mlops.drift.")},
        },
        "monitoring": {k: v for k, v in tags.items() if k.startswith("mlops.monitoring.")},
        "links": {
            "MLflow version": hook.model_version_url(name, mv.version),
            "MLflow run": hook.run_url(mv.run_id, run.info.experiment_id) if run else None,
        },
    }


def attach_model_card(
    hook: MlflowHook, name: str, version: str | int, usecase: UseCase | None = None, lake_conn_id: str | None = None
) -> str | None:
    """Build the version's card and attach it (files under ``card_folder``, URIs in the version's tags).

    :param usecase: the model's use case; None: the deployed one that registers ``name``, if any.
    :return: the ``runs:/`` URI of the card's Markdown; None for a version without a training run (nowhere to keep
        it).
    """
    mv = hook.client.get_model_version(name, str(version))
    if not mv.run_id:
        hook.log.warning("%s v%s has no training run: no model card", name, version)
        return None
    usecase = usecase or usecase_for_model(name)
    card = model_card.build_card(card_facts(hook, name, version, usecase, lake_conn_id))
    run = hook.client.get_run(mv.run_id)
    folder = card_folder(mv.version)
    with tempfile.TemporaryDirectory(prefix="model-card-") as tmp:
        (Path(tmp) / CARD_FILES["markdown"]).write_text(card.markdown)
        (Path(tmp) / CARD_FILES["html"]).write_text(card.html)
        hook.upload_artifacts(run.info.artifact_uri, tmp, folder)
    uris = {kind: f"runs:/{mv.run_id}/{folder}/{file}" for kind, file in CARD_FILES.items()}
    hook.client.set_model_version_tag(name, str(mv.version), MODEL_CARD_TAG, uris["markdown"])
    hook.client.set_model_version_tag(name, str(mv.version), MODEL_CARD_HTML_TAG, uris["html"])
    hook.log.info("model card of %s v%s: %s", name, mv.version, uris["html"])
    return uris["markdown"]


def read_model_card(hook: MlflowHook, name: str, version: str | int, kind: str = "html") -> str | None:
    """The attached card of the version (``kind`` ``html`` or ``markdown``); None when it has none."""
    mv = hook.client.get_model_version(name, str(version))
    if not (mv.tags or {}).get(MODEL_CARD_TAG) or not mv.run_id:
        return None
    return hook.run_artifact_text(mv.run_id, f"{card_folder(mv.version)}/{CARD_FILES[kind]}")


# -- facts ------------------------------------------------------------------------------------------------------
def _json_tag(text: str | None) -> dict[str, Any] | None:
    """A JSON tag's value; a cut one (MLflow keeps a few thousand characters) as far as it says ``approved``."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"approved": '"approved": true' in text, "reasons": ["(the tag was cut: see the version's tags)"]}


def _usecase(usecase: UseCase | None) -> dict[str, Any] | None:
    if usecase is None:
        return None
    return {
        "name": usecase.name,
        "description": usecase.description,
        "task": usecase.task,
        "label": usecase.label,
        "period": usecase.source.period,
        "known_limits": list(usecase.model.get("known_limits") or []),
        "min_slice_size": int((usecase.gate or {}).get("min_slice_size") or 0),
        "monitoring": {"policy": (usecase.monitoring or {}).get("policy")},
    }


def _read_json(uri: str, lake_conn_id: str | None) -> dict[str, Any] | None:
    from airflow.sdk import ObjectStoragePath

    from airflow_mlops import settings

    path = ObjectStoragePath(uri, conn_id=lake_conn_id or settings.lake_conn_id())
    return json.loads(path.read_bytes()) if path.exists() else None


def _training_set(manifest_uri: str | None, lake_conn_id: str | None) -> dict[str, Any]:
    """The training set's manifest as the card needs it: periods, feature partitions' sha256, validation."""
    manifest = _read_json(manifest_uri, lake_conn_id) if manifest_uri else None
    if manifest is None:
        return {}
    validation = manifest.get("validation") or {}
    return {
        "manifest_uri": manifest_uri,
        "sha256": manifest.get("sha256"),
        "periods": list(manifest.get("periods") or manifest.get("months") or []),
        "feature_partitions": dict(manifest.get("feature_partitions") or {}),
        "validation": {"success": validation["success"]} if "success" in validation else None,
    }


def _validated(training_set: dict[str, Any], lake_conn_id: str | None) -> list[dict[str, Any]]:
    """The validated batch of each period of the training set (``validated/<period>/`` of its lake)."""
    uri = training_set.get("manifest_uri")
    if not uri:
        return []
    root = uri.rsplit("/", 3)[0]  # <root>/training_sets/<sha12>/_manifest.json
    out = []
    for period in training_set.get("periods") or []:
        manifest = _read_json(f"{root}/validated/{period}/_manifest.json", lake_conn_id)
        if manifest is not None:
            out.append(
                {
                    "period": period,
                    "batch_id": manifest.get("batch_id"),
                    "batch_sha256": manifest.get("batch_sha256"),
                    "success": (manifest.get("validation") or {}).get("success"),
                }
            )
    return out
