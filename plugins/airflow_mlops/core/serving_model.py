"""Scoring requests: online features for a request, the loaded model, and its atomic swap. No Airflow, no BentoML.

* ``lookup_features`` reads every view of each request row from the Feast online store (``FeastHook.online_reader``:
  ``get_online_features`` for the request rows), notes
  which views did not know the row's entity (Feast answers None), fills the declared defaults, and takes what the
  request itself determines (the use case's ``entity_keys`` output) for row features and for the features of a
  view that did not know the entity.
* ``enrich_requests`` takes validated requests (the use case's generated request model) through the use case's
  ``entity_keys`` to their feature rows: what the service scores and logs.
* ``LoadedModel`` is one registry version with the training config it was fitted under (logged with its run),
  so serving builds exactly the model's input; it scores through ``core.lean_scoring`` (the encoding in NumPy, the
  estimator's exact answers) by the config's task (a classification: the
  probability of the positive class; a regression: the predicted value).
* ``ModelSlot`` holds the model in use. A swap loads and checks the new one on the side, then replaces the
  reference in one assignment: a request reads the reference once when it starts and finishes on that model.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_mlops.core import features as F

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.core.training import TrainingConfig

#: The training run's artifact holding its config (written by TrainModelOperator).
CONFIG_ARTIFACT = "config/training.yaml"


def lookup_features(
    reader: Any, spec: F.FeatureSpec, keys: pd.DataFrame
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Online feature rows for request rows and, per row, the views that fell back to defaults.

    :param reader: ``FeastHook(...).online_reader`` (anything with ``read(entity_rows) -> {column: values}``, the
        columns of ``get_online_features(...).to_dict()``).
    :param keys: the use case's ``entity_keys`` output: every view's join key, and optionally model features the
        request determines.
    """
    join_keys = spec.join_keys()
    missing = [k for k in join_keys if k not in keys.columns]
    if missing:
        raise ValueError(f"entity_keys() returned no {', '.join(missing)}")
    absent = [name for name in spec.row_features() if name not in keys.columns]
    if absent:
        raise ValueError(f"entity_keys() returned no {', '.join(absent)} (model features no view serves)")
    # Column lists, not DataFrame.to_dict("records"): on a few rows pandas' per-row access costs more than the lookup.
    key_columns = [keys[k].tolist() for k in join_keys]
    values = reader.read([dict(zip(join_keys, row, strict=True)) for row in zip(*key_columns, strict=True)])
    defaulted = [F.unknown_views(values, spec, i) for i in range(len(keys))]
    rows = F.finish_online(values, spec)
    served = spec.view_of()
    for name in (name for name in spec.feature_columns if name in keys.columns):
        view = served.get(name)
        for row, value, unknown in zip(rows, keys[name].tolist(), defaulted, strict=True):
            if view is None or view.name in unknown:
                row[name] = value
    return rows, defaulted


@dataclass
class EnrichedRequests:
    """Validated requests on their way to the model.

    :param frame: ``request_frame`` of the requests (every request field, then ``event_timestamp``).
    :param keys: the use case's ``entity_keys`` output, one row per request (index reset).
    :param ids: per request, the value of the use case's id column (native Python), or None.
    :param rows: per request, its feature row (``lookup_features``).
    :param defaulted: per request, the views that fell back to their defaults.
    """

    frame: pd.DataFrame
    keys: pd.DataFrame
    ids: list[Any]
    rows: list[dict[str, Any]]
    defaulted: list[list[str]]


def enrich_requests(
    requests: Sequence[Any],
    request_spec: Any,
    entity_keys: Callable[[pd.DataFrame, Any], pd.DataFrame],
    ctx: Any,
    reader: Any,
    spec: F.FeatureSpec,
) -> EnrichedRequests:
    """Requests → the frame of their fields → the use case's entity keys → online feature rows.

    :param requests: validated requests (instances of ``core.request_schema.request_model(...)``).
    :param request_spec: the ``serving.request`` mapping or its parsed ``RequestSpec``.
    :param entity_keys: the use case's ``entity_keys(rows, ctx)``.
    :param ctx: the ``FeatureContext`` handed to ``entity_keys`` (``period=""``, the params, the use case).
    :param reader: the online reader (see ``lookup_features``).
    :param spec: the use case's feature spec.
    :raises ValueError: ``entity_keys`` returned no frame, another number of rows, or no id column.
    """
    import pandas as pd

    from airflow_mlops.core.request_schema import request_frame

    frame = request_frame(requests, request_spec)
    keys = entity_keys(frame, ctx)
    if not isinstance(keys, pd.DataFrame):
        raise ValueError(f"entity_keys() returned {type(keys).__name__}, not a DataFrame")
    if len(keys) != len(frame):
        raise ValueError(f"entity_keys() returned {len(keys)} rows for {len(frame)} requests (one per request)")
    if spec.id_column not in keys.columns:
        raise ValueError(f"entity_keys() returned no {spec.id_column} (the use case's id column)")
    keys = keys.reset_index(drop=True)
    rows, defaulted = lookup_features(reader, spec, keys)
    ids = [_native(v) for v in keys[spec.id_column].tolist()]
    return EnrichedRequests(frame=frame, keys=keys, ids=ids, rows=rows, defaulted=defaulted)


def _native(value: Any) -> Any:
    """A numpy scalar as its Python value; a missing value as None."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass
class LoadedModel:
    """One registry version, ready to score.

    :param threshold: a classification's decision threshold; None for a regression.
    """

    name: str
    version: str
    model: Any
    config: TrainingConfig
    threshold: float | None
    run_id: str | None = None
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    _scorer: Any = field(default=None, repr=False, compare=False)

    @property
    def task(self) -> str:
        return str(getattr(self.config, "task", None) or "classification")

    @property
    def scorer(self) -> Any:
        """The model compiled for scoring (``core.lean_scoring``): its encoding in NumPy, the estimator's own
        answers; a pipeline it cannot reproduce exactly is run as it is."""
        if self._scorer is None:
            from airflow_mlops.core.lean_scoring import compile_pipeline

            self._scorer = compile_pipeline(self.model, self.config)
        return self._scorer

    def score(self, rows: list[dict[str, Any]]) -> list[float]:
        """The model's answer per feature row (a row carries at least the model's features): the probability of the
        positive class for a classification, the predicted value for a regression (``scorer``: no per-call pandas).

        Not ``core.training.predict_scores``: its per-call ``threadpool_limits`` costs ~10 ms, more than scoring one
        row; the service limits the thread pools once, at start.
        """
        return self.scorer.score_rows(rows).tolist()

    def decide(self, value: float) -> bool | None:
        """A classification's label (``value >= threshold``); None for a regression."""
        if self.task != "classification" or self.threshold is None:
            return None
        return bool(value >= self.threshold)


def model_config_from_run(client: Any, run_id: str) -> TrainingConfig:
    """The training config a run logged (``config/training.yaml``)."""
    import tempfile
    from pathlib import Path

    from airflow_mlops.core.training import config_from_yaml

    with tempfile.TemporaryDirectory(prefix="serving-config-") as tmp:
        path = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        return config_from_yaml(Path(path).read_text(), f"{CONFIG_ARTIFACT} of run {run_id}")


def load_version(client: Any, name: str, version: str, threshold: float | None = None) -> LoadedModel:
    """Load registry version ``name``/``version`` with its training config.

    :param client: an ``mlflow.MlflowClient`` (its tracking URI is also the one the model is loaded from).
    :param threshold: a classification's decision threshold; default the model's own (its training config's).
        A regression has none.
    """
    import mlflow.sklearn

    found = client.get_model_version(name, str(version))
    config = model_config_from_run(client, found.run_id)
    model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    classification = (getattr(config, "task", None) or "classification") == "classification"
    loaded = LoadedModel(
        name=name,
        version=str(found.version),
        model=model,
        config=config,
        threshold=float(config.threshold if threshold is None else threshold) if classification else None,
        run_id=found.run_id,
    )
    from airflow_mlops.core.lean_scoring import compile_pipeline

    # Compiled while loading: a swap compiles on the side, before the model takes traffic.
    loaded._scorer = compile_pipeline(model, config)
    return loaded


def check_answers(values: list[float], expected: int, task: str = "classification") -> list[str]:
    """Problems with a model's answers to canned requests (empty: all valid): one finite number per request, and
    for a classification a probability in [0, 1]."""
    problems = []
    if len(values) != expected:
        problems.append(f"{len(values)} answers for {expected} requests")
    if task == "classification":
        bad = [p for p in values if not (isinstance(p, float) and math.isfinite(p) and 0.0 <= p <= 1.0)]
        if bad:
            problems.append(f"{len(bad)} probabilities outside [0, 1] or not finite, e.g. {bad[0]!r}")
    else:
        bad = [v for v in values if not (isinstance(v, float) and math.isfinite(v))]
        if bad:
            problems.append(f"{len(bad)} predictions not finite numbers, e.g. {bad[0]!r}")
    return problems


class ModelSlot:
    """The model in use, replaced atomically. Readers take ``slot.current`` once per request, no lock."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._current = loaded
        self._swap_lock = threading.Lock()
        self.swaps = 0

    @property
    def current(self) -> LoadedModel:
        return self._current

    def swap(self, load: Any, check: Any) -> tuple[LoadedModel, LoadedModel, list[str], float]:
        """Load a model with ``load()``, check it with ``check(model) -> problems``; swap only if none.

        One swap at a time; requests keep flowing to the old model meanwhile.
        :return: (old, new, problems, load_seconds) — ``new`` is the one in use only if ``problems`` is empty.
        """
        with self._swap_lock:
            started = time.perf_counter()
            candidate = load()
            problems = list(check(candidate))
            seconds = time.perf_counter() - started
            old = self._current
            if not problems:
                self._current = candidate
                self.swaps += 1
            return old, candidate, problems, seconds
