"""Sensors of the suite (deferrable, backed by the triggers in ``airflow_mlops.triggers``)."""
