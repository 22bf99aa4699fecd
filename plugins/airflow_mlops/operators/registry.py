"""The model registry steps: register a gated model as ``challenger``, promote it to ``champion``, roll back.

Alias moves go through the promotion ledger (``MlflowHook.transition``): a compare-and-set on the ledger's
next entry, so two promotions racing from the same champion leave exactly one winner, and every move is
recorded with who triggered it, from/to version, the gate decision and a timestamp.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow_mlops.assets import MODEL_PROMOTED
from airflow_mlops.exceptions import PromotionConflictError
from airflow_mlops.hooks.mlflow_model_card import attach_model_card
from airflow_mlops.links_mlflow import MODEL_VERSION_URL_XCOM_KEY, MlflowModelVersionLink
from airflow_mlops.operators.base import MlopsBaseOperator
from airflow_mlops.templating import as_mapping, is_blank

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.ledger import LedgerEntry

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


#: The gate decision's items a registered version carries (tag ``mlops.gate.decision``) and hands on.
GATE_DECISION_KEYS = ("approved", "forced", "force_reason", "policy_hash", "champion_version", "reasons")


class _RegistryOperator(MlopsBaseOperator):
    """What the registry steps share: the gate re-checked, an alias move's links and Asset event."""

    def skip_unless_approved(self, gate: dict[str, Any], what: str) -> None:
        """Skip (the DAG run stays green) unless the gate approved: re-checked here, not trusted to the wiring.

        :param gate: the gate decision (``approved``, ``reasons``, ``run_id``).
        :param what: the step, for the message.
        :raises AirflowSkipException: the gate rejected the model, or there is no decision.
        """
        from airflow.sdk.exceptions import AirflowSkipException

        if not gate.get("approved"):
            reasons = "; ".join(gate.get("reasons") or ["no gate decision"])
            raise AirflowSkipException(f"{what} skipped: the gate rejected run {gate.get('run_id')}: {reasons}")

    def transition(self, name: str, context: Context, **kwargs: Any) -> tuple[LedgerEntry, bool]:
        """``MlflowHook.transition`` of ``name@alias`` (compare-and-set on the promotion ledger), triggered by
        this task; a lost race or a stale expectation is a ``PromotionConflictError``. A move is notified once
        (``promoted`` / ``rolled_back``): a retry finding its own entry was notified by the try that moved the alias.

        :param name: the registered model.
        :param kwargs: ``to_version``, ``expected_from``, ``action`` and the rest of ``MlflowHook.transition``.
        """
        from airflow_mlops.core.ledger import LedgerConflict
        from airflow_mlops.core.tracking import airflow_lineage

        lineage = airflow_lineage(context)
        try:
            entry, appended = self.mlflow_hook.transition(name, self.alias, triggered_by=lineage, **kwargs)
        except LedgerConflict as err:
            raise PromotionConflictError(str(err)) from err
        if appended:
            from airflow_mlops.notifications import ledger_move

            self.notify(context, **ledger_move(entry, self.mlflow_hook.model_version_url(name, entry.to_version)))
        return entry, appended

    def finish(self, context: Context, entry: LedgerEntry, name: str) -> dict[str, Any]:
        """The moved version's link to XCom and its model card refreshed, the move as the event extra; returns it."""
        attach_model_card(self.mlflow_hook, name, entry.to_version, self.usecase_config, self.lake_conn_id)
        url = self.mlflow_hook.model_version_url(name, entry.to_version)
        context["ti"].xcom_push(key=MODEL_VERSION_URL_XCOM_KEY, value=url)
        events = context.get("outlet_events")
        if events is not None:
            for outlet in self.outlets or []:  # the use case's model_promoted Asset
                events[outlet].extra = {
                    "model": name,
                    "alias": entry.alias,
                    "action": entry.action,
                    "from_version": entry.from_version,
                    "to_version": entry.to_version,
                    "ledger_seq": entry.seq,
                }
        return entry.to_dict()


class MlflowRegisterModelOperator(_RegistryOperator):
    """Register an approved model as a version and point ``challenger`` at it. Idempotent.

    The version is looked up by its source run first: a retry (or a re-run of the same training run) reuses
    the version it finds and never creates a second one. Skips (the DAG run stays green) when the gate
    rejected the model; re-checks the decision itself rather than trusting the DAG's wiring.

    Arguments: those of ``MlopsBaseOperator`` (``mlflow_conn_id``), and:

    :param gate: the XCom of ``ModelGateOperator``, a dict (templated: pass its ``.output``).
    :param registered_model_name: default the name the gate saw (templated).
    :param alias: the alias to set; default ``challenger``.
    :return: (XCom) name, version, created, run_id, model_uri, alias, champion_alias, the gate decision (no metric
        table), model_card (its ``runs:/`` URI). The version's MLflow URL is pushed under ``mlflow_model_version_url``.
    :raises AirflowSkipException: the gate rejected the model.
    :raises AirflowFailException: ``gate`` is not a dict.
    """

    template_fields = ("gate", "registered_model_name")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#d9ead3"

    def __init__(
        self,
        *,
        gate: dict[str, Any],
        registered_model_name: str | None = None,
        alias: str = "challenger",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.registered_model_name = registered_model_name
        self.alias = alias

    def execute(self, context: Context) -> dict[str, Any]:
        gate = self.checked(as_mapping, self.gate, "gate")
        self.skip_unless_approved(gate, "registration")
        name, run_id = self.registered_model_name or gate["registered_model_name"], gate["run_id"]
        client = self.mlflow_hook.client
        version, created = self.mlflow_hook.register(name, gate["model_uri"], run_id, tags=self._version_tags(gate))
        if created:
            self.log.info("registered run %s as %s version %s", run_id, name, version)
        else:
            self.log.info("run %s was registered before as %s version %s: reusing it", run_id, name, version)
        decision = {k: gate.get(k) for k in GATE_DECISION_KEYS}
        client.set_model_version_tag(name, version, "mlops.gate.decision", json.dumps(decision, sort_keys=True))
        client.set_registered_model_alias(name, self.alias, version)
        context["ti"].xcom_push(key=MODEL_VERSION_URL_XCOM_KEY, value=self.mlflow_hook.model_version_url(name, version))
        return {
            "name": name,
            "version": version,
            "created": created,
            "run_id": run_id,
            "model_uri": f"models:/{name}/{version}",
            "alias": self.alias,
            "champion_alias": gate.get("champion_alias", "champion"),
            "gate": decision,
            "model_card": attach_model_card(self.mlflow_hook, name, version, self.usecase_config, self.lake_conn_id),
        }

    def _version_tags(self, gate: dict[str, Any]) -> dict[str, str]:
        """The source run's lineage tags and the gate's verdict, for the new version."""
        run_tags = self.mlflow_hook.client.get_run(gate["run_id"]).data.tags
        return {
            **{k: run_tags[k] for k in LINEAGE_TAGS if k in run_tags},
            "mlops.gate.approved": "true",
            "mlops.gate.forced": str(bool(gate.get("forced"))).lower(),
            "mlops.gate.policy_sha256": gate.get("policy_hash") or "none",
        }


class MlflowPromoteModelOperator(_RegistryOperator):
    """Move ``champion`` to the registered version, only if it still points where the gate compared against.

    Compare-and-set through the promotion ledger; a retry of the same task does not append twice. Skips a
    model the gate rejected; refuses one that failed infra validation. Emits the ``model_promoted`` Asset event
    (extra: model, alias, action, from/to version, ledger_seq).

    Arguments: those of ``MlopsBaseOperator`` (``mlflow_conn_id``), and:

    :param registered: the XCom of ``MlflowRegisterModelOperator`` (or of ``BentoMLInfraValidateOperator``, which adds
        ``infra_validation``), a dict (templated: pass its ``.output``).
    :param approval: the XCom of ``ModelApprovalOperator`` (templated; None: no human step), kept on the ledger entry.
    :param alias: the alias to move; default ``champion``.
    :return: (XCom) the ledger entry: seq, action, model, alias, from/to version, triggered_by, gate, timestamp.
    :raises AirflowSkipException: the gate rejected the model.
    :raises PromotionConflictError: ``champion`` moved since the evaluation, a concurrent promotion won, or the
        version failed infra validation.
    """

    template_fields = ("registered", "approval")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#b6d7a8"

    def __init__(self, *, registered: dict[str, Any], approval: Any = None, alias: str = "champion", **kwargs: Any):
        kwargs.setdefault("outlets", [MODEL_PROMOTED])
        super().__init__(**kwargs)
        self.registered, self.approval = registered, approval
        self.alias = alias

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.approval import promotable
        from airflow_mlops.core.ledger import PROMOTE

        registered = self.checked(as_mapping, self.registered, "registered")
        gate = registered.get("gate") or {}
        self.skip_unless_approved({**gate, "run_id": registered.get("run_id")}, "promotion")
        name, version = registered["name"], str(registered["version"])
        infra = registered.get("infra_validation")
        if infra is not None and infra.get("approved") is not True:
            # Like the gate, re-checked here: a candidate that failed in the serving stack never moves champion.
            reasons = "; ".join(infra.get("reasons", [])) or "no decision"
            raise PromotionConflictError(f"{name} v{version} did not pass infra validation: {reasons}")
        approval = self.checked(promotable, self.approval)  # a human's rejection fails here, whatever the wiring
        champion = gate.get("champion_version")
        entry, appended = self.transition(
            name, context, to_version=version, expected_from=champion, action=PROMOTE, gate=gate, approval=approval
        )
        self.log.info(
            "%s v%s %s to %s (from %s), ledger #%d",
            name,
            version,
            "promoted" if appended else "was already promoted (retry)",
            self.alias,
            entry.from_version or "none",
            entry.seq,
        )
        return self.finish(context, entry, name)


class MlflowRollbackModelOperator(_RegistryOperator):
    """Restore the previous champion in one step (or a named version), recorded in the promotion ledger.

    "Previous" replays the ledger: promotions push a version, rollbacks pop one, so rolling back twice goes
    two champions back. Compare-and-set like a promotion: a concurrent move makes it fail, never interleave.
    A retry finds its own ledger entry and does not roll back twice. Emits the ``model_promoted`` Asset event.

    Arguments: those of ``MlopsBaseOperator`` (``mlflow_conn_id``), and:

    :param registered_model_name: the model (templated).
    :param to_version: a version to restore instead of the previous champion (templated; empty or None:
        the previous one).
    :param reason: why, for the ledger (templated).
    :param alias: the alias to move back; default ``champion``.
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
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [MODEL_PROMOTED])
        super().__init__(**kwargs)
        self.registered_model_name = registered_model_name
        self.to_version = to_version
        self.reason = reason
        self.alias = alias

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.ledger import ROLLBACK

        name = self.registered_model_name
        entry, _ = self.transition(
            name,
            context,
            to_version=None if is_blank(self.to_version) else str(self.to_version).strip(),
            expected_from=None,
            action=ROLLBACK,
            reason=self.reason or "rollback",
            check_expected=False,
        )
        self.log.info(
            "%s@%s rolled back from v%s to v%s (ledger #%d): %s",
            name,
            self.alias,
            entry.from_version,
            entry.to_version,
            entry.seq,
            entry.reason,
        )
        return self.finish(context, entry, name)
