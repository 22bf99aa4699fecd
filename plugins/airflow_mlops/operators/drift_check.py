"""Stage 9, drift: a period's traffic and batch (over the monitoring window) against the champion's reference
(``core.drift``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_mlops.operators.champion_check import ChampionCheckOperator, period_span

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.core.drift import DriftSettings, MonitoredColumns, PeriodDrift, ReferenceProfile


class DriftCheckOperator(ChampionCheckOperator):
    """Data, prediction and data-quality drift of a period's traffic and batch against the champion's reference.

    The check of period ``p`` covers the monitoring window (``window_periods`` of the config, default 1: ``p``
    alone). Traffic: the inference log's predictions whose event falls in the window (event time, not when it was
    answered): every model feature it logged plus the prediction column. Batch: the window's committed feature
    partitions (``<features_zone>/<period>/``): their label rows with the features they carry, plus the features of
    the views keyed by the row id, and the label, concatenated. Scores come from the champion's cached reference
    profile; the Evidently report shows the same columns with the same method on a seeded sample. The policy reads
    the traffic's figures, or the batch's when the month had too little traffic.

    Arguments: those of ``ChampionCheckOperator`` and ``MonitoringBaseOperator``.

    :return: (XCom) status, month, interval, model, champion_version, source, rows, drift_share, drifted_columns,
        scores, prediction_drift, quality_issues, traffic and batch summaries, report_key, evidently/MLflow run ids.
        The report's lake key is also pushed under ``report_key`` (the task's extra link).
    :raises AirflowSkipException: no champion yet: nothing to monitor.
    :raises AirflowFailException: an invalid monitoring config, or a champion whose run records no training set.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core import drift

        champion, summary = self.start(context)
        config, columns = champion["config"], self.columns(champion)
        drift_settings = self.checked(drift.DriftSettings.from_config, self.config)
        profile, sample = self.reference(champion, drift_settings, columns)
        assessed = self.assess(profile, summary, drift_settings, config.features, columns)
        summary.update(drift.period_summary(assessed, drift_settings))
        if summary["status"] != "ok":
            summary["reason"] = f"no traffic and no feature partition for {period_span(summary['periods'])}"
            self.log.warning("%s", summary["reason"])
            return summary
        for line in drift.summary_lines(summary):
            self.log.info("%s", line)
        snapshot = self.report(assessed, sample, drift_settings, config, columns, summary)
        summary.update(self.publish(context, "drift", champion, snapshot, drift.summary_metrics(summary), summary))
        return summary

    def assess(
        self,
        profile: ReferenceProfile,
        summary: dict[str, Any],
        drift_settings: DriftSettings,
        features: list[str] | tuple[str, ...],
        columns: MonitoredColumns,
    ) -> PeriodDrift:
        """The window's traffic and batch scored against the champion's reference profile (``core.drift``).

        :param profile: the champion's reference profile.
        :param summary: the check's summary so far (its periods and interval).
        :param drift_settings: the drift settings.
        :param features: the model's features.
        :param columns: the monitored columns.
        """
        from airflow_mlops.core import drift

        started = time.perf_counter()
        traffic = self.traffic(summary, columns)
        batch = self.batch_features(summary["periods"], features, columns)
        assessed = drift.assess_period(profile, traffic, batch, drift_settings, features=features, columns=columns)
        self.log.info(
            "drift of %s scored in %.2fs (%d predictions, %d batch rows)",
            summary["month"],
            time.perf_counter() - started,
            len(traffic),
            0 if batch is None else len(batch),
        )
        return assessed

    def report(
        self,
        assessed: PeriodDrift,
        sample: pd.DataFrame,
        drift_settings: DriftSettings,
        config: Any,
        columns: MonitoredColumns,
        summary: dict[str, Any],
    ) -> Any:
        """The Evidently drift report: the reference sample against a seeded sample of the chosen side."""
        from airflow_mlops.core import drift

        report_rows = int((self.config.get("drift") or {}).get("report_max_rows", 20000))
        started = time.perf_counter()
        snapshot = self.evidently.drift_report(
            sample,
            drift.sample_rows(assessed.current, report_rows, seed=0),
            **drift.report_columns(assessed, config, columns.prediction),
            method=drift_settings.method,
            threshold=drift_settings.threshold,
            # each column's own threshold (the config's, or its null or period threshold if larger)
            per_column_threshold={c: d.threshold for c, d in assessed.chosen.columns.items()},
            tags=["drift", summary["source"], summary["month"]],
            metadata={
                "model": summary["model"],
                "version": summary["champion_version"],
                "month": summary["month"],
                "source": summary["source"],
            },
        )
        self.log.info("Evidently drift report in %.1fs", time.perf_counter() - started)
        return snapshot

    def batch_features(
        self, periods: list[str] | str, features: list[str] | tuple[str, ...], columns: MonitoredColumns
    ) -> pd.DataFrame | None:
        """The batch rows of the window's periods with the model features their committed feature partitions
        carry, and the label, concatenated; None without any partition.

        :param periods: the window's periods (or one period).
        :param features: the model's features.
        :param columns: the monitored columns (id, label).
        """
        from airflow_mlops.core import drift

        periods = [periods] if isinstance(periods, str) else list(periods)
        partitions = self.lake.window_partitions(self.features_zone, periods)
        if not partitions:
            self.log.info("no feature partition for %s: traffic only", period_span(periods))
            return None
        missing = [p for p in periods if p not in partitions]
        if missing:
            self.log.info("no feature partition for %d of the window's periods: %s", len(missing), ", ".join(missing))
        return drift.window_batch_frame(partitions, id_column=columns.id, label=columns.label, features=features)
