"""The model registry steps: register a gated model as ``challenger``, promote it to ``champion``, roll back.

Alias moves go through the promotion ledger (``MlflowHook.transition``): a compare-and-set on the ledger's
next entry, so two promotions racing from the same champion leave exactly one winner, and every move is
recorded with who triggered it, from/to version, the gate decision and a timestamp.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_mlops.assets import MODEL_PROMOTED
from airflow_mlops.exceptions import PromotionConflictError
from airflow_mlops.hooks.mlflow_registry import MlflowHook
from airflow_mlops.links_mlflow import MODEL_VERSION_URL_XCOM_KEY, MlflowModelVersionLink
from airflow_mlops.operators.training import _parse, airflow_lineage

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Run tags copied onto a registered version, so the version page alone shows where it came from.
LINEAGE_TAGS = (
    "mlops.training_set.uri",
    "mlops.training_set.sha256",
    "mlops.git.commit",
    "mlops.config.sha256",
    "mlops.feature_views",
    "mlops.holdout.months",
    "mlops.airflow.dag_id",
    "mlops.airflow.run_id",
)


def _skip_unless_approved(gate: dict[str, Any], what: str) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    if not gate.get("approved"):
        reasons = "; ".join(gate.get("reasons") or ["no gate decision"])
        raise AirflowSkipException(f"{what} skipped: the gate rejected run {gate.get('run_id')}: {reasons}")


class RegisterModelOperator(BaseOperator):
    """Register an approved model as a version and point ``challenger`` at it. Idempotent.

    The version is looked up by its source run first: a retry (or a re-run of the same training run) reuses
    the version it finds and never creates a second one. Skips (the DAG run stays green) when the gate
    rejected the model; re-checks the decision itself rather than trusting the DAG's wiring.

    :param gate: the XCom of ``ModelGateOperator`` (templated).
    :param registered_model_name: default the name the gate saw (templated).
    :param alias: the alias to set; default ``challenger``.
    :param mlflow_conn_id: MLflow connection; see ``MlflowHook``.
    :return: (XCom) name, version, created, run_id, model_uri, alias and the gate decision (no metric table).
    """

    template_fields = ("gate", "registered_model_name")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#d9ead3"

    def __init__(
        self,
        *,
        gate: dict | str,
        registered_model_name: str | None = None,
        alias: str = "challenger",
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.registered_model_name = registered_model_name
        self.alias = alias
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        gate = _parse(self.gate)
        _skip_unless_approved(gate, "registration")
        name = self.registered_model_name or gate["registered_model_name"]
        run_id = gate["run_id"]
        client = self.mlflow_hook.client
        run_tags = client.get_run(run_id).data.tags
        tags = {k: run_tags[k] for k in LINEAGE_TAGS if k in run_tags}
        tags["mlops.gate.approved"] = "true"
        tags["mlops.gate.forced"] = str(bool(gate.get("forced"))).lower()
        tags["mlops.gate.policy_sha256"] = gate.get("policy_hash") or "none"
        version, created = self.mlflow_hook.register(name, gate["model_uri"], run_id, tags=tags)
        if created:
            self.log.info("registered run %s as %s version %s", run_id, name, version)
        else:
            self.log.info("run %s was registered before as %s version %s: reusing it", run_id, name, version)
        decision = {
            k: gate.get(k) for k in ("approved", "forced", "force_reason", "policy_hash", "champion_version", "reasons")
        }
        client.set_model_version_tag(name, version, "mlops.gate.decision", json.dumps(decision, sort_keys=True))
        client.set_registered_model_alias(name, self.alias, version)
        url = self.mlflow_hook.model_version_url(name, version)
        context["ti"].xcom_push(key=MODEL_VERSION_URL_XCOM_KEY, value=url)
        return {
            "name": name,
            "version": version,
            "created": created,
            "run_id": run_id,
            "model_uri": f"models:/{name}/{version}",
            "alias": self.alias,
            "champion_alias": gate.get("champion_alias", "champion"),
            "gate": decision,
        }


class PromoteModelOperator(BaseOperator):
    """Move ``champion`` to the registered version, only if it still points where the gate compared against.

    Compare-and-set through the promotion ledger; a retry of the same task does not append twice. Skips a
    model the gate rejected. Emits the ``model_promoted`` Asset event.

    :param registered: the XCom of ``RegisterModelOperator`` (templated).
    :param alias: the alias to move; default ``champion``.
    :param mlflow_conn_id: MLflow connection; see ``MlflowHook``.
    :return: (XCom) the ledger entry: seq, action, model, alias, from/to version, triggered_by, gate, timestamp.
    :raises PromotionConflictError: ``champion`` moved since the evaluation, or a concurrent promotion won.
    """

    template_fields = ("registered",)
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#b6d7a8"

    def __init__(
        self,
        *,
        registered: dict | str,
        alias: str = "champion",
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [MODEL_PROMOTED])
        super().__init__(**kwargs)
        self.registered = registered
        self.alias = alias
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.ledger import PROMOTE, LedgerConflict

        registered = _parse(self.registered)
        gate = registered.get("gate") or {}
        _skip_unless_approved({**gate, "run_id": registered.get("run_id")}, "promotion")
        infra = registered.get("infra_validation")
        if infra is not None and infra.get("approved") is not True:
            # Like the gate, re-checked here: a candidate that failed in the serving stack never moves champion.
            raise PromotionConflictError(
                f"{registered['name']} v{registered['version']} did not pass infra "
                f"validation: {'; '.join(infra.get('reasons', [])) or 'no decision'}"
            )
        name, version = registered["name"], str(registered["version"])
        try:
            entry, appended = self.mlflow_hook.transition(
                name,
                self.alias,
                to_version=version,
                expected_from=gate.get("champion_version"),
                action=PROMOTE,
                triggered_by=airflow_lineage(context),
                gate=gate,
            )
        except LedgerConflict as err:
            raise PromotionConflictError(str(err)) from err
        verb = "promoted" if appended else "was already promoted (retry)"
        self.log.info(
            "%s v%s %s to %s (from %s), ledger #%d",
            name,
            version,
            verb,
            self.alias,
            entry.from_version or "none",
            entry.seq,
        )
        return _finish(self, context, entry, name)


class RollbackModelOperator(BaseOperator):
    """Restore the previous champion in one step (or a named version), recorded in the promotion ledger.

    "Previous" replays the ledger: promotions push a version, rollbacks pop one, so rolling back twice goes
    two champions back. Compare-and-set like a promotion: a concurrent move makes it fail, never interleave.

    :param registered_model_name: the model (templated).
    :param to_version: a version to restore instead of the previous champion (templated; empty = previous).
    :param reason: why, for the ledger (templated).
    :param alias: the alias to move back; default ``champion``.
    :param mlflow_conn_id: MLflow connection; see ``MlflowHook``.
    :return: (XCom) the ledger entry.
    :raises PromotionConflictError: nothing to roll back to, or a concurrent move.
    """

    template_fields = ("registered_model_name", "to_version", "reason")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#f9cb9c"

    def __init__(
        self,
        *,
        registered_model_name: str,
        to_version: str | int | None = None,
        reason: str | None = None,
        alias: str = "champion",
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [MODEL_PROMOTED])
        super().__init__(**kwargs)
        self.registered_model_name = registered_model_name
        self.to_version = to_version
        self.reason = reason
        self.alias = alias
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.ledger import ROLLBACK, LedgerConflict

        target = str(self.to_version).strip() if self.to_version not in (None, "") else ""
        target = None if target in ("", "None") else target
        name = self.registered_model_name
        try:
            entry, _ = self.mlflow_hook.transition(
                name,
                self.alias,
                to_version=target,
                expected_from=None,
                action=ROLLBACK,
                triggered_by=airflow_lineage(context),
                reason=self.reason or "rollback",
                check_expected=False,
            )
        except LedgerConflict as err:
            raise PromotionConflictError(str(err)) from err
        self.log.info(
            "%s@%s rolled back from v%s to v%s (ledger #%d): %s",
            name,
            self.alias,
            entry.from_version,
            entry.to_version,
            entry.seq,
            entry.reason,
        )
        return _finish(self, context, entry, name)


def _finish(op: Any, context: Context, entry: Any, name: str) -> dict[str, Any]:
    context["ti"].xcom_push(
        key=MODEL_VERSION_URL_XCOM_KEY, value=op.mlflow_hook.model_version_url(name, entry.to_version)
    )
    events = context.get("outlet_events")
    if events is not None:
        for outlet in getattr(op, "outlets", None) or []:  # the use case's model_promoted Asset
            events[outlet].extra = {
                "model": name,
                "alias": entry.alias,
                "action": entry.action,
                "from_version": entry.from_version,
                "to_version": entry.to_version,
                "ledger_seq": entry.seq,
            }
    return entry.to_dict()
