"""The training steps, re-exported from their modules: ``training_set`` (resolve a snapshot), ``train`` (fit and
log the model), ``evaluate`` (score it against the champion). MLflow tracking is in
``airflow_mlops.hooks.mlflow_tracking``, what it records in ``airflow_mlops.core.tracking``.
"""

from __future__ import annotations

from airflow_mlops.operators.evaluate import EvaluateChallengerOperator
from airflow_mlops.operators.train import TrainModelOperator
from airflow_mlops.operators.training_set import ResolveTrainingSetOperator, TrainingStepOperator

__all__ = ["EvaluateChallengerOperator", "ResolveTrainingSetOperator", "TrainModelOperator", "TrainingStepOperator"]
