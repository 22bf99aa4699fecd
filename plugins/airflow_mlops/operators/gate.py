"""The model gate: apply the use case's ``gate`` policy to a candidate's evaluation and record the verdict."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_mlops.links_mlflow import RUN_URL_XCOM_KEY, MlflowRunLink
from airflow_mlops.operators.base import MlopsBaseOperator
from airflow_mlops.templating import as_bool, as_mapping, is_blank

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.gate import GateDecision, GatePolicy

DECISION_ARTIFACT = "gate/decision.json"


class ModelGateOperator(MlopsBaseOperator):
    """Decide whether a candidate may become champion; a rejection is a normal, green outcome.

    Reads the evaluation the candidate's run recorded (``evaluation/evaluation.json``), applies the policy
    (absolute thresholds; regression limits against the champion overall and per slice; minimum slice size;
    ``core.gate``) and records the ``GateDecision`` on the run (tags, ``gate/decision.json``, metric
    ``gate_approved``). It fails closed: no policy, no evaluation, or any metric the policy needs being missing,
    rejects. The task succeeds either way; ``MlflowRegisterModelOperator`` and ``MlflowPromoteModelOperator`` skip a rejected
    model.

    ``force_bless`` overrides a rejection; it requires ``force_bless_reason`` and is recorded for audit (who,
    why, and the reasons it overrode).

    Arguments: those of ``MlopsBaseOperator`` (``usecase``: the use case whose ``gate`` section is the policy;
    ``mlflow_conn_id``), and:

    :param evaluation: the XCom of ``EvaluateChallengerOperator``, a dict (templated: pass its ``.output``).
    :param policy_path: a policy YAML, used without a use case (templated); neither: no policy, the gate rejects.
    :param force_bless: approve whatever the policy says (templated; ``"{{ params.force_bless }}"`` renders
        ``"True"``/``"False"``, read as a flag).
    :param force_bless_reason: why; required with ``force_bless`` (templated).
    :return: (XCom) the decision without its per-metric table (approved, reasons, policy_hash,
        champion_version, forced, force_reason) plus run_id, model_uri, registered_model_name, champion_alias.
        The run's MLflow URL is pushed under ``mlflow_run_url`` (the task's extra link).
    :raises AirflowFailException: ``force_bless`` without a reason, ``evaluation`` not a dict, or an invalid
        policy.
    """

    template_fields = ("evaluation", "policy_path", "force_bless", "force_bless_reason")
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#f4cccc"

    def __init__(
        self,
        *,
        evaluation: dict[str, Any],
        policy_path: str | None = None,
        force_bless: bool | str = False,
        force_bless_reason: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.evaluation = evaluation
        self.policy_path = policy_path
        self.force_bless = force_bless
        self.force_bless_reason = force_bless_reason

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core import gate
        from airflow_mlops.core.tracking import airflow_lineage

        evaluation = self.checked(as_mapping, self.evaluation, "evaluation")
        run_id = evaluation["run_id"]
        force_reason = self._force_reason()
        lineage = airflow_lineage(context)
        decision = gate.judge(
            self._evaluation_document(evaluation),
            self._policy(),
            force_reason=force_reason,
            who=lineage.get("triggered_by_user") or f"{lineage['dag_id']}/{lineage['run_id']}",
        )
        log = self.log.info if decision.approved and not decision.forced else self.log.warning
        log("gate decision for run %s: %s", run_id, decision.verdict)
        for line in decision.reasons:
            log("  - %s", line)
        self._record(run_id, decision)
        run_url = self.mlflow_hook.run_url(run_id)
        context["ti"].xcom_push(key=RUN_URL_XCOM_KEY, value=run_url)
        if not decision.approved:
            what = f"the candidate of {evaluation['registered_model_name']} (MLflow run {run_id}) was rejected"
            self.notify(context, "gate_rejected", what=what, why=decision.reasons, links={"MLflow run": run_url})
        return {
            **{k: v for k, v in decision.to_dict().items() if k != "metrics"},
            "run_id": run_id,
            "model_uri": evaluation["model_uri"],
            "registered_model_name": evaluation["registered_model_name"],
            "champion_alias": evaluation.get("champion_alias", "champion"),
        }

    def _force_reason(self) -> str | None:
        """Why the decision is overridden when ``force_bless`` is set; None without an override."""
        if not as_bool(self.force_bless):
            return None
        if is_blank(self.force_bless_reason):
            self.fail("force_bless is set but force_bless_reason is empty: an override must say why")
        return str(self.force_bless_reason).strip()

    def _policy(self) -> GatePolicy | None:
        """The use case's ``gate`` section, else ``policy_path``'s file; None (logged): the gate rejects."""
        from airflow_mlops.core import gate

        if self.usecase_config is not None:
            where = f"{self.usecase_config.config_file}: gate"
            policy = self.checked(self.usecase_config.gate_policy)
        else:
            where = str(self.policy_path or "")
            policy = self.checked(gate.load_policy, where) if where else None
        if policy is None:
            self.log.error("no gate policy at %s: rejecting (fail closed)", where or "(none given)")
        return policy

    def _evaluation_document(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        """The evaluation the candidate's run recorded; without one, a document that rejects (said in reasons)."""
        import json

        from airflow_mlops.core.tracking import EVALUATION_ARTIFACT

        text = self.mlflow_hook.run_artifact_text(evaluation["run_id"], EVALUATION_ARTIFACT)
        if text is None:
            self.log.error("no %s on run %s: the gate rejects", EVALUATION_ARTIFACT, evaluation["run_id"])
            return {"candidate": None, "champion": None, "champion_version": evaluation.get("champion_version")}
        return json.loads(text)

    def _record(self, run_id: str, decision: GateDecision) -> None:
        """The decision on the candidate's run: its tags, the metric ``gate_approved``, ``gate/decision.json``."""
        import json

        from mlflow.entities import Metric, RunTag

        client = self.mlflow_hook.client
        client.log_batch(
            run_id,
            metrics=[Metric("gate_approved", float(decision.approved), int(time.time() * 1000), 0)],
            tags=[RunTag(k, v) for k, v in decision.run_tags().items()],
        )
        client.log_text(run_id, json.dumps(decision.to_dict(), indent=2, sort_keys=True), DECISION_ARTIFACT)
