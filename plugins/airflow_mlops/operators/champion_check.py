"""The base of the drift and performance checks: the champion, the columns it reads, its cached reference and
the period's traffic (where results go: ``MonitoringBaseOperator.publish``).

The champion's reference is its training-set snapshot (recorded on its MLflow run), reduced once per champion
version to a profile and a small sample in the lake (``monitoring/reference/<model>/<version>/``) that every later
check reuses.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_mlops.links_monitoring import MonitoringReportLink
from airflow_mlops.operators.monitoring_base import REFERENCE_ZONE, MonitoringBaseOperator

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.core.drift import DriftSettings, MonitoredColumns, ReferenceProfile
    from airflow_mlops.core.training import TrainingConfig


class ChampionCheckOperator(MonitoringBaseOperator):
    """A check of the champion on one period: its arguments, the champion, its reference and its traffic.

    A check of period ``p`` covers the monitoring window: the ``window_periods`` periods of the config ending with
    ``p`` (default 1: ``p`` alone); its interval runs from the start of the oldest to the end of ``p``.

    The columns it reads are named by arguments, else by the monitoring config, else by the champion's training
    config; none is a domain name.

    Arguments: those of ``MonitoringBaseOperator`` (``month``, ``registered_model_name``, ``config_path`` are
    templated), and:

    :param inference_log_zone: lake zone of the inference log.
    :param features_zone: lake zone of the committed feature partitions (``<zone>/<month>/<view>.parquet``).
    :param prediction_column: the logged prediction; default the config's ``prediction_column``, else ``prediction``.
    :param label_column: the label; default the training config's ``label``.
    :param id_column: the id joining a prediction to its outcome; default the training config's ``id_column``.
    :param event_time_column: the traffic's event time; default the config's ``event_time_column``, else found by
        ``core.drift.event_times``.
    :param id_time_format: where a logged row has no event time, its id's leading part parsed with this format;
        default the config's ``id_time_format`` (none: such rows are not in any month).
    :param task: ``classification`` | ``regression``; default the config's ``task``, else the champion's, else
        ``classification``.
    """

    template_fields = ("month", "registered_model_name", "config_path")
    operator_extra_links = (MonitoringReportLink(),)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        inference_log_zone: str = "inference_log",
        features_zone: str = "features",
        prediction_column: str | None = None,
        label_column: str | None = None,
        id_column: str | None = None,
        event_time_column: str | None = None,
        id_time_format: str | None = None,
        task: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.inference_log_zone = inference_log_zone
        self.features_zone = features_zone
        self.prediction_column = prediction_column
        self.label_column = label_column
        self.id_column = id_column
        self.event_time_column = event_time_column
        self.id_time_format = id_time_format
        self.task = task

    # -- the champion ----------------------------------------------------------------------------------------
    def champion(self) -> dict[str, Any] | None:
        """The champion's name, version, run, logged model id, training set and config; None without one."""
        found = self.checked(self.mlflow_hook.champion, self.model_name(), self.champion_alias)
        return None if found is None else {**found, "config": self._run_config(found["run_id"])}

    def _run_config(self, run_id: str) -> TrainingConfig:
        """The training config logged on the champion's run, else (a run logged before configs were artifacts)
        the use case's."""
        from airflow_mlops.core.tracking import CONFIG_ARTIFACT
        from airflow_mlops.core.training import config_from_yaml

        text = self.mlflow_hook.run_artifact_text(run_id, CONFIG_ARTIFACT)
        try:
            if text is not None:
                return config_from_yaml(text, f"{CONFIG_ARTIFACT} of run {run_id}")
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            self.log.warning("unusable training config on run %s (%s)", run_id, err)
        self.log.warning("no training config on run %s: using the local one", run_id)
        return self.local_training_config()

    def start(self, context: Context) -> tuple[dict[str, Any], dict[str, Any]]:
        """The period's champion and the summary's common part: month (the period checked), periods (the
        monitoring window, oldest first, ending with it), interval (the window's data interval), model, version, run.

        :raises AirflowSkipException: no champion yet: nothing to monitor.
        """
        from airflow.sdk.exceptions import AirflowSkipException

        month = self.period(context)
        window = self.window(month)
        champion = self.champion()
        if champion is None:
            raise AirflowSkipException(f"no {self.champion_alias} model yet: nothing to monitor for {month}")
        if len(window.periods) > 1:
            self.log.info(
                "%s: the check covers the %d periods %s..%s (monitoring.window_periods)",
                month,
                len(window.periods),
                window.periods[0],
                window.periods[-1],
            )
        scope = {} if self.scope == "online" else {"scope": self.scope}
        return champion, {
            **scope,
            "month": month,
            "periods": list(window.periods),
            "interval_start": window.start.isoformat(),
            "interval_end": window.end.isoformat(),
            "model": champion["name"],
            "champion_version": champion["version"],
            "champion_run_id": champion["run_id"],
        }

    def columns(self, champion: dict[str, Any]) -> MonitoredColumns:
        """The columns this check reads (arguments, else the monitoring config, else the champion's config)."""
        from airflow_mlops.core.drift import DEFAULT_PREDICTION, MonitoredColumns
        from airflow_mlops.core.performance import check_task

        config: TrainingConfig = champion["config"]
        task = self.task or self.config.get("task") or getattr(config, "task", None) or "classification"
        return MonitoredColumns(
            id=self.id_column or config.id_column,
            label=self.label_column or config.label,
            prediction=self.prediction_column or self.config.get("prediction_column") or DEFAULT_PREDICTION,
            task=self.checked(check_task, task),
            event_time=self.event_time_column or self.config.get("event_time_column"),
            id_time_format=self.id_time_format or self.config.get("id_time_format"),
        )

    # -- inputs of a period ----------------------------------------------------------------------------------
    def reference(
        self, champion: dict[str, Any], drift_settings: DriftSettings, columns: MonitoredColumns
    ) -> tuple[ReferenceProfile, pd.DataFrame]:
        """The champion's profile and reference sample: read from the lake, built and committed on first use."""
        from airflow_mlops.core import drift

        folder = self.lake.path(REFERENCE_ZONE, champion["name"], champion["version"])
        sample_size = int((self.config.get("reference") or {}).get("sample_rows", 5000))
        expected = {
            "training_set_sha256": champion["training_set_sha256"],
            "profile_key": drift_settings.profile_key,
            "sample_rows": sample_size,
            "prediction_column": columns.prediction,
        }
        cached = self.lake.cached_reference(folder, expected)
        if cached is not None:
            self.log.info("reference of %s v%s reused from %s", champion["name"], champion["version"], folder)
            return cached
        started = time.perf_counter()
        frame = self.checked(
            self.lake.read_committed_frame, champion["training_set_uri"], champion["training_set_sha256"]
        )
        model = self.mlflow_hook.load_version(champion["name"], champion["version"])
        scores = drift.reference_scores(model, frame, champion["config"], columns.task)
        meta = {
            "model": champion["name"],
            "version": champion["version"],
            "run_id": champion["run_id"],
            "training_set_uri": champion["training_set_uri"],
            **expected,
        }
        built_at = datetime.now(UTC).isoformat(timespec="seconds")
        profile, sample = drift.build_reference(
            frame,
            scores,
            config=champion["config"],
            columns=columns,
            settings=drift_settings,
            sample_size=sample_size,
            meta={**meta, "built_at": built_at},
        )
        self.lake.save_reference(folder, profile, sample, **meta)
        self.log.info(
            "reference of %s v%s built from %d rows in %.1fs: %s",
            champion["name"],
            champion["version"],
            len(frame),
            time.perf_counter() - started,
            folder,
        )
        return profile, sample

    def traffic(self, summary: dict[str, Any], columns: MonitoredColumns) -> pd.DataFrame:
        """The logged predictions of events in the summary's interval (the monitoring window's)."""
        return self.lake.traffic(
            self.inference_log_zone,
            datetime.fromisoformat(summary["interval_start"]),
            datetime.fromisoformat(summary["interval_end"]),
            event_column=columns.event_time,
            id_column=columns.id,
            id_time_format=columns.id_time_format,
        )


def period_span(periods: list[str] | tuple[str, ...]) -> str:
    """``first..last`` of several periods (a monitoring window), the period of one.

    :param periods: periods, oldest first.
    """
    return periods[0] if len(periods) == 1 else f"{periods[0]}..{periods[-1]}"
