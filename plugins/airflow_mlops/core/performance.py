"""Live performance: join logged predictions with the outcomes that arrive later, score them, compare with hold-out.

The outcomes of a month's flights arrive with that month's validated batch (``arr_delay``); the label is
``arr_delay > threshold_minutes`` (``include/config/features.yaml``), the key the feature stage's
``flight_id`` (``<UTC scheduled hour %Y%m%dT%H>-<carrier>-<flight>``), exactly what the serving log carries.
Cancelled and diverted flights have no arrival delay and no label: they are left out, and counted.

Decay is "how much worse live is than on the champion's hold-out", in metric units, positive = worse, for each
metric whatever its direction (ROC AUC drops, log loss rises). Per slice only where both sides have at least
``min_slice_size`` rows. Plain functions, no Airflow import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.evaluation import METRICS, Evaluation

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class PerformanceSettings:
    """``include/config/monitoring.yaml`` section ``performance``."""

    metrics: tuple[str, ...] = ("roc_auc", "log_loss", "brier")
    slice_columns: tuple[str, ...] = ("carrier", "origin")
    min_rows: int = 500
    min_slice_size: int = 300

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown performance metrics {unknown}; known: {', '.join(METRICS)}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PerformanceSettings:
        section = config.get("performance") or {}
        return cls(
            metrics=tuple(section.get("metrics") or cls.metrics),
            slice_columns=tuple(section.get("slice_columns") or ()),
            min_rows=int(section.get("min_rows", 500)),
            min_slice_size=int(section.get("min_slice_size", 300)),
        )


def outcomes_from_flights(
    flights: pd.DataFrame, threshold_minutes: float, unknown_category: str = "UNKNOWN"
) -> pd.DataFrame:
    """``flight_id``, ``is_late`` (and ``arr_delay``) of every flight of a validated batch that has an outcome."""
    import numpy as np
    import pandas as pd

    time_hour = pd.to_datetime(flights["time_hour"], utc=True)
    hours = np.char.replace(
        np.datetime_as_string(time_hour.dt.tz_localize(None).to_numpy().astype("datetime64[h]"), unit="h"), "-", ""
    )
    carrier = flights["carrier"].astype("string").str.strip().str.upper().fillna(unknown_category)
    flight_id = (
        pd.Series(hours, index=flights.index)
        + "-"
        + carrier.astype(str)
        + "-"
        + flights["flight"].astype("int64").astype(str)
    )
    done = flights["arr_delay"].notna()
    return pd.DataFrame(
        {
            "flight_id": flight_id[done].astype(object).to_numpy(),
            "arr_delay": flights.loc[done, "arr_delay"].astype("float64").to_numpy(),
            "is_late": (flights.loc[done, "arr_delay"] > threshold_minutes).astype("int64").to_numpy(),
        }
    )


@dataclass
class Joined:
    """Predictions with their outcome; counts of what could not be joined."""

    frame: pd.DataFrame
    predictions: int
    unique_flights: int
    without_outcome: int


def join_outcomes(log: pd.DataFrame, outcomes: pd.DataFrame, label: str = "is_late") -> Joined:
    """The newest prediction per flight (a flight asked twice counts once), joined with its outcome."""
    if log.empty:
        import pandas as pd

        return Joined(pd.DataFrame(columns=[*log.columns, label]), 0, 0, 0)
    latest = (
        log.sort_values("timestamp", kind="stable").drop_duplicates("flight_id", keep="last")
        if "timestamp" in log
        else log.drop_duplicates("flight_id", keep="last")
    )
    merged = latest.merge(
        outcomes[["flight_id", "is_late"]].rename(columns={"is_late": label}), on="flight_id", how="left"
    )
    has = merged[label].notna()
    frame = merged[has].reset_index(drop=True)
    frame[label] = frame[label].astype("int64")
    return Joined(frame=frame, predictions=len(log), unique_flights=len(latest), without_outcome=int((~has).sum()))


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
            "live": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.live.overall.items()},
            "holdout": {
                k: (round(v, 5) if isinstance(v, float) else v)
                for k, v in (self.holdout.overall if self.holdout else {}).items()
            },
            "decay": {k: (round(v, 5) if v is not None else None) for k, v in self.decay.items()},
            "slice_decay": {
                k: {m: round(x, 5) for m, x in v.items() if x is not None} for k, v in self.slice_decay.items()
            },
            "worst_slice_decay": worst,
        }


def decay(
    live: dict[str, Any], reference: dict[str, Any], metrics: tuple[str, ...] | list[str]
) -> dict[str, float | None]:
    """``reference - live`` for higher-is-better metrics, ``live - reference`` otherwise; ``None`` if either is missing."""
    out: dict[str, float | None] = {}
    for metric in metrics:
        a, b = live.get(metric), reference.get(metric)
        if a is None or b is None:
            out[metric] = None
        else:
            out[metric] = float(b) - float(a) if METRICS[metric] else float(a) - float(b)
    return out


def measure(
    joined: pd.DataFrame,
    proba_column: str,
    *,
    label: str,
    threshold: float,
    holdout: Evaluation | dict | None,
    settings: PerformanceSettings,
) -> PerformanceResult:
    """Score the joined predictions overall and per slice; decay against the hold-out evaluation."""
    from airflow_mlops.core.evaluation import evaluate

    slices = [c for c in settings.slice_columns if c in joined.columns]
    live = evaluate(joined, joined[proba_column].to_numpy(), label=label, threshold=threshold, slices=slices)
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
