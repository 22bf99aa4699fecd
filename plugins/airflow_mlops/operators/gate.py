"""The model gate: apply the policy in ``include/config/gate_policy.yaml`` to an evaluation, record the verdict."""

from __future__ import annotations

import dataclasses
import json
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_mlops.hooks.mlflow_registry import MlflowHook
from airflow_mlops.links_mlflow import RUN_URL_XCOM_KEY, MlflowRunLink
from airflow_mlops.operators.training import EVALUATION_ARTIFACT, _parse, airflow_lineage

if TYPE_CHECKING:
    from airflow.sdk import Context

DECISION_ARTIFACT = "gate/decision.json"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class ModelGateOperator(BaseOperator):
    """Decide whether a candidate may become champion; a rejection is a normal, green outcome.

    Reads the evaluation the candidate's run recorded (``evaluation/evaluation.json``), applies the policy
    (absolute thresholds; regression limits against the champion overall and per slice; minimum slice size)
    and records the ``GateDecision`` on the run (tags, ``gate/decision.json``, metric ``gate_approved``).
    It fails closed: no policy file, or any metric the policy needs being missing, rejects. The task succeeds
    either way; ``RegisterModelOperator`` and ``PromoteModelOperator`` skip a rejected model.

    ``force_bless`` overrides a rejection; it requires ``force_bless_reason`` and is recorded for audit (who,
    why, and the reasons it overrode).

    :param evaluation: the XCom of ``EvaluateChallengerOperator`` (templated).
    :param usecase: the use-case folder whose ``gate`` section is the policy.
    :param policy_path: a policy YAML instead of a use case (templated); neither: no policy, so the gate rejects.
    :param force_bless: approve whatever the policy says (templated; e.g. ``{{ params.force_bless }}``).
    :param force_bless_reason: why; required with ``force_bless`` (templated).
    :param mlflow_conn_id: MLflow connection; see ``MlflowHook``.
    :return: (XCom) the decision without its per-metric table (approved, reasons, policy_hash,
        champion_version, forced, force_reason) plus run_id, model_uri, registered_model_name.
    :raises ValueError: ``force_bless`` without a reason, or an unreadable policy file.
    """

    template_fields = ("evaluation", "policy_path", "force_bless", "force_bless_reason")
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#f4cccc"

    def __init__(
        self,
        *,
        evaluation: dict | str,
        usecase: str | None = None,
        policy_path: str | None = None,
        force_bless: bool | str = False,
        force_bless_reason: str | None = None,
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.evaluation = evaluation
        self.usecase = usecase
        self.policy_path = policy_path
        self.force_bless = force_bless
        self.force_bless_reason = force_bless_reason
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        import mlflow

        from airflow_mlops.core import gate

        evaluation = _parse(self.evaluation)
        run_id = evaluation["run_id"]
        forced = _truthy(self.force_bless)
        reason = (self.force_bless_reason or "").strip()
        if reason in ("None", "none"):
            reason = ""
        if forced and not reason:
            raise ValueError("force_bless is set but force_bless_reason is empty: an override must say why")

        if self.usecase:
            from airflow_mlops.usecase import config

            path = str(config.load(self.usecase).config_file) + ":gate"
            policy = config.load(self.usecase).gate_policy()
        else:
            path = str(self.policy_path or "")
            policy = gate.load_policy(path) if path else None
        if policy is None:
            self.log.error("no gate policy at %s: rejecting (fail closed)", path or "(none given)")
        self.mlflow_hook.activate()
        try:
            document = mlflow.artifacts.load_dict(f"runs:/{run_id}/{EVALUATION_ARTIFACT}")
        except Exception as err:  # noqa: BLE001 - a missing evaluation is a rejection, said in the reasons
            self.log.error("cannot read %s of run %s: %s", EVALUATION_ARTIFACT, run_id, err)
            document = {"candidate": None, "champion": None, "champion_version": evaluation.get("champion_version")}
        decision = gate.decide(
            document.get("candidate"),
            document.get("champion"),
            policy,
            champion_version=document.get("champion_version"),
        )
        if document.get("champion_error"):
            decision = dataclasses.replace(
                decision, reasons=[*decision.reasons, f"champion error: {document['champion_error']}"]
            )
        if forced:
            lineage = airflow_lineage(context)
            who = lineage.get("triggered_by_user") or f"{lineage['dag_id']}/{lineage['run_id']}"
            decision = gate.force_bless(decision, reason, who=who)

        log = self.log.info if decision.approved and not decision.forced else self.log.warning
        log(
            "gate decision for run %s: %s",
            run_id,
            "FORCE-BLESSED" if decision.forced else ("APPROVED" if decision.approved else "REJECTED"),
        )
        for line in decision.reasons:
            log("  - %s", line)
        self._record(run_id, decision)
        context["ti"].xcom_push(key=RUN_URL_XCOM_KEY, value=self.mlflow_hook.run_url(run_id))
        small = {k: v for k, v in decision.to_dict().items() if k != "metrics"}
        return {
            **small,
            "run_id": run_id,
            "model_uri": evaluation["model_uri"],
            "registered_model_name": evaluation["registered_model_name"],
            "champion_alias": evaluation.get("champion_alias", "champion"),
        }

    def _record(self, run_id: str, decision: Any) -> None:
        from mlflow.entities import Metric, RunTag

        client = self.mlflow_hook.client
        tags = {
            "mlops.gate.approved": str(decision.approved).lower(),
            "mlops.gate.forced": str(decision.forced).lower(),
            "mlops.gate.policy_sha256": decision.policy_hash or "none",
            "mlops.gate.champion_version": decision.champion_version or "none",
            "mlops.gate.summary": decision.summary[:7900],
        }
        if decision.forced:
            tags["mlops.gate.force_reason"] = decision.force_reason or ""
        client.log_batch(
            run_id,
            metrics=[Metric("gate_approved", float(decision.approved), int(time.time() * 1000), 0)],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        client.log_text(run_id, json.dumps(decision.to_dict(), indent=2, sort_keys=True), DECISION_ARTIFACT)
