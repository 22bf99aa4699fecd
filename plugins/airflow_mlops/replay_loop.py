"""The year replay: the whole MLOps loop, month by month, through the real scheduler and the real services.

For each month:

1. the upstream lands the month's batch in ``landing/`` and rings the flag: the landing watcher starts
   ``mlops_ingest_validate`` (validated, or quarantined — then the upstream re-sends a corrected batch);
2. ``mlops_features`` runs on the ``validated_batch`` Asset: features, Feast apply + materialize, training set;
3. the month's scheduled flights go through the serving endpoint as live traffic (when a champion serves);
4. the upstream announces the month's outcomes (``POST /api/v2/assets/events`` on the ``outcomes`` Asset):
   ``mlops_monitoring`` checks drift and live performance, its policy may ask for a retrain;
5. a retrain runs ``mlops_training``: train → evaluate → gate → register → infra-validate → promote → deploy.

This module only plays the outside world (it lands files, sends traffic, posts the outcome event) and waits;
every pipeline step runs in Airflow. It reads what happened from the REST API, the lake and MLflow.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_mlops.assets import FEATURES, OUTCOMES
from airflow_mlops.core.batches import batch_hash

INGEST_DAG = "mlops_ingest_validate"
FEATURES_DAG = "mlops_features"
MONITORING_DAG = "mlops_monitoring"
TRAINING_DAG = "mlops_training"
DAGS = (INGEST_DAG, FEATURES_DAG, MONITORING_DAG, TRAINING_DAG, "mlops_rollback")
#: Where the replay keeps its results, in the lake (served by the Airflow UI's lake reports app).
REPLAY_ZONE = "reports/replay"
STAGES = ("validate", "features", "traffic", "monitoring", "training")


class ReplayError(RuntimeError):
    """A step of the replay did not happen within its timeout, or a DAG run failed; the message says which."""


@dataclass
class MonthRow:
    """What happened to one month of the replay."""

    month: str
    rows: int = 0
    batch: str = ""
    validation: str = "pending"
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    data_docs: str | None = None
    traffic: dict[str, Any] | None = None
    served_by: str | None = None
    drift_share: float | None = None
    drifted_columns: list[str] = field(default_factory=list)
    prediction_drift: float | None = None
    live_roc_auc: float | None = None
    holdout_roc_auc: float | None = None
    live_rows: int | None = None
    retrain: bool | None = None
    policy_reasons: list[str] = field(default_factory=list)
    suppressed_by: str | None = None
    gate: str | None = None
    gate_reasons: list[str] = field(default_factory=list)
    promoted: str | None = None
    champion_version: str | None = None
    reports: dict[str, str] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MonthRow:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def batch_outcome(lake: Any, month: str, digest: str) -> dict[str, Any]:
    """What became of one landed batch, read from the lake's manifests: validated, QUARANTINED or pending."""
    validated = lake.read_manifest(lake.path("validated", month))
    if validated and validated.get("batch_sha256") == digest:
        suites = validated["validation"]["suites"]
        return {
            "status": "validated",
            "failed": [],
            "where": lake.url(lake.path("validated", month)),
            "report": f"reports/data_docs/{suites[0]['docs_page']}",
        }
    quarantine = lake.path("quarantine", month, digest[:12])
    manifest = lake.read_manifest(quarantine)
    if manifest:
        failed = [
            f"{f['expectation']}({f['column'] or ''})" for s in manifest["validation"]["suites"] for f in s["failed"]
        ]
        page = next((s["docs_page"] for s in manifest["validation"]["suites"] if s["failed"]), None)
        return {
            "status": "QUARANTINED",
            "failed": failed,
            "where": lake.url(quarantine),
            "report": f"reports/data_docs/{page}" if page else None,
        }
    return {"status": "pending", "failed": [], "where": "", "report": None}


class MemorySampler:
    """Peak memory (proportional set size) of a set of process trees (the stack, the serving process, this one)."""

    def __init__(self, roots: Callable[[], list[int]], interval: float = 1.0) -> None:
        self.roots = roots
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _sample(self) -> int:
        import psutil

        seen: set[int] = set()
        total = 0
        for pid in [*self.roots(), psutil.Process().pid]:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                try:
                    # PSS: tasks forked from the scheduler share its preloaded libraries; RSS would count them twice.
                    total += proc.memory_full_info().pss
                except (psutil.Error, AttributeError):
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._sample())

    def __enter__(self) -> MemorySampler:
        self.peak_bytes = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class YearReplay:
    """Drive the replay of ``months`` on a running embedded stack.

    :param client: an ``AirflowClient`` on the stack's REST API.
    :param corrupt: month -> corruption kind: that month first lands broken (quarantined), then corrected.
    :param traffic_batch_size: flights per ``/predict_batch`` request; ``traffic_concurrency`` clients.
    :param timeout: seconds any one wait may take before the replay stops with a ``ReplayError``.
    """

    def __init__(
        self,
        client: Any,
        lake: Any,
        *,
        airflow_url: str,
        corrupt: dict[str, str] | None = None,
        traffic_batch_size: int = 250,
        traffic_concurrency: int = 2,
        timeout: float = 900.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.client = client
        self.lake = lake
        self.airflow_url = airflow_url
        self.corrupt = dict(corrupt or {})
        self.traffic_batch_size = traffic_batch_size
        self.traffic_concurrency = traffic_concurrency
        self.timeout = timeout
        self.log = log
        self._training_before: set[str] = set()

    # -- waiting ---------------------------------------------------------------------------------------------
    def _wait(self, what: str, probe: Callable[[], Any], poll: float = 2.0) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ReplayError(f"{what}: not done after {self.timeout:.0f} s")
            time.sleep(poll)

    def _run_ids(self, dag_id: str) -> set[str]:
        return {r["dag_run_id"] for r in self.client.runs(dag_id)}

    def _wait_new_run(self, dag_id: str, before: set[str], what: str) -> dict[str, Any]:
        """The first run of ``dag_id`` not in ``before``, once it finished (success or failed)."""

        def probe() -> dict[str, Any] | None:
            new = [r for r in self.client.runs(dag_id) if r["dag_run_id"] not in before]
            done = [r for r in new if r["state"] in ("success", "failed")]
            if new and len(done) == len(new):
                return sorted(done, key=lambda r: r.get("run_after") or r.get("queued_at") or "")[-1]
            return None

        return self._wait(what, probe)

    def _wait_idle(self, dag_id: str) -> None:
        self._wait(
            f"{dag_id} to be idle",
            lambda: not any(r["state"] in ("queued", "running") for r in self.client.runs(dag_id)),
        )

    def _xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        value = self.client.xcom(dag_id, run_id, task_id, key)
        if isinstance(value, str) and value[:1] in "{[":
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def run_link(self, dag_id: str, run_id: str) -> str:
        return f"{self.airflow_url}/dags/{dag_id}/runs/{run_id}"

    # -- one month -------------------------------------------------------------------------------------------
    def run_month(self, month: str) -> MonthRow:
        from airflow_mlops import replay, traffic

        row = MonthRow(month=month)
        self.log(f"== {month}")

        # 1. land, validate (and, for a corrupted delivery, quarantine then the upstream's corrected re-send)
        started = time.monotonic()
        for kind in ([self.corrupt[month]] if month in self.corrupt else []) + [None]:
            marker = replay.land(month, corrupt=kind)
            digest = batch_hash({name: rec["sha256"] for name, rec in marker["files"].items()})
            row.rows, row.batch = marker["files"]["flights.csv"]["rows"], digest[:12]
            self.log(f"   landed {month}{' (' + kind + ')' if kind else ''}: {row.rows} flights, batch {digest[:12]}")
            outcome = self._wait(
                f"batch {digest[:12]} of {month} to be validated or quarantined",
                lambda d=digest: (o := batch_outcome(self.lake, month, d))["status"] != "pending" and o,
            )
            if outcome["status"] == "QUARANTINED":
                row.quarantined.append(
                    {"batch": digest[:12], "kind": kind, "failed": outcome["failed"], "report": outcome["report"]}
                )
                self.log(f"   QUARANTINED ({', '.join(outcome['failed'])}); report {outcome['report']}")
                if kind is None:
                    row.validation = "QUARANTINED"
                    row.seconds["validate"] = round(time.monotonic() - started, 1)
                    self._wait_idle(INGEST_DAG)
                    return row
                self._wait_idle(INGEST_DAG)
                continue
            row.validation = "validated" + (" (after a re-send)" if row.quarantined else "")
            row.data_docs = outcome["report"]
            self.log(f"   validated: {outcome['where']}")
        row.seconds["validate"] = round(time.monotonic() - started, 1)

        # 2. features: wait for the features Asset event of this month, then for the DAG (its training set)
        started = time.monotonic()
        self._wait(f"features of {month}", lambda: self._features_event(month))
        self._wait_idle(FEATURES_DAG)
        row.seconds["features"] = round(time.monotonic() - started, 1)

        # 3. live traffic through the serving endpoint, if a champion serves
        started = time.monotonic()
        url = self._serving_url()
        if url:
            result = traffic.send(
                url,
                traffic.month_requests(month),
                month=month,
                batch_size=self.traffic_batch_size,
                concurrency=self.traffic_concurrency,
                log=self.log,
            )
            row.traffic = result.to_dict()
            row.served_by = ",".join(sorted(result.versions)) or None
            if result.failed:
                raise ReplayError(f"traffic of {month}: {result.failed} predictions failed: {result.errors[:3]}")
            # the outcomes are announced once every answered prediction is in the log monitoring reads
            from airflow_mlops.serving_process import embedded_token

            traffic.wait_logged(url, timeout=self.timeout, token=embedded_token())
        else:
            self.log("   no champion serving yet: no traffic answered this month")
        row.seconds["traffic"] = round(time.monotonic() - started, 1)

        # 4. the upstream announces the outcomes: monitoring and the policy
        started = time.monotonic()
        before = self._run_ids(MONITORING_DAG)
        self.client.post_asset_event(OUTCOMES.uri, {"month": month, "source": "replay"})
        run = self._wait_new_run(MONITORING_DAG, before, f"the monitoring run of {month}")
        row.runs["monitoring"] = run["dag_run_id"]
        if run["state"] != "success":
            raise ReplayError(f"monitoring of {month} failed: {self.run_link(MONITORING_DAG, run['dag_run_id'])}")
        self._read_monitoring(row, run["dag_run_id"])
        row.seconds["monitoring"] = round(time.monotonic() - started, 1)

        # 5. a retrain, if asked for
        started = time.monotonic()
        if row.retrain:
            run = self._wait_new_run(TRAINING_DAG, self._training_before, f"the training run asked for by {month}")
            row.runs["training"] = run["dag_run_id"]
            self._read_training(row, run)
        self._training_before = self._run_ids(TRAINING_DAG)
        row.champion_version = self._champion()
        row.seconds["training"] = round(time.monotonic() - started, 1)
        self.log(
            f"   champion after {month}: v{row.champion_version or '-'}"
            + (
                f" (gate {row.gate}; promoted v{row.promoted})"
                if row.promoted
                else f" (gate {row.gate})"
                if row.gate
                else ""
            )
        )
        return row

    def prepare(self) -> None:
        """Unpause the pipeline's DAGs (ingest catches up its monthly runs: nothing waits in landing/ yet)."""
        for dag_id in DAGS:
            self.client.wait_dag(dag_id)
        self._training_before = self._run_ids(TRAINING_DAG)
        for dag_id in DAGS:
            self.client.unpause(dag_id)

    # -- reading what happened -------------------------------------------------------------------------------
    def _features_event(self, month: str) -> dict[str, Any] | None:
        for event in self.client.asset_events(FEATURES.uri, limit=20):
            extra = event.get("extra") or {}
            if (
                month in (extra.get("months") or [])
                or extra.get("month") == month
                or str(extra.get("interval_start", "")).startswith(f"{month}-01T")
            ):
                return event
        return None

    def _serving_url(self) -> str | None:
        import httpx

        from airflow_mlops.serving_process import embedded

        process = embedded()
        if process.pid() is None:
            return None
        try:
            ready = httpx.get(f"{process.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            ready = False
        return process.url if ready else None

    def _read_monitoring(self, row: MonthRow, run_id: str) -> None:
        drift = self._xcom(MONITORING_DAG, run_id, "drift_check") or {}
        perf = self._xcom(MONITORING_DAG, run_id, "performance_check") or {}
        decision = self._xcom(MONITORING_DAG, run_id, "retraining_policy", "decision") or {}
        row.drift_share = drift.get("drift_share")
        row.drifted_columns = list(drift.get("drifted_columns") or [])
        row.prediction_drift = drift.get("prediction_drift")
        row.live_roc_auc = (perf.get("live") or {}).get("roc_auc")
        row.holdout_roc_auc = (perf.get("holdout") or {}).get("roc_auc")
        row.live_rows = perf.get("rows")
        for kind, summary in (("drift", drift), ("performance", perf)):
            if summary.get("report_key"):
                row.reports[kind] = summary["report_key"]
        row.retrain = decision.get("retrain")
        row.policy_reasons = list(decision.get("reasons") or [])
        row.suppressed_by = decision.get("suppressed_by")
        verdict = "RETRAIN" if row.retrain else f"no retrain ({row.suppressed_by or 'no trigger'})"
        self.log(
            f"   monitoring: drift share {_fmt(row.drift_share)}, prediction drift {_fmt(row.prediction_drift, 3)}, "
            f"live ROC AUC {_fmt(row.live_roc_auc, 3)} (hold-out {_fmt(row.holdout_roc_auc, 3)}); policy: {verdict}"
        )
        for reason in row.policy_reasons[:4]:
            self.log(f"     - {reason}")

    def _read_training(self, row: MonthRow, run: dict[str, Any]) -> None:
        run_id = run["dag_run_id"]
        gate = self._xcom(TRAINING_DAG, run_id, "model_gate") or {}
        row.gate = "approved" if gate.get("approved") else "rejected" if gate else None
        row.gate_reasons = list(gate.get("reasons") or [])[:6]
        instances = self.client.task_instances(TRAINING_DAG, run_id)
        states = {t["task_id"]: t["state"] for t in instances}
        if run["state"] != "success":
            # A candidate refused by infra validation (or a broken step) is an outcome of the loop: the champion
            # stays, the reasons go in the table, and the replay goes on.
            failed = [t for t in instances if t["state"] == "failed"]
            reasons = []
            for task in failed:
                lines = self.client.task_log(TRAINING_DAG, run_id, task["task_id"], task.get("try_number") or 1)
                said = [ln for ln in lines if "infra validation" in ln or "Error" in ln or "failed" in ln.lower()]
                reasons.append(f"{task['task_id']} failed: {(said or lines or ['(no log)'])[-1][:300]}")
            what = "infra failed" if "infra_validate" in {t["task_id"] for t in failed} else "run failed"
            row.gate = f"{row.gate or '?'}, {what}"
            row.gate_reasons = reasons + row.gate_reasons
            self.log(f"   training run failed: {self.run_link(TRAINING_DAG, run_id)}")
        if states.get("promote_model") == "success":
            promoted = self._xcom(TRAINING_DAG, run_id, "promote_model")
            row.promoted = str(promoted["to_version"]) if isinstance(promoted, dict) else None
        self.log(f"   training: gate {row.gate}; tasks {states}")
        for reason in row.gate_reasons[:4]:
            self.log(f"     - {reason}")

    def _champion(self) -> str | None:
        from airflow_mlops.core import training
        from airflow_mlops.hooks.mlflow_registry import MlflowHook
        from airflow_mlops.settings import include_dir

        name = training.load_config(str(include_dir() / "config" / "training.yaml")).registered_model_name
        return MlflowHook().alias_version(name, "champion")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
