"""Monitor the champion on live traffic (drift, performance) and decide whether to retrain (stages 9-10).

The champion's reference is its training-set snapshot (recorded on its MLflow run). It is reduced once per
champion version to a profile and a small sample in the lake (``monitoring/reference/<model>/<version>/``)
that every later check reuses. Each check writes an Evidently HTML report to ``reports/monitoring/...``, adds
the same snapshot as a run to the Evidently workspace, logs its summary metrics to an MLflow run linked to the
champion's logged model, tags the champion's model version, and returns a small summary.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_mlops import settings
from airflow_mlops.assets import RETRAIN_REQUESTED
from airflow_mlops.hooks.evidently_workspace import EvidentlyHook
from airflow_mlops.hooks.lake import LakeHook
from airflow_mlops.hooks.mlflow_registry import MlflowHook
from airflow_mlops.links import REPORT_XCOM_KEY
from airflow_mlops.links_monitoring import MonitoringReportLink
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_mlops.core.drift import DriftSettings, ReferenceProfile
    from airflow_mlops.core.training import TrainingConfig

REFERENCE_ZONE = "monitoring/reference"
POLICY_ZONE = "monitoring/policy"
REPORTS_ZONE = "reports/monitoring"
PROFILE_FILE = "profile.json"
SAMPLE_FILE = "sample.parquet"
MONITORING_KEY_TAG = "mlops.monitoring.key"


def default_config_path() -> str:
    return str(settings.include_dir() / "config" / "monitoring.yaml")


def load_config(path: str | None) -> dict[str, Any]:
    import yaml

    target = path or default_config_path()
    try:
        data = yaml.safe_load(open(target).read())  # noqa: SIM115 - tiny file
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read the monitoring config {target}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{target} must hold a mapping (reference, drift, performance, policy, ...)")
    return data


def _parse(value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        return json.loads(value)
    return value


def month_from_context(requested: str | None, context: Context) -> str:
    """The month a run checks: ``requested`` (conf / param); else the newest month of the triggering asset
    events' extra (``month`` or ``months``); else the month of the run's data interval."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.core.batches import month_of, parse_month

    if not is_blank(requested):
        return parse_month(str(requested).strip())
    months = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("month"):
                months.add(parse_month(extra["month"]))
            for month in extra.get("months") or []:
                months.add(parse_month(month))
    if months:
        return max(months)
    start = context.get("data_interval_start")
    if start is not None:
        return month_of(start)
    raise AirflowFailException("no month to check: trigger with conf {'month': 'YYYY-MM'} or through an asset event")


class MonitoringMixin:
    """What the monitoring operators share: hooks, config, the champion and its cached reference."""

    month: str | None
    registered_model_name: str | None
    champion_alias: str
    config_path: str | None
    training_config_path: str | None
    mlflow_conn_id: str
    lake_root: str | None
    lake_conn_id: str | None
    evidently_workspace: str | None
    log: Any

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    @cached_property
    def evidently(self) -> EvidentlyHook:
        return EvidentlyHook(workspace=self.evidently_workspace)

    @cached_property
    def config(self) -> dict[str, Any]:
        return load_config(self.config_path)

    def local_training_config(self) -> TrainingConfig:
        from airflow_mlops.core import training

        return training.load_config(
            self.training_config_path or str(settings.include_dir() / "config" / "training.yaml")
        )

    def champion(self) -> dict[str, Any] | None:
        """The champion's name, version, run, logged model id, training set and config; None without one."""
        from airflow_mlops.core.training import TrainingConfig

        name = self.registered_model_name or self.local_training_config().registered_model_name
        version = self.mlflow_hook.alias_version(name, self.champion_alias)
        if version is None:
            return None
        client = self.mlflow_hook.client
        mv = client.get_model_version(name, version)
        run = client.get_run(mv.run_id)
        tags = run.data.tags
        try:
            import yaml

            self.mlflow_hook.activate()
            import mlflow

            config = TrainingConfig.from_dict(
                yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{mv.run_id}/config/training.yaml"))
            )
        except Exception as err:  # noqa: BLE001 - a run logged before configs were artifacts: use the local config
            self.log.warning("no training config on run %s (%s): using the local one", mv.run_id, err)
            config = self.local_training_config()
        uri, sha = tags.get("mlops.training_set.uri"), tags.get("mlops.training_set.sha256")
        if not uri or not sha:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(
                f"champion {name} v{version} (run {mv.run_id}) records no training set: no reference"
            )
        return {
            "name": name,
            "version": str(version),
            "run_id": mv.run_id,
            "model_id": getattr(mv, "model_id", None),
            "training_set_uri": uri,
            "training_set_sha256": sha,
            "holdout_months": [m for m in (tags.get("mlops.holdout.months") or "").split(",") if m],
            "config": config,
        }

    # -- the cached reference --------------------------------------------------------------------------------
    def reference(
        self, champion: dict[str, Any], drift_settings: DriftSettings
    ) -> tuple[ReferenceProfile, pd.DataFrame]:
        """The champion's profile and reference sample: read from the lake, built on first use."""
        import pandas as pd

        from airflow_mlops.core.drift import ReferenceProfile

        folder = self.lake.path(REFERENCE_ZONE, champion["name"], champion["version"])
        manifest = self.lake.read_manifest(folder)
        sample_rows = int((self.config.get("reference") or {}).get("sample_rows", 5000))
        if (
            manifest
            and manifest.get("training_set_sha256") == champion["training_set_sha256"]
            and manifest.get("profile_key") == drift_settings.profile_key
            and int(manifest.get("sample_rows", -1)) == sample_rows
        ):
            profile = ReferenceProfile.from_dict(json.loads(self.lake.read_verified(manifest["files"][PROFILE_FILE])))
            sample = pd.read_parquet(io.BytesIO(self.lake.read_verified(manifest["files"][SAMPLE_FILE])))
            self.log.info(
                "reference of %s v%s reused from %s", champion["name"], champion["version"], self.lake.url(folder)
            )
            return profile, sample
        return self._build_reference(champion, drift_settings, folder, sample_rows)

    def _build_reference(self, champion: dict[str, Any], drift_settings: DriftSettings, folder: Any, sample_rows: int):
        import mlflow
        import pandas as pd
        from airflow.sdk import ObjectStoragePath
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_mlops.core import drift, training

        started = time.perf_counter()
        path = ObjectStoragePath(champion["training_set_uri"], conn_id=self.lake_conn_id)
        manifest = self.lake.read_manifest(path.parent)
        record = (manifest or {}).get("files", {}).get(path.name)
        if record is None or record["sha256"] != champion["training_set_sha256"]:
            raise AirflowFailException(
                f"the champion's training set {path} is not committed with sha256 {champion['training_set_sha256'][:12]}"
            )
        frame = pd.read_parquet(io.BytesIO(self.lake.read_verified({**record, "uri": str(path)})))
        config: TrainingConfig = champion["config"]
        self.mlflow_hook.activate()
        model = mlflow.sklearn.load_model(f"models:/{champion['name']}/{champion['version']}")
        proba = training.predict_proba(model, frame, config)
        profile = drift.build_profile(
            frame,
            categorical=list(config.categorical),
            numeric=list(config.numeric),
            predictions=proba,
            label=config.label,
            bins=drift_settings.bins,
            max_categories=drift_settings.max_categories,
            meta={
                "model": champion["name"],
                "version": champion["version"],
                "run_id": champion["run_id"],
                "training_set_uri": champion["training_set_uri"],
                "training_set_sha256": champion["training_set_sha256"],
                "profile_key": drift_settings.profile_key,
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        keep = [
            c
            for c in dict.fromkeys([config.id_column, config.label, config.month_column, *config.features])
            if c in frame
        ]
        sample = frame[keep].copy()
        sample[drift.PREDICTION] = proba
        sample = drift.sample_rows(sample, sample_rows, seed=0)
        buffer = io.BytesIO()
        sample.to_parquet(buffer, index=False)
        records = [
            self.lake.write_file(folder / PROFILE_FILE, profile.to_json(), rows=len(profile.columns)),
            self.lake.write_file(folder / SAMPLE_FILE, buffer.getvalue(), rows=len(sample)),
        ]
        self.lake.write_manifest(
            folder,
            records,
            model=champion["name"],
            version=champion["version"],
            training_set_sha256=champion["training_set_sha256"],
            profile_key=drift_settings.profile_key,
            sample_rows=sample_rows,
        )
        self.log.info(
            "reference of %s v%s built from %d rows in %.1fs: %s",
            champion["name"],
            champion["version"],
            len(frame),
            time.perf_counter() - started,
            self.lake.url(folder),
        )
        return profile, sample

    # -- inputs of a period ----------------------------------------------------------------------------------
    def period_traffic(self, start: datetime, end: datetime, zone: str) -> pd.DataFrame:
        from airflow_mlops.core.drift import select_period
        from airflow_mlops.core.inference_log import read_inference_log

        return select_period(read_inference_log(self.lake, zone=zone, events=(start, end)), start, end)

    def validated_flights(self, month: str) -> dict[str, pd.DataFrame] | None:
        """``flights`` and ``planes`` of ``validated/<month>/`` (hashes checked), or None if not committed."""
        import pandas as pd

        manifest = self.lake.read_manifest(self.lake.path("validated", month))
        if manifest is None or "flights.parquet" not in manifest.get("files", {}):
            return None
        out = {}
        for name in ("flights", "planes"):
            record = manifest["files"].get(f"{name}.parquet")
            out[name] = pd.read_parquet(io.BytesIO(self.lake.read_verified(record))) if record else None
        return out

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
        html = EvidentlyHook.html(snapshot)
        self.lake.write_file(self.lake.path(key), html, rows=0)
        context["ti"].xcom_push(key=REPORT_XCOM_KEY, value=key)
        self.log.info("%s report: %s", kind, self.lake.url(self.lake.path(key)))
        project = (self.config.get("evidently") or {}).get("project") or f"{champion['name']} monitoring"
        evidently_run = self.evidently.add_run(
            project, snapshot, name=f"{kind} {month} {champion['name']} v{champion['version']}"
        )
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

        hook = self.mlflow_hook
        client = hook.client
        experiment = (self.config.get("mlflow") or {}).get("experiment_name") or "mlops-monitoring"
        experiment_id = hook.get_or_create_experiment(experiment)
        lineage = airflow_lineage(context)
        check_key = f"{kind}/{champion['name']}/{champion['version']}/{month}"
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{MONITORING_KEY_TAG}` = '{check_key}' and tags.`mlops.airflow.run_id` = '{lineage['run_id']}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
        else:
            run_id = client.create_run(
                experiment_id, run_name=f"{kind}.{champion['name']}.v{champion['version']}.{month}"
            ).info.run_id
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
        stamp = int(time.time() * 1000)
        step = int(month.replace("-", ""))
        batch = [
            Metric(k, float(v), stamp, step, model_id=champion.get("model_id"))
            for k, v in metrics.items()
            if v is not None
        ]
        for start in range(0, max(len(batch), 1), 900):
            client.log_batch(
                run_id,
                metrics=batch[start : start + 900],
                tags=[RunTag(k, v) for k, v in tags.items()] if start == 0 else [],
            )
        client.log_dict(run_id, summary, f"monitoring/{kind}_{month}.json")
        client.set_terminated(run_id)
        short = json.dumps(
            {k: summary.get(k) for k in ("status", "drift_share", "prediction_drift", "decay", "rows") if k in summary}
        )
        client.set_model_version_tag(
            champion["name"], champion["version"], f"mlops.monitoring.{kind}.{month}", short[:4000]
        )
        return run_id


def _champion_summary(champion: dict[str, Any]) -> dict[str, Any]:
    return {"model": champion["name"], "champion_version": champion["version"], "champion_run_id": champion["run_id"]}


class _ChampionCheckOperator(MonitoringMixin, BaseOperator):
    """What the drift and performance checks share: their arguments, templated fields and report link."""

    template_fields = ("month", "registered_model_name", "config_path")
    operator_extra_links = (MonitoringReportLink(),)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        month: str | None = None,
        registered_model_name: str | None = None,
        champion_alias: str = "champion",
        config_path: str | None = None,
        training_config_path: str | None = None,
        inference_log_zone: str = "inference_log",
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        evidently_workspace: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.month = month
        self.registered_model_name = registered_model_name
        self.champion_alias = champion_alias
        self.config_path = config_path
        self.training_config_path = training_config_path
        self.inference_log_zone = inference_log_zone
        self.mlflow_conn_id = mlflow_conn_id
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id
        self.evidently_workspace = evidently_workspace


class DriftCheckOperator(_ChampionCheckOperator):
    """Data, prediction and data-quality drift of a month's traffic and newest batch against the champion's reference.

    Traffic: the inference log's predictions whose flight departs in the month (event time, not when it was
    answered), every model feature plus ``probability_late``. Batch: the flight-level features of
    ``validated/<month>/`` (carrier, origin, dest, schedule, distance, fleet) and its late rate. Scores come from
    the champion's cached reference profile (``core.drift``); the Evidently report shows the same columns with
    the same method on a seeded sample. The policy reads the traffic's figures, or the batch's when the month
    had too little traffic.

    :param month: ``YYYY-MM`` (templated); empty: the triggering asset events' month, else the data interval's.
    :param registered_model_name: default ``registered_model_name`` of the training config (templated).
    :param champion_alias: alias of the model monitored.
    :param config_path: monitoring YAML; default ``include/config/monitoring.yaml`` (templated).
    :param training_config_path: training YAML, for the model name; default ``include/config/training.yaml``.
    :param inference_log_zone: lake zone of the inference log.
    :param evidently_workspace: workspace folder; default ``MLOPS_EVIDENTLY_WORKSPACE`` or ``$MLOPS_HOME/evidently``.
    :return: (XCom) status, month, interval, model, champion_version, source, rows, drift_share, drifted_columns,
        scores, prediction_drift, quality_issues, traffic and batch summaries, report_key, evidently/MLflow run ids.
        The report's lake key is also pushed under ``report_key`` (the task's extra link).
    :raises AirflowSkipException: no champion yet: nothing to monitor.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core import drift
        from airflow_mlops.core.batches import month_bounds

        month = month_from_context(self.month, context)
        start, end = month_bounds(month)
        champion = self.champion()
        if champion is None:
            raise AirflowSkipException(f"no {self.champion_alias} model yet: nothing to monitor for {month}")
        config: TrainingConfig = champion["config"]
        drift_settings = drift.DriftSettings.from_config(self.config)
        profile, sample = self.reference(champion, drift_settings)

        started = time.perf_counter()
        traffic = self.period_traffic(start, end, self.inference_log_zone)
        traffic_cols = [c for c in config.features if c in traffic.columns]
        traffic_result = drift.compare(profile, traffic, drift_settings, columns=traffic_cols) if len(traffic) else None
        batch_frame = self._batch_features(month, config)
        batch_result = None
        if batch_frame is not None and len(batch_frame):
            batch_cols = [c for c in config.features if c in batch_frame.columns]
            batch_result = drift.compare(
                profile, batch_frame, drift_settings, columns=batch_cols, prediction_column=None, label=config.label
            )
        self.log.info(
            "drift of %s scored in %.2fs (%d predictions, %d batch flights)",
            month,
            time.perf_counter() - started,
            len(traffic),
            len(batch_frame) if batch_frame is not None else 0,
        )

        summary: dict[str, Any] = {
            "month": month,
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
            **_champion_summary(champion),
            "method": drift_settings.method,
        }
        q = drift_settings.max_missing_increase
        summary["traffic"] = _brief(traffic_result.summary(q)) if traffic_result else {"rows": 0}
        summary["batch"] = _brief(batch_result.summary(q)) if batch_result else {"rows": 0}
        chosen, source = (
            (traffic_result, "traffic") if traffic_result and traffic_result.enough_rows else (batch_result, "batch")
        )
        if chosen is None or not chosen.rows:
            summary.update(
                status="no_data", reason=f"no traffic and no validated batch for {month}", rows=0, enough_rows=False
            )
            self.log.warning("%s", summary["reason"])
            return summary
        full = chosen.summary(q)
        summary.update(
            status="ok",
            source=source,
            **{
                k: full[k]
                for k in (
                    "rows",
                    "enough_rows",
                    "drift_share",
                    "drifted_columns",
                    "scores",
                    "prediction_drift",
                    "quality_issues",
                )
            },
        )
        if source == "batch" and traffic_result is not None:
            summary["prediction_drift"] = traffic_result.summary(q)["prediction_drift"]
        for line in _drift_lines(summary):
            self.log.info("%s", line)

        current = traffic if source == "traffic" else batch_frame
        columns = traffic_cols if source == "traffic" else [c for c in config.features if c in batch_frame.columns]
        numeric = [c for c in config.numeric if c in columns]
        if source == "traffic" and drift.PREDICTION in current.columns:
            numeric.append(drift.PREDICTION)
        report_rows = int((self.config.get("drift") or {}).get("report_max_rows", 20000))
        started = time.perf_counter()
        snapshot = self.evidently.drift_report(
            sample,
            drift.sample_rows(current, report_rows, seed=0),
            categorical=[c for c in config.categorical if c in columns],
            numeric=numeric,
            method=drift_settings.method,
            threshold=drift_settings.threshold,
            per_column_threshold={k: v for k, v in drift_settings.per_column_threshold.items() if k in columns},
            tags=["drift", source, month],
            metadata={"model": champion["name"], "version": champion["version"], "month": month, "source": source},
        )
        self.log.info("Evidently drift report in %.1fs", time.perf_counter() - started)
        metrics = {
            "drift_share": summary["drift_share"],
            "drifted_columns": float(len(summary["drifted_columns"])),
            "drift_rows": float(summary["rows"]),
            **(
                {"prediction_drift": summary["prediction_drift"]} if summary.get("prediction_drift") is not None else {}
            ),
            **{f"drift_score.{k}": v for k, v in summary["scores"].items() if v is not None},
        }
        summary.update(
            self.publish(
                context,
                kind="drift",
                month=month,
                champion=champion,
                snapshot=snapshot,
                metrics=metrics,
                summary=summary,
            )
        )
        return summary

    def _batch_features(self, month: str, config: TrainingConfig) -> pd.DataFrame | None:
        """Model features a batch carries by itself (schedule, route, fleet) plus the label, per flight."""
        from airflow_mlops.core import features as F
        from airflow_mlops.core.performance import outcomes_from_flights

        frames = self.validated_flights(month)
        if frames is None:
            self.log.info("no validated batch for %s: traffic only", month)
            return None
        spec = F.load_spec()
        flights = F.prepare_flights(frames["flights"], spec)
        out = F.flight_features(flights, frames.get("planes"), spec)
        keys = flights[["flight_id", "carrier", "origin"]]
        out = out.merge(keys, on="flight_id", how="left")
        labels = outcomes_from_flights(frames["flights"], spec.threshold_minutes, spec.unknown_category)
        out = out.merge(
            labels[["flight_id", "is_late"]].rename(columns={"is_late": config.label}), on="flight_id", how="left"
        )
        return out


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        k: summary.get(k)
        for k in (
            "rows",
            "enough_rows",
            "drift_share",
            "drifted_columns",
            "prediction_drift",
            "label_rate",
            "reference_label_rate",
            "quality_issues",
        )
    }


def _drift_lines(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"{summary['source']} of {summary['month']}: {summary['rows']} rows, drift share {summary['drift_share']:.2f} "
        f"({', '.join(summary['drifted_columns']) or 'no column drifted'}), prediction drift {summary.get('prediction_drift')}"
    ]
    lines += [f"quality: {issue}" for issue in summary.get("quality_issues") or []]
    return lines


class PerformanceCheckOperator(_ChampionCheckOperator):
    """The champion's live performance on a month: logged predictions joined with the outcomes that arrived.

    Outcomes: ``validated/<month>/flights.parquet`` (``arr_delay > threshold_minutes`` of features.yaml), joined
    on ``flight_id``; the newest prediction per flight counts. Metrics overall and per slice
    (``performance.slice_columns``) are compared with the champion's hold-out evaluation (``evaluation/
    evaluation.json`` on its run): the decay, positive = worse. No outcomes yet, or too few joined rows, is a
    normal, reported state (``status``), not a failure.

    :param month: ``YYYY-MM`` (templated); empty: as ``DriftCheckOperator``.
    :param registered_model_name: default from the training config (templated).
    :param config_path: monitoring YAML (templated).
    :return: (XCom) status, month, interval, model, champion_version, rows, live, holdout, decay, slice_decay,
        worst_slice_decay, report_key, evidently/MLflow run ids.
    :raises AirflowSkipException: no champion yet.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        import mlflow
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core import drift, performance
        from airflow_mlops.core import features as F
        from airflow_mlops.core.batches import month_bounds

        month = month_from_context(self.month, context)
        start, end = month_bounds(month)
        champion = self.champion()
        if champion is None:
            raise AirflowSkipException(f"no {self.champion_alias} model yet: nothing to monitor for {month}")
        config: TrainingConfig = champion["config"]
        settings_ = performance.PerformanceSettings.from_config(self.config)
        summary: dict[str, Any] = {
            "month": month,
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
            **_champion_summary(champion),
        }
        frames = self.validated_flights(month)
        if frames is None:
            summary.update(
                status="no_outcomes",
                reason=f"no validated batch for {month} yet: outcomes unknown",
                rows=0,
                enough_rows=False,
            )
            self.log.warning("%s", summary["reason"])
            return summary
        traffic = self.period_traffic(start, end, self.inference_log_zone)
        if traffic.empty:
            summary.update(
                status="no_traffic", reason=f"no logged predictions for flights of {month}", rows=0, enough_rows=False
            )
            self.log.warning("%s", summary["reason"])
            return summary
        spec = F.load_spec()
        outcomes = performance.outcomes_from_flights(frames["flights"], spec.threshold_minutes, spec.unknown_category)
        joined = performance.join_outcomes(traffic, outcomes, label=config.label)
        self.log.info(
            "%s: %d predictions of %d flights, %d with an outcome, %d without (cancelled, diverted or unknown)",
            month,
            joined.predictions,
            joined.unique_flights,
            len(joined.frame),
            joined.without_outcome,
        )
        if joined.frame.empty or joined.frame[config.label].nunique() < 1:
            summary.update(status="no_outcomes", reason="no logged flight has an outcome", rows=0, enough_rows=False)
            return summary

        self.mlflow_hook.activate()
        try:
            holdout = mlflow.artifacts.load_dict(f"runs:/{champion['run_id']}/evaluation/evaluation.json").get(
                "candidate"
            )
        except Exception as err:  # noqa: BLE001 - reported: live metrics without a comparison, the policy ignores decay
            self.log.warning("no hold-out evaluation on run %s (%s): decay is not computed", champion["run_id"], err)
            holdout = None
        threshold = (
            float(traffic["threshold"].dropna().iloc[-1])
            if "threshold" in traffic and traffic["threshold"].notna().any()
            else config.threshold
        )
        result = performance.measure(
            joined.frame, drift.PREDICTION, label=config.label, threshold=threshold, holdout=holdout, settings=settings_
        )
        summary.update(
            status="ok" if holdout else "no_holdout",
            predictions=joined.predictions,
            without_outcome=joined.without_outcome,
            threshold=threshold,
            **result.summary(),
        )
        if not holdout:
            summary["reason"] = "the champion's run has no hold-out evaluation"
        self.log.info("live %s: %s", month, summary["live"])
        self.log.info("hold-out: %s", summary["holdout"])
        self.log.info("decay (positive = worse): %s; worst slices: %s", summary["decay"], summary["worst_slice_decay"])

        reference = sample_holdout = None
        _, sample = self.reference(champion, drift.DriftSettings.from_config(self.config))
        if champion["holdout_months"] and config.month_column in sample and config.label in sample:
            sample_holdout = sample[sample[config.month_column].astype(str).isin(champion["holdout_months"])]
            reference = sample_holdout if len(sample_holdout) else None
        snapshot = self.evidently.classification_report(
            reference,
            joined.frame,
            target=config.label,
            probability=drift.PREDICTION,
            tags=["performance", month],
            metadata={"model": champion["name"], "version": champion["version"], "month": month},
        )
        metrics = {"live_rows": float(result.rows)}
        metrics.update(
            {f"live_{k}": v for k, v in result.live.overall.items() if isinstance(v, (int, float)) and k != "n"}
        )
        metrics.update({f"decay_{k}": v for k, v in result.decay.items() if v is not None})
        for metric, worst in summary["worst_slice_decay"].items():
            metrics[f"worst_slice_decay_{metric}"] = worst["decay"]
        summary.update(
            self.publish(
                context,
                kind="performance",
                month=month,
                champion=champion,
                snapshot=snapshot,
                metrics=metrics,
                summary=summary,
            )
        )
        return summary


class RetrainingPolicyOperator(BaseOperator):
    """Apply the retraining policy to a month's drift and performance summaries; ask for a retrain, at most once.

    Earlier decisions live in the lake, one JSON file per data interval (``monitoring/policy/<model>/<key>.json``,
    written atomically); they give the cooldown, the cap and the dedupe (an interval that triggered never
    triggers again, whatever reruns). The decision and its reasons are logged, stored there, pushed to XCom
    under ``decision`` and tagged on the champion's model version. A positive decision is the task's success
    and emits the ``retrain_requested`` Asset event with extra ``reasons``, ``interval_start``,
    ``interval_end``, ``month``, ``model``, ``champion_version``; otherwise the task is skipped and emits nothing.

    The decision is stored before the event is emitted: if emitting fails, the retry finds the interval decided
    and does not ask again (at most once). Re-post it by hand through the REST API if that happens.

    With no champion the checks are skipped and this task (``trigger_rule="none_failed"`` in the DAG) applies the
    policy's bootstrap rule instead: once ``policy.bootstrap.min_months`` validated months exist up to the
    month, it asks for the first model.

    :param drift: the XCom of ``DriftCheckOperator`` (templated).
    :param performance: the XCom of ``PerformanceCheckOperator`` (templated; may be empty).
    :param month: ``YYYY-MM`` for the bootstrap case, resolved like the checks' (templated).
    :param registered_model_name: default from the training config (templated).
    :param config_path: monitoring YAML with the ``policy`` section (templated).
    :return: (XCom) the decision (retrain, reasons, triggers, suppressed_by, interval, model, champion_version).
    :raises AirflowSkipException: the policy does not ask for a retrain (decision recorded first).
    """

    template_fields = ("drift", "performance", "month", "registered_model_name", "config_path")
    ui_color = "#fce8e6"

    def __init__(
        self,
        *,
        drift: dict | str | None,
        performance: dict | str | None = None,
        month: str | None = None,
        registered_model_name: str | None = None,
        champion_alias: str = "champion",
        config_path: str | None = None,
        training_config_path: str | None = None,
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [RETRAIN_REQUESTED])
        super().__init__(**kwargs)
        self.drift = drift
        self.performance = performance
        self.month = month
        self.registered_model_name = registered_model_name
        self.champion_alias = champion_alias
        self.config_path = config_path
        self.training_config_path = training_config_path
        self.mlflow_conn_id = mlflow_conn_id
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core import retraining_policy as rp
        from airflow_mlops.operators.training import airflow_lineage

        drift_summary = _parse(self.drift) or None
        perf_summary = _parse(self.performance) or None
        source = drift_summary or perf_summary
        policy = rp.load_policy(self.config_path or default_config_path())
        if not isinstance(source, dict) or not source.get("interval_start"):
            source = self._without_summaries(context)
        interval = rp.Interval.parse(source["interval_start"], source["interval_end"])
        model = source["model"]
        folder = self.lake.path(POLICY_ZONE, model)
        records = self._records(folder)
        existing = records.pop(interval.key, None)
        history = rp.history_from_records([*records.values(), *([existing] if existing else [])])
        if source.get("bootstrap"):
            decision = rp.decide_bootstrap(
                policy,
                interval,
                source["months_available"],
                history,
                month=source.get("month"),
                model=model,
                decided_by=airflow_lineage(context),
            )
        else:
            decision = rp.decide(
                policy,
                interval,
                drift_summary,
                perf_summary,
                history,
                month=source.get("month"),
                model=model,
                champion_version=source.get("champion_version"),
                decided_by=airflow_lineage(context),
            )
        record = rp.record_for_interval(existing, decision)
        path = folder / f"{interval.key}.json"
        self.lake.write_file(path, json.dumps(record, indent=2, sort_keys=True).encode(), rows=1)

        verdict = "RETRAIN" if decision.retrain else f"no retrain ({decision.suppressed_by or 'no trigger'})"
        log = self.log.warning if decision.retrain else self.log.info
        log("policy for %s (%s v%s): %s", interval.key, model, decision.champion_version, verdict)
        for line in decision.reasons:
            log("  - %s", line)
        small = decision.to_dict()
        context["ti"].xcom_push(key="decision", value=small)
        if decision.champion_version:
            self.mlflow_hook.client.set_model_version_tag(
                model,
                decision.champion_version,
                f"mlops.policy.{source.get('month') or interval.key}",
                json.dumps(
                    {"retrain": decision.retrain, "suppressed_by": decision.suppressed_by, "reasons": decision.reasons}
                )[:4000],
            )
        if not decision.retrain:
            raise AirflowSkipException(f"no retrain for {interval.key}: {'; '.join(decision.reasons)[:500]}")
        context["outlet_events"][RETRAIN_REQUESTED].extra = {
            "reasons": decision.reasons,
            "interval_start": decision.interval_start,
            "interval_end": decision.interval_end,
            "month": decision.month,
            "model": model,
            "champion_version": decision.champion_version,
            "policy_sha256": decision.policy_sha256,
        }
        return small

    def _without_summaries(self, context: Context) -> dict[str, Any]:
        """The checks were skipped: with no champion, the bootstrap case for the month; otherwise skip."""
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core import training
        from airflow_mlops.core.batches import month_bounds

        name = (
            self.registered_model_name
            or training.load_config(
                self.training_config_path or str(settings.include_dir() / "config" / "training.yaml")
            ).registered_model_name
        )
        if self.mlflow_hook.alias_version(name, self.champion_alias) is not None:
            raise AirflowSkipException("no monitoring summary to decide on (the checks were skipped)")
        month = month_from_context(self.month, context)
        start, end = month_bounds(month)
        months = [m for m in self.lake.committed_months("validated") if m <= month]
        self.log.info("no %s model yet; validated months up to %s: %s", self.champion_alias, month, months or "none")
        return {
            "bootstrap": True,
            "month": month,
            "model": name,
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
            "months_available": len(months),
        }

    def _records(self, folder: Any) -> dict[str, dict[str, Any]]:
        if not folder.exists():
            return {}
        out = {}
        for path in folder.iterdir():
            if path.name.endswith(".json") and not path.name.startswith((".", "_")):
                out[path.name.removesuffix(".json")] = json.loads(path.read_bytes())
        return out
