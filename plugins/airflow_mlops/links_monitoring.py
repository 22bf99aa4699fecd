"""Operator extra link from a monitoring task to the Evidently report it wrote to the lake.

The task pushes the report's lake key (``reports/monitoring/<kind>/<month>/...html``) under XCom key
``report_key``, as the validation task does for Data Docs; the plugin serves the lake's ``reports/`` zone under
``/mlops/lake/`` behind Airflow's login.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

from airflow_mlops.links import REPORT_XCOM_KEY, report_url

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import BaseOperator


class MonitoringReportLink(BaseOperatorLink):
    """The Evidently HTML report (drift or performance) a monitoring task wrote."""

    name = "Monitoring report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        key = XCom.get_value(ti_key=ti_key, key=REPORT_XCOM_KEY)
        return report_url(key) if key else ""
