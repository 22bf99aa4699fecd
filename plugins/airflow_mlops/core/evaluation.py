"""Evaluation: metrics of predicted probabilities, overall and per slice, as plain JSON-ready dicts.

An ``Evaluation`` is what the gate reads: ``overall`` metrics plus ``slices[column][value]`` metrics, each
with its size ``n``. A metric that is undefined (e.g. ROC AUC on a slice with one class) is ``None``,
never a made-up number, so a gate can tell "missing" from "bad".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: Metrics reported for every model and slice; direction: True if higher is better.
METRICS: dict[str, bool] = {"roc_auc": True, "log_loss": False, "brier": False, "precision": True, "recall": True}


def _clean(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def overall_metrics(y_true: Any, proba: Any, threshold: float) -> dict[str, float | None]:
    """ROC AUC, log loss, Brier score, precision and recall at ``threshold``, plus ``n`` and ``positive_rate``."""
    import numpy as np
    from sklearn.metrics import brier_score_loss, log_loss, precision_score, recall_score, roc_auc_score

    y = np.asarray(y_true).astype(int)
    p = np.clip(np.asarray(proba, dtype="float64"), 1e-15, 1 - 1e-15)
    n = int(len(y))
    out: dict[str, float | None] = {"n": n, "positive_rate": _clean(y.mean()) if n else None}
    if n == 0:
        return {**out, **dict.fromkeys(METRICS)}
    both_classes = len(np.unique(y)) == 2
    predicted = (p >= threshold).astype(int)
    out["roc_auc"] = _clean(roc_auc_score(y, p)) if both_classes else None
    out["log_loss"] = _clean(log_loss(y, p, labels=[0, 1]))
    out["brier"] = _clean(brier_score_loss(y, p))
    out["precision"] = _clean(precision_score(y, predicted, zero_division=np.nan)) if predicted.any() else None
    out["recall"] = _clean(recall_score(y, predicted, zero_division=np.nan)) if y.any() else None
    return out


@dataclass
class Evaluation:
    """Metrics of one model on one hold-out."""

    overall: dict[str, float | None]
    slices: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    threshold: float = 0.5
    holdout: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        return cls(
            overall=dict(data.get("overall") or {}),
            slices={c: dict(v) for c, v in (data.get("slices") or {}).items()},
            threshold=float(data.get("threshold", 0.5)),
            holdout=dict(data.get("holdout") or {}),
        )

    def flat_metrics(self, prefix: str = "holdout") -> dict[str, float]:
        """``{prefix}_{metric}`` and ``{prefix}_slice.{col}.{value}.{metric}`` for MLflow (``None`` omitted)."""
        flat = {f"{prefix}_{k}": v for k, v in self.overall.items() if v is not None}
        for column, values in self.slices.items():
            for value, metrics in values.items():
                key = _metric_safe(value)
                flat.update({f"{prefix}_slice.{column}.{key}.{k}": v for k, v in metrics.items() if v is not None})
        return flat


def _metric_safe(value: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(value)) or "_"


def evaluate(
    frame: pd.DataFrame, proba: Any, *, label: str, threshold: float, slices: tuple[str, ...] | list[str] = ()
) -> Evaluation:
    """Score ``proba`` against ``frame[label]`` overall and for each value of each slice column."""
    import numpy as np

    p = np.asarray(proba, dtype="float64")
    if len(p) != len(frame):
        raise ValueError(f"{len(p)} predictions for {len(frame)} rows")
    y = frame[label].to_numpy()
    result = Evaluation(overall=overall_metrics(y, p, threshold), threshold=threshold)
    for column in slices:
        keys = frame[column].astype("object").where(frame[column].notna(), "<missing>").astype(str).to_numpy()
        per_value = {}
        for value in sorted(set(keys)):
            mask = keys == value
            per_value[value] = overall_metrics(y[mask], p[mask], threshold)
        result.slices[column] = per_value
    return result


def plot_curves(y_true: Any, curves: dict[str, Any], path: str) -> None:
    """ROC and calibration curves of each named model's probabilities, side by side, to a PNG at ``path``.

    Drawn on a bare ``Figure`` (no pyplot state) with a fixed layout and fixed legend corners: ``tight_layout``
    draws the figure once more to measure it, and ``loc="best"`` tests the legend against every point of an
    ROC curve; together they were half the cost of the plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(10, 4.5))
    roc_ax, cal_ax = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
    for name, proba in curves.items():
        fpr, tpr, _ = roc_curve(y_true, proba)
        roc_ax.plot(fpr, tpr, label=name)
        frac, mean = calibration_curve(y_true, proba, n_bins=10, strategy="quantile")
        cal_ax.plot(mean, frac, marker="o", label=name)
    roc_ax.plot([0, 1], [0, 1], ls="--", c="grey")
    roc_ax.set(title="ROC on the hold-out", xlabel="false positive rate", ylabel="true positive rate")
    cal_ax.plot([0, 1], [0, 1], ls="--", c="grey")
    cal_ax.set(title="Calibration on the hold-out", xlabel="mean predicted", ylabel="observed late rate")
    roc_ax.legend(loc="lower right")
    cal_ax.legend(loc="upper left")
    fig.savefig(path, dpi=80)
