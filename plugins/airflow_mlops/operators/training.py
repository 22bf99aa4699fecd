"""The training steps, re-exported from their modules: ``training_set`` (resolve a snapshot), ``train`` (fit and
log the model), ``evaluate`` (score it against the champion). MLflow tracking is in
``airflow_mlops.hooks.mlflow_tracking``, what it records in ``airflow_mlops.core.tracking``.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_mlops.core.tracking import (
    CONFIG_ARTIFACT,
    EVALUATION_ARTIFACT,
    TRAINING_SET_FILE,
    TRAINING_SETS_ZONE,
    airflow_lineage,
)
from airflow_mlops.operators.evaluate import EvaluateChallengerOperator
from airflow_mlops.operators.train import TrainModelOperator
from airflow_mlops.operators.training_set import ResolveTrainingSetOperator, TrainingStepOperator

__all__ = [
    "CONFIG_ARTIFACT",
    "EVALUATION_ARTIFACT",
    "TRAINING_SETS_ZONE",
    "TRAINING_SET_FILE",
    "EvaluateChallengerOperator",
    "ResolveTrainingSetOperator",
    "TrainModelOperator",
    "TrainingStepOperator",
    "airflow_lineage",
]


def _parse(value: Any) -> Any:
    """Deprecated, not used by the training steps: kept while ``operators.gate`` and ``operators.registry`` import
    it (a templated argument rendered from XCom as its JSON string)."""
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        return json.loads(value)
    return value
