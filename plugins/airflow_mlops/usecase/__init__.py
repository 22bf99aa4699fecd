"""Use cases: the folder a data engineer brings (``mlops.yaml``, GX suites, ``usecase.py``), read through one typed
config and called with typed contexts. Light to import: no pandas, no ML library."""

from __future__ import annotations

from airflow_mlops.usecase.context import FeatureContext
from airflow_mlops.usecase.user_code import UserCodeError, load_function

__all__ = ["FeatureContext", "UserCodeError", "load_function"]
