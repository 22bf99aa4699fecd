"""What the monitoring operators share: the monitoring config, the period a run checks and its window, the model
watched, and where a check's results go.

``MonitoringBaseOperator`` adds to ``MlopsBaseOperator`` (which owns the use case, the connections and the hooks)
the monitoring flavours of two hooks, ``MonitoringLakeHook`` and ``MonitoringMlflowHook``. ``publish`` sends a
check's results: an Evidently HTML report to the lake, a run to the Evidently workspace, an MLflow run linked to
the champion's logged model, a tag on its model version.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_mlops.hooks.mlflow_monitoring import MONITORING_KEY_TAG
from airflow_mlops.hooks.monitoring_lake import PROFILE_FILE, SAMPLE_FILE
from airflow_mlops.links import REPORT_XCOM_KEY
from airflow_mlops.operators.base import MlopsBaseOperator
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.drift import MonitoringWindow
    from airflow_mlops.core.training import TrainingConfig
    from airflow_mlops.hooks.mlflow_monitoring import MonitoringMlflowHook
    from airflow_mlops.hooks.monitoring_lake import MonitoringLakeHook

REFERENCE_ZONE = "monitoring/reference"
POLICY_ZONE = "monitoring/policy"
REPORTS_ZONE = "reports/monitoring"
#: What a check may be of: the served traffic, or a batch's scores (``MonitoringBaseOperator``'s ``scope``).
SCOPES = ("online", "batch")

__all__ = [
    "MONITORING_KEY_TAG",
    "POLICY_ZONE",
    "PROFILE_FILE",
    "REFERENCE_ZONE",
    "REPORTS_ZONE",
    "SAMPLE_FILE",
    "SCOPES",
    "MonitoringBaseOperator",
    "load_config",
    "month_from_context",
]


def load_config(path: str) -> dict[str, Any]:
    """A monitoring config file (the ``monitoring`` section of a use case, on its own), for ``config_path``.

    :param path: the YAML file.
    :raises ValueError: unreadable, or not a mapping.
    """
    from airflow_mlops.core.yaml_files import read_mapping

    data = read_mapping(path, "a mapping (reference, drift, performance, policy, ...)")
    if data is None:
        raise ValueError(f"{path} is empty: it must hold a mapping (reference, drift, performance, policy, ...)")
    return data


def month_from_context(requested: str | None, context: Context, kind: str = "month") -> str:
    """The period a run checks (a month, or a day for a daily use case): ``requested`` (conf / param); else the
    newest period of the triggering asset events' extra (``period``/``periods``, or ``month``/``months``); else the
    period of the run's data interval.

    :param requested: the operator's ``month`` argument.
    :param context: the task's context.
    :param kind: ``month`` or ``day``.
    :raises ValueError: none of the three.
    """
    from airflow_mlops.core.batches import parse_period, period_of

    if not is_blank(requested):
        return parse_period(str(requested).strip(), kind)
    periods = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for extra in (getattr(event, "extra", None) or {} for event in events):
            periods.update(parse_period(extra[key], kind) for key in ("period", "month") if extra.get(key))
            periods.update(parse_period(v, kind) for key in ("periods", "months") for v in extra.get(key) or [])
    if periods:
        return max(periods)
    start = context.get("data_interval_start")
    if start is not None:
        return period_of(start, kind)
    raise ValueError("no period to check: trigger with conf {'period': ...} or through an asset event")


class MonitoringBaseOperator(MlopsBaseOperator):
    """Config, period and model of every monitoring operator.

    Arguments: those of ``MlopsBaseOperator`` (``usecase``, ``lake_root``, ``lake_conn_id``, ``mlflow_conn_id``,
    ``evidently_workspace``), and:

    :param month: the period checked, ``YYYY-MM`` or ``YYYY-MM-DD`` (templated); empty: the triggering asset events'
        newest period, else the data interval's.
    :param registered_model_name: the model monitored (templated); default the use case's.
    :param champion_alias: alias of the model monitored.
    :param config_path: a monitoring YAML instead of the use case's ``monitoring`` section (templated), for use
        without a use case. The section's ``window_periods``: how many periods a check covers, ending with the
        period checked (default 1).
    :param scope: what is checked: ``online`` (the served traffic, the default) or ``batch`` (the batch-scoring
        DAG's scores). A ``batch`` check publishes apart from the online ones: its kind is prefixed (report
        ``reports/monitoring/batch_<kind>/...``, version tag ``mlops.monitoring.batch_<kind>.<period>``) and its
        MLflow runs go to the monitoring experiment's ``-batch`` sibling, so neither the online history (the MLOps
        page) nor the retraining policy read them.
    """

    def __init__(
        self,
        *,
        month: str | None = None,
        registered_model_name: str | None = None,
        champion_alias: str = "champion",
        config_path: str | None = None,
        scope: str = "online",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        self.scope = scope
        self.month = month
        self.registered_model_name = registered_model_name
        self.champion_alias = champion_alias
        self.config_path = config_path

    @cached_property
    def lake(self) -> MonitoringLakeHook:
        from airflow_mlops.hooks.monitoring_lake import MonitoringLakeHook

        return MonitoringLakeHook(root_url=self.lake_url, lake_conn_id=self.lake_conn_id)

    @cached_property
    def mlflow_hook(self) -> MonitoringMlflowHook:
        from airflow_mlops.hooks.mlflow_monitoring import MonitoringMlflowHook

        return MonitoringMlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    @cached_property
    def config(self) -> dict[str, Any]:
        """The monitoring config: ``config_path``'s file, else the use case's ``monitoring`` section."""
        if self.config_path:
            return self.checked(load_config, self.config_path)
        if self.usecase_config is None:
            self.fail(f"{type(self).__name__} needs usecase=<use-case folder> (or config_path=<monitoring yaml>)")
        return dict(self.usecase_config.monitoring)

    @property
    def period_kind(self) -> str:
        return self.usecase_config.source.period if self.usecase_config is not None else "month"

    def period(self, context: Context) -> str:
        """The period this run checks (see :func:`month_from_context`)."""
        return self.checked(month_from_context, self.month, context, self.period_kind)

    @property
    def window_periods(self) -> int:
        """How many periods a check covers, ending with the period checked (``window_periods``, default 1)."""
        from airflow_mlops.core.drift import window_size

        return self.checked(window_size, self.config)

    def window(self, period: str) -> MonitoringWindow:
        """The window a check of ``period`` covers: its periods and their data interval (``core.drift``).

        :param period: the period checked.
        """
        from airflow_mlops.core.drift import monitoring_window

        return self.checked(monitoring_window, period, self.window_periods)

    def local_training_config(self) -> TrainingConfig:
        """The use case's training config (the champion's own is on its run)."""
        return self.checked(self.require_usecase().training_config)

    def model_name(self) -> str:
        """``registered_model_name``, else the use case's."""
        return self.registered_model_name or self.require_usecase().registered_model_name

    # -- where results go ------------------------------------------------------------------------------------
    def publish(
        self,
        context: Context,
        kind: str,
        champion: dict[str, Any],
        snapshot: Any,
        metrics: dict[str, float | None],
        summary: dict[str, Any],
    ) -> dict[str, Any]:
        """The report to the lake (its key also to XCom ``report_key``), a run to the Evidently workspace, the
        metrics to MLflow; returns where each went.

        :param kind: ``drift`` or ``performance``.
        :param champion: the model checked (``ChampionCheckOperator.champion``).
        :param snapshot: the check's Evidently snapshot.
        :param metrics: the metrics logged to MLflow.
        :param summary: the check's summary (its ``month``: the period checked), an MLflow artifact.
        """
        month, kind = summary["month"], self.published_kind(kind)
        key = f"{REPORTS_ZONE}/{kind}/{month}/{champion['name']}-v{champion['version']}.html"
        self.lake.write_file(self.lake.path(key), self.evidently.html(snapshot), rows=0)
        context["ti"].xcom_push(key=REPORT_XCOM_KEY, value=key)
        self.log.info("%s report: %s", kind, self.lake.url(self.lake.path(key)))
        project = (self.config.get("evidently") or {}).get("project") or f"{champion['name']} monitoring"
        name = f"{kind} {month} {champion['name']} v{champion['version']}"
        return {
            "report_key": key,
            "evidently_project": project,
            "evidently_run_id": self.evidently.add_run(project, snapshot, name=name),
            "mlflow_run_id": self.log_to_mlflow(
                context, kind=kind, month=month, champion=champion, metrics=metrics, report_key=key, summary=summary
            ),
        }

    def log_to_mlflow(
        self,
        context: Context,
        *,
        kind: str,
        month: str,
        champion: dict[str, Any],
        metrics: dict[str, float | None],
        report_key: str | None,
        summary: dict[str, Any],
    ) -> str:
        """One MLflow run per check (re-used by a retry), linked to the champion (``MonitoringMlflowHook.log_check``);
        returns its id."""
        from airflow_mlops.core.tracking import airflow_lineage

        return self.mlflow_hook.log_check(
            kind=kind,
            period=month,
            champion=champion,
            metrics=metrics,
            summary=summary,
            report_key=report_key,
            lineage=airflow_lineage(context),
            experiment=self.experiment_name,
        )

    def published_kind(self, kind: str) -> str:
        """The name a check of ``kind`` publishes under: ``kind`` online, ``<scope>_<kind>`` otherwise."""
        return kind if self.scope == "online" else f"{self.scope}_{kind}"

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment of the checks: ``monitoring.mlflow.experiment_name`` (default ``mlops-monitoring``),
        with ``-<scope>`` appended for a scope other than ``online``."""
        name = (self.config.get("mlflow") or {}).get("experiment_name") or "mlops-monitoring"
        return name if self.scope == "online" else f"{name}-{self.scope}"
