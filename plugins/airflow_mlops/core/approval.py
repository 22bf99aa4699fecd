"""Human approval between infra validation and promotion: the use case's ``approval`` policy, the evidence a human
sees, and the record a decision leaves on the ledger and the registry version. Pure (no Airflow, no MLflow).

``approval`` in ``mlops.yaml`` is ``auto`` (the default: promotion needs no human), ``manual`` (every promotion
waits for a human) or ``manual_if`` (a human only when one of the listed conditions holds)::

    approval:
      mode: manual_if
      manual_if: [slice_regressed, model_family_changed]
      timeout_hours: 24      # no answer in time rejects (fail closed)

A bare ``approval: manual`` is ``{mode: manual}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

AUTO, MANUAL, MANUAL_IF = "auto", "manual", "manual_if"
MODES = (AUTO, MANUAL, MANUAL_IF)
#: The conditions ``manual_if`` may list → what each means (shown in the approval form when it holds).
CONDITIONS = {
    "slice_regressed": "a slice's metric is worse than the champion's (even within the gate's tolerance)",
    "overall_regressed": "an overall metric is worse than the champion's (even within the gate's tolerance)",
    "model_family_changed": "the estimator differs from the champion's",
    "first_model": "there is no champion yet",
    "force_blessed": "the gate's verdict was overridden (force_bless)",
}
APPROVED, REJECTED = "approved", "rejected"
#: Registry-version tags of a decision (``version_tags``).
TAG_PREFIX = "mlops.approval."
DEFAULT_TIMEOUT_HOURS = 24.0


@dataclass(frozen=True)
class ApprovalPolicy:
    """The ``approval`` section: when a human must approve a promotion, and how long they have."""

    mode: str = AUTO
    timeout_hours: float = DEFAULT_TIMEOUT_HOURS
    manual_if: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, value: Any) -> ApprovalPolicy:
        """Parse ``approval`` (None, a mode, or a mapping); ``ValueError`` names the key that is wrong."""
        if value is None:
            return cls()
        data = {"mode": value} if isinstance(value, str) else value
        if not isinstance(data, dict):
            raise ValueError(f"must be one of {', '.join(MODES)} or a mapping (mode, manual_if, timeout_hours)")
        unknown = sorted(set(data) - {"mode", "manual_if", "timeout_hours"})
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key (expected mode, manual_if, timeout_hours)")
        mode = str(data.get("mode") or AUTO)
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r}: expected one of {', '.join(MODES)}")
        conditions = data.get("manual_if") or []
        if not isinstance(conditions, list):
            raise ValueError(f"manual_if: must be a list of conditions ({', '.join(CONDITIONS)})")
        for condition in conditions:
            if condition not in CONDITIONS:
                raise ValueError(f"manual_if: unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
        if mode == MANUAL_IF and not conditions:
            raise ValueError("manual_if: mode manual_if needs at least one condition")
        if mode != MANUAL_IF and conditions:
            raise ValueError(f"manual_if: only read with mode manual_if (mode is {mode})")
        try:
            hours = float(data.get("timeout_hours", DEFAULT_TIMEOUT_HOURS))
        except (TypeError, ValueError):
            raise ValueError("timeout_hours: must be a number of hours") from None
        if hours <= 0:
            raise ValueError("timeout_hours: must be > 0 (no answer in time rejects)")
        return cls(mode=mode, timeout_hours=hours, manual_if=tuple(str(c) for c in conditions))

    @property
    def timeout(self) -> timedelta:
        return timedelta(hours=self.timeout_hours)


@dataclass(frozen=True)
class Evidence:
    """What a human decides on: the candidate, the gate's checks, infra validation, drift, links."""

    model: str
    version: str
    run_id: str | None
    gate: dict[str, Any]
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    infra: dict[str, Any] | None = None
    drift: list[dict[str, Any]] = field(default_factory=list)
    family: str | None = None
    champion_family: str | None = None
    links: dict[str, str] = field(default_factory=dict)


def regressions(checks: dict[str, dict[str, Any]], scope: str) -> list[str]:
    """The checks of ``scope`` (``overall`` or ``slice``) where the candidate is worse than the champion."""
    return sorted(k for k, c in checks.items() if k.startswith(f"{scope}.") and (c.get("worse_by") or 0) > 0)


def holding(policy: ApprovalPolicy, evidence: Evidence) -> list[str]:
    """Why a human must approve this promotion (empty: it proceeds without one)."""
    if policy.mode == AUTO:
        return []
    if policy.mode == MANUAL:
        return ["approval mode is manual: every promotion waits for a human"]
    champion = evidence.gate.get("champion_version")
    found = {
        "slice_regressed": regressions(evidence.checks, "slice"),
        "overall_regressed": regressions(evidence.checks, "overall"),
        "model_family_changed": bool(champion)
        and evidence.family != evidence.champion_family
        and [f"{evidence.champion_family} → {evidence.family}"],
        "first_model": not champion and ["no champion"],
        "force_blessed": bool(evidence.gate.get("forced")) and [str(evidence.gate.get("force_reason") or "")],
    }
    return [f"{c}: {CONDITIONS[c]} ({', '.join(found[c][:5])})" for c in policy.manual_if if found[c]]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))


def render_body(evidence: Evidence, why: list[str]) -> str:
    """The approval form's body (Markdown): why it waits, the gate's checks, infra validation, drift, links."""
    gate = evidence.gate
    lines = [
        f"**{evidence.model} v{evidence.version}** (run `{evidence.run_id}`) may replace champion "
        f"v{gate.get('champion_version') or '— (none yet)'}.",
        "",
        "**Why a human decides**",
        "",
    ]
    lines += [f"- {w}" for w in why] + ["", f"**Gate**: {'forced' if gate.get('forced') else 'approved'}", ""]
    lines += [f"- {r}" for r in gate.get("reasons") or []]
    if evidence.checks:
        lines += ["", "| check | challenger | champion | worse by | allowed | passed |", "|---|---|---|---|---|---|"]
        for key, c in sorted(evidence.checks.items()):
            allowed = c.get("max_regression", c.get("min", c.get("max")))
            lines.append(
                f"| {key} | {_fmt(c.get('candidate'))} | {_fmt(c.get('champion'))} | {_fmt(c.get('worse_by'))} "
                f"| {_fmt(allowed)} | {'yes' if c.get('passed') else 'NO'} |"
            )
    infra = evidence.infra
    lines += ["", f"**Infra validation**: {'passed' if infra and infra.get('approved') else 'not run or failed'}"]
    if infra:
        latency = ", ".join(f"{k} {v:.1f} ms" for k, v in sorted((infra.get("latency_ms") or {}).items()))
        lines += [f"- checks: {', '.join(k for k, ok in sorted((infra.get('checks') or {}).items()) if ok)}"]
        lines += [f"- latency: {latency}"] if latency else []
        lines += [f"- {r}" for r in infra.get("reasons") or []]
    lines += ["", "**Drift at training time**", ""]
    lines += [
        f"- {d.get('month') or d.get('interval_end') or ''}: {'; '.join(d.get('reasons') or [])}"
        for d in evidence.drift
    ] or ["- no retraining trigger carried drift (a scheduled or manual run)"]
    if evidence.family or evidence.champion_family:
        lines += ["", f"**Estimator**: {evidence.family} (champion: {evidence.champion_family or '—'})"]
    if evidence.links:
        lines += ["", "**Links**: " + " · ".join(f"[{name}]({url})" for name, url in evidence.links.items())]
    lines += ["", "Approve promotes; Reject (or no answer in time) leaves the champion in place."]
    return "\n".join(lines)


def record(
    *, mode: str, chosen: str, responded_by: dict[str, Any] | None, comment: Any, at: str, timed_out: bool
) -> dict[str, Any]:
    """A decision as the ledger and the version keep it: decision, approver, comment, time, mode."""
    approver = (responded_by or {}).get("name") or (responded_by or {}).get("id")
    return {
        "mode": mode,
        "decision": APPROVED if chosen == "Approve" and not timed_out else REJECTED,
        "approver": approver or ("timeout" if timed_out else None),
        "comment": None if comment in (None, "") else str(comment),
        "at": at,
        "timed_out": bool(timed_out),
    }


def version_tags(decision: dict[str, Any]) -> dict[str, str]:
    """The decision as registry-version tags (``mlops.approval.decision`` / approver / comment / at)."""
    tags = {f"{TAG_PREFIX}{k}": "" if decision.get(k) is None else str(decision[k]) for k in ("decision", "approver")}
    tags[f"{TAG_PREFIX}comment"] = (decision.get("comment") or "")[:5000]
    tags[f"{TAG_PREFIX}at"] = str(decision.get("at") or "")
    tags[f"{TAG_PREFIX}mode"] = str(decision.get("mode") or "")
    tags[f"{TAG_PREFIX}timed_out"] = str(bool(decision.get("timed_out"))).lower()
    return tags


def promotable(approval: Any) -> dict[str, Any] | None:
    """The approval step's XCom as the promotion keeps it: None without a human step (``auto``, or no condition
    held); ``ValueError`` for anything but an approval (a rejection or a timeout never promotes)."""
    if approval is None or (isinstance(approval, str) and approval.strip() in ("", "None", "null")):
        return None
    if not isinstance(approval, dict):
        raise ValueError(f"approval must be the approval step's XCom, a dict, not {type(approval).__name__}")
    if approval.get("decision") != APPROVED:
        raise ValueError(
            f"the promotion was {approval.get('decision')} by {approval.get('approver')} "
            f"({approval.get('comment') or 'no comment'}): champion stays where it is"
        )
    return dict(approval)
