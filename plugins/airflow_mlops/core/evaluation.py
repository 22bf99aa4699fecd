"""Evaluation: metrics of a model's scores, overall and per slice, as plain JSON-ready dicts.

The scores are a classifier's positive-class probabilities (task ``classification``: ROC AUC, log loss,
Brier, precision and recall at a threshold) or a regressor's predictions (task ``regression``: RMSE, MAE,
R²). An ``Evaluation`` is what the gate reads: ``overall`` metrics plus ``slices[column][value]`` metrics,
each with its size ``n``. A metric that is undefined (e.g. ROC AUC on a slice with one class, R² on a slice
whose label is constant) is ``None``, never a made-up number, so a gate can tell "missing" from "bad".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pandas as pd

#: The task types a model may have.
TASKS = ("classification", "regression")
#: Classification metrics reported for every model and slice; direction: True if higher is better. (Kept as the
#: classification metrics for the callers that predate regression; ``METRIC_DIRECTIONS`` covers every task.)
METRICS: dict[str, bool] = {"roc_auc": True, "log_loss": False, "brier": False, "precision": True, "recall": True}
#: Regression metrics reported for every model and slice; direction: True if higher is better.
REGRESSION_METRICS: dict[str, bool] = {"rmse": False, "mae": False, "r2": True}
#: Every metric of every task: True if higher is better, False if lower is better.
METRIC_DIRECTIONS: dict[str, bool] = {**METRICS, **REGRESSION_METRICS}
#: What a task's evaluation reports besides its metrics: the size and the label's mean.
_SUMMARY = {"classification": ("n", "positive_rate"), "regression": ("n", "mean_label")}


def check_task(task: str) -> str:
    """``task`` if it is a known task type; else ``ValueError`` naming it.

    :param task: ``classification`` or ``regression``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def metrics_for(task: str) -> tuple[str, ...]:
    """The metrics an evaluation of a ``task`` model reports (overall and per slice), in report order.

    :param task: ``classification`` or ``regression``.
    """
    return tuple(METRICS if check_task(task) == "classification" else REGRESSION_METRICS)


def slice_metric_names(task: str) -> tuple[str, ...]:
    """Every figure an evaluation of a ``task`` model reports per slice: size, label mean, metrics.

    :param task: ``classification`` or ``regression``.
    """
    return (*_SUMMARY[check_task(task)], *metrics_for(task))


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


def regression_metrics(y_true: Any, predicted: Any) -> dict[str, float | None]:
    """RMSE, MAE and R² of ``predicted`` against ``y_true``, plus ``n`` and ``mean_label``.

    R² is ``None`` where it is undefined: fewer than two rows, or a constant label (scikit-learn would report
    a made-up 0 or 1 there).

    :param y_true: the labels.
    :param predicted: the model's predictions, one per label.
    """
    import numpy as np
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y = np.asarray(y_true, dtype="float64")
    p = np.asarray(predicted, dtype="float64")
    n = int(len(y))
    out: dict[str, float | None] = {"n": n, "mean_label": _clean(y.mean()) if n else None}
    if n == 0:
        return {**out, **dict.fromkeys(REGRESSION_METRICS)}
    out["rmse"] = _clean(math.sqrt(mean_squared_error(y, p)))
    out["mae"] = _clean(mean_absolute_error(y, p))
    out["r2"] = _clean(r2_score(y, p)) if n >= 2 and np.ptp(y) > 0 else None
    return out


def task_metrics(y_true: Any, scores: Any, *, task: str = "classification", threshold: float = 0.5) -> dict[str, Any]:
    """The overall figures of one task: ``overall_metrics`` (classification) or ``regression_metrics``.

    :param y_true: the labels.
    :param scores: positive-class probabilities (classification) or predictions (regression).
    :param task: ``classification`` or ``regression``.
    :param threshold: the classification decision threshold (unused for regression).
    """
    if check_task(task) == "classification":
        return overall_metrics(y_true, scores, threshold)
    return regression_metrics(y_true, scores)


@dataclass
class Evaluation:
    """Metrics of one model on one hold-out; ``threshold`` is the decision threshold (``None`` for regression)."""

    overall: dict[str, float | None]
    slices: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    threshold: float | None = 0.5
    holdout: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        """An evaluation from its ``to_dict``; one written before tasks existed is a classification one.

        :param data: the mapping ``to_dict`` gave.
        """
        threshold = data.get("threshold", 0.5)
        return cls(
            overall=dict(data.get("overall") or {}),
            slices={c: dict(v) for c, v in (data.get("slices") or {}).items()},
            threshold=None if threshold is None else float(threshold),
            holdout=dict(data.get("holdout") or {}),
            task=str(data.get("task") or "classification"),
        )

    def flat_metrics(self, prefix: str = "holdout", slice_metrics: Iterable[str] | None = None) -> dict[str, float]:
        """``{prefix}_{metric}`` and ``{prefix}_slice.{col}.{value}.{metric}`` for MLflow (``None`` omitted).

        :param slice_metrics: which metrics of each slice (default all; empty: none).
        """
        flat = {f"{prefix}_{k}": v for k, v in self.overall.items() if v is not None}
        keep = None if slice_metrics is None else set(slice_metrics)
        for column, values in self.slices.items():
            for value, metrics in values.items():
                key = _metric_safe(value)
                flat.update(
                    {
                        f"{prefix}_slice.{column}.{key}.{k}": v
                        for k, v in metrics.items()
                        if v is not None and (keep is None or k in keep)
                    }
                )
        return flat


def _metric_safe(value: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(value)) or "_"


def evaluate(
    frame: pd.DataFrame,
    proba: Any,
    *,
    label: str,
    threshold: float = 0.5,
    slices: tuple[str, ...] | list[str] = (),
    task: str = "classification",
) -> Evaluation:
    """Score ``proba`` against ``frame[label]`` overall and for each value of each slice column.

    :param frame: the scored rows: the label and the slice columns.
    :param proba: one score per row: the positive-class probability (classification) or the prediction
        (regression).
    :param label: the label column.
    :param threshold: the classification decision threshold (for precision / recall); not used for regression.
    :param slices: columns whose values define slices.
    :param task: ``classification`` or ``regression``.
    """
    import numpy as np

    check_task(task)
    p = np.asarray(proba, dtype="float64")
    if len(p) != len(frame):
        raise ValueError(f"{len(p)} predictions for {len(frame)} rows")
    y = frame[label].to_numpy()
    kept = threshold if task == "classification" else None
    result = Evaluation(overall=task_metrics(y, p, task=task, threshold=threshold), threshold=kept, task=task)
    for column in slices:
        keys = frame[column].astype("object").where(frame[column].notna(), "<missing>").astype(str).to_numpy()
        per_value = {}
        for value in sorted(set(keys)):
            mask = keys == value
            per_value[value] = task_metrics(y[mask], p[mask], task=task, threshold=threshold)
        result.slices[column] = per_value
    return result


#: Line colours of the curves plot, in order (matplotlib's default cycle).
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def curves_svg(y_true: Any, curves: dict[str, Any], *, roc_points: int = 201) -> str:
    """ROC and calibration curves of each named model's probabilities, side by side, as one SVG document.

    Plain SVG written here rather than drawn with matplotlib: the figure needs two line panels, and
    matplotlib's layout machinery cost a tenth of the whole evaluation task. The ROC curve is the exact
    curve sampled on ``roc_points`` evenly spaced false-positive rates; calibration uses 10 quantile bins.
    """
    import numpy as np

    y = np.asarray(y_true).astype(int)
    grid = np.linspace(0.0, 1.0, roc_points)
    roc, calibration = {}, {}
    for name, proba in curves.items():
        fpr, tpr = roc_points_of(y, proba)
        roc[name] = (grid, np.interp(grid, fpr, tpr))
        frac, mean = quantile_calibration(y, proba, n_bins=10)
        calibration[name] = (mean, frac)
    width, height = 820, 380
    panels = [
        _svg_panel(roc, 60, "ROC on the hold-out", "false positive rate", "true positive rate", legend="lower right"),
        _svg_panel(
            calibration, 470, "Calibration on the hold-out", "mean predicted", "observed late rate", markers=True
        ),
    ]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">'
        f'<rect width="{width}" height="{height}" fill="white"/>{"".join(panels)}</svg>'
    )


def predicted_vs_actual_svg(y_true: Any, predictions: dict[str, Any], *, n_bins: int = 20) -> str:
    """Predicted against actual values of each named regression model, binned, as one small SVG document.

    The rows are cut into ``n_bins`` quantile bins of each model's predictions; a point is a bin's mean
    prediction (x) and mean actual value (y), so a well-calibrated model lies on the diagonal. Both axes span
    the range of the plotted means (one scale for every model), labelled in the label's units.

    :param y_true: the hold-out's labels.
    :param predictions: model name → its predictions, one per label.
    :param n_bins: the number of quantile bins (fewer points when predictions tie).
    """
    import numpy as np

    y = np.asarray(y_true, dtype="float64")
    binned = {name: quantile_calibration(y, pred, n_bins=n_bins)[::-1] for name, pred in predictions.items()}
    values = np.concatenate([np.r_[xs, ys] for xs, ys in binned.values()]) if binned else np.zeros(1)
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:  # one point: a unit-wide range around it
        lo, hi = lo - 0.5, hi + 0.5
    scaled = {name: ((xs - lo) / (hi - lo), (ys - lo) / (hi - lo)) for name, (xs, ys) in binned.items()}
    width, height = 410, 380
    panel = _svg_panel(
        scaled, 60, "Predicted vs actual on the hold-out", "mean predicted", "mean actual", markers=True, axis=(lo, hi)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">'
        f'<rect width="{width}" height="{height}" fill="white"/>{panel}</svg>'
    )


def roc_points_of(y_true: Any, proba: Any) -> tuple[Any, Any]:
    """The ROC curve's vertices (false and true positive rates, from (0, 0) to (1, 1)) at every distinct
    threshold: ``sklearn.metrics.roc_curve`` without its collinear-point pruning (which leaves the curve, and
    any interpolation on it, unchanged) and without its input validation (a tenth of the evaluation task's
    plotting time); both classes must be present."""
    import numpy as np

    y, p = np.asarray(y_true), np.asarray(proba, dtype=float)
    order = np.argsort(p, kind="mergesort")[::-1]
    p, y = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # the last row of each run of equal scores
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def quantile_calibration(y_true: Any, proba: Any, n_bins: int = 10) -> tuple[Any, Any]:
    """Observed positive rate and mean predicted probability per quantile bin, empty bins left out:
    ``sklearn.calibration.calibration_curve(..., strategy="quantile")`` without its input validation."""
    import numpy as np

    y, p = np.asarray(y_true, dtype=float), np.asarray(proba, dtype=float)
    edges = np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)
    ids = np.searchsorted(edges[1:-1], p)
    total = np.bincount(ids, minlength=len(edges))
    filled = total != 0
    observed = np.bincount(ids, weights=y, minlength=len(edges))[filled] / total[filled]
    predicted = np.bincount(ids, weights=p, minlength=len(edges))[filled] / total[filled]
    return observed, predicted


def _svg_panel(
    lines: dict[str, tuple[Any, Any]],
    left: int,
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    markers: bool = False,
    legend: str = "upper left",
    axis: tuple[float, float] = (0.0, 1.0),
) -> str:
    """One unit-square panel (0..1 on both axes) with a dashed diagonal, ticks, labels and a legend in the
    ``legend`` corner (``"upper left"`` or ``"lower right"``); the tick labels run from ``axis[0]`` to
    ``axis[1]`` (the values the unit square was scaled from)."""
    from html import escape

    lo, hi = axis

    top, size = 40, 290

    def xy(x: float, y: float) -> str:
        return f"{left + x * size:.1f},{top + (1 - y) * size:.1f}"

    out = [f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#333"/>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = left + tick * size, top + (1 - tick) * size
        out.append(f'<line x1="{x:.1f}" y1="{top + size}" x2="{x:.1f}" y2="{top + size + 5}" stroke="#333"/>')
        label = f"{lo + tick * (hi - lo):.4g}"
        out.append(f'<text x="{x:.1f}" y="{top + size + 18}" text-anchor="middle">{label}</text>')
        out.append(f'<line x1="{left - 5}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#333"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<polyline points="{xy(0, 0)} {xy(1, 1)}" fill="none" stroke="grey" stroke-dasharray="5,4"/>')
    for i, (name, (xs, ys)) in enumerate(lines.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        points = " ".join(xy(float(x), float(y)) for x, y in zip(xs, ys, strict=True))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        if markers:
            out.extend(
                f'<circle cx="{point.split(",")[0]}" cy="{point.split(",")[1]}" r="3" fill="{colour}"/>'
                for point in points.split()
            )
        if legend == "lower right":
            legend_x, legend_y = left + size - 150, top + size - 12 - 16 * (len(lines) - 1 - i)
        else:
            legend_x, legend_y = left + 10, top + 18 + 16 * i
        out.append(
            f'<line x1="{legend_x}" y1="{legend_y - 4}" x2="{legend_x + 20}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="2"/><text x="{legend_x + 25}" y="{legend_y}">{escape(name)}</text>'
        )
    mid = left + size / 2
    out.append(f'<text x="{mid:.1f}" y="{top - 14}" text-anchor="middle" font-size="14">{escape(title)}</text>')
    out.append(f'<text x="{mid:.1f}" y="{top + size + 36}" text-anchor="middle">{escape(xlabel)}</text>')
    ylab_x, ylab_y = left - 40, top + size / 2
    out.append(
        f'<text x="{ylab_x}" y="{ylab_y:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 {ylab_x} {ylab_y:.1f})">{escape(ylabel)}</text>'
    )
    return "".join(out)
