"""Operator extra links: from a task in the Airflow UI to what it produced."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import BaseOperator

#: Where the plugin serves the lake's reports (see ``airflow_mlops.plugin``).
REPORTS_PREFIX = "/mlops/lake"
#: XCom key under which a task pushes the lake key of its report.
REPORT_XCOM_KEY = "report_key"


def report_url(key: str) -> str:
    """The Airflow-served URL of a report kept in the lake under ``key`` (e.g. ``reports/data_docs/...``)."""
    return f"{REPORTS_PREFIX}/{key.lstrip('/')}"


class DataDocsLink(BaseOperatorLink):
    """The GX Data Docs page of the batch a validation task checked."""

    name = "Data Docs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        key = XCom.get_value(ti_key=ti_key, key=REPORT_XCOM_KEY)
        return report_url(key) if key else ""
