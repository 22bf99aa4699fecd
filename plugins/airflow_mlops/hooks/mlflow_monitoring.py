"""MLflow as monitoring reads and writes it: the champion and its lineage, one run per check, verdict tags."""

from __future__ import annotations

import json
import time
from typing import Any

from airflow_mlops.hooks.mlflow_registry import MlflowHook

MONITORING_KEY_TAG = "mlops.monitoring.key"
#: MLflow's limit on the metrics of one ``log_batch`` call is 1000.
_BATCH = 900


class MonitoringMlflowHook(MlflowHook):
    """``MlflowHook`` plus the reads and writes of the monitoring stage.

    :param mlflow_conn_id: the Airflow connection of the MLflow server; default ``mlflow_default``.
    """

    hook_name = "MLflow (monitoring)"

    def champion(self, name: str, alias: str) -> dict[str, Any] | None:
        """``name@alias``'s version, run, logged model id, training set and hold-out periods; None without one.

        :param name: the registered model.
        :param alias: e.g. ``champion``.
        :raises ValueError: the version's run records no training set (the reference cannot be built).
        """
        version = self.alias_version(name, alias)
        if version is None:
            return None
        mv = self.client.get_model_version(name, version)
        tags = self.client.get_run(mv.run_id).data.tags
        uri, sha = tags.get("mlops.training_set.uri"), tags.get("mlops.training_set.sha256")
        if not uri or not sha:
            raise ValueError(f"champion {name} v{version} (run {mv.run_id}) records no training set")
        holdout = tags.get("mlops.holdout.months") or tags.get("mlops.holdout.periods") or ""
        return {
            "name": name,
            "version": str(version),
            "run_id": mv.run_id,
            "model_id": getattr(mv, "model_id", None),
            "training_set_uri": uri,
            "training_set_sha256": sha,
            "holdout_months": [m for m in holdout.split(",") if m],
        }

    def load_version(self, name: str, version: str) -> Any:
        """The scikit-learn model of ``name`` v``version``.

        :param name: the registered model.
        :param version: its version.
        """
        import mlflow

        self.activate()
        return mlflow.sklearn.load_model(f"models:/{name}/{version}")

    def log_check(
        self,
        *,
        kind: str,
        period: str,
        champion: dict[str, Any],
        metrics: dict[str, float | None],
        summary: dict[str, Any],
        report_key: str | None,
        lineage: dict[str, str],
        experiment: str,
    ) -> str:
        """One run per check and Airflow run (a retry finds and re-uses it): tags, metrics linked to the champion's
        logged model, the summary as an artifact; its verdict tagged on the champion's version. Returns the run id.

        :param kind: ``drift`` or ``performance``.
        :param period: the period checked (its digits are the metrics' step).
        :param champion: the model checked: name, version, run_id, model_id.
        :param metrics: metric name → value (None: not logged).
        :param summary: the check's summary (``status``, ``drift_share``, ... go to the version's tag).
        :param report_key: the report's lake key.
        :param lineage: the Airflow task (``core.tracking.airflow_lineage``), tagged ``mlops.airflow.*``.
        :param experiment: the monitoring experiment (created on first use).
        """
        from mlflow.entities import Metric, RunTag

        name, version = champion["name"], champion["version"]
        check_key = f"{kind}/{name}/{version}/{period}"
        experiment_id = self.get_or_create_experiment(experiment)
        found = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{MONITORING_KEY_TAG}` = '{check_key}' and "
            f"tags.`mlops.airflow.run_id` = '{lineage['run_id']}'",
            max_results=1,
        )
        run_name = f"{kind}.{name}.v{version}.{period}"
        run_id = found[0].info.run_id if found else self.client.create_run(experiment_id, run_name=run_name).info.run_id
        tags = {
            MONITORING_KEY_TAG: check_key,
            "mlops.monitoring.kind": kind,
            "mlops.monitoring.month": period,
            "mlops.monitoring.model": name,
            "mlops.monitoring.version": version,
            "mlops.monitoring.champion_run_id": champion["run_id"],
            "mlops.monitoring.report": report_key or "",
            **{f"mlops.airflow.{k}": v for k, v in lineage.items()},
        }
        stamp, step, model_id = int(time.time() * 1000), int(period.replace("-", "")), champion.get("model_id")
        batch = [Metric(k, float(v), stamp, step, model_id=model_id) for k, v in metrics.items() if v is not None]
        for first in range(0, max(len(batch), 1), _BATCH):
            self.client.log_batch(
                run_id,
                metrics=batch[first : first + _BATCH],
                tags=[RunTag(k, v) for k, v in tags.items()] if first == 0 else [],
            )
        self.client.log_dict(run_id, summary, f"monitoring/{kind}_{period}.json")
        self.client.set_terminated(run_id)
        verdict = {
            k: summary.get(k) for k in ("status", "drift_share", "prediction_drift", "decay", "rows") if k in summary
        }
        self.tag_version(name, version, f"mlops.monitoring.{kind}.{period}", verdict)
        return run_id

    def tag_version(self, name: str, version: str, key: str, value: dict[str, Any]) -> None:
        """Tag model version ``name`` v``version`` with ``value`` as JSON (cut to MLflow's 4000 characters).

        :param name: the registered model.
        :param version: its version.
        :param key: the tag.
        :param value: JSON-able content.
        """
        self.client.set_model_version_tag(name, version, key, json.dumps(value)[:4000])
