"""The retraining policy: when monitoring signals ask for a new model, and when they must not.

Triggers (any one suffices): the share of drifted features, a named feature's drift score, the drift of the
champion's predictions, or the decay of its live performance against its hold-out (overall or in one slice)
at or above its threshold. A trigger whose signal is missing (no traffic, no outcomes yet, too few rows) does
not fire; the reasons say so. A policy with no trigger configured never retrains.

Brakes, applied in order to a would-be retrain:

* **dedupe** — a data interval that triggered once never triggers again, however often its check is re-run
  (retries, clears, backfills): the decision is keyed by the interval, not by the run.
* **cooldown** — no second retrain within ``cooldown_days`` *of data* (interval starts, not wall clock: a
  replay of 2013 runs in 2026) of another interval that triggered.
* **cap** — at most ``max_per_period`` triggering intervals per calendar ``period`` (month, quarter, year) of data.

**Bootstrap.** With no champion there is nothing to monitor, and nothing answers traffic: once
``bootstrap_min_months`` months of validated data exist, the policy asks for the first model (trigger
``bootstrap``). Dedupe applies to it; cooldown and cap do not (a service without a model is an outage, not a
drift). ``bootstrap_min_months: null`` leaves the first training to a person or the schedule.

A negative decision is not final: the interval may be checked again (e.g. once its outcomes arrive) and may then
trigger — once. ``decide`` is a pure function of the signals, the policy and the earlier decisions; persisting
them is the caller's job (``RetrainingPolicyOperator`` keeps one JSON file per interval in the lake).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_mlops.core.performance import METRIC_DIRECTIONS

PERIODS = ("month", "quarter", "year")


@dataclass(frozen=True)
class RetrainingPolicy:
    """Thresholds and brakes (``include/config/monitoring.yaml``, section ``policy``)."""

    drift_share: float | None = None
    feature_drift: dict[str, float] = field(default_factory=dict)
    prediction_drift: float | None = None
    performance_decay: dict[str, float] = field(default_factory=dict)
    slice_performance_decay: dict[str, float] = field(default_factory=dict)
    cooldown_days: int = 0
    cap_period: str = "year"
    max_per_period: int | None = None
    bootstrap_min_months: int | None = None

    def __post_init__(self) -> None:
        if self.cap_period not in PERIODS:
            raise ValueError(f"policy cap period must be one of {', '.join(PERIODS)}, not {self.cap_period!r}")
        if self.cooldown_days < 0:
            raise ValueError("cooldown_days cannot be negative")
        if self.max_per_period is not None and self.max_per_period < 0:
            raise ValueError("max_per_period cannot be negative")
        if self.bootstrap_min_months is not None and self.bootstrap_min_months < 1:
            raise ValueError("bootstrap_min_months must be at least 1 (or null: no bootstrap)")
        if self.drift_share is not None and not 0 < self.drift_share <= 1:
            raise ValueError(f"drift_share must be in (0, 1], got {self.drift_share}")
        for where, limits in (("overall", self.performance_decay), ("per_slice", self.slice_performance_decay)):
            unknown = sorted(m for m in limits if m not in METRIC_DIRECTIONS)
            if unknown:
                raise ValueError(
                    f"policy.performance_decay.{where}: unknown metrics {unknown}; known: {', '.join(METRIC_DIRECTIONS)}"
                )
            negative = sorted(m for m, v in limits.items() if v < 0)
            if negative:
                raise ValueError(
                    f"policy.performance_decay.{where}: {negative} must be >= 0 (a decay is how much worse, in the "
                    "metric's units, whatever its direction)"
                )

    @property
    def has_triggers(self) -> bool:
        return any(
            (
                self.drift_share is not None,
                self.feature_drift,
                self.prediction_drift is not None,
                self.performance_decay,
                self.slice_performance_decay,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrainingPolicy:
        perf = data.get("performance_decay") or {}
        cap = data.get("cap") or {}

        def _opt(value: Any) -> float | None:
            return None if value is None else float(value)

        return cls(
            drift_share=_opt(data.get("drift_share")),
            feature_drift={k: float(v) for k, v in (data.get("feature_drift") or {}).items()},
            prediction_drift=_opt(data.get("prediction_drift")),
            performance_decay={k: float(v) for k, v in (perf.get("overall") or {}).items()},
            slice_performance_decay={k: float(v) for k, v in (perf.get("per_slice") or {}).items()},
            cooldown_days=int(data.get("cooldown_days", 0)),
            cap_period=str(cap.get("period", "year")),
            max_per_period=None if cap.get("max") is None else int(cap["max"]),
            # min_periods names it for any kind of period (days of a daily use case); min_months is the older key.
            bootstrap_min_months=_int_or_none(
                (data.get("bootstrap") or {}).get("min_periods", (data.get("bootstrap") or {}).get("min_months"))
            ),
        )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def load_policy(path: str | Path) -> RetrainingPolicy:
    """The ``policy`` section of the monitoring config."""
    from airflow_mlops.core.yaml_files import read_mapping

    data = read_mapping(path, "a mapping (the monitoring config: reference, drift, performance, policy, ...)")
    if not isinstance(data, dict) or not isinstance(data.get("policy"), dict):
        raise ValueError(f"{path} has no 'policy' section")
    return RetrainingPolicy.from_dict(data["policy"])


@dataclass(frozen=True)
class Interval:
    """A data interval ``[start, end)`` (UTC); its ``key`` names its decision."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"empty data interval {self.start} .. {self.end}")

    @property
    def key(self) -> str:
        return f"{_utc(self.start):%Y%m%dT%H%M%S}--{_utc(self.end):%Y%m%dT%H%M%S}"

    @classmethod
    def parse(cls, start: str | datetime, end: str | datetime) -> Interval:
        return cls(_utc(start), _utc(end))


def _utc(value: str | datetime) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def period_of(moment: datetime, period: str) -> str:
    moment = _utc(moment)
    if period == "month":
        return f"{moment:%Y-%m}"
    if period == "quarter":
        return f"{moment.year}-Q{(moment.month - 1) // 3 + 1}"
    return f"{moment.year}"


@dataclass
class PolicyDecision:
    """What the policy decided for one interval, and why."""

    retrain: bool
    reasons: list[str]
    triggers: list[str]
    suppressed_by: str | None
    interval_key: str
    interval_start: str
    interval_end: str
    policy_sha256: str
    decided_at: str = ""
    month: str | None = None
    model: str | None = None
    champion_version: str | None = None
    decided_by: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def event_extra(self) -> dict[str, Any]:
        """The extra of the ``retrain_requested`` Asset event a positive decision emits."""
        return {
            "reasons": self.reasons,
            "interval_start": self.interval_start,
            "interval_end": self.interval_end,
            "month": self.month,
            "model": self.model,
            "champion_version": self.champion_version,
            "policy_sha256": self.policy_sha256,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyDecision:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


def triggers(
    policy: RetrainingPolicy, drift: dict[str, Any] | None, performance: dict[str, Any] | None
) -> tuple[list[str], list[str]]:
    """(triggers that fired, notes on signals that were missing), from the checks' summaries."""
    fired, notes = [], []
    usable_drift = bool(drift) and drift.get("enough_rows", True) and drift.get("status", "ok") == "ok"
    if drift and not usable_drift:
        notes.append(f"drift not judged: {drift.get('reason') or 'too few rows'} ({drift.get('rows', 0)} rows)")
    elif not drift:
        notes.append("no drift summary")
    if usable_drift:
        share = drift.get("drift_share")
        if policy.drift_share is not None and share is not None and share >= policy.drift_share:
            drifted = ", ".join(drift.get("drifted_columns") or [])
            fired.append(f"drift share {share:.2f} >= {policy.drift_share:.2f} ({drifted})")
        scores = drift.get("scores") or {}
        for feature, limit in sorted(policy.feature_drift.items()):
            value = scores.get(feature)
            if value is not None and value >= limit:
                fired.append(f"feature {feature} drift {value:.3f} >= {limit:.3f}")
        pred = drift.get("prediction_drift")
        if policy.prediction_drift is not None and pred is not None and pred >= policy.prediction_drift:
            fired.append(f"prediction drift {pred:.3f} >= {policy.prediction_drift:.3f}")
    usable_perf = bool(performance) and performance.get("enough_rows", True) and performance.get("status", "ok") == "ok"
    if performance and not usable_perf:
        notes.append(
            f"performance not judged: {performance.get('reason') or 'too few rows'} ({performance.get('rows', 0)} rows)"
        )
    elif not performance:
        notes.append("no performance summary")
    if usable_perf:
        for metric, limit in sorted(policy.performance_decay.items()):
            value = (performance.get("decay") or {}).get(metric)
            if value is not None and value >= limit:
                live, ref = (performance.get("live") or {}).get(metric), (performance.get("holdout") or {}).get(metric)
                fired.append(f"{metric} decayed by {value:.4f} >= {limit:.4f} (live {live}, hold-out {ref})")
        for metric, limit in sorted(policy.slice_performance_decay.items()):
            worst = [
                (k, v.get(metric))
                for k, v in (performance.get("slice_decay") or {}).items()
                if v.get(metric) is not None
            ]
            crossing = sorted([(k, v) for k, v in worst if v >= limit], key=lambda kv: -kv[1])
            if crossing:
                names = ", ".join(f"{k} {v:.4f}" for k, v in crossing[:5])
                fired.append(f"{metric} decayed >= {limit:.4f} in {len(crossing)} slice(s): {names}")
    return fired, notes


def _identity(policy: RetrainingPolicy, interval: Interval, now: datetime | None, context: dict[str, Any]) -> dict:
    """What every decision records besides its verdict: the interval, the policy, when, for whom, by whom."""
    return dict(
        interval_key=interval.key,
        interval_start=interval.start.isoformat(),
        interval_end=interval.end.isoformat(),
        policy_sha256=policy.sha256,
        decided_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        month=context.get("month"),
        model=context.get("model"),
        champion_version=context.get("champion_version"),
        decided_by=dict(context.get("decided_by") or {}),
    )


def decide(
    policy: RetrainingPolicy,
    interval: Interval,
    drift: dict[str, Any] | None,
    performance: dict[str, Any] | None,
    history: list[PolicyDecision],
    *,
    now: datetime | None = None,
    **context: Any,
) -> PolicyDecision:
    """Decide for ``interval`` given the checks' summaries and the earlier decisions (any intervals)."""
    fired, notes = triggers(policy, drift, performance)
    base = _identity(policy, interval, now, context)
    if not policy.has_triggers:
        return PolicyDecision(
            False, ["the policy configures no trigger: never retrain", *notes], [], "no_policy", **base
        )
    if not fired:
        return PolicyDecision(False, ["no trigger crossed its threshold", *notes], [], None, **base)

    positives = [d for d in history if d.retrain]
    same = [d for d in positives if d.interval_key == interval.key]
    if same:
        first = same[0]
        return PolicyDecision(
            False,
            [
                f"interval {interval.key} already triggered a retrain (decided {first.decided_at} by "
                f"{json.dumps(first.decided_by, sort_keys=True)}): never twice",
                *fired,
            ],
            fired,
            "dedupe",
            **base,
        )
    others = [d for d in positives if d.interval_key != interval.key]
    if policy.cooldown_days:
        near = [
            d
            for d in others
            if abs((_utc(d.interval_start) - interval.start).total_seconds()) < policy.cooldown_days * 86400
        ]
        if near:
            newest = max(near, key=lambda d: d.interval_start)
            return PolicyDecision(
                False,
                [
                    f"cooldown: interval {newest.interval_key} triggered a retrain less than {policy.cooldown_days} days "
                    "of data from this one",
                    *fired,
                ],
                fired,
                "cooldown",
                **base,
            )
    if policy.max_per_period is not None:
        period = period_of(interval.start, policy.cap_period)
        count = sum(1 for d in others if period_of(_utc(d.interval_start), policy.cap_period) == period)
        if count >= policy.max_per_period:
            return PolicyDecision(
                False,
                [
                    f"cap: {count} retrain(s) already triggered in {policy.cap_period} {period} (max {policy.max_per_period})",
                    *fired,
                ],
                fired,
                "cap",
                **base,
            )
    return PolicyDecision(True, fired, fired, None, **base)


def decide_bootstrap(
    policy: RetrainingPolicy,
    interval: Interval,
    months_available: int,
    history: list[PolicyDecision],
    *,
    now: datetime | None = None,
    **context: Any,
) -> PolicyDecision:
    """Decide for ``interval`` when there is no champion: train the first model once enough months exist."""
    base = _identity(policy, interval, now, {**context, "champion_version": None})
    if policy.bootstrap_min_months is None:
        return PolicyDecision(
            False,
            ["no champion yet, and the policy does not bootstrap one (policy.bootstrap)"],
            [],
            "no_bootstrap",
            **base,
        )
    if months_available < policy.bootstrap_min_months:
        return PolicyDecision(
            False,
            [
                f"no champion yet: {months_available} validated month(s) of data, the first model needs "
                f"{policy.bootstrap_min_months} (one is held out)"
            ],
            [],
            None,
            **base,
        )
    fired = [f"bootstrap: no champion yet and {months_available} validated month(s) of data: train the first model"]
    same = [d for d in history if d.retrain and d.interval_key == interval.key]
    if same:
        return PolicyDecision(
            False,
            [
                f"interval {interval.key} already triggered a retrain (decided {same[0].decided_at}): never twice",
                *fired,
            ],
            fired,
            "dedupe",
            **base,
        )
    return PolicyDecision(True, fired, fired, None, **base)


def record_for_interval(existing: dict[str, Any] | None, decision: PolicyDecision) -> dict[str, Any]:
    """The interval's stored record after ``decision``: the latest decision, plus the triggering one, kept forever."""
    record = dict(existing or {})
    record["latest"] = decision.to_dict()
    record["evaluations"] = int(record.get("evaluations", 0)) + 1
    if decision.retrain and not record.get("triggered"):
        record["triggered"] = decision.to_dict()
    return record


def history_from_records(records: list[dict[str, Any]]) -> list[PolicyDecision]:
    """Earlier decisions as ``decide`` reads them: the triggering decision of an interval wins over later ones."""
    out = []
    for record in records:
        chosen = record.get("triggered") or record.get("latest")
        if chosen:
            out.append(PolicyDecision.from_dict(chosen))
    return out


def decide_interval(
    policy: RetrainingPolicy,
    interval: Interval,
    source: dict[str, Any],
    drift: dict[str, Any] | None,
    performance: dict[str, Any] | None,
    records: dict[str, dict[str, Any]],
    *,
    decided_by: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> tuple[PolicyDecision, dict[str, Any]]:
    """Decide for ``interval`` (the bootstrap case when ``source`` says so) and the interval's record to store.

    :param policy: the policy.
    :param interval: the data interval decided.
    :param source: the summary naming the interval: ``model``, ``month``, ``champion_version``; for the bootstrap
        case ``bootstrap`` and ``months_available``.
    :param drift: the drift check's summary, or None.
    :param performance: the performance check's summary, or None.
    :param records: the stored records of the model's intervals, by interval key.
    :param decided_by: who decides (the Airflow task's lineage).
    :param now: the decision time (default: now).
    """
    others = {k: v for k, v in records.items() if k != interval.key}
    existing = records.get(interval.key)
    history = history_from_records([*others.values(), *([existing] if existing else [])])
    context = {"month": source.get("month"), "model": source["model"], "decided_by": decided_by or {}}
    if source.get("bootstrap"):
        decision = decide_bootstrap(policy, interval, int(source["months_available"]), history, now=now, **context)
    else:
        decision = decide(
            policy,
            interval,
            drift,
            performance,
            history,
            now=now,
            champion_version=source.get("champion_version"),
            **context,
        )
    return decision, record_for_interval(existing, decision)
