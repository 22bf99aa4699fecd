"""Operator extra links: from a task in the Airflow UI to what it produced.

The plugin serves the reports of the whole lake (``MLOPS_LAKE``) under ``/mlops/lake/``; a use case's zones live
under its own root ``<MLOPS_LAKE>/<name>`` (``usecase.config.lake_url``), so its reports are at
``/mlops/lake/<name>/reports/...``. A task pushes the key of its report relative to the lake root it was given
(``lake_root``, e.g. ``reports/data_docs/index.html``); the link adds that root's place under ``MLOPS_LAKE``.
Airflow 3 computes a link in the worker when the task ends, with the task's own operator at hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import BaseOperator

#: Where the plugin serves the lake's reports (see ``airflow_mlops.plugin``).
REPORTS_PREFIX = "/mlops/lake"
#: XCom key under which a task pushes the lake key of its report (relative to the task's lake root).
REPORT_XCOM_KEY = "report_key"
#: Where the plugin serves the MLOps page (``airflow_mlops.mlops_ui_app.URL_PREFIX``).
MLOPS_UI_PREFIX = "/mlops/ui"


def model_card_url(name: str, version: str | int) -> str:
    """The Airflow-served URL of the model card of ``name`` version ``version`` (the MLOps page's card endpoint,
    behind Airflow's login), e.g. for an approval form or a notification.

    :param name: the registered model.
    :param version: its version.
    """
    from urllib.parse import quote

    return f"{MLOPS_UI_PREFIX}/models/{quote(str(name), safe='')}/versions/{version}/card"


def lake_prefix(lake_root: str | None) -> str | None:
    """Where ``lake_root`` lies under ``MLOPS_LAKE``: ``""`` for the lake itself, ``"<name>"`` for a use case's root,
    None when it lies outside (its files are not served).

    :param lake_root: a lake root URL (a task's ``lake_root``); None: ``MLOPS_LAKE``.
    """
    from airflow_mlops import settings

    base = settings.lake_url().rstrip("/")
    root = (lake_root or base).rstrip("/")
    if root == base:
        return ""
    if root.startswith(f"{base}/"):
        return root[len(base) + 1 :].strip("/")
    return None


def lake_path(key: str, lake_root: str | None = None) -> str | None:
    """The path under ``MLOPS_LAKE`` of the file ``key`` of the lake rooted at ``lake_root``; None if not served.

    :param key: the file's key relative to ``lake_root`` (e.g. ``reports/monitoring/drift/2013-04/m-v2.html``).
    :param lake_root: the lake root the key is relative to; None: ``MLOPS_LAKE``.
    """
    prefix = lake_prefix(lake_root)
    if prefix is None:
        return None
    key = key.lstrip("/")
    return f"{prefix}/{key}" if prefix else key


def report_url(key: str, lake_root: str | None = None) -> str:
    """The Airflow-served URL of a report kept under ``key`` in the lake rooted at ``lake_root``; ``""`` when that
    root is not under ``MLOPS_LAKE`` (nothing serves it).

    :param key: the report's key relative to ``lake_root`` (e.g. ``reports/data_docs/index.html``).
    :param lake_root: the lake root the key is relative to (a use case's ``lake_url``); None: ``MLOPS_LAKE``.
    """
    path = lake_path(key, lake_root)
    return f"{REPORTS_PREFIX}/{path}" if path is not None else ""


def lake_report_link(operator: Any, ti_key: Any) -> str:
    """The served URL of the report whose key the task pushed under ``REPORT_XCOM_KEY``; ``""`` without one.

    :param operator: the task's operator (``lake_root_of`` it is the root the key is relative to).
    :param ti_key: the task instance.
    """
    from airflow.sdk.execution_time.xcom import XCom

    key = XCom.get_value(ti_key=ti_key, key=REPORT_XCOM_KEY)
    if not key:
        return ""
    return report_url(str(key), lake_root_of(operator))


def lake_root_of(operator: Any) -> str | None:
    """The lake root a task's report keys are relative to: ``MlopsBaseOperator.lake_url`` (its ``lake_root``, else
    its use case's lake), else a ``lake_root`` attribute; None: ``MLOPS_LAKE``. Links are resolved in the task's
    process after it ran, on the operator that ran."""
    return getattr(operator, "lake_url", None) or getattr(operator, "lake_root", None)


class DataDocsLink(BaseOperatorLink):
    """The GX Data Docs page of the batch a validation task checked."""

    name = "Data Docs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return lake_report_link(operator, ti_key)
