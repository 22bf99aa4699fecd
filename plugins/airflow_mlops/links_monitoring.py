"""Operator extra link from a monitoring task to the Evidently report it wrote to the lake.

The task pushes the report's key relative to its lake root (``reports/monitoring/<kind>/<period>/...html``) under
XCom key ``report_key``, as the validation task does for Data Docs; the link prefixes it with the place of the
task's ``lake_root`` under ``MLOPS_LAKE`` (the use case's name), which the plugin serves under ``/mlops/lake/``
behind Airflow's login (see ``airflow_mlops.links``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

from airflow_mlops.links import lake_report_link

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import BaseOperator


class MonitoringReportLink(BaseOperatorLink):
    """The Evidently HTML report (drift or performance) a monitoring task wrote."""

    name = "Monitoring report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return lake_report_link(operator, ti_key)
