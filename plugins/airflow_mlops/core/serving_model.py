"""Scoring requests: online features for a request, the loaded model, and its atomic swap. No Airflow, no BentoML.

* ``lookup_features`` reads every entity of each flight from the Feast online store (a prepared
  ``OnlineFeatureReader``: one ``online_read`` per view, slow-moving views cached until the store commits), notes
  which entities were unknown (Feast answers None), fills the defaults of ``features.yaml`` and overrides what the
  request itself states (carrier, origin, destination, and — for a flight the store does not know — the
  scheduled local hour and weekday).
* ``LoadedModel`` is one registry version with the training config it was fitted under (logged with its run),
  so serving builds exactly the model's input frame.
* ``ModelSlot`` holds the model in use. A swap loads and checks the new one on the side, then replaces the
  reference in one assignment: a request reads the reference once when it starts and finishes on that model.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_mlops.core import features as F

if TYPE_CHECKING:
    from airflow_mlops.core.serving_schemas import FlightRequest
    from airflow_mlops.core.training import TrainingConfig

#: The training run's artifact holding its config (written by TrainModelOperator).
CONFIG_ARTIFACT = "config/training.yaml"


def entity_groups(spec: F.FeatureSpec) -> dict[str, list[str]]:
    """Per entity of ``serving_schemas.ENTITIES``, the Feast feature names that come from it."""
    groups = {
        "flight": list(F.FLIGHT_FEATURES),
        "weather": [*spec.weather_columns, F.WEATHER_PRESENT],
    }
    for entity in spec.history:
        groups[entity.view] = entity.features()
    return groups


def entity_rows(requests: list[FlightRequest], spec: F.FeatureSpec) -> list[dict[str, Any]]:
    """The Feast entity keys of each request: its flight, and the weather and history slots of its departure."""
    return [
        {
            "flight_id": r.flight_id(),
            **F.request_slots(r.carrier, r.origin, f"{r.origin}-{r.dest}", r.departure_utc(), spec),
        }
        for r in requests
    ]


def lookup_features(
    reader: Any, spec: F.FeatureSpec, requests: list[FlightRequest]
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Online features per request and, per request, the entities that fell back to defaults.

    :param reader: ``FeastHook().online_reader`` (anything with ``read(entity_rows) -> {column: values}``, the
        columns of ``get_online_features(...).to_dict()``).
    """
    values = reader.read(entity_rows(requests, spec))
    groups = entity_groups(spec)
    defaulted = [
        [entity for entity, names in groups.items() if all(values[name][i] is None for name in names if name in values)]
        for i in range(len(requests))
    ]
    rows = F.finish_online(values, spec)
    for row, request, unknown in zip(rows, requests, defaulted, strict=True):
        row["carrier"], row["origin"], row["dest"] = request.carrier, request.origin, request.dest
        if "flight" in unknown:
            # Schedule data the request states itself; only the distance and the plane stay unknown.
            local = request.departure_local()
            row["sched_hour"], row["weekday"] = local.hour, local.weekday()
    return rows, defaulted


@dataclass
class LoadedModel:
    """One registry version, ready to score."""

    name: str
    version: str
    model: Any
    config: TrainingConfig
    threshold: float
    run_id: str | None = None
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def score(self, rows: list[dict[str, Any]]) -> list[float]:
        """P(late) per feature row (a row carries at least the model's features)."""
        import pandas as pd

        from airflow_mlops.core.training import features_frame

        frame = features_frame(pd.DataFrame.from_records(rows, columns=self.config.features), self.config)
        proba = self.model.predict_proba(frame)[:, 1]
        return [float(p) for p in proba]


def model_config_from_run(client: Any, run_id: str) -> TrainingConfig:
    """The training config a run logged (``config/training.yaml``)."""
    import tempfile
    from pathlib import Path

    import yaml

    from airflow_mlops.core.training import TrainingConfig

    with tempfile.TemporaryDirectory(prefix="serving-config-") as tmp:
        path = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        return TrainingConfig.from_dict(yaml.safe_load(Path(path).read_text()))


def load_version(client: Any, name: str, version: str, threshold: float | None = None) -> LoadedModel:
    """Load registry version ``name``/``version`` with its training config; threshold default: the model's own.

    :param client: an ``mlflow.MlflowClient`` (its tracking URI is also the one the model is loaded from).
    """
    import mlflow.sklearn

    found = client.get_model_version(name, str(version))
    config = model_config_from_run(client, found.run_id)
    model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    return LoadedModel(
        name=name,
        version=str(found.version),
        model=model,
        config=config,
        threshold=float(config.threshold if threshold is None else threshold),
        run_id=found.run_id,
    )


def check_answers(probabilities: list[float], expected: int) -> list[str]:
    """Problems with a model's answers to canned requests (empty: all valid)."""
    problems = []
    if len(probabilities) != expected:
        problems.append(f"{len(probabilities)} answers for {expected} requests")
    bad = [p for p in probabilities if not (isinstance(p, float) and math.isfinite(p) and 0.0 <= p <= 1.0)]
    if bad:
        problems.append(f"{len(bad)} probabilities outside [0, 1] or not finite, e.g. {bad[0]!r}")
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
