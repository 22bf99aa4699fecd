"""The "MLOps" page of the Airflow UI: models, their aliases, gate, promotion ledger, monitoring, and rollback.

A FastAPI app mounted by the plugin at ``/mlops/ui`` in the Airflow API server, behind Airflow's own login (the
UI's session cookie or a bearer token), and shown in the UI's navigation as an external view. The HTML page is
static and renders what the JSON endpoints return:

* ``GET  /mlops/ui/``                                  the page
* ``GET  /mlops/ui/api/models``                        every registered model: champion, challenger, last gate verdict
* ``GET  /mlops/ui/api/models/{name}``                 one model: versions, gate history, ledger, monitoring, rollback
* ``GET  /mlops/ui/api/models/{name}/chart/{kind}.svg`` drift or live performance by month, as SVG
* ``POST /mlops/ui/api/models/{name}/rollback``        ``{"reason": ..., "to_version": null}``: triggers
  ``mlops_rollback`` as the signed-in user (needs the right to create runs of that DAG)

MLflow is read through ``MlflowHook``, the lake through ``LakeHook``; both (and pandas-free MLflow itself) are
imported inside the handlers, so importing this module costs FastAPI only.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

log = logging.getLogger(__name__)

#: Where the plugin mounts this app (``airflow_mlops.plugin``) and the route of its page in the Airflow UI.
URL_PREFIX = "/mlops/ui"
ROLLBACK_DAG_ID = "mlops_rollback"
CHAMPION, CHALLENGER = "champion", "challenger"
GATE_TAG = "mlops.gate.approved"
GATE_ARTIFACT = "gate/decision.json"
#: Holdout metrics of a version's training run shown next to its number.
HOLDOUT_METRICS = ("holdout_roc_auc", "holdout_log_loss", "holdout_brier", "holdout_precision", "holdout_recall")
PAGE = Path(__file__).with_name("mlops_ui_page.html")


class RollbackRequest(BaseModel):
    """The rollback action's body: JSON only, so a cross-site form post cannot trigger it."""

    reason: str = Field(min_length=3, max_length=500, description="Why; kept in the promotion ledger.")
    to_version: str | None = Field(default=None, pattern=r"^\d+$", description="Empty: the previous champion.")


def _require_login():
    from airflow.api_fastapi.core_api.security import requires_authenticated

    return Depends(requires_authenticated())


def _require_rollback_permission():
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag(method="POST", access_entity=DagAccessEntity.RUN, param_dag_id=ROLLBACK_DAG_ID))


def _current_user():
    from airflow.api_fastapi.core_api.security import get_user

    return Depends(get_user)


def create_app() -> FastAPI:
    app = FastAPI(title="airflow-mlops models", dependencies=[_require_login()])

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(), headers={"Cache-Control": "no-store"})

    @app.get("/api/models")
    def models() -> dict[str, Any]:
        hook = _mlflow()
        return {"models": [_summary(hook, rm) for rm in _registered_models(hook)]}

    @app.get("/api/models/{name}")
    def model(name: str, user=_current_user()) -> dict[str, Any]:  # noqa: B008
        return _detail(_mlflow(), name, user)

    @app.get("/api/models/{name}/chart/{kind}.svg")
    def chart(name: str, kind: str) -> Response:
        from airflow_mlops.core import model_overview

        if kind not in model_overview.CHARTS:
            raise HTTPException(404, f"no chart {kind!r}; charts: {', '.join(model_overview.CHARTS)}")
        hook = _mlflow()
        _registered_model(hook, name)
        svg = model_overview.chart_for(kind, _monitoring(hook, name))
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    @app.post("/api/models/{name}/rollback", status_code=201, dependencies=[_require_rollback_permission()])
    def rollback(name: str, body: RollbackRequest, user=_current_user()) -> dict[str, Any]:  # noqa: B008
        return _trigger_rollback(_mlflow(), name, body, user)

    return app


# -- MLflow ----------------------------------------------------------------------------------------------------
def _mlflow() -> MlflowHook:
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    return MlflowHook()


def _registered_models(hook: MlflowHook) -> list[Any]:
    found, token = [], None
    while True:
        page = hook.client.search_registered_models(max_results=200, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return sorted(found, key=lambda rm: rm.name)


def _registered_model(hook: MlflowHook, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return hook.client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise HTTPException(404, f"no registered model {name!r}") from err
        raise


def _version(hook: MlflowHook, name: str, version: str | None) -> dict[str, Any] | None:
    """A version's number, run, creation time, the gate decision that admitted it and its hold-out metrics."""
    if not version:
        return None
    from airflow_mlops.core.model_overview import short_json

    mv = hook.client.get_model_version(name, str(version))
    metrics: dict[str, float] = {}
    if mv.run_id:
        run_metrics = hook.client.get_run(mv.run_id).data.metrics
        metrics = {k.removeprefix("holdout_"): run_metrics[k] for k in HOLDOUT_METRICS if k in run_metrics}
    tags = mv.tags or {}
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "created": mv.creation_timestamp,
        "status": mv.status,
        "gate": short_json(tags.get("mlops.gate.decision")),
        "training_set_sha256": tags.get("mlops.training_set.sha256"),
        "git_commit": tags.get("mlops.git.commit"),
        "holdout": metrics,
        "url": hook.model_version_url(name, mv.version),
    }


def _summary(hook: MlflowHook, rm: Any) -> dict[str, Any]:
    aliases = {alias: str(v) for alias, v in (rm.aliases or {}).items()}
    gates = _gate_history(hook, rm.name, limit=1)
    return {
        "name": rm.name,
        "description": rm.description or "",
        "champion": aliases.get(CHAMPION),
        "challenger": aliases.get(CHALLENGER),
        "aliases": aliases,
        "last_gate": gates[0] if gates else None,
        "updated": rm.last_updated_timestamp,
    }


def _training_experiments(hook: MlflowHook, name: str) -> list[str]:
    """Experiments holding the model's training runs: those of its versions, and the configured one."""
    client = hook.client
    ids: list[str] = []
    for mv in client.search_model_versions(f"name = '{_quote(name)}'", max_results=200):
        if mv.run_id:
            try:
                ids.append(client.get_run(mv.run_id).info.experiment_id)
            except Exception as err:  # noqa: BLE001 - a deleted run: the version's other runs still count
                log.warning("run %s of %s v%s unreadable: %s", mv.run_id, name, mv.version, err)
    config = _training_config()
    if config.get("registered_model_name") == name and config.get("experiment_name"):
        found = client.get_experiment_by_name(config["experiment_name"])
        if found is not None:
            ids.append(found.experiment_id)
    return list(dict.fromkeys(ids))


def _gate_history(hook: MlflowHook, name: str, limit: int = 10) -> list[dict[str, Any]]:
    """The newest gate verdicts on the model's candidate runs (rejected ones included), newest first."""
    from airflow_mlops.core.model_overview import gate_verdict, parse_gate_summary

    experiments = _training_experiments(hook, name)
    if not experiments:
        return []
    runs = hook.client.search_runs(
        experiments,
        filter_string=f"tags.`{GATE_TAG}` LIKE '%'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    out = []
    for n, run in enumerate(runs):
        tags = run.data.tags
        parsed = parse_gate_summary(tags.get("mlops.gate.summary"))
        decision = _gate_document(hook, run.info.run_id) if n == 0 else None
        entry = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "time": run.info.start_time,
            "approved": tags.get(GATE_TAG) == "true",
            "forced": tags.get("mlops.gate.forced") == "true",
            "verdict": parsed["verdict"],
            "reasons": parsed["reasons"],
            "champion_version": None
            if tags.get("mlops.gate.champion_version") in (None, "none")
            else tags.get("mlops.gate.champion_version"),
            "policy_sha256": tags.get("mlops.gate.policy_sha256"),
            "airflow": {k.removeprefix("mlops.airflow."): v for k, v in tags.items() if k.startswith("mlops.airflow.")},
            "url": hook.run_url(run.info.run_id, run.info.experiment_id),
        }
        if decision:  # the full decision: reasons exactly as the gate wrote them, and the per-check table
            entry.update(
                verdict=gate_verdict(decision),
                reasons=list(decision.get("reasons") or []),
                checks=decision.get("metrics") or {},
                force_reason=decision.get("force_reason"),
            )
        out.append(entry)
    return out


def _gate_document(hook: MlflowHook, run_id: str) -> dict[str, Any] | None:
    import json

    try:
        with tempfile.TemporaryDirectory(prefix="mlops-ui-") as tmp:
            path = hook.client.download_artifacts(run_id, GATE_ARTIFACT, tmp)
            return json.loads(Path(path).read_text())
    except Exception as err:  # noqa: BLE001 - the summary tag still gives the verdict and its reasons
        log.warning("no %s on run %s: %s", GATE_ARTIFACT, run_id, err)
        return None


def _monitoring(hook: MlflowHook, name: str) -> list[Any]:
    """The model's monitoring history from the check runs the monitoring operators log to MLflow."""
    from airflow_mlops.core.model_overview import monitoring_history

    experiment_name = (_monitoring_config().get("mlflow") or {}).get("experiment_name") or "mlops-monitoring"
    experiment = hook.client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    checks, token = [], None
    while True:
        page = hook.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`mlops.monitoring.model` = '{_quote(name)}'",
            max_results=1000,
            page_token=token,
        )
        for run in page:
            tags = run.data.tags
            checks.append(
                {
                    "kind": tags.get("mlops.monitoring.kind"),
                    "month": tags.get("mlops.monitoring.month"),
                    "version": tags.get("mlops.monitoring.version"),
                    "start_time": run.info.start_time,
                    "metrics": dict(run.data.metrics),
                    "report": tags.get("mlops.monitoring.report") or None,
                }
            )
        token = page.token
        if not token:
            return monitoring_history(checks)


def _retraining_decisions(name: str) -> dict[str, dict[str, Any]]:
    """The retraining policy's decision per month (``monitoring/policy/<model>/`` in the lake)."""
    import json

    from airflow_mlops.hooks.lake import LakeHook

    folder = LakeHook().path("monitoring", "policy", name)
    if not folder.exists():
        return {}
    out = {}
    for path in folder.iterdir():
        if not path.name.endswith(".json") or path.name.startswith((".", "_")):
            continue
        record = json.loads(path.read_bytes())
        decision = record.get("triggered") or record.get("latest") or {}
        month = decision.get("month") or path.name.removesuffix(".json")
        out[month] = {
            "retrain": bool(decision.get("retrain")),
            "reasons": decision.get("reasons") or [],
            "suppressed_by": decision.get("suppressed_by"),
        }
    return out


# -- the model's page ------------------------------------------------------------------------------------------
def _detail(hook: MlflowHook, name: str, user: Any) -> dict[str, Any]:
    rm = _registered_model(hook, name)
    aliases = {alias: str(v) for alias, v in (rm.aliases or {}).items()}
    versions = sorted(
        hook.client.search_model_versions(f"name = '{_quote(name)}'", max_results=200),
        key=lambda v: int(v.version),
        reverse=True,
    )
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    ledger = hook.read_ledger(name)
    points = _monitoring(hook, name)
    decisions = _retraining_decisions(name)
    monitoring = []
    for point in points:
        row = point.to_dict()
        row["reports"] = {kind: _report_href(key) for kind, key in point.reports.items()}
        row["retraining"] = decisions.get(point.month)
        monitoring.append(row)
    return {
        "name": name,
        "description": rm.description or "",
        "aliases": aliases,
        "champion": _version(hook, name, aliases.get(CHAMPION)),
        "challenger": _version(hook, name, aliases.get(CHALLENGER)),
        "versions": [
            {
                "version": str(v.version),
                "aliases": sorted(by_version.get(str(v.version), [])),
                "created": v.creation_timestamp,
                "run_id": v.run_id,
                "status": v.status,
            }
            for v in versions
        ],
        "gate": _gate_history(hook, name),
        "ledger": [entry.to_dict() for entry in sorted(ledger, key=lambda e: e.seq, reverse=True)],
        "monitoring": monitoring,
        "charts": {kind: f"api/models/{name}/chart/{kind}.svg" for kind in ("drift", "performance")},
        "rollback": _rollback_state(name, ledger, user),
    }


def _report_href(key: str) -> str:
    """A lake report as a link relative to this page (``/mlops/ui/`` → ``/mlops/lake/...``)."""
    return f"../lake/{key.lstrip('/')}"


def _rollback_state(name: str, ledger: list[Any], user: Any) -> dict[str, Any]:
    """Where a rollback would go, whether the DAG can run it, and its recent runs for this model."""
    from airflow_mlops.core import ledger as ledger_core

    try:
        target, blocked = ledger_core.rollback_target(ledger), None
    except ledger_core.LedgerConflict as err:
        target, blocked = None, str(err)
    state: dict[str, Any] = {"dag_id": ROLLBACK_DAG_ID, "target": target, "blocked": blocked}
    state.update(_rollback_dag(name, user))
    return state


def _rollback_dag(name: str, user: Any) -> dict[str, Any]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    auth = get_auth_manager()
    details = DagDetails(id=ROLLBACK_DAG_ID)
    can_trigger = auth.is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN, details=details, user=user)
    can_read = auth.is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN, details=details, user=user)
    with create_session() as session:
        dag = session.scalar(select(DagModel).where(DagModel.dag_id == ROLLBACK_DAG_ID))
        runs = []
        if dag is not None and can_read:
            found = session.scalars(
                select(DagRun).where(DagRun.dag_id == ROLLBACK_DAG_ID).order_by(DagRun.id.desc()).limit(50)
            )
            for run in found:
                conf = run.conf or {}
                if conf.get("registered_model_name", name) != name:
                    continue
                runs.append(
                    {
                        "run_id": run.run_id,
                        "state": str(getattr(run.state, "value", run.state)),
                        "triggering_user": run.triggering_user_name,
                        "reason": conf.get("reason"),
                        "to_version": conf.get("to_version"),
                        "queued_at": run.queued_at.isoformat() if run.queued_at else None,
                        "url": f"../../dags/{ROLLBACK_DAG_ID}/runs/{run.run_id}",
                    }
                )
                if len(runs) == 10:
                    break
        return {
            "dag_exists": dag is not None and not dag.is_stale,
            "dag_paused": bool(dag.is_paused) if dag is not None else None,
            "can_trigger": bool(can_trigger),
            "recent_runs": runs,
        }


def _trigger_rollback(hook: MlflowHook, name: str, body: RollbackRequest, user: Any) -> dict[str, Any]:
    """Trigger ``mlops_rollback`` for ``name`` as ``user`` (what the DAG's Trigger button does)."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists
    from airflow.utils.types import DagRunTriggeredByType

    from airflow_mlops.core import ledger as ledger_core

    _registered_model(hook, name)
    reason = body.reason.strip()
    if len(reason) < 3:
        raise HTTPException(422, "a rollback needs a reason (at least 3 characters)")
    if body.to_version is None:
        try:  # refuse early what the DAG would fail on: no earlier champion to return to
            target = ledger_core.rollback_target(hook.read_ledger(name))
        except ledger_core.LedgerConflict as err:
            raise HTTPException(409, str(err)) from err
    else:
        target = body.to_version
        _version(hook, name, target)  # raises if there is no such version
    who = user.get_name()
    conf = {"registered_model_name": name, "to_version": body.to_version, "reason": f"{reason} (by {who}, MLOps page)"}
    try:
        run = trigger_dag(ROLLBACK_DAG_ID, triggered_by=DagRunTriggeredByType.UI, triggering_user_name=who, conf=conf)
    except DagNotFound as err:
        raise HTTPException(404, f"{ROLLBACK_DAG_ID} is not deployed: {err}") from err
    except DagRunAlreadyExists as err:
        raise HTTPException(409, str(err)) from err
    except ValueError as err:  # ParamValidationError: the DAG's params refuse the conf
        raise HTTPException(400, str(err)) from err
    if run is None:
        raise HTTPException(500, f"{ROLLBACK_DAG_ID} did not create a run")
    log.info("rollback of %s to v%s requested by %s: run %s", name, target, who, run.run_id)
    return {
        "dag_id": ROLLBACK_DAG_ID,
        "dag_run_id": run.run_id,
        "state": str(getattr(run.state, "value", run.state)),
        "conf": conf,
        "expected_target": target,
        "triggering_user": who,
        "url": f"../../dags/{ROLLBACK_DAG_ID}/runs/{run.run_id}",
    }


# -- configuration ---------------------------------------------------------------------------------------------
def _yaml(name: str) -> dict[str, Any]:
    import yaml

    from airflow_mlops import settings

    path = settings.include_dir() / "config" / name
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        log.warning("cannot read %s: %s", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _training_config() -> dict[str, Any]:
    return _yaml("training.yaml")


def _monitoring_config() -> dict[str, Any]:
    return _yaml("monitoring.yaml")


def _quote(value: str) -> str:
    return str(value).replace("'", "''")
