"""What a replay shows: the period-by-period table, a PNG plot and an HTML page linking every report.

All three are written to the use case's lake under ``reports/replay/`` (``summary.json``, ``replay.png``,
``index.html``): the HTML links are relative, so the page works from the file system and from the Airflow UI's
lake reports app. The live metric is the task's (``replay_loop.LIVE_METRICS``: ROC AUC for classification, RMSE
for regression).
"""

from __future__ import annotations

import html
import io
import json
import math
from typing import Any

from airflow_mlops_dev.replay_loop import METRIC_LABELS, STAGES, PeriodRow

#: Columns of the table after the period: header and width.
COLUMNS = (
    ("rows", 7),
    ("validation", 27),
    ("answered", 8),
    ("drift", 5),
    ("live {metric}", 9),
    ("retrain", 7),
    ("gate", 10),
    ("champion", 8),
)
#: Metrics where a lower value is better (the plot's axis is not pinned to [0.5, 1]).
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss", "brier", "mse"})


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def metric_of(rows: list[PeriodRow], metric: str | None = None) -> str:
    """The live metric of a replay: ``metric`` if given, else the rows' (``roc_auc`` when none says).

    :param rows: the replayed periods.
    :param metric: an explicit metric name.
    """
    return metric or next((r.live_metric for r in rows if r.live_metric), None) or "roc_auc"


def metric_label(metric: str) -> str:
    """How a metric is shown (``roc_auc`` → ``ROC AUC``).

    :param metric: the metric's name.
    """
    return METRIC_LABELS.get(metric, metric)


def _short_label(metric: str) -> str:
    return {"roc_auc": "AUC"}.get(metric, metric_label(metric))


def table_lines(rows: list[PeriodRow], metric: str | None = None) -> list[str]:
    """The period-by-period table, then one line of reasons per period that decided something.

    :param rows: the replayed periods, in order.
    :param metric: the live metric (default: the rows').
    """
    metric = metric_of(rows, metric)
    period_width = max([6, *(len(r.label) for r in rows)])
    columns = [(name.format(metric=_short_label(metric)), width) for name, width in COLUMNS]
    widths = [period_width, *(max(width, len(name)) for name, width in columns)]
    names = ["period", *(name for name, _ in columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:>{w}s}" if i else f"{c:{w}s}" for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    header = line(names)
    lines = [header, "-" * len(header)]
    for r in rows:
        retrain = "-" if r.retrain is None else ("YES" if r.retrain else "no")
        champion = f"v{r.champion_version}" if r.champion_version else "-"
        if r.promoted:
            champion += "*"
        cells = [
            r.label,
            str(r.rows),
            r.validation,
            str((r.traffic or {}).get("answered", "-")),
            _f(r.drift_share),
            _f(r.live_value, 3),
            retrain,
            r.gate or "-",
            champion,
        ]
        lines.append(line(cells))
    lines.append(
        f"(* promoted in this step; rows = rows of the batches' primary file; drift = share of model features drifted; "
        f"live {metric_label(metric)} on the answered requests of the monitoring window ending with the step)"
    )
    lines.append("")
    for r in rows:
        why = []
        if r.quarantined:
            why.append(
                "quarantined: "
                + "; ".join(
                    (f"{q['period']} " if q.get("period") and r.periods else "") + ", ".join(q["failed"])
                    for q in r.quarantined
                )
            )
        if r.policy_reasons:
            why.append(
                f"policy ({'retrain' if r.retrain else r.suppressed_by or 'no trigger'}): "
                + "; ".join(r.policy_reasons[:3])
            )
        if r.gate:
            why.append(f"gate {r.gate}: " + "; ".join(r.gate_reasons[:2]))
        if why:
            lines.append(f"{r.label}: " + " | ".join(why))
    return lines


def stage_totals(rows: list[PeriodRow]) -> dict[str, float]:
    """Seconds per stage, summed over the periods.

    :param rows: the replayed periods.
    """
    return {stage: round(sum(r.seconds.get(stage, 0.0) for r in rows), 1) for stage in STAGES}


def plot_png(rows: list[PeriodRow], title: str = "airflow-mlops replay", metric: str | None = None) -> bytes:
    """The champion's live metric (and its hold-out figure) and the drift share per period; promotions, rejected
    candidates and quarantines marked.

    :param rows: the replayed periods.
    :param title: the plot's title.
    :param metric: the live metric (default: the rows').
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    metric = metric_of(rows, metric)
    label = metric_label(metric)
    periods = [r.label for r in rows]
    x = list(range(len(rows)))
    fig, value_ax = plt.subplots(figsize=(11, 5), dpi=110)
    drift_ax = value_ax.twinx()
    drift_ax.bar(x, [r.drift_share or 0.0 for r in rows], color="#f4b183", alpha=0.6, label="drift share (features)")
    drift_ax.set_ylim(0, 1)
    drift_ax.set_ylabel("share of features drifted")
    value_ax.set_zorder(drift_ax.get_zorder() + 1)
    value_ax.patch.set_visible(False)
    live = [(i, r.live_value) for i, r in zip(x, rows, strict=True) if r.live_value is not None]
    hold = [(i, r.holdout_value) for i, r in zip(x, rows, strict=True) if r.holdout_value is not None]
    if live:
        value_ax.plot(*zip(*live, strict=True), marker="o", color="#1f4e79", label=f"champion: live {label}")
    if hold:
        value_ax.plot(
            *zip(*hold, strict=True), ls="--", marker="_", ms=14, color="#7f7f7f", label=f"champion: hold-out {label}"
        )
    values = [v for _, v in live + hold]
    if metric == "roc_auc":
        value_ax.set_ylim(min(0.5, min(values, default=0.6) - 0.02), 1.0)
    elif values:
        low, high = min(values), max(values)
        pad = (high - low) * 0.15 or abs(high) * 0.1 or 1.0
        value_ax.set_ylim(min(0.0, low - pad) if metric in LOWER_IS_BETTER else low - pad, high + pad)
    value_ax.set_ylabel(f"{label} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)")
    marks = blended_transform_factory(value_ax.transData, value_ax.transAxes)  # x: period, y: share of the axis
    for i, r in zip(x, rows, strict=True):
        mark = None
        if r.promoted:
            value_ax.axvline(i + 0.5, color="#2e7d32", lw=1.5)
            mark = (f"v{r.promoted} promoted", "#2e7d32")
        elif r.gate and r.gate != "approved":
            mark = (f"not promoted: {r.gate}", "#b00020")
        if mark:
            text, color = mark
            value_ax.annotate(
                text, (i + 0.5, 0.98), xycoords=marks, rotation=90, va="top", ha="right", fontsize=8, color=color
            )
        if r.quarantined:
            value_ax.annotate("quarantined", (i, 0.03), xycoords=marks, ha="center", fontsize=8, color="#b00020")
    step = max(1, math.ceil(len(rows) / 16))
    short = step == 1 and len(rows) <= 12 and max(map(len, periods), default=0) <= 10
    value_ax.set_xticks(x[::step], periods[::step], rotation=0 if short else 30, ha="center" if short else "right")
    value_ax.set_title(title)
    handles = value_ax.get_legend_handles_labels()[0] + drift_ax.get_legend_handles_labels()[0]
    value_ax.legend(handles=handles, loc="lower left", fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def _link(key: str | None, label: str) -> str:
    if not key:
        return ""
    # index.html lives in reports/replay/: the lake keys of other reports are relative to the use case's lake root.
    return f'<a href="../../{html.escape(key)}">{html.escape(label)}</a>'


def summary_html(rows: list[PeriodRow], meta: dict[str, Any]) -> str:
    """The replay's page: the plot, the table with a link to every report and Airflow run, the reasons.

    :param rows: the replayed periods.
    :param meta: ``airflow_url``, ``usecase``, ``dags`` (stage → dag id), ``periods_label``, ``wall_seconds``,
        ``peak_rss_gib``.
    """
    e = html.escape
    metric = metric_of(rows, meta.get("metric"))
    label = metric_label(metric)
    usecase = str(meta.get("usecase") or "")
    dags = dict(meta.get("dags") or {})
    body = []
    for r in rows:
        links = [
            _link(r.data_docs, "Data Docs"),
            *(_link(q["report"], f"quarantine {q['batch']}") for q in r.quarantined),
            _link(r.reports.get("drift"), "drift"),
            _link(r.reports.get("performance"), "performance"),
            *(
                f'<a href="{e(meta["airflow_url"])}/dags/{e(dags.get(kind) or f"{usecase}_{kind}")}/runs/{e(run)}">'
                f"{e(kind)} run</a>"
                for kind, run in r.runs.items()
            ),
        ]
        reasons = "<br>".join(e(x) for x in (r.policy_reasons[:3] + [f"gate: {g}" for g in r.gate_reasons[:2]]))
        body.append(
            "<tr>"
            + "".join(
                f"<td>{c}</td>"
                for c in (
                    e(r.label),
                    r.rows,
                    e(r.validation),
                    (r.traffic or {}).get("answered", "-"),
                    _f(r.drift_share),
                    _f(r.live_value, 3),
                    _f(r.holdout_value, 3),
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
    title = f"airflow-mlops replay: {usecase}" if usecase else "airflow-mlops replay"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 6px;vertical-align:top}}th{{background:#f0f4f8}}img{{max-width:100%}}</style>
</head><body>
<h1>{e(title)}</h1>
<p>{e(str(meta.get("description") or ""))}</p>
<p>{e(str(meta.get("periods_label", "")))}: every period landed, validated, featurized, answered by the serving
endpoint, monitored, and retrained when the policy asked — through Airflow ({e(meta["airflow_url"])}).
Wall time {meta.get("wall_seconds", 0):.0f} s; peak memory {meta.get("peak_rss_gib", 0):.2f} GiB;
per stage: {e(", ".join(f"{k} {v:.0f} s" for k, v in totals.items()))}.</p>
<img src="replay.png" alt="live {e(label)} and drift per period">
<table><tr><th>period</th><th>rows</th><th>validation</th><th>answered</th><th>drift share</th>
<th>live {e(label)}</th><th>hold-out {e(label)}</th><th>retrain</th><th>gate</th><th>champion</th><th>reports</th>
<th>why</th></tr>
{"".join(body)}
</table>
<p>Reports open through the Airflow UI's lake reports app (log in first), or from the lake on disk.</p>
</body></html>
"""


def write_outputs(lake: Any, rows: list[PeriodRow], meta: dict[str, Any]) -> dict[str, str]:
    """Write ``summary.json``, ``replay.png`` and ``index.html`` under ``reports/replay/`` of the use case's lake;
    returns their lake keys.

    :param lake: the use case's ``LakeHook``.
    :param rows: the replayed periods.
    :param meta: see :func:`summary_html`.
    """
    from airflow_mlops_dev.replay_loop import REPLAY_ZONE

    metric = metric_of(rows, meta.get("metric"))
    summary = {
        "meta": {**meta, "metric": metric, "stage_seconds": stage_totals(rows)},
        "periods": [r.to_dict() for r in rows],
    }
    title = f"airflow-mlops replay of {meta['usecase']}" if meta.get("usecase") else "airflow-mlops replay"
    files = {
        "summary.json": json.dumps(summary, indent=2, default=str).encode(),
        "replay.png": plot_png(rows, f"{title}: the champion on live traffic", metric),
        "index.html": summary_html(rows, {**meta, "metric": metric}).encode(),
    }
    keys = {}
    for name, data in files.items():
        key = f"{REPLAY_ZONE}/{name}"
        lake.write_file(lake.path(key), data, rows=len(rows))
        keys[name] = key
    return keys
