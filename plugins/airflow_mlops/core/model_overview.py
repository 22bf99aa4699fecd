"""What the MLOps page shows about a model, as plain data: monitoring history, gate verdicts, a chart as SVG.

No Airflow or MLflow import: the page's app (``airflow_mlops.mlops_ui_app``) reads MLflow through its hook and
hands plain dicts to these functions, which the tests exercise on small literals.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

#: Monitoring metrics (as ``DriftCheckOperator`` / ``PerformanceCheckOperator`` log them to MLflow) per chart.
CHARTS: dict[str, dict[str, Any]] = {
    "drift": {
        "title": "Drift by period",
        "series": {"drift_share": "share of features drifted", "prediction_drift": "prediction drift (PSI)"},
    },
    "performance": {
        "title": "Live performance by period",
        "series": {"live_roc_auc": "live ROC AUC", "live_brier": "live Brier score", "decay_roc_auc": "ROC AUC decay"},
    },
}
#: The performance chart's series per task (``CHARTS["performance"]`` is the classification one): the live metrics
#: of the task and the decay of its main one, as ``PerformanceCheckOperator`` logs them (``live_<m>``, ``decay_<m>``).
PERFORMANCE_SERIES: dict[str, dict[str, str]] = {
    "classification": dict(CHARTS["performance"]["series"]),
    "regression": {"live_rmse": "live RMSE", "live_mae": "live MAE", "decay_rmse": "RMSE decay"},
}
#: Monitoring figures of a task shown in the page's table but not charted (another scale than the chart's lines).
TABLE_ONLY: dict[str, dict[str, str]] = {"classification": {}, "regression": {"live_r2": "live R²"}}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


@dataclass
class MonitoringPoint:
    """One month of monitoring of a model: the newest drift and performance checks of that month."""

    month: str
    champion_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    checked_at: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "month": self.month,
            "champion_version": self.champion_version,
            "metrics": dict(sorted(self.metrics.items())),
            "reports": self.reports,
            "statuses": self.statuses,
            "checked_at": self.checked_at,
        }


def monitoring_history(checks: list[dict[str, Any]]) -> list[MonitoringPoint]:
    """Fold monitoring check runs into one point per month, oldest first; a newer check of a kind replaces an older.

    :param checks: ``{"kind", "month", "version", "start_time" (ms), "metrics", "report", "status"}`` per run.
    """
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for check in checks:
        kind, month = check.get("kind"), check.get("month")
        if not kind or not month:
            continue
        key = (month, kind)
        if key not in newest or int(check.get("start_time") or 0) > int(newest[key].get("start_time") or 0):
            newest[key] = check
    points: dict[str, MonitoringPoint] = {}
    for (month, kind), check in sorted(newest.items()):
        point = points.setdefault(month, MonitoringPoint(month=month))
        point.champion_version = str(check.get("version")) if check.get("version") else point.champion_version
        point.metrics.update({k: float(v) for k, v in (check.get("metrics") or {}).items() if _finite(v)})
        if check.get("report"):
            point.reports[kind] = str(check["report"])
        if check.get("status"):
            point.statuses[kind] = str(check["status"])
        point.checked_at[kind] = int(check.get("start_time") or 0)
    return [points[m] for m in sorted(points)]


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def parse_gate_summary(summary: str | None) -> dict[str, Any]:
    """``"APPROVED: r1; r2"`` (the ``mlops.gate.summary`` run tag) → verdict and reasons."""
    if not summary:
        return {"verdict": None, "reasons": []}
    verdict, _, rest = summary.partition(": ")
    reasons = [r.strip() for r in rest.split("; ") if r.strip()] if rest else []
    return {"verdict": verdict.strip() or None, "reasons": reasons}


def gate_verdict(decision: dict[str, Any]) -> str:
    if decision.get("forced"):
        return "FORCE-BLESSED"
    return "APPROVED" if decision.get("approved") else "REJECTED"


def short_json(value: str | None) -> Any:
    """A JSON tag's value, or the raw string when it is not JSON (tags written by hand)."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def line_chart_svg(
    title: str,
    months: list[str],
    series: dict[str, list[float | None]],
    *,
    labels: dict[str, str] | None = None,
    width: int = 640,
    height: int = 260,
) -> str:
    """A self-contained SVG line chart (one line per series, months on x); gaps where a value is missing."""
    labels = labels or {}
    left, right, top, bottom = 52, 16, 34, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for line in series.values() for v in line if v is not None and _finite(v)]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if not months or not values:
        parts.append(f'<text x="{left}" y="{top + plot_h / 2:.0f}" fill="#666">no monitoring data yet</text></svg>')
        return "".join(parts)
    low, high = min(values + [0.0]), max(values)
    if high - low < 1e-9:
        high = low + 1.0
    pad = (high - low) * 0.08
    low, high = (low - pad if low < 0 else low), high + pad

    def x_of(i: int) -> float:
        return left + (plot_w * (i + 0.5) / len(months))

    def y_of(v: float) -> float:
        return top + plot_h - (v - low) / (high - low) * plot_h

    for k in range(5):  # horizontal grid with its values
        v = low + (high - low) * k / 4
        y = y_of(v)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{v:.2f}</text>')
    if low < 0 < high:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y_of(0):.1f}" y2="{y_of(0):.1f}" stroke="#999"/>')
    for i, month in enumerate(months):
        parts.append(
            f'<text x="{x_of(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#555">{escape(month)}</text>'
        )
    for n, (name, line) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, v in enumerate(line):
            if v is None or not _finite(v):
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{x_of(i):.1f},{y_of(float(v)):.1f}")
            parts.append(
                f'<circle cx="{x_of(i):.1f}" cy="{y_of(float(v)):.1f}" r="3" fill="{color}" class="point" '
                f'data-series="{escape(name)}" data-month="{escape(months[i])}" data-value="{float(v):.4f}">'
                f"<title>{escape(labels.get(name, name))} {escape(months[i])}: {float(v):.4f}</title></circle>"
            )
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) > 1:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(seg)}"/>')
        lx = left + (n * plot_w / max(len(series), 1))
        ly = height - 12
        parts.append(f'<rect x="{lx:.0f}" y="{ly - 9}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{lx + 14:.0f}" y="{ly}" fill="#333">{escape(labels.get(name, name))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def chart_spec(kind: str, task: str = "classification") -> dict[str, Any]:
    """The title and series of the ``drift`` or ``performance`` chart of a ``task`` model.

    :param kind: a key of ``CHARTS``.
    :param task: ``classification`` or ``regression`` (the performance chart's metrics are the task's).
    """
    spec = CHARTS[kind]
    if kind == "performance":
        return {"title": spec["title"], "series": PERFORMANCE_SERIES[_known_task(task)]}
    return spec


def monitoring_columns(task: str = "classification") -> dict[str, str]:
    """The monitoring figures the page's table shows for a ``task`` model, metric name → label, in order.

    :param task: ``classification`` or ``regression``.
    """
    task = _known_task(task)
    return {**CHARTS["drift"]["series"], **PERFORMANCE_SERIES[task], **TABLE_ONLY[task]}


def task_of_metrics(names: Any) -> str | None:
    """The task whose metrics appear in ``names`` (``holdout_rmse``, ``live_roc_auc``, ...); None if neither does.

    :param names: metric names, with or without a ``holdout_`` / ``live_`` / ``decay_`` prefix.
    """
    from airflow_mlops.core.evaluation import METRICS, REGRESSION_METRICS

    bare = {str(n).split("_", 1)[1] if str(n).startswith(("holdout_", "live_", "decay_")) else str(n) for n in names}
    if bare & set(REGRESSION_METRICS):
        return "regression"
    if bare & set(METRICS):
        return "classification"
    return None


def _known_task(task: str | None) -> str:
    return task if task in PERFORMANCE_SERIES else "classification"


def chart_for(kind: str, points: list[MonitoringPoint], task: str = "classification") -> str:
    """The ``drift`` or ``performance`` chart of a model's monitoring history (see ``chart_spec``).

    :param kind: a key of ``CHARTS``.
    :param points: the monitoring history, oldest first.
    :param task: the model's task: the performance chart shows its metrics.
    """
    spec = chart_spec(kind, task)
    months = [p.month for p in points]
    series = {name: [p.metrics.get(name) for p in points] for name in spec["series"]}
    return line_chart_svg(spec["title"], months, series, labels=spec["series"])
