"""The "MLOps" page of the Airflow UI: every registered model with its use case, aliases, gate, promotion ledger,
monitoring, retraining decisions, and rollback.

A FastAPI app mounted by the plugin at ``/mlops/ui`` in the Airflow API server, behind Airflow's own login (the
UI's session cookie or a bearer token), and shown in the UI's navigation as an external view. The HTML page is
static and renders what the JSON endpoints return:

* ``GET  /mlops/ui/``                                  the page
* ``GET  /mlops/ui/api/models``                        every registered model: its use case, champion, challenger,
  last gate verdict
* ``GET  /mlops/ui/api/models/{name}``                 one model: versions, gate history, ledger, monitoring, rollback
* ``GET  /mlops/ui/api/models/{name}/chart/{kind}.svg`` drift or live performance by period, as SVG
* ``GET  /mlops/ui/models/{name}/versions/{version}/card`` the version's model card (HTML; ``?format=markdown``:
  its Markdown), as attached to the version (``hooks.mlflow_model_card``)
* ``POST /mlops/ui/api/models/{name}/rollback``        ``{"reason": ..., "to_version": null}``: triggers the use
  case's ``<name>_rollback`` DAG as the signed-in user (needs the right to create runs of that DAG)

A model belongs to the use case (``usecase.config.discover()``) whose ``registered_model_name`` it is; what the
page reads of it comes from that use case: its task (which hold-out and live metrics), its experiments, its lake
root (retraining decisions, reports) and its rollback DAG. A model no use case declares is still listed, with
what MLflow alone says about it (no monitoring of a use case, no rollback DAG).

MLflow is read through ``MlflowHook``, the lake through ``LakeHook``; both (and pandas-free MLflow itself) are
imported inside the handlers, so importing this module costs FastAPI only.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.usecase.config import UseCase

log = logging.getLogger(__name__)

#: Where the plugin mounts this app (``airflow_mlops.plugin``) and the route of its page in the Airflow UI.
URL_PREFIX = "/mlops/ui"
#: The stage of a use case's rollback DAG (``UseCase.dag_id(ROLLBACK_STAGE)``: ``<name>_rollback``).
ROLLBACK_STAGE = "rollback"
CHAMPION, CHALLENGER = "champion", "challenger"
GATE_TAG = "mlops.gate.approved"
GATE_ARTIFACT = "gate/decision.json"
#: The run tag with a trained model's task (``classification`` | ``regression``).
TASK_TAG = "mlops.model.task"
#: Where the monitoring checks log their runs when a use case's ``monitoring.mlflow.experiment_name`` is not set.
DEFAULT_MONITORING_EXPERIMENT = "mlops-monitoring"
PAGE = Path(__file__).with_name("mlops_ui_page.html")


def holdout_metrics(task: str | None) -> tuple[str, ...]:
    """The hold-out metrics shown for a model of ``task`` (``core.evaluation.metrics_for``); None: every known one.

    :param task: ``classification``, ``regression`` or None (the task is unknown).
    """
    from airflow_mlops.core.evaluation import METRIC_DIRECTIONS, metrics_for

    return metrics_for(task) if task else tuple(METRIC_DIRECTIONS)


def usecases_by_model() -> dict[str, UseCase]:
    """The use cases of the projects folder by registered model name (a use case that does not load is skipped)."""
    from airflow_mlops.usecase import config

    found: dict[str, UseCase] = {}
    for folder in config.discover():
        try:
            usecase = config.load(folder)
        except config.UseCaseConfigError as err:
            log.warning("use case %s not loaded: %s", folder, err)
            continue
        other = found.get(usecase.registered_model_name)
        if other is not None:
            log.warning(
                "use cases %s and %s both register model %s: %s is shown with %s",
                other.folder,
                usecase.folder,
                usecase.registered_model_name,
                usecase.registered_model_name,
                other.name,
            )
            continue
        found[usecase.registered_model_name] = usecase
    return found


def usecase_of(name: str) -> UseCase | None:
    """The use case whose registered model is ``name``; None when no use case declares it.

    :param name: a registered model's name.
    """
    return usecases_by_model().get(name)


def rollback_dag_id(usecase: UseCase | None) -> str | None:
    """The use case's rollback DAG (``<name>_rollback``); None without a use case.

    :param usecase: the model's use case.
    """
    return usecase.dag_id(ROLLBACK_STAGE) if usecase is not None else None


def _lake_root(usecase: UseCase | None) -> str:
    """The lake root of the use case (``<MLOPS_LAKE>/<name>``); without one, ``MLOPS_LAKE``."""
    from airflow_mlops import settings
    from airflow_mlops.usecase import config

    return config.lake_url(usecase) if usecase is not None else settings.lake_url()


def _usecase_info(usecase: UseCase | None) -> dict[str, Any] | None:
    if usecase is None:
        return None
    from airflow_mlops.links import lake_prefix
    from airflow_mlops.usecase.factory import STAGES

    return {
        "name": usecase.name,
        "description": usecase.description,
        "task": usecase.task,
        "period": usecase.source.period,
        "experiment": usecase.experiment_name,
        "lake_prefix": lake_prefix(_lake_root(usecase)),
        "dags": {stage: usecase.dag_id(stage) for stage in STAGES},
    }


class RollbackRequest(BaseModel):
    """The rollback action's body: JSON only, so a cross-site form post cannot trigger it."""

    reason: str = Field(min_length=3, max_length=500, description="Why; kept in the promotion ledger.")
    to_version: str | None = Field(default=None, pattern=r"^\d+$", description="Empty: the previous champion.")


def _require_login():
    from airflow.api_fastapi.core_api.security import requires_authenticated

    return Depends(requires_authenticated())


def _current_user():
    from airflow.api_fastapi.core_api.security import get_user

    return Depends(get_user)


def _require_rollback_permission():
    """The right to create runs of the model's rollback DAG (a model without a use case is refused later, 409)."""

    def check(request: Request, name: str, user=_current_user()) -> None:  # noqa: B008
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
        from airflow.api_fastapi.core_api.security import requires_access_dag

        dag_id = rollback_dag_id(usecase_of(name))
        if dag_id is not None:
            requires_access_dag(method="POST", access_entity=DagAccessEntity.RUN, param_dag_id=dag_id)(request, user)

    return Depends(check)


def create_app() -> FastAPI:
    app = FastAPI(title="airflow-mlops models", dependencies=[_require_login()])

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(), headers={"Cache-Control": "no-store"})

    @app.get("/api/models")
    def models() -> dict[str, Any]:
        hook = _mlflow()
        usecases = usecases_by_model()
        return {"models": [_summary(hook, rm, usecases.get(rm.name)) for rm in _registered_models(hook)]}

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
        usecase = usecase_of(name)
        points = _monitoring(hook, name, usecase)
        task = _display_task(usecase, points, None)
        svg = model_overview.chart_for(kind, points, task=task)
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    @app.get("/models/{name}/versions/{version}/card")
    def card(name: str, version: str, format: str = "html") -> Response:
        from airflow_mlops.hooks.mlflow_model_card import read_model_card

        if format not in ("html", "markdown") or not version.isdigit():
            raise HTTPException(404, "a card is html or markdown, of a version number")
        hook = _mlflow()
        _registered_model(hook, name)
        text = read_model_card(hook, name, version, format) if _has_version(hook, name, version) else None
        if text is None:
            raise HTTPException(404, f"{name} v{version} has no model card")
        media = "text/html; charset=utf-8" if format == "html" else "text/markdown; charset=utf-8"
        return Response(text, media_type=media, headers={"Cache-Control": "no-store"})

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


def _has_version(hook: MlflowHook, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        hook.client.get_model_version(name, version)
    except MlflowException:
        return False
    return True


def _card_href(name: str, version: Any, tags: dict[str, str] | None) -> str | None:
    """The version's model card, relative to the page (``links.model_card_url``); None when it has none."""
    from airflow_mlops.hooks.mlflow_model_card import MODEL_CARD_TAG
    from airflow_mlops.links import model_card_url

    return model_card_url(name, version).removeprefix(f"{URL_PREFIX}/") if (tags or {}).get(MODEL_CARD_TAG) else None


def _version(hook: MlflowHook, name: str, version: str | None, task: str | None) -> dict[str, Any] | None:
    """A version's number, run, creation time, the gate decision that admitted it and its hold-out metrics.

    :param task: the model's task (its hold-out metrics are shown); None: the task its run records, else every
        known metric the run has.
    """
    if not version:
        return None
    from airflow_mlops.core.model_overview import short_json

    mv = hook.client.get_model_version(name, str(version))
    metrics: dict[str, float] = {}
    run_task = None
    if mv.run_id:
        data = hook.client.get_run(mv.run_id).data
        run_task = data.tags.get(TASK_TAG)
        names = holdout_metrics(task or run_task)
        metrics = {m: data.metrics[f"holdout_{m}"] for m in names if f"holdout_{m}" in data.metrics}
    tags = mv.tags or {}
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "created": mv.creation_timestamp,
        "status": mv.status,
        "task": task or run_task,
        "gate": short_json(tags.get("mlops.gate.decision")),
        "training_set_sha256": tags.get("mlops.training_set.sha256"),
        "git_commit": tags.get("mlops.git.commit"),
        "holdout": metrics,
        "url": hook.model_version_url(name, mv.version),
        "card": _card_href(name, mv.version, tags),
    }


def _summary(hook: MlflowHook, rm: Any, usecase: UseCase | None) -> dict[str, Any]:
    aliases = {alias: str(v) for alias, v in (rm.aliases or {}).items()}
    gates = _gate_history(hook, rm.name, usecase, limit=1)
    return {
        "name": rm.name,
        "description": rm.description or (usecase.description if usecase else ""),
        "usecase": usecase.name if usecase else None,
        "task": usecase.task if usecase else None,
        "champion": aliases.get(CHAMPION),
        "challenger": aliases.get(CHALLENGER),
        "aliases": aliases,
        "last_gate": gates[0] if gates else None,
        "updated": rm.last_updated_timestamp,
    }


def _training_experiments(hook: MlflowHook, name: str, usecase: UseCase | None) -> list[str]:
    """Experiments holding the model's training runs: those of its versions, and its use case's."""
    client = hook.client
    ids: list[str] = []
    for mv in client.search_model_versions(f"name = '{_quote(name)}'", max_results=200):
        if mv.run_id:
            try:
                ids.append(client.get_run(mv.run_id).info.experiment_id)
            except Exception as err:  # noqa: BLE001 - a deleted run: the version's other runs still count
                log.warning("run %s of %s v%s unreadable: %s", mv.run_id, name, mv.version, err)
    if usecase is not None:
        found = client.get_experiment_by_name(usecase.experiment_name)
        if found is not None:
            ids.append(found.experiment_id)
    return list(dict.fromkeys(ids))


def _gate_history(hook: MlflowHook, name: str, usecase: UseCase | None, limit: int = 10) -> list[dict[str, Any]]:
    """The newest gate verdicts on the model's candidate runs (rejected ones included), newest first."""
    from airflow_mlops.core.model_overview import gate_verdict, parse_gate_summary

    experiments = _training_experiments(hook, name, usecase)
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


def monitoring_experiment(usecase: UseCase | None) -> str:
    """The MLflow experiment of the use case's monitoring checks (``monitoring.mlflow.experiment_name``).

    :param usecase: the model's use case; None: the default experiment.
    """
    section = (usecase.monitoring.get("mlflow") if usecase is not None else None) or {}
    return str(section.get("experiment_name") or DEFAULT_MONITORING_EXPERIMENT)


def _monitoring(hook: MlflowHook, name: str, usecase: UseCase | None) -> list[Any]:
    """The model's monitoring history from the check runs the monitoring operators log to MLflow."""
    from airflow_mlops.core.model_overview import monitoring_history

    experiment = hook.client.get_experiment_by_name(monitoring_experiment(usecase))
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
                    "month": tags.get("mlops.monitoring.period") or tags.get("mlops.monitoring.month"),
                    "version": tags.get("mlops.monitoring.version"),
                    "start_time": run.info.start_time,
                    "metrics": dict(run.data.metrics),
                    "report": tags.get("mlops.monitoring.report") or None,
                }
            )
        token = page.token
        if not token:
            return monitoring_history(checks)


def _retraining_decisions(name: str, lake_root: str) -> dict[str, dict[str, Any]]:
    """The retraining policy's decision per period (``monitoring/policy/<model>/`` in the use case's lake)."""
    import json

    from airflow_mlops.hooks.lake import LakeHook

    folder = LakeHook(root_url=lake_root).path("monitoring", "policy", name)
    if not folder.exists():
        return {}
    out = {}
    for path in folder.iterdir():
        if not path.name.endswith(".json") or path.name.startswith((".", "_")):
            continue
        record = json.loads(path.read_bytes())
        decision = record.get("triggered") or record.get("latest") or {}
        period = decision.get("period") or decision.get("month") or path.name.removesuffix(".json")
        out[period] = {
            "retrain": bool(decision.get("retrain")),
            "reasons": decision.get("reasons") or [],
            "suppressed_by": decision.get("suppressed_by"),
        }
    return out


def _display_task(usecase: UseCase | None, points: list[Any], champion: dict[str, Any] | None) -> str:
    """The task whose monitoring figures the page shows: the use case's, else what the champion's run or the
    monitoring metrics say, else classification."""
    from airflow_mlops.core.model_overview import task_of_metrics

    if usecase is not None:
        return usecase.task
    if champion and champion.get("task"):
        return str(champion["task"])
    return task_of_metrics({k for p in points for k in p.metrics}) or "classification"


# -- the model's page ------------------------------------------------------------------------------------------
def _detail(hook: MlflowHook, name: str, user: Any) -> dict[str, Any]:
    from airflow_mlops.core.model_overview import CHARTS, monitoring_columns

    rm = _registered_model(hook, name)
    usecase = usecase_of(name)
    task = usecase.task if usecase else None
    lake_root = _lake_root(usecase)
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
    points = _monitoring(hook, name, usecase)
    decisions = _retraining_decisions(name, lake_root)
    monitoring = []
    for point in points:
        row = point.to_dict()
        row["period"] = point.month
        row["reports"] = {
            kind: href for kind, key in point.reports.items() if (href := _report_href(key, lake_root)) is not None
        }
        row["retraining"] = decisions.get(point.month)
        monitoring.append(row)
    champion = _version(hook, name, aliases.get(CHAMPION), task)
    shown = _display_task(usecase, points, champion)
    return {
        "name": name,
        "description": rm.description or (usecase.description if usecase else ""),
        "usecase": _usecase_info(usecase),
        "task": task or (champion or {}).get("task"),
        "aliases": aliases,
        "champion": champion,
        "challenger": _version(hook, name, aliases.get(CHALLENGER), task),
        "versions": [
            {
                "version": str(v.version),
                "aliases": sorted(by_version.get(str(v.version), [])),
                "created": v.creation_timestamp,
                "run_id": v.run_id,
                "status": v.status,
                "card": _card_href(name, v.version, v.tags),
            }
            for v in versions
        ],
        "gate": _gate_history(hook, name, usecase),
        "ledger": [entry.to_dict() for entry in sorted(ledger, key=lambda e: e.seq, reverse=True)],
        "monitoring": monitoring,
        "monitoring_columns": [{"metric": k, "label": v} for k, v in monitoring_columns(shown).items()],
        "retraining": [{"period": period, **decision} for period, decision in sorted(decisions.items())],
        "charts": {kind: f"api/models/{name}/chart/{kind}.svg" for kind in CHARTS},
        "rollback": _rollback_state(name, usecase, ledger, user),
    }


def _report_href(key: str, lake_root: str) -> str | None:
    """A report of the lake rooted at ``lake_root`` as a link relative to this page (``/mlops/ui/`` →
    ``/mlops/lake/<use case>/...``); None when that root is not served (outside ``MLOPS_LAKE``)."""
    from airflow_mlops.links import lake_path

    path = lake_path(key, lake_root)
    return f"../lake/{path}" if path is not None else None


def _rollback_state(name: str, usecase: UseCase | None, ledger: list[Any], user: Any) -> dict[str, Any]:
    """Where a rollback would go, whether the use case's DAG can run it, and its recent runs."""
    from airflow_mlops.core import ledger as ledger_core

    try:
        target, blocked = ledger_core.rollback_target(ledger), None
    except ledger_core.LedgerConflict as err:
        target, blocked = None, str(err)
    dag_id = rollback_dag_id(usecase)
    state: dict[str, Any] = {"dag_id": dag_id, "target": target, "blocked": blocked}
    if dag_id is None:
        state.update(
            dag_exists=False,
            dag_paused=None,
            can_trigger=False,
            recent_runs=[],
            unavailable=f"no use case declares registered model {name}: there is no rollback DAG for it",
        )
        return state
    state.update(_rollback_dag(dag_id, user))
    return state


def _rollback_dag(dag_id: str, user: Any) -> dict[str, Any]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    auth = get_auth_manager()
    details = DagDetails(id=dag_id)
    can_trigger = auth.is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN, details=details, user=user)
    can_read = auth.is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN, details=details, user=user)
    with create_session() as session:
        dag = session.scalar(select(DagModel).where(DagModel.dag_id == dag_id))
        runs = []
        if dag is not None and can_read:
            found = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(10))
            for run in found:
                conf = run.conf or {}
                runs.append(
                    {
                        "run_id": run.run_id,
                        "state": str(getattr(run.state, "value", run.state)),
                        "triggering_user": run.triggering_user_name,
                        "reason": conf.get("reason"),
                        "to_version": conf.get("to_version"),
                        "queued_at": run.queued_at.isoformat() if run.queued_at else None,
                        "url": f"../../dags/{dag_id}/runs/{run.run_id}",
                    }
                )
        return {
            "dag_exists": dag is not None and not dag.is_stale,
            "dag_paused": bool(dag.is_paused) if dag is not None else None,
            "can_trigger": bool(can_trigger),
            "recent_runs": runs,
        }


def _trigger_rollback(hook: MlflowHook, name: str, body: RollbackRequest, user: Any) -> dict[str, Any]:
    """Trigger the rollback DAG of ``name``'s use case as ``user`` (what the DAG's Trigger button does)."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists
    from airflow.utils.types import DagRunTriggeredByType

    from airflow_mlops.core import ledger as ledger_core

    _registered_model(hook, name)
    dag_id = rollback_dag_id(usecase_of(name))
    if dag_id is None:
        raise HTTPException(409, f"no use case declares registered model {name}: there is no rollback DAG for it")
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
        _version(hook, name, target, None)  # raises if there is no such version
    who = user.get_name()
    conf = {"to_version": body.to_version, "reason": f"{reason} (by {who}, MLOps page)"}
    try:
        run = trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.UI, triggering_user_name=who, conf=conf)
    except DagNotFound as err:
        raise HTTPException(404, f"{dag_id} is not deployed: {err}") from err
    except DagRunAlreadyExists as err:
        raise HTTPException(409, str(err)) from err
    except ValueError as err:  # ParamValidationError: the DAG's params refuse the conf
        raise HTTPException(400, str(err)) from err
    if run is None:
        raise HTTPException(500, f"{dag_id} did not create a run")
    log.info("rollback of %s to v%s requested by %s: %s run %s", name, target, who, dag_id, run.run_id)
    return {
        "dag_id": dag_id,
        "dag_run_id": run.run_id,
        "state": str(getattr(run.state, "value", run.state)),
        "conf": conf,
        "expected_target": target,
        "triggering_user": who,
        "url": f"../../dags/{dag_id}/runs/{run.run_id}",
    }


def _quote(value: str) -> str:
    return str(value).replace("'", "''")
