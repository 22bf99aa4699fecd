"""Stage 9, performance: the champion's live metrics on a period (over the monitoring window), against its hold-out
(``core.performance``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops.operators.champion_check import ChampionCheckOperator, period_span

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.core.drift import MonitoredColumns


class PerformanceCheckOperator(ChampionCheckOperator):
    """The champion's live performance on a period: logged predictions joined with the outcomes that arrived.

    The check of period ``p`` covers the monitoring window (``window_periods`` of the config, default 1: ``p``
    alone): the predictions of events in the window, and the outcomes of the window's periods, concatenated.
    Outcomes (id and label): with ``module_file``, the use case's ``outcomes(ctx)`` (else its ``label_rows(ctx)``)
    on each period's validated frames; without, the label rows of each period's committed feature partition. The
    newest prediction per id counts. Metrics of the task, overall and per slice (``performance.slice_columns`` of
    the config), are compared with the champion's hold-out evaluation (``evaluation/evaluation.json`` on its
    run): the decay, positive = worse. No outcomes yet, or too few joined rows, is a normal, reported state
    (``status``), not a failure.

    Arguments: those of ``ChampionCheckOperator`` and ``MonitoringBaseOperator``, and:

    :param module_file: the use case's Python file (templated); None: outcomes from the feature partition.
    :param outcomes_function: the module's optional outcomes function; its fallback is ``label_rows``.
    :param feature_params: ``ctx.params`` of the use case's functions (``features.params``).
    :return: (XCom) status, month, interval, model, champion_version, rows, live, holdout, decay, slice_decay,
        worst_slice_decay, report_key, evidently/MLflow run ids.
    :raises AirflowSkipException: no champion yet.
    :raises AirflowFailException: the module or what its function returned is unusable (named in the message).
    """

    template_fields = (*ChampionCheckOperator.template_fields, "module_file")

    def __init__(
        self,
        *,
        module_file: str | None = None,
        outcomes_function: str = "outcomes",
        feature_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.module_file = module_file
        self.outcomes_function = outcomes_function
        self.feature_params = feature_params

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core import performance

        champion, summary = self.start(context)
        month, columns = summary["month"], self.columns(champion)
        perf_settings = self.checked(performance.PerformanceSettings.from_config, self.config, task=columns.task)
        outcomes, reason = self.outcomes(summary["periods"], columns)
        if outcomes is None:
            return self._unjudged(summary, "no_outcomes", reason)
        traffic = self.traffic(summary, columns)
        if traffic.empty:
            return self._unjudged(summary, "no_traffic", f"no logged predictions of {period_span(summary['periods'])}")
        if columns.prediction not in traffic.columns:
            self.fail(f"the inference log has no prediction column {columns.prediction!r} (set prediction_column)")
        joined = performance.join_outcomes(traffic, outcomes, id_column=columns.id, label=columns.label)
        self.log.info("%s: %s", month, joined.describe())
        if joined.frame.empty:
            return self._unjudged(summary, "no_outcomes", "no logged prediction has an outcome")

        result, judged = performance.assess(
            joined,
            traffic,
            columns=columns,
            default_threshold=champion["config"].threshold,
            holdout=self.holdout_evaluation(champion),
            settings=perf_settings,
        )
        summary.update(judged)
        self.log.info("live %s: %s; hold-out: %s", month, summary["live"], summary["holdout"])
        self.log.info("decay (positive = worse): %s; worst slices: %s", summary["decay"], summary["worst_slice_decay"])
        snapshot = self.report(champion, joined.frame, columns, month)
        summary.update(self.publish(context, "performance", champion, snapshot, result.metrics(), summary))
        return summary

    def _unjudged(self, summary: dict[str, Any], status: str, reason: str | None) -> dict[str, Any]:
        summary.update(status=status, reason=reason, rows=0, enough_rows=False)
        self.log.warning("%s", reason)
        return summary

    def outcomes(self, periods: list[str] | str, columns: MonitoredColumns) -> tuple[pd.DataFrame | None, str | None]:
        """The outcomes (id, label) of the window's periods, concatenated (``core.performance.window_outcomes``),
        or None and why not (none arrived yet).

        :param periods: the window's periods (or one period).
        :param columns: the monitored columns (id, label).
        """
        from airflow_mlops.core import performance
        from airflow_mlops.core.drift import LABELS_FILE
        from airflow_mlops.usecase import FeatureContext, UserCodeError

        periods = [periods] if isinstance(periods, str) else list(periods)
        module_file, params = self.module_file, self.feature_params
        if self.usecase_config is not None:
            module_file = module_file or str(self.usecase_config.module_file)
            params = params if params is not None else self.usecase_config.features.get("params")
        found: dict[str, pd.DataFrame] = {}
        if not module_file:
            for period, files in self.lake.window_partitions(self.features_zone, periods).items():
                if LABELS_FILE in files:
                    found[period] = self.checked(
                        performance.outcomes_from_labels, files[LABELS_FILE], id_column=columns.id, label=columns.label
                    )
            if not found:
                return None, f"no feature partition with label rows for {period_span(periods)} yet: outcomes unknown"
        else:
            for period, frames in self.lake.window_partitions("validated", periods).items():
                ctx = FeatureContext(
                    period=period, frames={period: frames}, params=dict(params or {}), config=self.usecase_config
                )
                try:
                    found[period] = performance.load_outcomes(
                        module_file, ctx, id_column=columns.id, label=columns.label, function=self.outcomes_function
                    )
                except (UserCodeError, performance.OutcomesError) as err:
                    self.fail(str(err))
            if not found:
                return None, f"no validated batch for {period_span(periods)} yet: outcomes unknown"
        if len(periods) > 1:
            self.log.info("outcomes of %d of the window's %d periods", len(found), len(periods))
        return performance.window_outcomes(found, id_column=columns.id, label=columns.label), None

    def holdout_evaluation(self, champion: dict[str, Any]) -> dict[str, Any] | None:
        """The champion's hold-out evaluation (``candidate`` of ``evaluation/evaluation.json`` on its run); None
        (decay not computed, the policy ignores it) when the run has none."""
        import json

        from airflow_mlops.core.tracking import EVALUATION_ARTIFACT

        text = self.mlflow_hook.run_artifact_text(champion["run_id"], EVALUATION_ARTIFACT)
        if text is None:
            self.log.warning("no hold-out evaluation on run %s: decay is not computed", champion["run_id"])
            return None
        return json.loads(text).get("candidate")

    def report(self, champion: dict[str, Any], joined: pd.DataFrame, columns: MonitoredColumns, month: str) -> Any:
        """The Evidently quality report of the joined rows, the reference sample's hold-out rows as reference."""
        from airflow_mlops.core import drift, performance

        _, sample = self.reference(champion, drift.DriftSettings.from_config(self.config), columns)
        reference = performance.holdout_rows(
            sample, champion["holdout_months"], period_column=champion["config"].month_column, label=columns.label
        )
        return self.evidently.performance_report(
            columns.task,
            reference,
            joined,
            target=columns.label,
            prediction=columns.prediction,
            tags=["performance", month],
            metadata={"model": champion["name"], "version": champion["version"], "month": month},
        )
