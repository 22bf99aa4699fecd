"""What the monitoring operators share: the config, the period a run checks, the hooks, owned once, and where a
check's results go.

``MonitoringBaseOperator`` is to the monitoring operators what ``AwsBaseOperator`` is to Amazon's: it takes the
connection arguments and owns the hooks (lake, MLflow, Evidently) as cached properties, so a subclass only wires
core functions to them. ``publish`` sends a check's results: an Evidently HTML report to the lake, a run to the
Evidently workspace, an MLflow run linked to the champion's logged model, a tag on its model version.
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator

from airflow_mlops.hooks.evidently_workspace import EvidentlyHook
from airflow_mlops.hooks.mlflow_registry import MlflowHook
from airflow_mlops.hooks.monitoring_lake import PROFILE_FILE, SAMPLE_FILE, MonitoringLakeHook
from airflow_mlops.links import REPORT_XCOM_KEY
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import Context

    from airflow_mlops.core.drift import MonitoringWindow
    from airflow_mlops.core.training import TrainingConfig

REFERENCE_ZONE = "monitoring/reference"
POLICY_ZONE = "monitoring/policy"
REPORTS_ZONE = "reports/monitoring"
MONITORING_KEY_TAG = "mlops.monitoring.key"

__all__ = [
    "MONITORING_KEY_TAG",
    "POLICY_ZONE",
    "PROFILE_FILE",
    "REFERENCE_ZONE",
    "REPORTS_ZONE",
    "SAMPLE_FILE",
    "MonitoringBaseOperator",
    "load_config",
    "month_from_context",
    "parse_json_arg",
]


def load_config(path: str | None) -> dict[str, Any]:
    """The monitoring config (reference, drift, performance, policy, ...).

    :param path: the YAML file.
    :raises ValueError: unreadable, or not a mapping.
    """
    import yaml

    if not path:
        raise ValueError("no monitoring config: pass usecase=<use-case folder> (or config_path=<yaml>)")
    target = path
    try:
        with open(target) as handle:
            data = yaml.safe_load(handle.read())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read the monitoring config {target}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{target} must hold a mapping (reference, drift, performance, policy, ...)")
    return data


def parse_json_arg(value: Any) -> Any:
    """A templated argument rendered from XCom may arrive as its JSON string.

    :param value: the argument.
    """
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        return json.loads(value)
    return value


def month_from_context(requested: str | None, context: Context, kind: str = "month") -> str:
    """The period a run checks (a month, or a day for a daily use case): ``requested`` (conf / param); else the
    newest period of the triggering asset events' extra (``period``/``periods``, or ``month``/``months``); else the
    period of the run's data interval.

    :param requested: the operator's ``month`` argument.
    :param context: the task's context.
    :param kind: ``month`` or ``day``.
    :raises AirflowFailException: none of the three.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.core.batches import parse_period, period_of

    if not is_blank(requested):
        return parse_period(str(requested).strip(), kind)
    periods = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = getattr(event, "extra", None) or {}
            for key in ("period", "month"):
                if extra.get(key):
                    periods.add(parse_period(extra[key], kind))
            for key in ("periods", "months"):
                for value in extra.get(key) or []:
                    periods.add(parse_period(value, kind))
    if periods:
        return max(periods)
    start = context.get("data_interval_start")
    if start is not None:
        return period_of(start, kind)
    raise AirflowFailException("no period to check: trigger with conf {'period': ...} or through an asset event")


class MonitoringBaseOperator(BaseOperator):
    """Arguments, config and hooks of every monitoring operator.

    :param usecase: the use-case folder: its ``monitoring`` section is the config (its ``window_periods``: how many
        periods a check covers, ending with the period checked; default 1), its ``model`` section the training
        config, its ``source.period`` the kind of period checked.
    :param month: the period checked, ``YYYY-MM`` or ``YYYY-MM-DD`` (templated); empty: the triggering asset events'
        newest period, else the data interval's.
    :param registered_model_name: the model monitored; default ``registered_model_name`` of the training config.
    :param champion_alias: alias of the model monitored.
    :param config_path: a monitoring YAML instead of the use case's section (templated).
    :param training_config_path: a training YAML instead of the use case's, for the model name.
    :param mlflow_conn_id: the MLflow connection.
    :param lake_root: the lake root URL; default ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :param evidently_workspace: workspace folder; default ``MLOPS_EVIDENTLY_WORKSPACE`` or ``$MLOPS_HOME/evidently``.
    """

    def __init__(
        self,
        *,
        usecase: str | None = None,
        month: str | None = None,
        registered_model_name: str | None = None,
        champion_alias: str = "champion",
        config_path: str | None = None,
        training_config_path: str | None = None,
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        evidently_workspace: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.usecase = usecase
        self.month = month
        self.registered_model_name = registered_model_name
        self.champion_alias = champion_alias
        self.config_path = config_path
        self.training_config_path = training_config_path
        self.mlflow_conn_id = mlflow_conn_id
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id
        self.evidently_workspace = evidently_workspace

    @cached_property
    def lake(self) -> MonitoringLakeHook:
        return MonitoringLakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    @cached_property
    def evidently(self) -> EvidentlyHook:
        return EvidentlyHook(workspace=self.evidently_workspace)

    @cached_property
    def usecase_config(self) -> Any:
        """The use case (``airflow_mlops.usecase.config.UseCase``), or None without one."""
        from airflow_mlops.usecase import config

        return self.checked(config.load, self.usecase) if self.usecase else None

    @cached_property
    def config(self) -> dict[str, Any]:
        if self.usecase_config is not None and not self.config_path:
            return dict(self.usecase_config.monitoring)
        return self.checked(load_config, self.config_path)

    @property
    def period_kind(self) -> str:
        return self.usecase_config.source.period if self.usecase_config is not None else "month"

    def period(self, context: Context) -> str:
        """The period this run checks (see :func:`month_from_context`)."""
        return self.checked(month_from_context, self.month, context, self.period_kind)

    @property
    def window_periods(self) -> int:
        """How many periods a check covers, ending with the period checked (``window_periods`` of the config,
        default 1)."""
        from airflow_mlops.core.drift import window_size

        return self.checked(window_size, self.config)

    def window(self, period: str) -> MonitoringWindow:
        """The window a check of ``period`` covers: its periods and their data interval (``core.drift``).

        :param period: the period checked.
        """
        from airflow_mlops.core.drift import monitoring_window

        return self.checked(monitoring_window, period, self.window_periods)

    def checked(self, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``build(*args, **kwargs)``; its ValueError (a bad config, a broken contract) fails without retries.

        :param build: e.g. a settings class's ``from_config``.
        """
        from airflow.sdk.exceptions import AirflowFailException

        try:
            return build(*args, **kwargs)
        except ValueError as err:
            raise AirflowFailException(str(err)) from err

    def fail(self, message: str) -> NoReturn:
        """Fail the task without retries: what is wrong cannot change on a retry (``message`` says what to fix).

        :param message: what is wrong and where.
        """
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(message)

    def local_training_config(self) -> TrainingConfig:
        """The training config of this deployment (the champion's own is on its run)."""
        from airflow_mlops.core import training

        if self.usecase_config is not None and not self.training_config_path:
            return self.checked(self.usecase_config.training_config)
        if not self.training_config_path:
            self.fail("no training config: pass usecase=<use-case folder> (or training_config_path=<yaml>)")
        return self.checked(training.load_config, self.training_config_path)

    def model_name(self) -> str:
        """``registered_model_name``, else the training config's."""
        return self.registered_model_name or self.local_training_config().registered_model_name

    # -- where results go ------------------------------------------------------------------------------------
    def publish(
        self,
        context: Context,
        *,
        kind: str,
        month: str,
        champion: dict[str, Any],
        snapshot: Any,
        metrics: dict[str, float],
        summary: dict[str, Any],
    ) -> dict[str, Any]:
        """HTML to the lake, run to the Evidently workspace, metrics to MLflow; returns where each went."""
        key = f"{REPORTS_ZONE}/{kind}/{month}/{champion['name']}-v{champion['version']}.html"
        self.lake.write_file(self.lake.path(key), self.evidently.html(snapshot), rows=0)
        context["ti"].xcom_push(key=REPORT_XCOM_KEY, value=key)
        self.log.info("%s report: %s", kind, self.lake.url(self.lake.path(key)))
        project = (self.config.get("evidently") or {}).get("project") or f"{champion['name']} monitoring"
        name = f"{kind} {month} {champion['name']} v{champion['version']}"
        evidently_run = self.evidently.add_run(project, snapshot, name=name)
        mlflow_run = self.log_to_mlflow(
            context, kind=kind, month=month, champion=champion, metrics=metrics, report_key=key, summary=summary
        )
        return {
            "report_key": key,
            "evidently_project": project,
            "evidently_run_id": evidently_run,
            "mlflow_run_id": mlflow_run,
        }

    def log_to_mlflow(
        self,
        context: Context,
        *,
        kind: str,
        month: str,
        champion: dict[str, Any],
        metrics: dict[str, float],
        report_key: str | None,
        summary: dict[str, Any],
    ) -> str:
        """One MLflow run per check (re-used by a retry), its metrics linked to the champion's logged model."""
        from mlflow.entities import Metric, RunTag

        from airflow_mlops.operators.training import airflow_lineage

        client = self.mlflow_hook.client
        experiment = (self.config.get("mlflow") or {}).get("experiment_name") or "mlops-monitoring"
        experiment_id = self.mlflow_hook.get_or_create_experiment(experiment)
        lineage = airflow_lineage(context)
        check_key = f"{kind}/{champion['name']}/{champion['version']}/{month}"
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{MONITORING_KEY_TAG}` = '{check_key}' and "
            f"tags.`mlops.airflow.run_id` = '{lineage['run_id']}'",
            max_results=1,
        )
        run_name = f"{kind}.{champion['name']}.v{champion['version']}.{month}"
        run_id = found[0].info.run_id if found else client.create_run(experiment_id, run_name=run_name).info.run_id
        tags = {
            MONITORING_KEY_TAG: check_key,
            "mlops.monitoring.kind": kind,
            "mlops.monitoring.month": month,
            "mlops.monitoring.model": champion["name"],
            "mlops.monitoring.version": champion["version"],
            "mlops.monitoring.champion_run_id": champion["run_id"],
            "mlops.monitoring.report": report_key or "",
            **{f"mlops.airflow.{k}": v for k, v in lineage.items()},
        }
        stamp, step = int(time.time() * 1000), int(month.replace("-", ""))
        model_id = champion.get("model_id")
        batch = [Metric(k, float(v), stamp, step, model_id=model_id) for k, v in metrics.items() if v is not None]
        for first in range(0, max(len(batch), 1), 900):
            client.log_batch(
                run_id,
                metrics=batch[first : first + 900],
                tags=[RunTag(k, v) for k, v in tags.items()] if first == 0 else [],
            )
        client.log_dict(run_id, summary, f"monitoring/{kind}_{month}.json")
        client.set_terminated(run_id)
        keys = ("status", "drift_share", "prediction_drift", "decay", "rows")
        short = json.dumps({k: summary.get(k) for k in keys if k in summary})
        client.set_model_version_tag(
            champion["name"], champion["version"], f"mlops.monitoring.{kind}.{month}", short[:4000]
        )
        return run_id
