"""Stage 10: apply the retraining policy to a month's checks and ask for a retrain, at most once
(``core.retraining_policy``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops.assets import RETRAIN_REQUESTED
from airflow_mlops.operators.monitoring_base import POLICY_ZONE, MonitoringBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.retraining_policy import PolicyDecision


class RetrainingPolicyOperator(MonitoringBaseOperator):
    """Apply the retraining policy to a month's drift and performance summaries; ask for a retrain, at most once.

    Earlier decisions live in the lake, one JSON file per data interval (``monitoring/policy/<model>/<key>.json``,
    written atomically); they give the cooldown, the cap and the dedupe (an interval that triggered never
    triggers again, whatever reruns). The decision and its reasons are logged, stored there, pushed to XCom
    under ``decision`` and tagged on the champion's model version. A positive decision is the task's success
    and emits the ``retrain_requested`` Asset event with extra ``reasons``, ``interval_start``,
    ``interval_end``, ``month``, ``model``, ``champion_version``; otherwise the task is skipped and emits nothing.

    The decision is stored before the event is emitted: if emitting fails, the retry finds the interval decided
    and does not ask again (at most once). Re-post it by hand through the REST API if that happens.

    With no champion the checks are skipped and this task (``trigger_rule="none_failed"`` in the DAG) applies the
    policy's bootstrap rule instead: once ``policy.bootstrap.min_months`` validated months exist up to the
    month, it asks for the first model.

    Arguments: those of ``MonitoringBaseOperator``, and:

    :param drift: the XCom of ``DriftCheckOperator`` (templated: pass ``drift_check.output``, resolved to its dict);
        None when the check was skipped.
    :param performance: the XCom of ``PerformanceCheckOperator`` (templated, like ``drift``); may be None.
    :return: (XCom) the decision (retrain, reasons, triggers, suppressed_by, interval, model, champion_version).
    :raises AirflowSkipException: the policy does not ask for a retrain (decision recorded first).
    :raises AirflowFailException: ``drift`` or ``performance`` is not a summary (a dict), or the policy is invalid.
    """

    template_fields = ("drift", "performance", "month", "registered_model_name", "config_path")
    ui_color = "#fce8e6"

    def __init__(self, *, drift: dict | None, performance: dict | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("outlets", [RETRAIN_REQUESTED])
        super().__init__(**kwargs)
        self.drift = drift
        self.performance = performance

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core import retraining_policy as rp
        from airflow_mlops.core.tracking import airflow_lineage

        drift_summary, perf_summary = self._summary("drift"), self._summary("performance")
        policy = self.checked(rp.RetrainingPolicy.from_dict, self.config.get("policy") or {})
        source = drift_summary or perf_summary
        if not isinstance(source, dict) or not source.get("interval_start"):
            source = self._without_summaries(context)
        interval = rp.Interval.parse(source["interval_start"], source["interval_end"])
        folder = self.lake.path(POLICY_ZONE, source["model"])
        records = self.lake.records(folder)
        decision, record = rp.decide_interval(
            policy,
            interval,
            source,
            drift_summary,
            perf_summary,
            records,
            decided_by=airflow_lineage(context),
        )
        self.lake.write_record(folder, interval.key, record)
        self._log_decision(decision)
        small = decision.to_dict()
        context["ti"].xcom_push(key="decision", value=small)
        self._tag_champion(decision, source.get("month") or interval.key)
        if not decision.retrain:
            raise AirflowSkipException(f"no retrain for {interval.key}: {'; '.join(decision.reasons)[:500]}")
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = decision.event_extra()
        what = f"retraining of {decision.model} requested for {decision.interval_key}"
        reports = self._reports(drift_summary, perf_summary)
        self.notify(context, "retrain_requested", what=what, why=decision.reasons, links=reports)
        return small

    def _reports(self, drift: dict[str, Any] | None, performance: dict[str, Any] | None) -> dict[str, str]:
        """The monitoring reports the decision read (label → the Airflow-served URL), for its notification."""
        from airflow_mlops.links import report_url

        summaries = {"Drift report": drift, "Performance report": performance}
        keys = {label: (s or {}).get("report_key") for label, s in summaries.items()}
        return {label: report_url(key, self.lake_url) for label, key in keys.items() if key}

    def _log_decision(self, decision: PolicyDecision) -> None:
        verdict = "RETRAIN" if decision.retrain else f"no retrain ({decision.suppressed_by or 'no trigger'})"
        log = self.log.warning if decision.retrain else self.log.info
        log("policy for %s (%s v%s): %s", decision.interval_key, decision.model, decision.champion_version, verdict)
        for line in decision.reasons:
            log("  - %s", line)

    def _tag_champion(self, decision: PolicyDecision, period: str) -> None:
        if decision.champion_version:
            verdict = {
                "retrain": decision.retrain,
                "suppressed_by": decision.suppressed_by,
                "reasons": decision.reasons,
            }
            self.mlflow_hook.tag_version(decision.model, decision.champion_version, f"mlops.policy.{period}", verdict)

    def _summary(self, name: str) -> dict[str, Any] | None:
        """The check's summary passed as ``name`` (an XComArg resolves to the dict); None or empty: none."""
        value = getattr(self, name)
        if value is not None and not isinstance(value, dict):
            self.fail(f"{name} must be the check's XCom, a dict (pass the task's .output), not {type(value).__name__}")
        return value or None

    def _without_summaries(self, context: Context) -> dict[str, Any]:
        """The checks were skipped: with no champion, the bootstrap case for the month; otherwise skip."""
        from airflow.sdk.exceptions import AirflowSkipException

        name = self.model_name()
        if self.mlflow_hook.alias_version(name, self.champion_alias) is not None:
            raise AirflowSkipException("no monitoring summary to decide on (the checks were skipped)")
        month = self.period(context)
        # The interval the checks would have covered (the monitoring window): cooldowns compare like intervals.
        window = self.window(month)
        start, end = window.start, window.end
        months = [m for m in self.lake.committed_periods("validated", self.period_kind) if m <= month]
        self.log.info("no %s model yet; validated months up to %s: %s", self.champion_alias, month, months or "none")
        return {
            "bootstrap": True,
            "month": month,
            "model": name,
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
            "months_available": len(months),
        }
