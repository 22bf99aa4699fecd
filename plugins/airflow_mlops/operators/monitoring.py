"""Monitor the champion on live traffic (drift, performance) and decide whether to retrain (stages 9-10).

The operators live in their own modules (``drift_check``, ``performance_check``, ``retraining_policy``, on the
shared bases ``monitoring_base`` and ``champion_check``); this module re-exports them and their constants for the
code that imports them from here.
"""

from __future__ import annotations

from airflow_mlops.operators.champion_check import ChampionCheckOperator
from airflow_mlops.operators.drift_check import DriftCheckOperator
from airflow_mlops.operators.monitoring_base import (
    MONITORING_KEY_TAG,
    POLICY_ZONE,
    PROFILE_FILE,
    REFERENCE_ZONE,
    REPORTS_ZONE,
    SAMPLE_FILE,
    MonitoringBaseOperator,
    load_config,
    month_from_context,
)
from airflow_mlops.operators.performance_check import PerformanceCheckOperator
from airflow_mlops.operators.retraining_policy import RetrainingPolicyOperator

__all__ = [
    "MONITORING_KEY_TAG",
    "POLICY_ZONE",
    "PROFILE_FILE",
    "REFERENCE_ZONE",
    "REPORTS_ZONE",
    "SAMPLE_FILE",
    "ChampionCheckOperator",
    "DriftCheckOperator",
    "MonitoringBaseOperator",
    "PerformanceCheckOperator",
    "RetrainingPolicyOperator",
    "load_config",
    "month_from_context",
]
