"""The MLOps page's pure parts: monitoring history from check runs, gate summaries, the SVG chart."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from airflow_mlops.core import model_overview as mo


def _check(kind, month, start, version="1", **metrics):
    return {"kind": kind, "month": month, "version": version, "start_time": start, "metrics": metrics, "report": None}


def test_history_keeps_the_newest_check_per_month_and_kind_oldest_month_first():
    points = mo.monitoring_history(
        [
            _check("drift", "2013-05", 10, drift_share=0.1),
            _check("drift", "2013-04", 5, drift_share=0.3),
            _check("drift", "2013-05", 20, version="2", drift_share=0.2),  # a re-run of May: wins
            _check("performance", "2013-05", 15, live_roc_auc=0.7),
            _check("drift", None, 30, drift_share=0.9),  # not a check run: ignored
        ]
    )
    assert [p.month for p in points] == ["2013-04", "2013-05"]
    may = points[1]
    assert may.metrics == {"drift_share": 0.2, "live_roc_auc": 0.7}
    assert may.checked_at == {"drift": 20, "performance": 15}
    assert may.to_dict()["month"] == "2013-05"


def test_history_drops_non_finite_metrics():
    (point,) = mo.monitoring_history([_check("drift", "2013-04", 1, drift_share=float("nan"), prediction_drift=0.1)])
    assert point.metrics == {"prediction_drift": 0.1}


@pytest.mark.parametrize(
    "summary,verdict,reasons",
    [
        ("REJECTED: roc_auc 0.5 is below the floor 0.6; brier too high", "REJECTED", 2),
        ("APPROVED: all 3 checks passed against the absolute thresholds", "APPROVED", 1),
        (None, None, 0),
    ],
    ids=["rejected", "approved", "missing"],
)
def test_gate_summary_parses_verdict_and_reasons(summary, verdict, reasons):
    parsed = mo.parse_gate_summary(summary)
    assert parsed["verdict"] == verdict and len(parsed["reasons"]) == reasons


@pytest.mark.parametrize(
    "decision,verdict",
    [
        ({"approved": True}, "APPROVED"),
        ({"approved": False}, "REJECTED"),
        ({"approved": True, "forced": True}, "FORCE-BLESSED"),
    ],
    ids=["approved", "rejected", "forced"],
)
def test_gate_verdict(decision, verdict):
    assert mo.gate_verdict(decision) == verdict


def test_chart_is_valid_svg_with_a_point_per_value_and_gaps_for_missing_ones():
    points = mo.monitoring_history(
        [
            _check("drift", "2013-04", 1, drift_share=0.1, prediction_drift=0.05),
            _check("drift", "2013-05", 2, drift_share=0.4),
            _check("drift", "2013-06", 3, drift_share=0.2, prediction_drift=0.3),
        ]
    )
    svg = mo.chart_for("drift", points)
    root = ET.fromstring(svg)  # well-formed
    circles = [c for c in root.iter("{http://www.w3.org/2000/svg}circle")]
    assert sum(c.get("data-series") == "drift_share" for c in circles) == 3
    assert sum(c.get("data-series") == "prediction_drift" for c in circles) == 2
    # prediction_drift is missing in May: two one-point segments, so no line is drawn for it.
    assert len(list(root.iter("{http://www.w3.org/2000/svg}polyline"))) == 1
    assert "2013-05" in svg and "share of features drifted" in svg


def test_chart_without_data_says_so_and_escapes_its_title():
    svg = mo.line_chart_svg("<drift & co>", [], {})
    ET.fromstring(svg)
    assert "no monitoring data yet" in svg and "&lt;drift &amp; co&gt;" in svg
