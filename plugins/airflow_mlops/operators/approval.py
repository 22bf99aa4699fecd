"""Human approval of a promotion: Airflow's ``ApprovalOperator`` between infra validation and promotion.

The use case's ``approval`` policy (``core.approval``) decides whether a person must approve: ``auto`` (or
``manual_if`` with no condition holding) skips the step and the promotion proceeds; otherwise the task waits in
Airflow's Required Actions (the UI's form, or ``PATCH .../hitlDetails`` of the REST API) with the evidence as its
body. Approve: the promotion runs and keeps who approved and why. Reject, or no answer within
``approval.timeout_hours``: the promotion and the deploy are skipped (fail closed). Either way the decision is
tagged on the registry version (``mlops.approval.*``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict

from airflow_mlops.links_mlflow import MlflowModelVersionLink
from airflow_mlops.operators.base import MlopsBaseOperator
from airflow_mlops.templating import as_mapping

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.approval import ApprovalPolicy, Evidence

#: The form's field for the approver's comment (kept on the ledger and the version).
COMMENT = "comment"
#: XCom key of the decision (also the return value when approved; a rejection ends the task before it returns).
DECISION_XCOM_KEY = "approval"


class ModelApprovalOperator(ApprovalOperator, MlopsBaseOperator):
    """Wait for a person to approve the promotion of an infra-validated version, when the use case asks for one.

    Arguments: those of ``MlopsBaseOperator`` (``usecase``: the use case whose ``approval`` section is the policy;
    ``mlflow_conn_id``), and:

    :param registered: the XCom of ``BentoMLInfraValidateOperator`` (templated: pass its ``.output``).
    :param response_timeout: overrides ``approval.timeout_hours``; no answer in time rejects.
    :return: (XCom) the decision: mode, decision (approved | rejected), approver, comment, at, timed_out — what
        ``MlflowPromoteModelOperator(approval=...)`` keeps on the ledger entry.
    :raises AirflowSkipException: no approval is needed (the promotion proceeds: its trigger rule is
        ``none_failed_min_one_success``).
    """

    template_fields = ("registered", "subject", "body")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#fff2cc"

    def __init__(self, *, registered: Any, usecase: str, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Promote this model to champion?")
        kwargs.setdefault("defaults", [ApprovalOperator.REJECT])  # the answer of a timeout: fail closed
        # Airflow merges the DAG's params into ``params`` before this runs; the form shows the task's own.
        params = kwargs["params"] = ParamsDict(kwargs.get("params") or {})
        if COMMENT not in params:
            params[COMMENT] = Param(None, type=["null", "string"], title="Comment", source="task")
        super().__init__(usecase=usecase, **kwargs)
        self.registered = registered

    @property
    def policy(self) -> ApprovalPolicy:
        return self.checked(self.require_usecase().approval_policy)

    def execute(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core import approval

        registered = self.checked(as_mapping, self.registered, "registered")
        policy = self.policy
        evidence = None if policy.mode == approval.AUTO else self._evidence(registered, context)
        why = approval.holding(policy, evidence) if evidence else []
        if not why:
            raise AirflowSkipException(f"approval {policy.mode}: no person needs to approve; the promotion proceeds")
        if not (registered.get("infra_validation") or {}).get("approved", True):
            raise AirflowSkipException("infra validation did not approve: the promotion refuses it, nobody is asked")
        name, version = evidence.model, evidence.version
        self.subject = f"Promote {name} v{version} to champion? ({policy.mode})"
        self.body = approval.render_body(evidence, why)
        self.response_timeout = self.response_timeout or policy.timeout
        self.log.info("%s v%s waits for approval (%s); no answer by %s rejects", name, version, why, policy.timeout)
        self.notify(
            context,
            "approval_waiting",
            what=f"{name} v{version} waits for a person's approval (Approve or Reject)",
            why=why,
            links={"Approve or reject": self._form_url(context), **evidence.links},
        )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        from airflow_mlops.core import approval

        if "error" in event or not event.get("chosen_options"):
            return super().execute_complete(context=context, event=event)  # raises what Airflow raises
        self.validate_chosen_options(event["chosen_options"])
        at = event.get("responded_at")
        decision = approval.record(
            mode=self.policy.mode,
            chosen=event["chosen_options"][0],
            responded_by=event.get("responded_by_user"),
            comment=(event.get("params_input") or {}).get(COMMENT),
            at=at.isoformat() if hasattr(at, "isoformat") else str(at),
            timed_out=bool(event.get("timedout")),
        )
        registered = self.checked(as_mapping, self.registered, "registered")
        name, version = registered["name"], str(registered["version"])
        for key, value in approval.version_tags(decision).items():
            self.mlflow_hook.client.set_model_version_tag(name, version, key, value)
        context["ti"].xcom_push(key=DECISION_XCOM_KEY, value=decision)  # kept when a rejection ends the task early
        self.log.info("%s v%s %s by %s: %s", name, version, decision["decision"], decision["approver"], decision)
        super().execute_complete(context=context, event=event)  # a rejection skips promotion and deploy (raises)
        return decision

    def _form_url(self, context: Context) -> str | None:
        """The task's Required Actions page in the Airflow UI (None without ``[api] base_url``)."""
        try:
            return self.generate_link_to_ui_from_context(context=context)
        except ValueError:
            return None

    def _evidence(self, registered: dict[str, Any], context: Context) -> Evidence:
        """The gate's checks (its ``gate/decision.json``), infra validation, drift, estimators and links."""
        import json
        from urllib.parse import quote

        from airflow_mlops.core.approval import Evidence
        from airflow_mlops.links import model_card_url
        from airflow_mlops.notifications import airflow_url
        from airflow_mlops.operators.gate import DECISION_ARTIFACT

        hook, name, run_id = self.mlflow_hook, registered["name"], registered.get("run_id")
        gate = registered.get("gate") or {}
        document = json.loads(hook.run_artifact_text(run_id, DECISION_ARTIFACT) or "{}") if run_id else {}
        run = hook.client.get_run(run_id) if run_id else None
        champion = gate.get("champion_version")
        champion_run = hook.client.get_run(hook.client.get_model_version(name, champion).run_id) if champion else None
        drift = [
            event.extra
            for events in (context.get("triggering_asset_events") or {}).values()
            for event in events
            if (event.extra or {}).get("reasons")
        ]
        if run is not None:
            measured = {k: v for k, v in run.data.metrics.items() if k.startswith("drift_")}
            measured |= {k: v for k, v in run.data.tags.items() if k.startswith("mlops.drift.")}
            drift += [{"month": "measured at training", "reasons": [f"{k}={v}" for k, v in sorted(measured.items())]}]
            drift = [d for d in drift if d["reasons"]]
        links = {
            "MLflow run": hook.run_url(run_id) if run_id else None,
            "MLflow version": hook.model_version_url(name, registered["version"]),
            "Model card": airflow_url(model_card_url(name, registered["version"])),
            "Model page": airflow_url(f"/mlops/ui/?model={quote(name)}"),
        }
        return Evidence(
            model=name,
            version=str(registered["version"]),
            run_id=run_id,
            gate=gate,
            checks=dict(document.get("metrics") or {}),
            infra=registered.get("infra_validation"),
            drift=drift,
            family=run.data.tags.get("mlops.model.type") if run else None,
            champion_family=champion_run.data.tags.get("mlops.model.type") if champion_run else None,
            links={k: v for k, v in links.items() if v},
        )
