"""Batch scoring: a validated period scored by the champion from the offline features into the lake's ``scores/``
zone (``core.batch_scoring``), in the inference log's format, for the drift and performance checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.batch_scoring import BatchInputs


class BatchScoreOperator(MlopsBaseOperator):
    """Score a validated period's rows with the champion and commit them to ``scores/<period>/``.

    The rows are the period's entity rows as the use case defines them (the label rows of its feature partition),
    joined point-in-time with the offline store as a training set is, and scored in one vectorised call of the
    champion's pipeline (``core.training.predict_scores``). The part ``scores/<period>/v<version>-<batch sha12>/``
    holds the inference log's columns (``core.batch_scoring``), so ``DriftCheckOperator`` and
    ``PerformanceCheckOperator`` read it with ``inference_log_zone="scores"``.

    Idempotent and retry-safe: the same batch, features and champion give the same part, and a committed part is
    not rewritten. A new champion or a re-validated batch of the period writes a new part; once it is committed the
    period's other parts are removed, so no row is ever counted twice.

    :param usecase: the use-case folder (holding ``mlops.yaml``).
    :param period: the period to score (templated); empty: the newest period of the triggering asset events' extra
        (``period``/``periods``), else (a run of the clock, ``serving.batch_scoring.schedule_cron``) the newest
        period whose features are committed.
    :param registered_model_name: the model (templated); default the use case's.
    :param champion_alias: the alias scoring follows.
    Other arguments: those of ``MlopsBaseOperator``.
    :return: (XCom) period, uri, folder, part, rows, model_name, model_version, batch_sha256, batch_id, written
        (False: the committed part was reused), superseded (parts removed), seconds and rows_per_s of the scoring;
        the same (but the timings) as the extra of the outlets' Asset events.
    :raises AirflowSkipException: no champion yet: nothing to score with.
    :raises AirflowFailException: no validated batch or no (current) features for the period (the message names
        the period and the DAG to run first), or a champion that needs features the offline store lacks.
    """

    template_fields = ("period", "registered_model_name")
    ui_color = "#e6f4ea"

    def __init__(
        self,
        *,
        usecase: str,
        period: str | None = None,
        registered_model_name: str | None = None,
        champion_alias: str = "champion",
        **kwargs: Any,
    ) -> None:
        super().__init__(usecase=usecase, **kwargs)
        self.period = period
        self.registered_model_name = registered_model_name
        self.champion_alias = champion_alias

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core import batch_scoring as bs
        from airflow_mlops.core.features import FeatureSpec

        usecase = self.require_usecase()
        period = self.period_to_score(context)
        inputs = self.batch_inputs(period)
        name = self.registered_model_name or usecase.registered_model_name
        version = self.mlflow_hook.alias_version(name, self.champion_alias)
        if version is None:
            raise AirflowSkipException(f"no {self.champion_alias} of {name} yet: {period} is not scored")
        part = bs.part_name(version, inputs.batch_sha256)
        manifest = bs.committed_part(self.lake, period, part, bs.identity(inputs, name, version))
        seconds = None
        if manifest is not None:
            self.log.info("%s: scores of %s v%s are committed already; nothing to write", period, name, version)
        else:
            from airflow_mlops.core.serving_model import load_version

            self.mlflow_hook.activate()
            champion = load_version(self.mlflow_hook.client, name, version)
            spec = self.checked(FeatureSpec.from_usecase, usecase)
            rows = self.checked(bs.rows_to_score, self.lake, self.feast, spec, period, self.log)
            frame, seconds = self.checked(
                bs.score_rows,
                champion.model,
                rows,
                champion.config,
                inputs=inputs,
                model_name=name,
                model_version=version,
                threshold=champion.threshold,
            )
            manifest, _ = bs.commit_scores(self.lake, frame, inputs, scoring_seconds=round(seconds, 4))
        folder = self.lake.path(bs.ZONE, period, part)
        result = bs.summary(manifest, folder, self.lake, seconds is not None, seconds)
        result["superseded"] = bs.supersede(self.lake, period, keep=part)
        if result["superseded"]:
            self.log.info("%s: removed the superseded scores %s", period, ", ".join(result["superseded"]))
        self.log.info(
            "%s: %d rows scored by %s v%s (batch %s) at %s rows/s: %s",
            period,
            result["rows"],
            name,
            version,
            inputs.batch_sha256[:12],
            result["rows_per_s"] or "-",
            result["folder"],
        )
        extra = {k: v for k, v in result.items() if k not in ("seconds", "rows_per_s")}
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = extra
        return result

    def period_to_score(self, context: Context) -> str:
        """``period``; else the triggering asset events' newest; else (a run of the clock) the newest period whose
        features are committed."""
        from airflow_mlops.operators.monitoring_base import month_from_context
        from airflow_mlops.templating import is_blank

        usecase = self.require_usecase()
        if is_blank(self.period) and not context.get("triggering_asset_events"):
            featured = self.lake.committed_periods("features", usecase.source.period)
            if not featured:
                self.fail(f"no period has features yet: run {usecase.dag_id('features')} first")
            return featured[-1]
        return self.checked(month_from_context, self.period, context, usecase.source.period)

    def batch_inputs(self, period: str) -> BatchInputs:
        """The period's validated batch and features (``core.batch_scoring.batch_inputs``); what is missing fails
        the task once, naming the DAG to run first."""
        from airflow_mlops.core import batch_scoring as bs

        usecase = self.require_usecase()
        try:
            return bs.batch_inputs(self.lake, period, usecase.source.files)
        except bs.BatchNotReady as err:
            stage = "ingest_validate" if err.stage == "validated" else "features"
            self.fail(f"{err}: run {usecase.dag_id(stage)} with {{'period': '{period}'}} first")
