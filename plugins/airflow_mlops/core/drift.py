"""Data and prediction drift against a champion's reference, from statistics computed once per champion.

The reference is the champion's training-set snapshot. ``build_profile`` reduces it, once, to a
``ReferenceProfile``: per feature its reference-quantile bin edges and bin shares (numeric) or category shares
(categorical), its missing share and range, and the same for the champion's predictions on the reference (a
probability for a classifier, a value for a regressor). ``compare`` then scores any amount of traffic against the
profile in one vectorised pass per column (bin with ``searchsorted``, count with ``bincount``): the reference is
never read again, so the cost of a check grows with the traffic only, not with the training set.

Scores (per column, missing values excluded, empty bins floored as Evidently does):

* ``psi`` — population stability index, ``Σ (r - c)·ln(r / c)``; 0.1 = moderate, 0.25 = major shift.
* ``jensenshannon`` — Jensen-Shannon distance (natural log) of the two binned distributions, in [0, 0.83].

A column drifts when its score is at or above its threshold: the larger of the configured one (the smallest shift
that matters; a huge sample does not flag a trivial one) and its null threshold (the ``1 - significance``
quantile of the score between two samples of the reference's own distribution at these sizes and bins, from a
seeded simulation: a small sample does not flag its own noise). Before scoring, bins too small for the sample are
merged (numeric: adjacent reference-quantile bins; categorical: rare categories pooled with the other bin and the
unseen values) so each expects ``min_expected_count`` values. The profile is built from the whole training set,
or from its newest ``reference.window_periods`` periods. A column with no values at all in the current
data cannot be compared: it counts as drifted ("no values"), since a feature the model gets as all-missing is
not a shift to ignore. Data quality (missing share, unseen categories, values outside the reference range) is
reported beside the drift, not folded into it.

The period's inputs are generic: the traffic's event time (``event_times``), the batch rows of a committed
feature partition (``batch_frame``) and the columns monitored (``MonitoredColumns``) are named by the caller,
never by a domain. ``assess_period`` and ``period_summary`` make one check of a period. A check of period ``p``
covers the monitoring window (``monitoring_window``: ``monitoring.window_periods`` periods ending with ``p``), so a
use case whose period holds few predictions (a day of one request) still gathers enough rows to judge;
``window_batch_frame`` concatenates the window's batch rows.

Plain functions and dataclasses, no Airflow import; numpy / pandas are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

    import numpy as np
    import pandas as pd

METHODS = ("psi", "jensenshannon")
NUMERIC, CATEGORICAL = "numeric", "categorical"
#: The bin of categorical values the reference did not have (or had beyond ``max_categories``).
OTHER = "__other__"
#: The prediction column when the monitoring config names none (``prediction_column``).
DEFAULT_PREDICTION = "prediction"
#: Kept for callers that name the prediction column through the module (benchmarks).
PREDICTION = DEFAULT_PREDICTION
#: The partition file of label rows (id, event time, label, keys and the row's own features).
LABELS_FILE = "labels"


@dataclass(frozen=True)
class MonitoredColumns:
    """Which columns of the traffic and the outcomes monitoring reads; none is a domain name.

    :param id: the row id joining a logged prediction to its outcome (the training config's ``id_column``).
    :param label: the label (the training config's ``label``).
    :param prediction: the logged prediction (a probability for classification, a value for regression).
    :param task: ``classification`` or ``regression``.
    :param event_time: the traffic's event-time column; None: found by ``event_times``.
    :param id_time_format: a ``strptime`` format the id starts with, the event time of rows that have none.
    """

    id: str
    label: str
    prediction: str = DEFAULT_PREDICTION
    task: str = "classification"
    event_time: str | None = None
    id_time_format: str | None = None


@dataclass(frozen=True)
class DriftSettings:
    """How drift is measured (``include/config/monitoring.yaml``, sections ``reference`` and ``drift``)."""

    method: str = "psi"
    threshold: float = 0.1
    per_column_threshold: dict[str, float] = field(default_factory=dict)
    prediction_threshold: float = 0.1
    bins: int = 20
    max_categories: int = 100
    min_rows: int = 500
    max_missing_increase: float = 0.1
    significance: float | None = 0.01
    min_expected: float = 5.0
    reference_periods: int | None = None
    period_variation: float | None = 1.0
    block_periods: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown drift method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.bins < 2:
            raise ValueError("drift bins must be at least 2")
        if self.threshold <= 0 or self.prediction_threshold <= 0:
            raise ValueError("drift thresholds must be positive")
        if self.significance is not None and not 0 < self.significance < 1:
            raise ValueError(f"drift significance must be in (0, 1) or null, not {self.significance}")
        if self.min_expected < 0:
            raise ValueError(f"drift min_expected_count must be 0 or more, not {self.min_expected}")
        if self.period_variation is not None and self.period_variation <= 0:
            raise ValueError(f"drift period_variation must be positive or null, not {self.period_variation}")
        if self.reference_periods is not None and self.reference_periods < 1:
            raise ValueError(f"reference window_periods must be at least 1 or null, not {self.reference_periods}")

    def threshold_for(self, column: str) -> float:
        return float(self.per_column_threshold.get(column, self.threshold))

    @property
    def profile_key(self) -> str:
        """What changes a profile (binning), so a cached profile built with other settings is rebuilt."""
        key: dict[str, Any] = {"bins": self.bins, "max_categories": self.max_categories}
        if self.reference_periods is not None:
            key["reference_periods"] = self.reference_periods
        if self.period_variation is not None:  # the blocks' scores are part of the profile
            key.update(blocks=self.block_periods, method=self.method, min_expected=self.min_expected)
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DriftSettings:
        reference, drift = config.get("reference") or {}, config.get("drift") or {}
        prediction = config.get("prediction_drift") or {}
        quality = drift.get("quality") or {}
        return cls(
            method=str(drift.get("method", "psi")),
            threshold=float(drift.get("threshold", 0.1)),
            per_column_threshold={k: float(v) for k, v in (drift.get("per_column_threshold") or {}).items()},
            prediction_threshold=float(prediction.get("threshold", drift.get("threshold", 0.1))),
            bins=int(reference.get("bins", 20)),
            max_categories=int(reference.get("max_categories", 100)),
            min_rows=int(drift.get("min_rows", 500)),
            max_missing_increase=float(quality.get("max_missing_increase", 0.1)),
            significance=_optional(drift, "significance", 0.01),
            min_expected=float(drift.get("min_expected_count", 5)),
            reference_periods=None if reference.get(WINDOW_KEY) is None else int(reference[WINDOW_KEY]),
            period_variation=_optional(drift, "period_variation", 1.0),
            block_periods=window_size(config),
        )


def _optional(section: dict[str, Any], key: str, default: float) -> float | None:
    """``section[key]`` as a float, None if set to null, ``default`` if absent."""
    value = section.get(key, default)
    return None if value is None else float(value)


#: The monitoring config's key of the window a check covers, in periods ending with the period checked.
WINDOW_KEY = "window_periods"


@dataclass(frozen=True)
class MonitoringWindow:
    """What a check of one period covers: the ``window`` periods ending with it, and their data interval.

    :param period: the period checked (the newest of the window).
    :param periods: the window's periods, oldest first, ending with ``period``.
    :param start: the start (UTC) of the oldest period: the period's start shifted back ``window - 1`` periods.
    :param end: the end (UTC, exclusive) of ``period``.
    """

    period: str
    periods: tuple[str, ...]
    start: datetime
    end: datetime


def window_size(config: dict[str, Any]) -> int:
    """``monitoring.window_periods`` of the monitoring config (default 1: the period alone).

    :param config: the monitoring config (the use case's ``monitoring`` section).
    :raises ValueError: not a whole number of at least 1 (the message names the key).
    """
    value = config.get(WINDOW_KEY, 1)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise ValueError(f"monitoring.{WINDOW_KEY} must be a whole number of periods (1 or more), not {value!r}")
    size = int(value)
    if size < 1:
        raise ValueError(f"monitoring.{WINDOW_KEY} must be at least 1 (the period checked alone), not {size}")
    return size


def monitoring_window(period: str, window: int = 1) -> MonitoringWindow:
    """The window a check of ``period`` covers: the ``window`` periods ending with it and their data interval
    ``[start of the oldest, end of period)``.

    :param period: ``YYYY-MM`` or ``YYYY-MM-DD``: the period checked.
    :param window: how many periods, ``period`` included (1: the period alone).
    :raises ValueError: not a period, or a window below 1.
    """
    from airflow_mlops.core.batches import parse_period, period_bounds, window_periods

    period = parse_period(period)
    periods = tuple(window_periods(period, window))
    return MonitoringWindow(period, periods, period_bounds(periods[0])[0], period_bounds(period)[1])


# -- the reference profile ----------------------------------------------------------------------------------
@dataclass
class ColumnProfile:
    """One column of the reference, reduced to what drift and quality checks need."""

    name: str
    kind: str
    rows: int
    missing_share: float
    shares: list[float]
    edges: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    minimum: float | None = None
    maximum: float | None = None
    mean: float | None = None
    #: Each block of reference periods scored against the rest (``block_scores``); empty with one block.
    period_scores: list[float] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnProfile:
        return cls(**data)


@dataclass
class ReferenceProfile:
    """A champion's reference statistics; ``meta`` says which champion, snapshot and settings built it."""

    columns: dict[str, ColumnProfile]
    prediction: ColumnProfile | None
    rows: int
    label_rate: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return list(self.columns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "label_rate": self.label_rate,
            "meta": self.meta,
            "columns": {k: asdict(v) for k, v in self.columns.items()},
            "prediction": asdict(self.prediction) if self.prediction else None,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceProfile:
        return cls(
            columns={k: ColumnProfile.from_dict(v) for k, v in data["columns"].items()},
            prediction=ColumnProfile.from_dict(data["prediction"]) if data.get("prediction") else None,
            rows=int(data["rows"]),
            label_rate=data.get("label_rate"),
            meta=dict(data.get("meta") or {}),
        )


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _category_strings(values: pd.Series) -> np.ndarray:
    """Categorical values as an object array of strings, missing as ``None``."""
    import numpy as np

    present = values.notna().to_numpy()
    out = np.full(len(values), None, dtype=object)
    out[present] = values[present].astype(str).to_numpy()
    return out


def profile_column(
    values: pd.Series,
    name: str,
    kind: str,
    bins: int = 20,
    max_categories: int = 100,
    *,
    groups: Any = None,
    method: str = "psi",
    min_expected: float = 0.0,
) -> ColumnProfile:
    """The reference statistics of one column (numeric: reference-quantile bins; categorical: value shares).

    :param groups: each value's block of reference periods (``period_blocks``), or None: with two blocks or more,
        ``period_scores`` holds each block's score against the rest of the reference (``block_scores``).
    :param method: the score of ``period_scores``.
    :param min_expected: the bins' merging of ``period_scores`` (as ``column_drift`` merges them).
    """
    import numpy as np
    import pandas as pd

    rows = len(values)
    groups = None if groups is None else np.asarray(groups)
    if kind == NUMERIC:
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
        finite = np.isfinite(x)
        x = x[finite]
        missing = 1.0 - len(x) / rows if rows else 1.0
        if not len(x):
            return ColumnProfile(name, kind, rows, missing, shares=[])
        edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
        codes = np.searchsorted(edges, x, side="right")
        counts = np.bincount(codes, minlength=len(edges) + 1)
        periods = [] if groups is None else block_scores(codes, groups[finite], len(counts), method, min_expected)
        return ColumnProfile(
            name,
            kind,
            rows,
            missing,
            shares=(counts / len(x)).tolist(),
            edges=edges.tolist(),
            minimum=_finite(x.min()),
            maximum=_finite(x.max()),
            mean=_finite(x.mean()),
            period_scores=periods,
        )
    if kind != CATEGORICAL:
        raise ValueError(f"unknown column kind {kind!r}")
    cats = _category_strings(values)
    present_mask = cats != None  # noqa: E711 - element-wise comparison on an object array
    present = cats[present_mask]
    missing = 1.0 - len(present) / rows if rows else 1.0
    if not len(present):
        return ColumnProfile(name, kind, rows, missing, shares=[])
    counts = pd.Series(present).value_counts()
    top = counts.iloc[:max_categories]
    shares = (top / len(present)).tolist()
    categories = [str(c) for c in top.index]
    rest = int(counts.iloc[max_categories:].sum())
    if rest:
        categories.append(OTHER)
        shares.append(rest / len(present))
    periods = []
    if groups is not None:
        codes = pd.Series(present).map({c: i for i, c in enumerate(categories)}).fillna(len(categories) - 1)
        periods = block_scores(
            codes.astype("int64").to_numpy(),
            groups[present_mask],
            len(categories),
            method,
            min_expected,
            pooled=len(categories) - 1 if rest else None,
        )
    return ColumnProfile(name, kind, rows, missing, shares=shares, categories=categories, period_scores=periods)


def block_scores(
    codes: np.ndarray, groups: np.ndarray, bins: int, method: str, min_expected: float, pooled: int | None = None
) -> list[float]:
    """Each block's score against the rest of the reference: how far one block of the reference's own periods
    stands from the others, i.e. how much the column moves from period to period with no drift to act on.

    :param codes: each value's bin.
    :param groups: each value's block.
    :param bins: the number of bins.
    :param method: ``psi`` | ``jensenshannon``.
    :param min_expected: bins merged as ``column_drift`` merges them (the block is the smaller side).
    :param pooled: categorical: the reference's other bin (pooled with rare categories); None: numeric bins.
    """
    import numpy as np

    labels = np.unique(groups[groups >= 0])
    if len(labels) < 2:
        return []
    total = np.bincount(codes, minlength=bins)
    out = []
    for label in labels:
        part = np.bincount(codes[groups == label], minlength=bins)
        rest = total - part
        if not part.sum() or not rest.sum():
            continue
        rows = min(part.sum(), rest.sum())
        ref = rest / rest.sum()
        if pooled is None and len(ref) > 1:
            ref, counts = _merge_adjacent(ref, part, rows, min_expected)
        else:
            mask = np.zeros(len(ref), dtype=bool)
            if pooled is not None:
                mask[pooled] = True
            ref, counts = _pool_rare(ref, part, mask, rows, min_expected)
        used = (ref > 0) | (counts > 0)
        out.append(round(score(ref[used], counts[used] / counts.sum(), method), 6))
    return out


def period_blocks(periods: Any, block: int) -> np.ndarray:
    """Each row's block of reference periods: the periods in order, cut into blocks of ``block`` from the newest
    (a check covers ``block`` periods: a block is what one check sees); an older remainder shorter than a block is
    left out (-1).

    :param periods: each row's period (sortable strings, e.g. ``YYYY-MM``).
    :param block: periods per block (``monitoring.window_periods``).
    """
    import pandas as pd

    values = pd.Series(periods).astype(str)
    ordered = sorted(values.unique(), reverse=True)
    full = len(ordered) // max(block, 1)
    index = {p: i // block if i // block < full else -1 for i, p in enumerate(ordered)}
    return values.map(index).to_numpy(dtype="int64")


def build_profile(
    frame: pd.DataFrame,
    *,
    categorical: list[str] | tuple[str, ...],
    numeric: list[str] | tuple[str, ...],
    predictions: Any = None,
    label: str | None = None,
    bins: int = 20,
    max_categories: int = 100,
    meta: dict[str, Any] | None = None,
    prediction_name: str = DEFAULT_PREDICTION,
    groups: Any = None,
    method: str = "psi",
    min_expected: float = 0.0,
) -> ReferenceProfile:
    """Reduce the reference frame (and the champion's predictions on it) to a ``ReferenceProfile``.

    :param prediction_name: the name the predictions' column profile gets (the traffic's prediction column).
    :param groups: each row's block of reference periods (``period_blocks``), or None: see ``profile_column``.
    :param method: the score of the blocks' ``period_scores``.
    :param min_expected: the bins' merging of the blocks' ``period_scores``.
    """
    import pandas as pd

    missing = [c for c in (*categorical, *numeric) if c not in frame.columns]
    if missing:
        raise ValueError(f"the reference lacks feature columns: {', '.join(missing)}")
    blocks = dict(groups=groups, method=method, min_expected=min_expected)
    columns = {c: profile_column(frame[c], c, CATEGORICAL, bins, max_categories, **blocks) for c in categorical}
    columns.update({c: profile_column(frame[c], c, NUMERIC, bins, max_categories, **blocks) for c in numeric})
    prediction = None
    if predictions is not None:
        prediction = profile_column(
            pd.Series(predictions, dtype="float64"), prediction_name, NUMERIC, bins, max_categories, **blocks
        )
    label_rate = None
    if label and label in frame.columns and frame[label].notna().any():
        label_rate = float(frame[label].dropna().astype(float).mean())
    return ReferenceProfile(
        columns=columns, prediction=prediction, rows=len(frame), label_rate=label_rate, meta=dict(meta or {})
    )


# -- scoring current data -----------------------------------------------------------------------------------
def _floor(shares: np.ndarray) -> np.ndarray:
    """Empty bins get a small share (Evidently's rule), so logs stay finite; then renormalise."""
    import numpy as np

    out = np.asarray(shares, dtype="float64").copy()
    nonzero = out[out > 0]
    if not len(nonzero):
        return out
    smallest = nonzero.min()
    out[out == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return out / out.sum()


def _floor_rows(shares: np.ndarray) -> np.ndarray:
    """``_floor`` of each row of a 2-d array of shares (rows with some share)."""
    import numpy as np

    out = np.asarray(shares, dtype="float64")
    smallest = np.where(out > 0, out, np.inf).min(axis=1, keepdims=True)
    out = np.where(out == 0, np.where(smallest <= 0.0001, smallest / 10**6, 0.0001), out)
    return out / out.sum(axis=1, keepdims=True)


def _scores(r: np.ndarray, c: np.ndarray, method: str) -> np.ndarray:
    """``method``'s distance between the floored shares of each row of ``r`` and ``c``."""
    import numpy as np

    if method == "psi":
        return np.sum((r - c) * np.log(r / c), axis=1)
    if method == "jensenshannon":
        m = (r + c) / 2
        js = 0.5 * np.sum(r * np.log(r / m), axis=1) + 0.5 * np.sum(c * np.log(c / m), axis=1)
        return np.sqrt(np.maximum(js, 0.0))
    raise ValueError(f"unknown drift method {method!r}")


def score(reference: Any, current: Any, method: str) -> float:
    """Distance between two binned distributions (shares) by ``method``."""
    return float(_scores(_floor(reference)[None, :], _floor(current)[None, :], method)[0])


#: Draws of the seeded simulation behind a column's null threshold (``null_threshold``).
NULL_DRAWS = 2000


def null_threshold(shares: Any, reference_rows: int, rows: int, method: str, significance: float | None) -> float:
    """The ``1 - significance`` quantile of the score between two samples of the reference's own distribution, one
    of ``reference_rows`` values, one of ``rows``: a score below it is what sampling alone gives. A seeded
    simulation (``NULL_DRAWS`` multinomial draws of each side from ``shares``, scored as ``score`` scores), so it
    holds for any bin count and sample size, floors of empty bins included; it shrinks as ``1/rows``.

    :param shares: the reference's (coarsened) bin shares.
    :param reference_rows: values in the reference.
    :param rows: values in the current data.
    :param method: ``psi`` | ``jensenshannon``.
    :param significance: the false-alarm rate per column; None: no null threshold (0).
    """
    import numpy as np

    p = np.asarray(shares, dtype="float64")
    p = p[p > 0]
    if significance is None or len(p) < 2 or rows < 1:
        return 0.0
    p = p / p.sum()
    rng = np.random.default_rng(0)
    current = rng.multinomial(rows, p, size=NULL_DRAWS) / rows
    reference = rng.multinomial(reference_rows, p, size=NULL_DRAWS) / reference_rows if reference_rows else p[None]
    values = _scores(_floor_rows(reference), _floor_rows(current), method)
    return float(np.quantile(values, 1 - significance))


def _merge_adjacent(ref: np.ndarray, counts: np.ndarray, rows: float, min_expected: float) -> tuple[Any, Any]:
    """Adjacent bins merged, lowest first, until each expects at least ``min_expected`` of ``rows`` values."""
    import numpy as np

    if min_expected <= 0 or len(ref) < 2:
        return ref, counts
    starts, held = [0], 0.0
    for i, share in enumerate(ref[:-1]):
        held += share
        if held * rows >= min_expected:
            starts.append(i + 1)
            held = 0.0
    if len(starts) > 1 and ref[starts[-1] :].sum() * rows < min_expected:
        starts.pop()  # a short last group joins the one before it
    index = np.asarray(starts)
    return np.add.reduceat(ref, index), np.add.reduceat(counts, index)


def _pool_rare(ref: np.ndarray, counts: np.ndarray, pooled: np.ndarray, rows: float, min_expected: float):
    """Categories expecting fewer than ``min_expected`` of ``rows`` values pooled with the ``pooled`` bins (the
    reference's other bin, unseen values) into one last bin."""
    import numpy as np

    pooled = pooled | (ref * rows < min_expected) if min_expected > 0 else pooled
    if not pooled.any():
        return ref, counts
    return np.append(ref[~pooled], ref[pooled].sum()), np.append(counts[~pooled], counts[pooled].sum())


@dataclass
class ColumnDrift:
    """One column of current data against its reference profile."""

    column: str
    kind: str
    rows: int
    score: float | None
    threshold: float
    drifted: bool
    missing_share: float
    reference_missing_share: float
    unseen_share: float = 0.0
    out_of_range_share: float = 0.0
    note: str | None = None
    #: The score sampling alone stays below (``null_threshold``); ``threshold`` is the larger of it and the config's.
    null_threshold: float | None = None
    #: ``period_variation`` times the largest of the reference's ``period_scores``; None without them.
    period_threshold: float | None = None
    #: Bins scored, after merging those too small for the sample.
    bins: int | None = None


def column_drift(
    profile: ColumnProfile,
    values: pd.Series,
    method: str,
    threshold: float,
    *,
    significance: float | None = None,
    min_expected: float = 0.0,
    period_variation: float | None = None,
) -> ColumnDrift:
    """Bin ``values`` as the reference was binned and score the two distributions.

    Bins too small for the sample are merged first (numeric: adjacent bins; categorical: rare categories pooled
    with the other bin and unseen values) until each expects ``min_expected`` values of the smaller side; bins
    empty on both sides are dropped. The column drifts when its score is at or above the largest of ``threshold``
    (the smallest shift that matters), the null threshold (``null_threshold`` at ``significance``: the largest
    score sampling alone gives at these sizes) and ``period_variation`` times the largest of the profile's
    ``period_scores`` (how far the reference's own periods stand from each other), recorded as ``threshold``.
    """
    import numpy as np
    import pandas as pd

    rows = len(values)
    common = dict(column=profile.name, kind=profile.kind, rows=rows, reference_missing_share=profile.missing_share)
    reference_rows = round(profile.rows * (1 - profile.missing_share))
    if profile.kind == NUMERIC:
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
        x = x[np.isfinite(x)]
        present, outside, unseen = len(x), 0.0, 0.0
        if present and profile.shares:
            counts = np.bincount(
                np.searchsorted(np.asarray(profile.edges), x, side="right"), minlength=len(profile.shares)
            )
            outside = float(np.mean((x < profile.minimum) | (x > profile.maximum)))
            ref, counts = _merge_adjacent(
                np.asarray(profile.shares), counts, min(present, reference_rows), min_expected
            )
    else:
        cats = _category_strings(values)
        kept = cats[cats != None]  # noqa: E711 - element-wise comparison on an object array
        present, outside, unseen = len(kept), 0.0, 0.0
        if present and profile.shares:
            index = {c: i for i, c in enumerate(profile.categories)}
            codes = pd.Series(kept).map(index)
            unseen = float(codes.isna().mean())  # not among the reference's (top) categories
            ref = np.append(np.asarray(profile.shares), 0.0)  # the last bin: values the reference did not have
            counts = np.bincount(codes.fillna(len(ref) - 1).astype("int64").to_numpy(), minlength=len(ref))
            pooled = np.zeros(len(ref), dtype=bool)
            pooled[-1] = True
            if OTHER in index:
                pooled[index[OTHER]] = True
            ref, counts = _pool_rare(ref, counts, pooled, min(present, reference_rows), min_expected)
    missing = 1.0 - present / rows if rows else 1.0
    if not present:
        return ColumnDrift(
            **common, threshold=threshold, score=None, drifted=True, missing_share=missing, note="no values"
        )
    if not profile.shares:
        return ColumnDrift(
            **common, threshold=threshold, score=None, drifted=False, missing_share=missing, note="no reference values"
        )
    used = (ref > 0) | (counts > 0)
    ref, current = ref[used], counts[used] / present
    null = null_threshold(ref, reference_rows, present, method, significance)
    between = period_variation * max(profile.period_scores) if period_variation and profile.period_scores else None
    limit = max(threshold, null, between or 0.0)
    value = score(ref, current, method)
    return ColumnDrift(
        **common,
        threshold=limit,
        score=value,
        drifted=value >= limit,
        missing_share=missing,
        unseen_share=unseen,
        out_of_range_share=outside,
        null_threshold=round(null, 6) if significance is not None else None,
        period_threshold=None if between is None else round(between, 6),
        bins=int(used.sum()),
    )


@dataclass
class DriftResult:
    """Current data against the reference: per column, overall share, prediction drift, quality flags."""

    rows: int
    method: str
    columns: dict[str, ColumnDrift]
    prediction: ColumnDrift | None = None
    enough_rows: bool = True
    label_rate: float | None = None
    reference_label_rate: float | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return [c for c, d in self.columns.items() if d.drifted]

    @property
    def drift_share(self) -> float:
        return len(self.drifted_columns) / len(self.columns) if self.columns else 0.0

    def quality_issues(self, max_missing_increase: float) -> list[str]:
        issues = []
        for name, d in self.columns.items():
            if d.missing_share - d.reference_missing_share > max_missing_increase:
                issues.append(f"{name}: missing {d.missing_share:.1%} (reference {d.reference_missing_share:.1%})")
            if d.unseen_share > max_missing_increase:
                issues.append(f"{name}: {d.unseen_share:.1%} values unseen in the reference")
            if d.out_of_range_share > max_missing_increase:
                issues.append(f"{name}: {d.out_of_range_share:.1%} values outside the reference range")
        return issues

    def summary(self, max_missing_increase: float = 0.1) -> dict[str, Any]:
        """Small JSON: what the policy and XCom need (scores rounded; no per-bin data)."""
        return {
            "rows": self.rows,
            "enough_rows": self.enough_rows,
            "method": self.method,
            "drift_share": round(self.drift_share, 4),
            "drifted_columns": self.drifted_columns,
            "scores": {c: (round(d.score, 5) if d.score is not None else None) for c, d in self.columns.items()},
            "prediction_drift": round(self.prediction.score, 5)
            if self.prediction and self.prediction.score is not None
            else None,
            "prediction_drifted": bool(self.prediction.drifted) if self.prediction else False,
            "label_rate": self.label_rate,
            "reference_label_rate": self.reference_label_rate,
            "quality_issues": self.quality_issues(max_missing_increase),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "method": self.method,
            "enough_rows": self.enough_rows,
            "columns": {k: asdict(v) for k, v in self.columns.items()},
            "prediction": asdict(self.prediction) if self.prediction else None,
            "label_rate": self.label_rate,
            "reference_label_rate": self.reference_label_rate,
        }


def compare(
    profile: ReferenceProfile,
    current: pd.DataFrame,
    settings: DriftSettings,
    *,
    columns: list[str] | None = None,
    prediction_column: str | None = DEFAULT_PREDICTION,
    label: str | None = None,
) -> DriftResult:
    """Score ``current`` against ``profile``: every profiled column present in ``current`` (or ``columns``)."""
    names = columns if columns is not None else [c for c in profile.columns if c in current.columns]
    unknown = [c for c in names if c not in profile.columns]
    if unknown:
        raise ValueError(f"columns without a reference profile: {', '.join(unknown)}")
    absent = [c for c in names if c not in current.columns]
    if absent:
        raise ValueError(f"the current data lacks columns: {', '.join(absent)}")
    result = DriftResult(
        rows=len(current),
        method=settings.method,
        columns={
            c: column_drift(
                profile.columns[c],
                current[c],
                settings.method,
                settings.threshold_for(c),
                significance=settings.significance,
                min_expected=settings.min_expected,
                period_variation=settings.period_variation,
            )
            for c in names
        },
        enough_rows=len(current) >= settings.min_rows,
        reference_label_rate=profile.label_rate,
    )
    if prediction_column and profile.prediction is not None and prediction_column in current.columns:
        result.prediction = column_drift(
            profile.prediction,
            current[prediction_column],
            settings.method,
            settings.prediction_threshold,
            significance=settings.significance,
            min_expected=settings.min_expected,
            period_variation=settings.period_variation,
        )
    if label and label in current.columns and current[label].notna().any():
        result.label_rate = float(current[label].dropna().astype(float).mean())
    return result


# -- the champion's reference --------------------------------------------------------------------------------
def reference_scores(model: Any, frame: pd.DataFrame, config: Any, task: str = "classification") -> np.ndarray:
    """The champion's predictions on ``frame``: P(label = 1) for classification, the predicted value for regression.

    :param model: the fitted pipeline.
    :param frame: rows with the model's feature columns.
    :param config: the champion's ``TrainingConfig``.
    :param task: ``classification`` or ``regression``.
    """
    import numpy as np

    from airflow_mlops.core import training

    if task != "regression":
        return np.asarray(training.predict_proba(model, frame, config), dtype="float64")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(getattr(config, "threads", 1)):
        return np.asarray(model.predict(training.features_frame(frame, config)), dtype="float64")


def build_reference(
    frame: pd.DataFrame,
    scores: Any,
    *,
    config: Any,
    columns: MonitoredColumns,
    settings: DriftSettings,
    sample_size: int,
    meta: dict[str, Any] | None = None,
) -> tuple[ReferenceProfile, pd.DataFrame]:
    """The champion's profile and its seeded reference sample (id, label, period, features and ``scores``).

    :param frame: the champion's training set.
    :param scores: the champion's predictions on ``frame`` (``reference_scores``).
    :param config: the champion's ``TrainingConfig`` (feature kinds, period column).
    :param columns: the monitored columns (the sample's prediction column is ``columns.prediction``).
    :param settings: binning of the profile.
    :param sample_size: rows kept in the sample.
    :param meta: recorded in the profile.
    """
    import numpy as np

    period_column = getattr(config, "month_column", None)
    window = reference_window(frame, period_column, settings.reference_periods)
    groups = None
    if settings.period_variation is not None and period_column and period_column in frame.columns:
        groups = period_blocks(frame.loc[window, period_column], settings.block_periods)
    profile = build_profile(
        frame[window],
        categorical=list(config.categorical),
        numeric=list(config.numeric),
        predictions=np.asarray(scores)[window],
        groups=groups,
        method=settings.method,
        min_expected=settings.min_expected,
        label=columns.label,
        bins=settings.bins,
        max_categories=settings.max_categories,
        meta=meta,
        prediction_name=columns.prediction,
    )
    wanted = dict.fromkeys([columns.id, columns.label, period_column, *config.features])
    sample = frame[[c for c in wanted if c and c in frame.columns]].copy()
    sample[columns.prediction] = scores
    return profile, sample_rows(sample, sample_size, seed=0)


def reference_window(frame: pd.DataFrame, period_column: str | None, periods: int | None) -> np.ndarray:
    """Which rows of the training set the profile is built from: those of its newest ``periods`` periods
    (``monitoring.reference.window_periods``), or every row (no window, or no period column).

    :param frame: the champion's training set.
    :param period_column: its period column (the training config's ``month_column``).
    :param periods: how many of its newest periods; None: all.
    :return: a boolean mask of ``frame``'s rows.
    """
    import numpy as np

    if periods is None or not period_column or period_column not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    values = frame[period_column].astype(str)
    newest = sorted(values.unique())[-periods:]
    return values.isin(newest).to_numpy()


def batch_frame(
    files: dict[str, pd.DataFrame],
    *,
    id_column: str,
    label: str,
    features: list[str] | tuple[str, ...],
    labels_name: str = LABELS_FILE,
) -> pd.DataFrame | None:
    """A period's rows with the model features its committed feature partition carries, plus the label.

    The label rows carry the row's own features; a view keyed by the row id (one row per id) adds its features.
    Views keyed otherwise (time slots, entities) need a point-in-time join and are left out.

    :param files: the partition's frames by file stem (``labels`` and one per view).
    :param id_column: the row id.
    :param label: the label column.
    :param features: the model's features; those present are kept.
    :param labels_name: the stem of the label rows' file.
    :return: None when the partition has no label rows.
    """
    base = files.get(labels_name)
    if base is None:
        return None
    keep = [c for c in dict.fromkeys([id_column, *features, label]) if c in base.columns]
    out = base[keep].reset_index(drop=True)
    if id_column not in out.columns:
        return out
    for name in sorted(files):
        view = files[name]
        extra = [c for c in features if c in view.columns and c not in out.columns]
        if name == labels_name or id_column not in view.columns or not extra:
            continue
        rows = view[[id_column, *extra]].drop_duplicates(id_column, keep="last")
        out = out.merge(rows, on=id_column, how="left")
    return out


def window_batch_frame(
    partitions: dict[str, dict[str, pd.DataFrame]],
    *,
    id_column: str,
    label: str,
    features: list[str] | tuple[str, ...],
    labels_name: str = LABELS_FILE,
) -> pd.DataFrame | None:
    """The batch rows of a monitoring window: ``batch_frame`` of each committed partition, concatenated in period
    order (a period without a partition or without label rows adds nothing).

    :param partitions: period → the partition's frames by file stem (the window's committed partitions).
    :param id_column: the row id.
    :param label: the label column.
    :param features: the model's features; those present are kept.
    :param labels_name: the stem of the label rows' file.
    :return: None when no partition has label rows.
    """
    import pandas as pd

    parts = [
        frame
        for period in sorted(partitions)
        if (
            frame := batch_frame(
                partitions[period], id_column=id_column, label=label, features=features, labels_name=labels_name
            )
        )
        is not None
    ]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


# -- one period's check ---------------------------------------------------------------------------------------
@dataclass
class PeriodDrift:
    """A period's traffic and batch scored against the reference; which of them the policy reads."""

    traffic: DriftResult | None
    batch: DriftResult | None
    traffic_frame: pd.DataFrame
    batch_frame: pd.DataFrame | None
    traffic_columns: list[str]
    batch_columns: list[str]

    @property
    def source(self) -> str:
        """``traffic`` when it had enough rows, else ``batch``."""
        return "traffic" if self.traffic and self.traffic.enough_rows else "batch"

    @property
    def chosen(self) -> DriftResult | None:
        return self.traffic if self.source == "traffic" else self.batch

    @property
    def current(self) -> pd.DataFrame | None:
        return self.traffic_frame if self.source == "traffic" else self.batch_frame

    @property
    def columns(self) -> list[str]:
        return self.traffic_columns if self.source == "traffic" else self.batch_columns


def assess_period(
    profile: ReferenceProfile,
    traffic: pd.DataFrame,
    batch: pd.DataFrame | None,
    settings: DriftSettings,
    *,
    features: list[str] | tuple[str, ...],
    columns: MonitoredColumns,
) -> PeriodDrift:
    """Score the traffic (features and predictions) and the batch (features and label) against the profile.

    :param profile: the champion's reference profile.
    :param traffic: the period's logged predictions.
    :param batch: the period's batch rows (``batch_frame``), or None.
    :param settings: how drift is measured.
    :param features: the model's features; those present on each side are scored.
    :param columns: the monitored columns.
    """
    traffic_columns = [c for c in features if c in traffic.columns]
    batch_columns = [c for c in features if batch is not None and c in batch.columns]
    traffic_result = (
        compare(profile, traffic, settings, columns=traffic_columns, prediction_column=columns.prediction)
        if len(traffic)
        else None
    )
    batch_result = None
    if batch is not None and len(batch):
        batch_result = compare(
            profile, batch, settings, columns=batch_columns, prediction_column=None, label=columns.label
        )
    return PeriodDrift(traffic_result, batch_result, traffic, batch, traffic_columns, batch_columns)


_BRIEF = (
    "rows",
    "enough_rows",
    "drift_share",
    "drifted_columns",
    "prediction_drift",
    "label_rate",
    "reference_label_rate",
    "quality_issues",
)
_CHOSEN = ("rows", "enough_rows", "drift_share", "drifted_columns", "scores", "prediction_drift", "quality_issues")


def period_summary(assessed: PeriodDrift, settings: DriftSettings) -> dict[str, Any]:
    """What a drift check reports: each side in brief, then the chosen side's figures (``status`` ``ok``), or
    ``status`` ``no_data`` when neither side has rows.

    :param assessed: the period's scores.
    :param settings: how drift was measured (its quality threshold).
    """
    q = settings.max_missing_increase
    out: dict[str, Any] = {
        "method": settings.method,
        "traffic": _brief(assessed.traffic.summary(q)) if assessed.traffic else {"rows": 0},
        "batch": _brief(assessed.batch.summary(q)) if assessed.batch else {"rows": 0},
    }
    chosen = assessed.chosen
    if chosen is None or not chosen.rows:
        return {**out, "status": "no_data", "rows": 0, "enough_rows": False}
    full = chosen.summary(q)
    out.update(status="ok", source=assessed.source, **{k: full[k] for k in _CHOSEN})
    if assessed.source == "batch" and assessed.traffic is not None:
        out["prediction_drift"] = assessed.traffic.summary(q)["prediction_drift"]
    return out


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in _BRIEF}


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a drift check's (``ok``) summary.

    :param summary: ``period_summary``'s output.
    """
    metrics = {
        "drift_share": summary["drift_share"],
        "drifted_columns": float(len(summary["drifted_columns"])),
        "drift_rows": float(summary["rows"]),
        **{f"drift_score.{k}": v for k, v in summary["scores"].items() if v is not None},
    }
    if summary.get("prediction_drift") is not None:
        metrics["prediction_drift"] = summary["prediction_drift"]
    return metrics


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Log lines of a drift check's (``ok``) summary.

    :param summary: ``period_summary``'s output plus the period (``month``).
    """
    drifted = ", ".join(summary["drifted_columns"]) or "no column drifted"
    lines = [
        f"{summary['source']} of {summary.get('month')}: {summary['rows']} rows, drift share "
        f"{summary['drift_share']:.2f} ({drifted}), prediction drift {summary.get('prediction_drift')}"
    ]
    return lines + [f"quality: {issue}" for issue in summary.get("quality_issues") or []]


def report_columns(assessed: PeriodDrift, config: Any, prediction: str) -> dict[str, list[str]]:
    """The categorical and numeric columns of the Evidently drift report (the traffic adds the predictions).

    :param assessed: the period's scores.
    :param config: the champion's ``TrainingConfig`` (feature kinds).
    :param prediction: the prediction column.
    """
    columns = assessed.columns
    numeric = [c for c in config.numeric if c in columns]
    current = assessed.current
    if assessed.source == "traffic" and current is not None and prediction in current.columns:
        numeric.append(prediction)
    return {"categorical": [c for c in config.categorical if c in columns], "numeric": numeric}


# -- selecting the period's traffic ---------------------------------------------------------------------------
def _event_column(log: pd.DataFrame) -> str | None:
    """``event_timestamp`` if the log has it, else its first ``input_*`` column of a datetime type."""
    import pandas as pd

    if "event_timestamp" in log.columns:
        return "event_timestamp"
    for column in log.columns:
        if str(column).startswith("input_") and pd.api.types.is_datetime64_any_dtype(log[column]):
            return str(column)
    return None


def event_times(
    log: pd.DataFrame,
    event_column: str | None = None,
    *,
    id_column: str | None = None,
    id_time_format: str | None = None,
) -> pd.Series:
    """Each logged prediction's event time (UTC), not when it was answered: in a replay the wall clock is years
    after the events.

    :param log: the inference log (or part of it).
    :param event_column: the column holding the event time; None: ``event_timestamp`` if present, else the first
        ``input_*`` column of a datetime type (the serving stage logs its request's event-time field so).
    :param id_column: with ``id_time_format``: where a row has no event time, the id's leading characters parsed
        with that format (an id that starts with its event time, e.g. ``20130301T05-...``).
    :param id_time_format: the ``strptime`` format of that leading part.
    """
    import pandas as pd

    column = event_column or _event_column(log)
    if column is not None and column in log.columns:
        times = pd.to_datetime(log[column], utc=True, errors="coerce")
    else:
        times = pd.Series(pd.NaT, index=log.index, dtype="datetime64[ns, UTC]")
    if id_column and id_time_format and id_column in log.columns:
        width = len(pd.Timestamp("2000-01-01T00:00:00").strftime(id_time_format))
        from_id = pd.to_datetime(
            log[id_column].astype(str).str.slice(0, width), format=id_time_format, utc=True, errors="coerce"
        )
        times = times.where(times.notna(), from_id)
    return times


def select_period(log: pd.DataFrame, start: Any, end: Any, **where: Any) -> pd.DataFrame:
    """Logged predictions whose event time is in ``[start, end)``; ``where``: ``event_times``' keyword arguments."""
    import pandas as pd

    if log.empty:
        return log
    times = event_times(log, **where)
    mask = (times >= pd.Timestamp(start)) & (times < pd.Timestamp(end))
    return log[mask.fillna(False).to_numpy()].reset_index(drop=True)


def sample_rows(frame: pd.DataFrame, limit: int, seed: int = 0) -> pd.DataFrame:
    """At most ``limit`` rows, a seeded sample (the same rows every time for the same frame)."""
    if limit <= 0 or len(frame) <= limit:
        return frame.reset_index(drop=True)
    return frame.sample(n=limit, random_state=seed).sort_index().reset_index(drop=True)
