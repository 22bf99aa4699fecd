"""The model gate: a policy decides whether a candidate may replace the champion. Fails closed.

Rules, in order (every failed rule adds a reason; any reason of rejection rejects):

* no policy, or a policy with no rule at all → reject;
* absolute floors / ceilings on the candidate's overall metrics (always applied);
* no champion (first model): nothing else, and the reasons say so;
* a champion: the candidate must be scored on the same hold-out (same size), and may be worse than the
  champion by at most ``max_regression.overall[metric]`` overall and ``max_regression.per_slice[metric]``
  on every slice of ``slice_columns`` with at least ``min_slice_size`` rows (smaller slices are listed,
  not judged);
* any metric a rule needs that is missing or undefined (``None``) on either side → reject.

Rules may name the metrics of any task (``core.evaluation.METRIC_DIRECTIONS``: classification's ROC AUC, log
loss, Brier, precision, recall; regression's RMSE, MAE, R²), each judged in its own direction. A rule on a
metric the evaluation does not report (a ROC AUC floor on a regression) finds it missing and rejects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from airflow_mlops.core.evaluation import METRIC_DIRECTIONS, Evaluation


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds a candidate must meet; ``sha256`` identifies the policy a decision was made under."""

    absolute: dict[str, dict[str, float]] = field(default_factory=dict)
    max_regression_overall: dict[str, float] = field(default_factory=dict)
    max_regression_slice: dict[str, float] = field(default_factory=dict)
    min_slice_size: int = 0
    slice_columns: tuple[str, ...] = ()
    sha256: str = ""

    @property
    def has_rules(self) -> bool:
        return bool(self.absolute or self.max_regression_overall or self.max_regression_slice)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GatePolicy:
        """Parse and check a policy mapping; raises ``ValueError`` on unknown metrics or bounds."""
        if not isinstance(data, dict):
            raise ValueError("a gate policy must be a mapping")
        absolute = {}
        for metric, bounds in (data.get("absolute") or {}).items():
            _known(metric)
            if not isinstance(bounds, dict) or not bounds or set(bounds) - {"min", "max"}:
                raise ValueError(f"absolute.{metric} must be a mapping with 'min' and/or 'max'")
            absolute[metric] = {k: float(v) for k, v in bounds.items()}
        regression = data.get("max_regression") or {}
        overall = {_known(m): float(v) for m, v in (regression.get("overall") or {}).items()}
        per_slice = {_known(m): float(v) for m, v in (regression.get("per_slice") or {}).items()}
        if any(v < 0 for v in [*overall.values(), *per_slice.values()]):
            raise ValueError("max_regression tolerances must be >= 0")
        canonical = json.dumps(data, sort_keys=True, default=str).encode()
        return cls(
            absolute=absolute,
            max_regression_overall=overall,
            max_regression_slice=per_slice,
            min_slice_size=int(data.get("min_slice_size") or 0),
            slice_columns=tuple(data.get("slice_columns") or ()),
            sha256=hashlib.sha256(canonical).hexdigest(),
        )


def _known(metric: str) -> str:
    """``metric`` if a gate rule may name it (a metric of any task); else ``ValueError`` naming it.

    :param metric: the metric a policy names.
    """
    if metric not in METRIC_DIRECTIONS:
        raise ValueError(f"unknown metric {metric!r} in the gate policy; known: {', '.join(METRIC_DIRECTIONS)}")
    return metric


def load_policy(path: str | Path) -> GatePolicy | None:
    """The policy in a YAML file; ``None`` if there is no such file (the gate then rejects)."""
    from airflow_mlops.core.yaml_files import read_mapping

    data = read_mapping(path, "a mapping (the gate policy: thresholds, regression, slices, ...)", missing_ok=True)
    return None if data is None else GatePolicy.from_dict(data)


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: small, JSON-ready (XCom, MLflow tags and artifacts)."""

    approved: bool
    reasons: list[str]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy_hash: str | None = None
    champion_version: str | None = None
    forced: bool = False
    force_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateDecision:
        return cls(
            approved=bool(data["approved"]),
            reasons=list(data.get("reasons") or []),
            metrics=dict(data.get("metrics") or {}),
            policy_hash=data.get("policy_hash"),
            champion_version=data.get("champion_version"),
            forced=bool(data.get("forced", False)),
            force_reason=data.get("force_reason"),
        )

    @property
    def verdict(self) -> str:
        """``APPROVED``, ``REJECTED`` or ``FORCE-BLESSED``."""
        return "FORCE-BLESSED" if self.forced else ("APPROVED" if self.approved else "REJECTED")

    @property
    def summary(self) -> str:
        return f"{self.verdict}: " + "; ".join(self.reasons)

    def run_tags(self) -> dict[str, str]:
        """The decision as tags of the candidate's run (``mlops.gate.*``)."""
        tags = {
            "mlops.gate.approved": str(self.approved).lower(),
            "mlops.gate.forced": str(self.forced).lower(),
            "mlops.gate.policy_sha256": self.policy_hash or "none",
            "mlops.gate.champion_version": self.champion_version or "none",
            "mlops.gate.summary": self.summary[:7900],
        }
        if self.forced:
            tags["mlops.gate.force_reason"] = self.force_reason or ""
        return tags


def _worse_by(metric: str, candidate: float, reference: float) -> float:
    """How much worse ``candidate`` is than ``reference`` (negative: better), in ``metric``'s own direction."""
    return reference - candidate if METRIC_DIRECTIONS[metric] else candidate - reference


def decide(
    candidate: Evaluation | dict | None,
    champion: Evaluation | dict | None,
    policy: GatePolicy | None,
    *,
    champion_version: str | None = None,
) -> GateDecision:
    """Judge ``candidate`` under ``policy``, against ``champion`` (evaluated on the same hold-out) if one exists.

    :param champion_version: the version the champion alias pointed at when both were scored; ``None`` means
        there is no champion yet. A champion version without a champion evaluation rejects.
    """
    if policy is None:
        return GateDecision(False, ["no gate policy: the gate fails closed and approves nothing"])
    if not policy.has_rules:
        return GateDecision(
            False, ["the gate policy has no rules: a gate without thresholds approves nothing"], {}, policy.sha256
        )
    if candidate is None:
        return GateDecision(False, ["no evaluation of the candidate"], {}, policy.sha256, champion_version)
    cand = candidate if isinstance(candidate, Evaluation) else Evaluation.from_dict(candidate)
    champ = champion if champion is None or isinstance(champion, Evaluation) else Evaluation.from_dict(champion)

    failures: list[str] = []
    notes: list[str] = []
    compared: dict[str, dict[str, Any]] = {}

    for metric, bounds in policy.absolute.items():
        value = cand.overall.get(metric)
        key = f"overall.{metric}"
        if value is None:
            failures.append(f"{metric} is missing from the candidate's evaluation (fail closed)")
            compared[key] = {"candidate": None, **bounds, "passed": False}
            continue
        ok = True
        if "min" in bounds and value < bounds["min"]:
            failures.append(f"{metric} {value:.4f} is below the floor {bounds['min']:.4f}")
            ok = False
        if "max" in bounds and value > bounds["max"]:
            failures.append(f"{metric} {value:.4f} is above the ceiling {bounds['max']:.4f}")
            ok = False
        compared[key] = {"candidate": value, **bounds, "passed": ok}

    if champion_version is None:
        notes.append("first model: no champion to compare against, judged on the absolute thresholds only")
    elif champ is None:
        failures.append(f"the champion (version {champion_version}) has no evaluation on this hold-out (fail closed)")
    else:
        n_cand, n_champ = cand.overall.get("n"), champ.overall.get("n")
        if n_cand != n_champ:
            failures.append(f"candidate and champion were scored on different hold-outs ({n_cand} vs {n_champ} rows)")
        for metric, tolerance in policy.max_regression_overall.items():
            _compare(f"overall.{metric}", metric, cand.overall, champ.overall, tolerance, failures, compared)
        ignored: list[str] = []
        for column in policy.slice_columns if policy.max_regression_slice else ():
            cand_slices, champ_slices = cand.slices.get(column), champ.slices.get(column)
            if cand_slices is None or champ_slices is None:
                failures.append(f"slice column {column!r} is missing from the evaluation (fail closed)")
                continue
            for value, metrics in sorted(cand_slices.items()):
                size = metrics.get("n") or 0
                if size < policy.min_slice_size:
                    ignored.append(f"{column}={value} (n={size})")
                    continue
                reference = champ_slices.get(value)
                if reference is None:
                    failures.append(f"slice {column}={value} is missing from the champion's evaluation (fail closed)")
                    continue
                for metric, tolerance in policy.max_regression_slice.items():
                    _compare(
                        f"slice.{column}.{value}.{metric}", metric, metrics, reference, tolerance, failures, compared
                    )
        if ignored:
            notes.append(
                f"{len(ignored)} slice(s) below min_slice_size={policy.min_slice_size} not judged: {', '.join(ignored)}"
            )

    if failures:
        return GateDecision(False, failures + notes, compared, policy.sha256, champion_version)
    checks = len(compared)
    against = f"champion version {champion_version}" if champion_version else "the absolute thresholds"
    return GateDecision(
        True, [f"all {checks} checks passed against {against}", *notes], compared, policy.sha256, champion_version
    )


def _compare(
    key: str,
    metric: str,
    candidate: dict[str, Any],
    reference: dict[str, Any],
    tolerance: float,
    failures: list[str],
    compared: dict[str, dict[str, Any]],
) -> None:
    cand, champ = candidate.get(metric), reference.get(metric)
    if cand is None or champ is None:
        side = "candidate" if cand is None else "champion"
        failures.append(f"{key} is missing for the {side} (fail closed)")
        compared[key] = {"candidate": cand, "champion": champ, "max_regression": tolerance, "passed": False}
        return
    worse = _worse_by(metric, cand, champ)
    passed = worse <= tolerance + 1e-12
    compared[key] = {
        "candidate": cand,
        "champion": champ,
        "worse_by": worse,
        "max_regression": tolerance,
        "passed": passed,
    }
    if not passed:
        failures.append(f"{key} {cand:.4f} vs champion {champ:.4f}: worse by {worse:.4f} > {tolerance:.4f} allowed")


def force_bless(decision: GateDecision, reason: str | None, who: str = "unknown") -> GateDecision:
    """Override a decision by hand; the reason is required and kept for audit. Raises ``ValueError`` without one."""
    if not reason or not str(reason).strip():
        raise ValueError("force_bless needs a force_bless_reason: an override without a reason is not auditable")
    note = f"force-blessed by {who}: {reason.strip()}"
    if decision.approved:
        note += " (the gate had approved anyway)"
    else:
        note += f" (overriding {len(decision.reasons)} gate reason(s))"
    return replace(decision, approved=True, forced=True, force_reason=reason.strip(), reasons=[*decision.reasons, note])


def judge(
    document: dict[str, Any], policy: GatePolicy | None, *, force_reason: str | None = None, who: str = "unknown"
) -> GateDecision:
    """The gate's verdict on a candidate's evaluation document (``evaluation/evaluation.json``): ``decide``, a
    champion that could not be scored noted in the reasons, and a force-bless when ``force_reason`` is given.

    :param document: ``candidate``, ``champion``, ``champion_version`` and optionally ``champion_error``.
    :param policy: the gate policy; None rejects (fail closed).
    :param force_reason: why the decision is overridden; None: no override.
    :param who: who overrides (for the audit note).
    """
    decision = decide(
        document.get("candidate"),
        document.get("champion"),
        policy,
        champion_version=document.get("champion_version"),
    )
    if document.get("champion_error"):
        decision = replace(decision, reasons=[*decision.reasons, f"champion error: {document['champion_error']}"])
    return decision if force_reason is None else force_bless(decision, force_reason, who=who)
