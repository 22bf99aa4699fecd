"""Live performance: join logged predictions with the outcomes that arrive later, score them, compare with hold-out.

The outcomes of a period are rows of (id, label): from the use case's ``outcomes(ctx)`` function, else its
``label_rows(ctx)`` (``load_outcomes``), else the label rows of the period's committed feature partition
(``outcomes_from_labels``); a check covering a window of periods concatenates theirs (``window_outcomes``). A logged prediction joins its outcome on the id; the newest prediction per id counts;
predictions without an outcome are left out, and counted.

The task decides the metrics: ``classification`` scores probabilities (ROC AUC, log loss, Brier, precision and
recall at the decision threshold, through ``core.evaluation``), ``regression`` scores predicted values (RMSE, MAE,
R², here with ``sklearn.metrics``). Decay is "how much worse live is than on the champion's hold-out", in metric
units, positive = worse, for each metric whatever its direction (ROC AUC and R² drop; log loss, Brier, RMSE and
MAE rise). Per slice only where both sides have at least ``min_slice_size`` rows. Plain functions, no Airflow
import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.evaluation import METRICS, Evaluation

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from airflow_mlops.usecase import FeatureContext

TASKS = ("classification", "regression")
#: Regression metrics; direction: True if higher is better.
REGRESSION_METRICS: dict[str, bool] = {"rmse": False, "mae": False, "r2": True}
#: Every metric's direction (True: higher is better), by task.
TASK_METRICS: dict[str, dict[str, bool]] = {"classification": dict(METRICS), "regression": REGRESSION_METRICS}
#: Every metric's direction, whatever the task.
METRIC_DIRECTIONS: dict[str, bool] = {**METRICS, **REGRESSION_METRICS}
#: Metrics compared when the config lists none.
DEFAULT_METRICS = {"classification": ("roc_auc", "log_loss", "brier"), "regression": ("rmse", "mae", "r2")}


class OutcomesError(ValueError):
    """A use case's outcomes break the contract (not a frame, a column missing, an id twice)."""


def check_task(task: str) -> str:
    """``task`` if known, else ValueError naming the choices.

    :param task: ``classification`` or ``regression``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


@dataclass(frozen=True)
class PerformanceSettings:
    """The monitoring config's section ``performance`` (metrics default by task; no slices unless listed)."""

    metrics: tuple[str, ...] = DEFAULT_METRICS["classification"]
    slice_columns: tuple[str, ...] = ()
    min_rows: int = 500
    min_slice_size: int = 300
    task: str = "classification"

    def __post_init__(self) -> None:
        known = TASK_METRICS[check_task(self.task)]
        unknown = [m for m in self.metrics if m not in known]
        if unknown:
            raise ValueError(f"performance.metrics: unknown {self.task} metrics {unknown}; known: {', '.join(known)}")

    @classmethod
    def from_config(cls, config: dict[str, Any], task: str = "classification") -> PerformanceSettings:
        """:param config: the monitoring config. :param task: the champion's task."""
        section = config.get("performance") or {}
        return cls(
            metrics=tuple(section.get("metrics") or DEFAULT_METRICS[check_task(task)]),
            slice_columns=tuple(section.get("slice_columns") or ()),
            min_rows=int(section.get("min_rows", 500)),
            min_slice_size=int(section.get("min_slice_size", 300)),
            task=task,
        )


# -- outcomes -------------------------------------------------------------------------------------------------
def check_outcomes(frame: Any, *, id_column: str, label: str, where: str) -> pd.DataFrame:
    """``frame``'s id and label columns, rows without a label dropped; OutcomesError if the contract is broken.

    :param frame: what an outcomes source returned.
    :param id_column: the id column it must have.
    :param label: the label column it must have.
    :param where: names the source in the error.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise OutcomesError(f"{where} must return a pandas DataFrame, not {type(frame).__name__}")
    missing = [c for c in (id_column, label) if c not in frame.columns]
    if missing:
        raise OutcomesError(f"{where} returned no column {', '.join(missing)} (it has: {', '.join(map(str, frame))})")
    out = frame.loc[frame[label].notna(), [id_column, label]].reset_index(drop=True)
    twice = out[id_column].duplicated()
    if twice.any():
        raise OutcomesError(f"{where} returned {int(twice.sum())} ids twice, e.g. {out.loc[twice, id_column].iloc[0]}")
    return out


def load_outcomes(
    module_file: str | Path,
    ctx: FeatureContext,
    *,
    id_column: str,
    label: str,
    function: str = "outcomes",
    fallback: str = "label_rows",
) -> pd.DataFrame:
    """The period's outcomes from the use case's module: ``function(ctx)``, else ``fallback(ctx)``.

    :param module_file: the use case's Python file.
    :param ctx: the period, its validated frames and the use case's params.
    :param id_column: the id column the outcomes must have.
    :param label: the label column the outcomes must have.
    :param function: the optional outcomes function.
    :param fallback: the required function used when ``function`` is absent.
    :raises UserCodeError: the module or function cannot be used.
    :raises OutcomesError: what it returned breaks the contract.
    """
    from airflow_mlops.usecase import load_function

    name = function
    fn = load_function(module_file, function, arity=1, required=False)
    if fn is None:
        name, fn = fallback, load_function(module_file, fallback, arity=1, required=True)
    return check_outcomes(fn(ctx), id_column=id_column, label=label, where=f"{module_file}: {name}(ctx)")


def outcomes_from_labels(labels: pd.DataFrame, *, id_column: str, label: str) -> pd.DataFrame:
    """The outcomes in a committed feature partition's label rows.

    :param labels: the partition's label rows.
    :param id_column: the id column.
    :param label: the label column.
    """
    return check_outcomes(labels, id_column=id_column, label=label, where="the feature partition's label rows")


def window_outcomes(parts: dict[str, pd.DataFrame], *, id_column: str, label: str) -> pd.DataFrame | None:
    """The outcomes of a monitoring window: each period's outcomes (id, label), concatenated in period order; an id
    known in two periods keeps its newest outcome (a later period corrected it).

    :param parts: period → that period's outcomes (``check_outcomes``' result, or any frame with the two columns).
    :param id_column: the id column.
    :param label: the label column.
    :return: None when no period has outcomes.
    """
    import pandas as pd

    frames = [parts[period][[id_column, label]] for period in sorted(parts) if parts[period] is not None]
    if not frames:
        return None
    joined = pd.concat(frames, ignore_index=True)
    return joined.drop_duplicates(id_column, keep="last").reset_index(drop=True)


@dataclass
class Joined:
    """Predictions with their outcome; counts of what could not be joined."""

    frame: pd.DataFrame
    predictions: int
    unique_ids: int
    without_outcome: int

    def describe(self) -> str:
        return (
            f"{self.predictions} predictions of {self.unique_ids} ids, {len(self.frame)} with an outcome, "
            f"{self.without_outcome} without"
        )


def join_outcomes(log: pd.DataFrame, outcomes: pd.DataFrame, *, id_column: str, label: str) -> Joined:
    """The newest prediction per id (an id asked twice counts once), joined with its outcome.

    :param log: the logged predictions (``timestamp``: when each was answered).
    :param outcomes: id and label of the known outcomes.
    :param id_column: the id joining the two.
    :param label: the label column of the outcomes (and of the result).
    """
    import pandas as pd

    if log.empty:
        return Joined(pd.DataFrame(columns=[*log.columns, label]), 0, 0, 0)
    ordered = log.sort_values("timestamp", kind="stable") if "timestamp" in log else log
    newest = ordered.drop_duplicates(id_column, keep="last")
    merged = newest.drop(columns=[label], errors="ignore").merge(outcomes[[id_column, label]], on=id_column, how="left")
    has = merged[label].notna()
    frame = merged[has].reset_index(drop=True)
    if len(frame) and _integral(frame[label]):
        frame[label] = frame[label].astype("int64")
    return Joined(frame=frame, predictions=len(log), unique_ids=len(newest), without_outcome=int((~has).sum()))


def _integral(values: pd.Series) -> bool:
    """Whole numbers only (class labels, counts), which the left join turned into floats."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_bool_dtype(values):
        return True
    if not pd.api.types.is_numeric_dtype(values):
        return False
    x = values.to_numpy(dtype="float64")
    return bool(np.all(np.isfinite(x) & (np.mod(x, 1) == 0)))


def decision_threshold(traffic: pd.DataFrame, default: float) -> float:
    """The threshold serving answered with (the log's newest ``threshold``), else ``default``.

    :param traffic: the logged predictions.
    :param default: the champion's configured threshold.
    """
    if "threshold" in traffic and traffic["threshold"].notna().any():
        return float(traffic["threshold"].dropna().iloc[-1])
    return float(default)


# -- metrics --------------------------------------------------------------------------------------------------
def _clean(value: Any) -> float | None:
    import math

    value = float(value)
    return value if math.isfinite(value) else None


def regression_metrics(y_true: Any, predicted: Any) -> dict[str, float | None]:
    """RMSE, MAE and R² of ``predicted`` against ``y_true``, plus ``n`` and ``mean_label``.

    R² is None with fewer than two rows or a constant label (where scikit-learn reports a made-up figure).

    :param y_true: the labels.
    :param predicted: one prediction per label.
    """
    import numpy as np
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y = np.asarray(y_true, dtype="float64")
    p = np.asarray(predicted, dtype="float64")
    n = int(len(y))
    if n == 0:
        return {"n": 0, "mean_label": None, **dict.fromkeys(REGRESSION_METRICS)}
    return {
        "n": n,
        "mean_label": _clean(y.mean()),
        "rmse": _clean(np.sqrt(mean_squared_error(y, p))),
        "mae": _clean(mean_absolute_error(y, p)),
        "r2": _clean(r2_score(y, p)) if n >= 2 and np.unique(y).size > 1 else None,
    }


def evaluate_regression(
    frame: pd.DataFrame, predicted: Any, *, label: str, slices: tuple[str, ...] | list[str] = ()
) -> Evaluation:
    """Score ``predicted`` against ``frame[label]`` overall and for each value of each slice column.

    :param frame: rows with the label and the slice columns.
    :param predicted: one prediction per row.
    :param label: the label column.
    :param slices: slice columns.
    """
    import numpy as np

    p = np.asarray(predicted, dtype="float64")
    if len(p) != len(frame):
        raise ValueError(f"{len(p)} predictions for {len(frame)} rows")
    y = frame[label].to_numpy(dtype="float64")
    result = Evaluation(overall=regression_metrics(y, p))
    for column in slices:
        keys = frame[column].astype("object").where(frame[column].notna(), "<missing>").astype(str).to_numpy()
        result.slices[column] = {v: regression_metrics(y[keys == v], p[keys == v]) for v in sorted(set(keys))}
    return result


def decay(
    live: dict[str, Any], reference: dict[str, Any], metrics: tuple[str, ...] | list[str]
) -> dict[str, float | None]:
    """``reference - live`` for higher-is-better metrics, ``live - reference`` otherwise; None if either is missing.

    :param live: live metrics.
    :param reference: the hold-out's metrics.
    :param metrics: which to compare (any task's; see ``METRIC_DIRECTIONS``).
    """
    out: dict[str, float | None] = {}
    for metric in metrics:
        a, b = live.get(metric), reference.get(metric)
        if a is None or b is None:
            out[metric] = None
        else:
            out[metric] = float(b) - float(a) if METRIC_DIRECTIONS[metric] else float(a) - float(b)
    return out


@dataclass
class PerformanceResult:
    """Live metrics, the hold-out's, and the decay between them."""

    live: Evaluation
    holdout: Evaluation | None
    decay: dict[str, float | None]
    slice_decay: dict[str, dict[str, float | None]] = field(default_factory=dict)
    rows: int = 0
    enough_rows: bool = True

    def worst_slice(self, metric: str) -> tuple[str | None, float | None]:
        found = [(k, v[metric]) for k, v in self.slice_decay.items() if v.get(metric) is not None]
        return max(found, key=lambda kv: kv[1]) if found else (None, None)

    def summary(self) -> dict[str, Any]:
        worst = {}
        for metric in {m for v in self.slice_decay.values() for m in v}:
            key, value = self.worst_slice(metric)
            if key is not None:
                worst[metric] = {"slice": key, "decay": round(value, 5)}
        return {
            "rows": self.rows,
            "enough_rows": self.enough_rows,
            "live": _rounded(self.live.overall),
            "holdout": _rounded(self.holdout.overall if self.holdout else {}),
            "decay": {k: (round(v, 5) if v is not None else None) for k, v in self.decay.items()},
            "slice_decay": {
                k: {m: round(x, 5) for m, x in v.items() if x is not None} for k, v in self.slice_decay.items()
            },
            "worst_slice_decay": worst,
        }

    def metrics(self) -> dict[str, float]:
        """The MLflow metrics of the check: live rows and metrics, overall decay, worst slice decay per metric."""
        out = {"live_rows": float(self.rows)}
        out.update({f"live_{k}": v for k, v in self.live.overall.items() if isinstance(v, (int, float)) and k != "n"})
        out.update({f"decay_{k}": v for k, v in self.decay.items() if v is not None})
        for metric, worst in self.summary()["worst_slice_decay"].items():
            out[f"worst_slice_decay_{metric}"] = worst["decay"]
        return out


def _rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()}


def measure(
    joined: pd.DataFrame,
    prediction_column: str,
    *,
    label: str,
    threshold: float | None,
    holdout: Evaluation | dict | None,
    settings: PerformanceSettings,
) -> PerformanceResult:
    """Score the joined predictions overall and per slice; decay against the hold-out evaluation.

    :param joined: predictions joined with their outcomes.
    :param prediction_column: the predictions (probabilities for classification, values for regression).
    :param label: the label column.
    :param threshold: the classification decision threshold (unused for regression).
    :param holdout: the champion's hold-out evaluation, or None (no decay then).
    :param settings: task, metrics, slices and minimum sizes.
    """
    from airflow_mlops.core.evaluation import evaluate

    slices = [c for c in settings.slice_columns if c in joined.columns]
    scores = joined[prediction_column].to_numpy()
    if settings.task == "regression":
        live = evaluate_regression(joined, scores, label=label, slices=slices)
    else:
        live = evaluate(joined, scores, label=label, threshold=0.5 if threshold is None else threshold, slices=slices)
    reference = Evaluation.from_dict(holdout) if isinstance(holdout, dict) else holdout
    overall = decay(live.overall, reference.overall, settings.metrics) if reference else dict.fromkeys(settings.metrics)
    per_slice: dict[str, dict[str, float | None]] = {}
    if reference:
        for column in slices:
            for value, metrics in live.slices.get(column, {}).items():
                ref = (reference.slices.get(column) or {}).get(value)
                if (
                    not ref
                    or (metrics.get("n") or 0) < settings.min_slice_size
                    or (ref.get("n") or 0) < settings.min_slice_size
                ):
                    continue
                per_slice[f"{column}={value}"] = decay(metrics, ref, settings.metrics)
    return PerformanceResult(
        live=live,
        holdout=reference,
        decay=overall,
        slice_decay=per_slice,
        rows=len(joined),
        enough_rows=len(joined) >= settings.min_rows,
    )


def assess(
    joined: Joined,
    traffic: pd.DataFrame,
    *,
    columns: Any,
    default_threshold: float,
    holdout: Evaluation | dict | None,
    settings: PerformanceSettings,
) -> tuple[PerformanceResult, dict[str, Any]]:
    """Measure the joined predictions and summarise the check: ``ok``, or ``no_holdout`` (live figures, no decay).

    :param joined: the predictions joined with their outcomes.
    :param traffic: the period's logged predictions (their decision ``threshold``).
    :param columns: the monitored columns (``core.drift.MonitoredColumns``: prediction, label, task).
    :param default_threshold: the champion's decision threshold, when the log records none.
    :param holdout: the champion's hold-out evaluation, or None.
    :param settings: task, metrics, slices and minimum sizes.
    """
    threshold = decision_threshold(traffic, default_threshold) if columns.task == "classification" else None
    result = measure(
        joined.frame, columns.prediction, label=columns.label, threshold=threshold, holdout=holdout, settings=settings
    )
    summary = {
        "status": "ok" if holdout else "no_holdout",
        "predictions": joined.predictions,
        "without_outcome": joined.without_outcome,
        "threshold": threshold,
        **result.summary(),
    }
    if not holdout:
        summary["reason"] = "the champion's run has no hold-out evaluation"
    return result, summary


def holdout_rows(
    sample: pd.DataFrame, holdout_periods: list[str], *, period_column: str | None, label: str
) -> pd.DataFrame | None:
    """The reference sample's hold-out rows (the performance report's reference), or None without any.

    :param sample: the champion's reference sample.
    :param holdout_periods: the periods the champion held out.
    :param period_column: the sample's period column.
    :param label: the label column.
    """
    if not holdout_periods or not period_column or period_column not in sample or label not in sample:
        return None
    rows = sample[sample[period_column].astype(str).isin(holdout_periods)]
    return rows if len(rows) else None
