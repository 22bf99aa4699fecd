"""What the year replay shows: the month-by-month table, a PNG plot and an HTML page linking every report.

All three are written to the lake under ``reports/replay/`` (``summary.json``, ``replay.png``, ``index.html``):
the HTML links are relative, so the page works from the file system and from the Airflow UI's lake reports app
(``/mlops/lake/reports/replay/index.html``).
"""

from __future__ import annotations

import html
import io
import json
from typing import Any

from airflow_mlops.replay_loop import STAGES, MonthRow

COLUMNS = (
    ("month", 8),
    ("flights", 7),
    ("validation", 27),
    ("answered", 8),
    ("drift", 5),
    ("live AUC", 8),
    ("retrain", 7),
    ("gate", 10),
    ("champion", 8),
)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_lines(rows: list[MonthRow]) -> list[str]:
    """The month-by-month table, then one line of reasons per month that decided something."""
    header = "  ".join(f"{name:>{width}s}" if i else f"{name:{width}s}" for i, (name, width) in enumerate(COLUMNS))
    lines = [header, "-" * len(header)]
    for r in rows:
        answered = str((r.traffic or {}).get("answered", "-"))
        retrain = "-" if r.retrain is None else ("YES" if r.retrain else "no")
        champion = f"v{r.champion_version}" if r.champion_version else "-"
        if r.promoted:
            champion += "*"
        cells = (
            r.month,
            str(r.rows),
            r.validation,
            answered,
            _f(r.drift_share),
            _f(r.live_roc_auc, 3),
            retrain,
            r.gate or "-",
            champion,
        )
        lines.append(
            "  ".join(
                f"{c:>{w}s}" if i else f"{c:{w}s}" for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS, strict=True))
            )
        )
    lines.append(
        "(* promoted this month; drift = share of model features drifted; live AUC on the month's answered flights)"
    )
    lines.append("")
    for r in rows:
        why = []
        if r.quarantined:
            why.append("quarantined: " + "; ".join(", ".join(q["failed"]) for q in r.quarantined))
        if r.policy_reasons:
            why.append(
                f"policy ({'retrain' if r.retrain else r.suppressed_by or 'no trigger'}): "
                + "; ".join(r.policy_reasons[:3])
            )
        if r.gate:
            why.append(f"gate {r.gate}: " + "; ".join(r.gate_reasons[:2]))
        if why:
            lines.append(f"{r.month}: " + " | ".join(why))
    return lines


def stage_totals(rows: list[MonthRow]) -> dict[str, float]:
    return {stage: round(sum(r.seconds.get(stage, 0.0) for r in rows), 1) for stage in STAGES}


def plot_png(rows: list[MonthRow]) -> bytes:
    """Live ROC AUC (and the champion's hold-out figure) and drift share per month; promotions and quarantines marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    months = [r.month for r in rows]
    x = list(range(len(rows)))
    fig, auc_ax = plt.subplots(figsize=(11, 5), dpi=110)
    drift_ax = auc_ax.twinx()
    drift_ax.bar(x, [r.drift_share or 0.0 for r in rows], color="#f4b183", alpha=0.6, label="drift share (features)")
    drift_ax.set_ylim(0, 1)
    drift_ax.set_ylabel("share of features drifted")
    auc_ax.set_zorder(drift_ax.get_zorder() + 1)
    auc_ax.patch.set_visible(False)
    live = [(i, r.live_roc_auc) for i, r in zip(x, rows, strict=True) if r.live_roc_auc is not None]
    hold = [(i, r.holdout_roc_auc) for i, r in zip(x, rows, strict=True) if r.holdout_roc_auc is not None]
    if live:
        auc_ax.plot(*zip(*live, strict=True), marker="o", color="#1f4e79", label="champion: live ROC AUC")
    if hold:
        auc_ax.plot(
            *zip(*hold, strict=True), ls="--", marker="_", ms=14, color="#7f7f7f", label="champion: hold-out ROC AUC"
        )
    values = [v for _, v in live + hold]
    low = min(values, default=0.6)
    auc_ax.set_ylim(min(0.5, low - 0.02), 1.0)
    auc_ax.set_ylabel("ROC AUC")
    for i, r in zip(x, rows, strict=True):
        mark = None
        if r.promoted:
            auc_ax.axvline(i + 0.5, color="#2e7d32", lw=1.5)
            mark = (f"v{r.promoted} promoted", "#2e7d32")
        elif r.gate and r.gate != "approved":
            mark = (f"not promoted: {r.gate}", "#b00020")
        if mark:
            text, color = mark
            auc_ax.annotate(text, (i + 0.5, 0.98), rotation=90, va="top", ha="right", fontsize=8, color=color)
        if r.quarantined:
            auc_ax.annotate("quarantined", (i, 0.52), ha="center", fontsize=8, color="#b00020")
    auc_ax.set_xticks(x, months, rotation=0)
    auc_ax.set_title("airflow-mlops year replay: the champion on live traffic")
    handles = auc_ax.get_legend_handles_labels()[0] + drift_ax.get_legend_handles_labels()[0]
    auc_ax.legend(handles=handles, loc="lower left", fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def _link(key: str | None, label: str) -> str:
    if not key:
        return ""
    # index.html lives in reports/replay/: the lake keys of other reports are relative to the lake root.
    return f'<a href="../../{html.escape(key)}">{html.escape(label)}</a>'


def summary_html(rows: list[MonthRow], meta: dict[str, Any]) -> str:
    """The replay's page: the plot, the table with a link to every report and Airflow run, the reasons."""
    e = html.escape
    body = []
    for r in rows:
        links = [
            _link(r.data_docs, "Data Docs"),
            *(_link(q["report"], f"quarantine {q['batch']}") for q in r.quarantined),
            _link(r.reports.get("drift"), "drift"),
            _link(r.reports.get("performance"), "performance"),
            *(
                f'<a href="{e(meta["airflow_url"])}/dags/{e(dag)}/runs/{e(run)}">{e(kind)} run</a>'
                for kind, run in r.runs.items()
                for dag in [{"monitoring": "mlops_monitoring", "training": "mlops_training"}[kind]]
            ),
        ]
        reasons = "<br>".join(e(x) for x in (r.policy_reasons[:3] + [f"gate: {g}" for g in r.gate_reasons[:2]]))
        body.append(
            "<tr>"
            + "".join(
                f"<td>{c}</td>"
                for c in (
                    e(r.month),
                    r.rows,
                    e(r.validation),
                    (r.traffic or {}).get("answered", "-"),
                    _f(r.drift_share),
                    _f(r.live_roc_auc, 3),
                    _f(r.holdout_roc_auc, 3),
                    "-" if r.retrain is None else ("<b>yes</b>" if r.retrain else "no"),
                    e(r.gate or "-"),
                    (f"v{e(r.champion_version)}" if r.champion_version else "-") + (" (new)" if r.promoted else ""),
                    " · ".join(x for x in links if x),
                    reasons,
                )
            )
            + "</tr>"
        )
    totals = stage_totals(rows)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>airflow-mlops year replay</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 6px;vertical-align:top}}th{{background:#f0f4f8}}img{{max-width:100%}}</style>
</head><body>
<h1>airflow-mlops: the year replay</h1>
<p>{e(meta.get("months_label", ""))}: every month landed, validated, featurized, answered by the serving endpoint,
monitored, and retrained when the policy asked — through Airflow ({e(meta["airflow_url"])}).
Wall time {meta.get("wall_seconds", 0):.0f} s; peak memory {meta.get("peak_rss_gib", 0):.2f} GiB;
per stage: {e(", ".join(f"{k} {v:.0f} s" for k, v in totals.items()))}.</p>
<img src="replay.png" alt="live ROC AUC and drift per month">
<table><tr><th>month</th><th>flights</th><th>validation</th><th>answered</th><th>drift share</th>
<th>live ROC AUC</th><th>hold-out ROC AUC</th><th>retrain</th><th>gate</th><th>champion</th><th>reports</th>
<th>why</th></tr>
{"".join(body)}
</table>
<p>Reports open through the Airflow UI's lake reports app (log in first), or from the lake on disk.</p>
</body></html>
"""


def write_outputs(lake: Any, rows: list[MonthRow], meta: dict[str, Any]) -> dict[str, str]:
    """Write ``summary.json``, ``replay.png`` and ``index.html`` under ``reports/replay/``; returns their keys."""
    from airflow_mlops.replay_loop import REPLAY_ZONE

    summary = {"meta": {**meta, "stage_seconds": stage_totals(rows)}, "months": [r.to_dict() for r in rows]}
    files = {
        "summary.json": json.dumps(summary, indent=2, default=str).encode(),
        "replay.png": plot_png(rows),
        "index.html": summary_html(rows, meta).encode(),
    }
    keys = {}
    for name, data in files.items():
        key = f"{REPLAY_ZONE}/{name}"
        lake.write_file(lake.path(key), data, rows=len(rows))
        keys[name] = key
    return keys
