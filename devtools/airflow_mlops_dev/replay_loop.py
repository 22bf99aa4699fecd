"""The replay: a use case's whole MLOps loop, step by step, through the real scheduler and the real services.

A step is one period (a month or a day, ``source.period`` of the use case ``<name>``) or several landed at once: the
backfill (a daily use case's first year, what its first model needs) and the live steps of a daily use case (a week
of days). For each step:

1. the upstream lands the step's batches (the use case's ``demo_batches``) in ``<lake>/<name>/landing/`` and rings
   the flag once: the landing watcher starts one ``<name>_ingest_validate`` run, which validates every waiting batch
   (one mapped task each: validated, or quarantined — then the upstream re-sends a corrected batch);
2. ``<name>_features`` runs on the ``<name>.validated_batch`` Asset: features, Feast apply + materialize, training
   set. For a step of several periods the replay holds it (paused) while the batches validate, then releases it
   with one ``validated_batch`` event naming the step's last period: one run builds every validated period without
   features (``BuildFeaturesOperator``'s catch-up) instead of one run per batch;
3. the step's requests (the use case's ``demo_requests``, period by period) go through its serving endpoint as live
   traffic (when a champion serves);
4. the upstream announces the step's outcomes in one event (``POST /api/v2/assets/events`` on ``<name>.outcomes``,
   extra ``period``: the last, and ``periods``: all of them): ``<name>_monitoring`` checks drift and live
   performance over its monitoring window, its policy may ask for a retrain (or, without a champion, the first
   model);
5. a retrain runs ``<name>_training``: train → evaluate → gate → register → infra-validate → promote → deploy.

This module plays the outside world (it lands files, sends traffic, posts the outcome event) and the operator who
holds the features DAG during a bulk load; every pipeline step runs in Airflow. It reads what happened from the
REST API, the lake and MLflow.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.batches import batch_hash, period_bounds

if TYPE_CHECKING:
    from airflow_mlops.usecase.config import UseCase

#: The stages of a use case's DAGs (``UseCase.dag_id(stage)``), as the DAG factory names them.
DAG_STAGES = ("ingest_validate", "features", "monitoring", "training", "rollback")
#: Where the replay keeps its results, in the use case's lake (served by the Airflow UI's lake reports app).
REPLAY_ZONE = "reports/replay"
#: The timed steps of a period.
STAGES = ("validate", "features", "traffic", "monitoring", "training")
#: The live metric the table shows, per task (a key of the performance check's ``live`` metrics).
LIVE_METRICS = {"classification": "roc_auc", "regression": "rmse"}
#: How the metrics are labelled in the table, the plot and the page.
METRIC_LABELS = {"roc_auc": "ROC AUC", "rmse": "RMSE", "mae": "MAE", "r2": "R²", "log_loss": "log loss"}


def live_metric(task: str) -> str:
    """The live metric of a task: ROC AUC for classification, RMSE for regression.

    :param task: ``classification`` or ``regression``.
    """
    return LIVE_METRICS.get(task, "roc_auc")


def event_covers(extra: dict[str, Any], period: str) -> bool:
    """Whether an Asset event's extra covers ``period``: it names it (``period``, ``month``, ``periods``,
    ``months``), or its data interval ``[interval_start, interval_end)`` holds the period's start.

    :param extra: the event's extra.
    :param period: ``YYYY-MM`` or ``YYYY-MM-DD``.
    """
    named = [extra.get("period"), extra.get("month"), *(extra.get("periods") or []), *(extra.get("months") or [])]
    if period in named:
        return True
    try:
        low = datetime.fromisoformat(str(extra["interval_start"]))
        high = datetime.fromisoformat(str(extra["interval_end"]))
    except (KeyError, ValueError):
        return False
    start = period_bounds(period)[0]
    try:
        return low <= start < high
    except TypeError:  # a naive interval: read as UTC
        return low.replace(tzinfo=start.tzinfo) <= start < high.replace(tzinfo=start.tzinfo)


def approval_prompt(airflow_url: str, dag_id: str, run_id: str, task_id: str) -> str:
    """What to click or curl to answer a training run's approval step."""
    from urllib.parse import quote

    api = f"{airflow_url}/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}/-1/hitlDetails"
    login = '{"username": "admin", "password": "<the password printed at the start>"}'
    answer = '{"chosen_options": ["Approve"], "params_input": {"comment": "looks good"}}'
    return "\n".join(
        [
            f"   {dag_id} waits for a person to approve the promotion ({task_id}):",
            f"     click: {airflow_url}/dags/{dag_id}/runs/{quote(run_id)}/tasks/{task_id}/required_actions",
            '     or curl (Reject: chosen_options ["Reject"]):',
            f"       TOKEN=$(curl -s -X POST {airflow_url}/auth/token -H 'Content-Type: application/json' "
            f"-d '{login}' | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
            f"       curl -X PATCH '{api}' -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' "
            f"-d '{answer}'",
        ]
    )


def span(periods: list[str]) -> str:
    """``first..last`` of several periods, the period of one.

    :param periods: periods, in order.
    """
    return periods[0] if len(periods) == 1 else f"{periods[0]}..{periods[-1]}"


class ReplayError(RuntimeError):
    """A step of the replay did not happen within its timeout, or a DAG run failed; the message says which."""


@dataclass
class PeriodRow:
    """What happened in one step of the replay: one period, or several landed at once (``periods``; ``period`` is
    then the last of them, the one the outcomes event names and monitoring checks)."""

    period: str
    periods: list[str] = field(default_factory=list)
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
    live_metric: str | None = None
    live_value: float | None = None
    holdout_value: float | None = None
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

    @property
    def covered(self) -> list[str]:
        """Every period of the step, in order."""
        return list(self.periods) or [self.period]

    @property
    def label(self) -> str:
        """``first..last`` of a step of several periods, else the period."""
        return span(self.covered)

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data (``summary.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeriodRow:
        """A row from :meth:`to_dict`'s output (or a monthly replay's older ``month`` / ``live_roc_auc`` keys).

        :param data: the row's data.
        """
        data = dict(data)
        if "period" not in data and "month" in data:
            data["period"] = data["month"]
        if "live_value" not in data and "live_roc_auc" in data:
            data.update(
                live_metric="roc_auc", live_value=data.get("live_roc_auc"), holdout_value=data.get("holdout_roc_auc")
            )
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def batch_outcome(lake: Any, period: str, digest: str) -> dict[str, Any]:
    """What became of one landed batch, read from the lake's manifests: validated, QUARANTINED or pending.

    :param lake: the use case's ``LakeHook``.
    :param period: the batch's period.
    :param digest: the batch's hash (``core.batches.batch_hash`` of its files' sha256).
    """
    validated = lake.read_manifest(lake.path("validated", period))
    if validated and validated.get("batch_sha256") == digest:
        suites = validated["validation"]["suites"]
        page = next((s.get("docs_page") for s in suites if s.get("docs_page")), None)
        return {
            "status": "validated",
            "failed": [],
            "where": lake.url(lake.path("validated", period)),
            "report": f"reports/data_docs/{page}" if page else None,
        }
    quarantine = lake.path("quarantine", period, digest[:12])
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
    """Peak memory (proportional set size) of a set of process trees (the stack, the serving process, this one).

    :param roots: the trees to count, by name (``{"scheduler": pid, "serving": pid}``); this process is added
        as ``driver``.
    :param interval: seconds between samples.

    ``peak_bytes`` is the largest total seen; ``peak_breakdown`` that sample's share of each tree
    (``{name: (bytes, processes)}``), largest first.
    """

    def __init__(self, roots: Callable[[], Mapping[str, int]], interval: float = 1.0) -> None:
        self.roots = roots
        self.interval = interval
        self.peak_bytes = 0
        self.peak_breakdown: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _sample(self) -> dict[str, tuple[int, int]]:
        import psutil

        seen: set[int] = set()
        trees: dict[str, tuple[int, int]] = {}
        for name, pid in [*self.roots().items(), ("driver", psutil.Process().pid)]:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = count = 0
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
                count += 1
            trees[name] = (total, count)
        return trees

    def _record(self) -> None:
        trees = self._sample()
        total = sum(size for size, _ in trees.values())
        if total > self.peak_bytes:
            self.peak_bytes = total
            self.peak_breakdown = dict(sorted(trees.items(), key=lambda item: -item[1][0]))

    def breakdown_gib(self) -> dict[str, dict[str, float | int]]:
        """The peak's breakdown as JSON: ``{name: {"gib": ..., "processes": ...}}``."""
        return {
            name: {"gib": round(size / 2**30, 3), "processes": count}
            for name, (size, count) in self.peak_breakdown.items()
        }

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def __enter__(self) -> MemorySampler:
        self._record()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Replay:
    """Drive the replay of a use case's periods on a running stack.

    :param client: an ``AirflowClient`` on the stack's REST API.
    :param lake: the use case's ``LakeHook`` (its root: ``config.lake_url(usecase)``).
    :param usecase: the use case (``airflow_mlops.usecase.config.load``).
    :param airflow_url: the Airflow UI's URL (links to runs).
    :param corrupt: period -> a kind of the use case's ``CORRUPTIONS``: that period first lands broken
        (quarantined), then corrected.
    :param traffic_batch_size: requests per ``/predict_batch`` call; ``traffic_concurrency`` clients.
    :param timeout: seconds any one wait may take before the replay stops with a ``ReplayError``.
    :param log: where progress lines go.
    """

    def __init__(
        self,
        client: Any,
        lake: Any,
        usecase: UseCase,
        *,
        airflow_url: str,
        corrupt: dict[str, str] | None = None,
        traffic_batch_size: int = 250,
        traffic_concurrency: int = 2,
        timeout: float = 900.0,
        log: Callable[[str], None] = print,
    ) -> None:
        from airflow_mlops.assets import assets_for
        from airflow_mlops.usecase import config

        self.client = client
        self.lake = lake
        self.usecase = usecase
        self.airflow_url = airflow_url
        self.corrupt = dict(corrupt or {})
        self.traffic_batch_size = traffic_batch_size
        self.traffic_concurrency = traffic_concurrency
        self.timeout = timeout
        self.log = log
        self.assets = assets_for(usecase.name, config.lake_url(usecase))
        self.dags = {stage: usecase.dag_id(stage) for stage in DAG_STAGES}
        self.metric = live_metric(usecase.task)
        self._training_before: set[str] = set()
        self._prompted: set[str] = set()  # training runs whose approval prompt was printed

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

    def _wait_progress(self, what: str, probe: Callable[[], tuple[bool, int]], poll: float = 2.0) -> None:
        """Until ``probe`` says done; it also says how much is done, and the timeout runs from the last progress
        (a backfill of hundreds of batches may take longer than any one step, but never stalls that long)."""
        deadline, seen = time.monotonic() + self.timeout, -1
        while True:
            done, progress = probe()
            if done:
                return
            if progress != seen:
                deadline, seen = time.monotonic() + self.timeout, progress
            if time.monotonic() > deadline:
                raise ReplayError(f"{what}: no progress for {self.timeout:.0f} s ({progress} done)")
            time.sleep(poll)

    def _runs(self, dag_id: str, run_types: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        runs = self.client.runs(dag_id)
        return [r for r in runs if run_types is None or r.get("run_type") in run_types]

    def _run_ids(self, dag_id: str) -> set[str]:
        return {r["dag_run_id"] for r in self.client.runs(dag_id)}

    def _wait_new_run(
        self, dag_id: str, before: set[str], what: str, run_types: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        """The newest run of ``dag_id`` not in ``before`` (of ``run_types``), once every such run finished."""

        def probe() -> dict[str, Any] | None:
            new = [r for r in self._runs(dag_id, run_types) if r["dag_run_id"] not in before]
            if dag_id == self.dags["training"]:
                self._approval_prompt(dag_id, [r for r in new if r["state"] == "running"])
            done = [r for r in new if r["state"] in ("success", "failed")]
            if new and len(done) == len(new):
                return sorted(done, key=lambda r: r.get("run_after") or r.get("queued_at") or "")[-1]
            return None

        return self._wait(what, probe)

    def _wait_idle(self, dag_id: str, run_types: tuple[str, ...] | None = None) -> None:
        """Until no run of ``dag_id`` (of ``run_types``) is queued or running."""
        self._wait(
            f"{dag_id} to be idle",
            lambda: not any(r["state"] in ("queued", "running") for r in self._runs(dag_id, run_types)),
        )

    def _xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        value = self.client.xcom(dag_id, run_id, task_id, key)
        if isinstance(value, str) and value[:1] in "{[":
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def _approval_prompt(self, dag_id: str, running: list[dict[str, Any]]) -> None:
        """A training run waiting for a person (``approval: manual``): print once what to click or curl."""
        for run in running:
            run_id = run["dag_run_id"]
            if run_id in self._prompted:
                continue
            for pending in self.client.pending_approvals(dag_id, run_id):
                self._prompted.add(run_id)
                self.log(approval_prompt(self.airflow_url, dag_id, run_id, pending["task_instance"]["task_id"]))

    def run_link(self, dag_id: str, run_id: str) -> str:
        """The Airflow UI's page of a run."""
        return f"{self.airflow_url}/dags/{dag_id}/runs/{run_id}"

    # -- one step --------------------------------------------------------------------------------------------
    def run_period(self, period: str) -> PeriodRow:
        """Replay one period (land, validate, features, traffic, outcomes, monitoring, retrain); what happened.

        :param period: the period, of the use case's kind.
        :raises ReplayError: a step did not happen within the timeout, or a monitoring run failed.
        """
        return self.run_step([period])

    def run_step(self, periods: list[str], *, backfill: bool = False) -> PeriodRow:
        """Replay a step of one or more periods landed at once: land them and ring once, validate, build their
        features in one run, send their requests, announce their outcomes in one event, monitor, retrain if asked.

        :param periods: the step's periods, in order, of the use case's kind.
        :param backfill: the replay's first step of many periods (only labels the log).
        :raises ReplayError: a step did not happen within the timeout, or a monitoring run failed.
        """
        periods = list(periods)
        if not periods:
            raise ValueError("a replay step needs at least one period")
        row = PeriodRow(period=periods[-1], periods=periods if len(periods) > 1 else [], live_metric=self.metric)
        kind = self.usecase.source.period
        self.log(
            f"== {self.usecase.name} {row.label}"
            + (f" ({len(periods)} {kind}s at once{': the backfill' if backfill else ''})" if len(periods) > 1 else "")
        )
        features_before = self._features_event_ids()
        validated = self._land_and_validate(row, hold_features=len(periods) > 1)
        if not validated:
            return row
        self._features(row, validated, held=len(periods) > 1, before=features_before)
        self._traffic(row, validated)
        self._monitoring(row, validated)
        self._training(row)
        self.log(
            f"   champion after {row.label}: v{row.champion_version or '-'}"
            + (
                f" (gate {row.gate}; promoted v{row.promoted})"
                if row.promoted
                else f" (gate {row.gate})"
                if row.gate
                else ""
            )
        )
        return row

    def _land_and_validate(self, row: PeriodRow, *, hold_features: bool = False) -> list[str]:
        """Step 1: land every period of the step (a corrupted delivery first, where asked), ring once, wait for
        every batch to be validated or quarantined; re-send the broken ones corrected (ring again). Returns the
        step's validated periods (a period still quarantined at the end is left out).

        :param row: the step's row (filled in: rows, batch, validation, quarantined, data docs).
        :param hold_features: pause the features DAG first (released by :meth:`_features`).
        """
        from airflow_mlops_dev import replay

        periods, ingest = row.covered, self.dags["ingest_validate"]
        single = len(periods) == 1
        # Scheduled (catch-up) runs of periods with nothing landed are not waited for: they skip on their own.
        triggered = ("asset_triggered", "manual")
        started = time.monotonic()
        if hold_features:
            self.client.pause(self.dags["features"])
        attempts = {p: ([self.corrupt[p]] if p in self.corrupt else []) + [None] for p in periods}
        rows: dict[str, int] = {}
        validated: dict[str, dict[str, Any]] = {}
        resent: list[str] = []
        final_quarantine: list[str] = []
        todo = list(periods)
        while todo:
            landed: dict[str, tuple[str, str | None]] = {}
            for period in todo:
                kind = attempts[period].pop(0)
                marker = replay.land(
                    period, corrupt=kind, ring=False, lake_root=self.lake.root_url, usecase=self.usecase
                )
                digest = batch_hash({name: rec["sha256"] for name, rec in marker["files"].items()})
                primary = marker["files"].get(self.usecase.source.primary) or {}
                rows[period] = int(primary.get("rows") or 0)
                landed[period] = (digest, kind)
                if single or kind:
                    self.log(
                        f"   landed {period}{' (' + kind + ')' if kind else ''}: {rows[period]} rows of "
                        f"{self.usecase.source.primary}, batch {digest[:12]}"
                    )
            if not single and len(landed) > 1:
                self.log(
                    f"   landed {len(landed)} {self.usecase.source.period}s {span(list(landed))}: "
                    f"{sum(rows[p] for p in landed)} rows of {self.usecase.source.primary}; one landing flag"
                )
            replay.ring_flag(self.usecase, lake_root=self.lake.root_url, note=span(list(landed)))
            row.batch = landed[periods[-1]][0][:12] if periods[-1] in landed else row.batch
            outcomes = self._wait_outcomes(landed, span(list(landed)))
            todo, quarantined = [], False
            for period, (digest, kind) in landed.items():
                outcome = outcomes[period]
                if outcome["status"] == "QUARANTINED":
                    row.quarantined.append(
                        {
                            "period": period,
                            "batch": digest[:12],
                            "kind": kind,
                            "failed": outcome["failed"],
                            "report": outcome["report"],
                        }
                    )
                    self.log(
                        f"   QUARANTINED{'' if single else ' ' + period} ({', '.join(outcome['failed'])}); "
                        f"report {outcome['report']}"
                    )
                    quarantined = True
                    if attempts[period]:
                        todo.append(period)
                        resent.append(period)
                    else:
                        final_quarantine.append(period)
                else:
                    validated[period] = outcome
                    row.data_docs = outcome["report"]
                    if single:
                        self.log(f"   validated: {outcome['where']}")
            if quarantined:  # the failed run ends before anything is re-sent
                self._wait_idle(ingest, triggered)
        ok = [p for p in periods if p in validated]
        row.rows = sum(rows.values())
        if single:
            row.validation = (
                "QUARANTINED" if final_quarantine else "validated" + (" (after a re-send)" if resent else "")
            )
        else:
            row.validation = (
                (f"{len(ok)} validated" if len(ok) == len(periods) else f"{len(ok)}/{len(periods)} validated")
                + (f", {len(resent)} re-sent" if resent else "")
                + (f", {len(final_quarantine)} QUARANTINED" if final_quarantine else "")
            )
            self.log(
                f"   {row.validation} in {time.monotonic() - started:.0f} s: "
                f"{self.lake.url(self.lake.path('validated'))}"
            )
        row.seconds["validate"] = round(time.monotonic() - started, 1)
        if not ok and hold_features:
            self.client.unpause(self.dags["features"])
        return ok

    def _wait_outcomes(self, landed: dict[str, tuple[str, str | None]], what: str) -> dict[str, dict[str, Any]]:
        """Until every landed batch is validated or quarantined; their outcomes by period."""
        outcomes: dict[str, dict[str, Any]] = {}

        def probe() -> tuple[bool, int]:
            for period, (digest, _) in landed.items():
                if period not in outcomes:
                    outcome = batch_outcome(self.lake, period, digest)
                    if outcome["status"] != "pending":
                        outcomes[period] = outcome
            return len(outcomes) == len(landed), len(outcomes)

        self._wait_progress(f"the batches of {what} to be validated or quarantined", probe)
        return outcomes

    def _features(self, row: PeriodRow, validated: list[str], *, held: bool = False, before: set | None = None) -> None:
        """Step 2: release the features DAG if it was held (one ``validated_batch`` event: one run builds every
        validated period without features), wait for a new features Asset event covering the last validated
        period, then for the features DAG to be idle; every validated period must then have its features.

        :param row: the step's row.
        :param validated: the step's validated periods.
        :param held: the features DAG was paused while the batches validated.
        :param before: the ids of the features events before the step (an older event never counts).
        """
        started = time.monotonic()
        last, dag_id = validated[-1], self.dags["features"]
        if held:
            # Every validation is done (the ingest runs too): one run then sees every validated period.
            self._wait_idle(self.dags["ingest_validate"])
            self.client.unpause(dag_id)
            extra = {"period": last, "periods": validated, "source": "replay", "note": "released after a bulk load"}
            if self.usecase.source.period == "month":
                extra["month"] = last
            self.client.post_asset_event(self.assets.validated_batch.uri, extra)
            self.log(
                f"   {dag_id} released: one validated_batch event for {span(validated)} "
                "(one run builds every validated period without features)"
            )
        self._wait(f"features of {last}", lambda: self._features_event(last, before))
        self._wait_idle(dag_id)
        missing = [p for p in validated if self.lake.read_manifest(self.lake.path("features", p)) is None]
        if missing:
            raise ReplayError(
                f"no features for {len(missing)} validated {self.usecase.source.period}s ({span(missing)}): "
                f"see the runs of {dag_id} ({self.airflow_url}/dags/{dag_id})"
            )
        row.seconds["features"] = round(time.monotonic() - started, 1)
        if len(validated) > 1:
            self.log(
                f"   features of {len(validated)} {self.usecase.source.period}s in {row.seconds['features']:.0f} s"
            )

    def _traffic(self, row: PeriodRow, validated: list[str] | None = None) -> None:
        """Step 3: the step's requests (each validated period's ``demo_requests``) through the serving endpoint, if
        a champion serves."""
        import pandas as pd

        from airflow_mlops.hooks.bentoml_process import embedded_token
        from airflow_mlops.operators.features import read_validated
        from airflow_mlops_dev import replay_source, traffic

        started = time.monotonic()
        validated = validated or row.covered
        url = self._serving_url()
        if not replay_source.has_demo_requests(self.usecase):
            self.log(f"   {self.usecase.module_file.name} has no demo_requests: no live traffic")
        elif url is None:
            self.log(f"   no champion serving yet: no traffic answered for {row.label}")
        else:
            parts = []
            for period in validated:
                frames = read_validated(self.lake, period, self.usecase.source.files)
                if frames is None:
                    raise ReplayError(f"validated/{period}/ disappeared before its traffic was sent")
                parts.append(replay_source.demo_requests(self.usecase, period, frames))
            requests = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
            bodies = traffic.requests_from_frame(requests, self.usecase)
            result = traffic.send(
                url,
                bodies,
                period=row.label,
                batch_size=self.traffic_batch_size,
                concurrency=self.traffic_concurrency,
                log=self.log,
            )
            row.traffic = result.to_dict()
            row.served_by = ",".join(sorted(result.versions)) or None
            if result.failed:
                raise ReplayError(f"traffic of {row.label}: {result.failed} predictions failed: {result.errors[:3]}")
            # The outcomes are announced once every answered prediction is in the log monitoring reads.
            traffic.wait_logged(url, timeout=self.timeout, token=embedded_token())
        row.seconds["traffic"] = round(time.monotonic() - started, 1)

    def _monitoring(self, row: PeriodRow, validated: list[str] | None = None) -> None:
        """Step 4: the upstream announces the step's outcomes in one event; wait for the monitoring run and read
        its decision."""
        started = time.monotonic()
        validated = validated or row.covered
        period, dag_id = validated[-1], self.dags["monitoring"]
        monthly = self.usecase.source.period == "month"
        before = self._run_ids(dag_id)
        extra: dict[str, Any] = {"period": period, **({"month": period} if monthly else {}), "source": "replay"}
        if len(validated) > 1:
            extra["periods"] = list(validated)
            if monthly:
                extra["months"] = list(validated)
        self.client.post_asset_event(self.assets.outcomes.uri, extra)
        run = self._wait_new_run(dag_id, before, f"the monitoring run of {row.label}", ("asset_triggered",))
        row.runs["monitoring"] = run["dag_run_id"]
        if run["state"] != "success":
            raise ReplayError(f"monitoring of {row.label} failed: {self.run_link(dag_id, run['dag_run_id'])}")
        self._read_monitoring(row, run["dag_run_id"])
        row.seconds["monitoring"] = round(time.monotonic() - started, 1)

    def _training(self, row: PeriodRow) -> None:
        """Step 5: the retrain the policy asked for, if any; then the champion."""
        started = time.monotonic()
        dag_id = self.dags["training"]
        if row.retrain:
            run = self._wait_new_run(
                dag_id, self._training_before, f"the training run asked for by {row.label}", ("asset_triggered",)
            )
            row.runs["training"] = run["dag_run_id"]
            self._read_training(row, run)
        self._training_before = self._run_ids(dag_id)
        row.champion_version = self._champion()
        row.seconds["training"] = round(time.monotonic() - started, 1)

    def prepare(self) -> None:
        """Wait until the use case's DAGs are parsed, then unpause them (the ingest DAG catches up its scheduled
        periods: nothing waits in landing/ yet, so those runs skip).

        :raises ReplayError: a DAG is not parsed within the timeout (the message says where the use case must be,
            and which DAG files failed to import).
        """
        from airflow_mlops.usecase import config

        for dag_id in self.dags.values():
            try:
                self.client.wait_dag(dag_id, timeout=min(self.timeout, 300.0))
            except TimeoutError as err:
                errors = self._import_errors()
                raise ReplayError(
                    f"{err}: Airflow has no DAG {dag_id}. The DAG factory (dags/mlops.py) builds the DAGs of the use "
                    f"cases under MLOPS_PROJECTS ({config.projects_dir()}); {self.usecase.folder} must be one of them "
                    "(a stack started with another MLOPS_PROJECTS: make down, then run again)."
                    + (f" Import errors: {errors}" if errors else "")
                ) from err
        self._training_before = self._run_ids(self.dags["training"])
        for dag_id in self.dags.values():
            self.client.unpause(dag_id)

    def _import_errors(self) -> str:
        """Airflow's DAG import errors, shortened (empty if none or unreadable)."""
        try:
            found = self.client.http.get("/api/v2/importErrors", params={"limit": 5}).json().get("import_errors")
        except Exception:  # noqa: BLE001 - only a hint for an error message
            return ""
        return " | ".join(f"{e.get('filename')}: {str(e.get('stack_trace') or '')[-400:]}" for e in found or [])

    # -- reading what happened -------------------------------------------------------------------------------
    def _features_event_ids(self) -> set:
        """The ids of the newest features Asset events (what a step must not mistake for its own)."""
        try:
            return {e.get("id") for e in self.client.asset_events(self.assets.features.uri, limit=20)}
        except LookupError:  # the Asset is not registered yet: no event either
            return set()

    def _features_event(self, period: str, before: set | None = None) -> dict[str, Any] | None:
        """The newest features Asset event that covers ``period`` (and is not one of ``before``)."""
        for event in self.client.asset_events(self.assets.features.uri, limit=20):
            if before and event.get("id") in before:
                continue
            if event_covers(event.get("extra") or {}, period):
                return event
        return None

    def _serving_url(self) -> str | None:
        """The use case's embedded endpoint, if it runs and is ready (a champion is loaded)."""
        import httpx

        from airflow_mlops_dev.serving import embedded

        process = embedded(self.usecase.folder)
        if process.pid() is None:
            return None
        try:
            ready = httpx.get(f"{process.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            ready = False
        return process.url if ready else None

    def _read_monitoring(self, row: PeriodRow, run_id: str) -> None:
        dag_id = self.dags["monitoring"]
        drift = self._xcom(dag_id, run_id, "drift_check") or {}
        perf = self._xcom(dag_id, run_id, "performance_check") or {}
        decision = self._xcom(dag_id, run_id, "retraining_policy", "decision") or {}
        row.drift_share = drift.get("drift_share")
        row.drifted_columns = list(drift.get("drifted_columns") or [])
        row.prediction_drift = drift.get("prediction_drift")
        row.live_value = (perf.get("live") or {}).get(self.metric)
        row.holdout_value = (perf.get("holdout") or {}).get(self.metric)
        row.live_rows = perf.get("rows")
        for kind, summary in (("drift", drift), ("performance", perf)):
            if summary.get("report_key"):
                row.reports[kind] = summary["report_key"]
        row.retrain = decision.get("retrain")
        row.policy_reasons = list(decision.get("reasons") or [])
        row.suppressed_by = decision.get("suppressed_by")
        verdict = "RETRAIN" if row.retrain else f"no retrain ({row.suppressed_by or 'no trigger'})"
        label = METRIC_LABELS.get(self.metric, self.metric)
        periods = perf.get("periods") or drift.get("periods") or []
        window = f" over {span(periods)}" if len(periods) > 1 else ""
        judged = "" if perf.get("enough_rows", True) or not perf else ", too few to judge"
        self.log(
            f"   monitoring{window}: drift share {_fmt(row.drift_share)}, prediction drift "
            f"{_fmt(row.prediction_drift, 3)}, live {label} {_fmt(row.live_value, 3)} on {row.live_rows or 0} "
            f"rows{judged} (hold-out {_fmt(row.holdout_value, 3)}); policy: {verdict}"
        )
        for reason in row.policy_reasons[:4]:
            self.log(f"     - {reason}")

    def _read_training(self, row: PeriodRow, run: dict[str, Any]) -> None:
        dag_id, run_id = self.dags["training"], run["dag_run_id"]
        gate = self._xcom(dag_id, run_id, "model_gate") or {}
        row.gate = "approved" if gate.get("approved") else "rejected" if gate else None
        row.gate_reasons = list(gate.get("reasons") or [])[:6]
        instances = self.client.task_instances(dag_id, run_id)
        states = {t["task_id"]: t["state"] for t in instances}
        if run["state"] != "success":
            # A candidate refused by infra validation (or a broken step) is an outcome of the loop: the champion
            # stays, the reasons go in the table, and the replay goes on.
            failed = [t for t in instances if t["state"] == "failed"]
            reasons = []
            for task in failed:
                lines = self.client.task_log(dag_id, run_id, task["task_id"], task.get("try_number") or 1)
                said = [ln for ln in lines if "infra validation" in ln or "Error" in ln or "failed" in ln.lower()]
                reasons.append(f"{task['task_id']} failed: {(said or lines or ['(no log)'])[-1][:300]}")
            what = "infra failed" if "infra_validate" in {t["task_id"] for t in failed} else "run failed"
            row.gate = f"{row.gate or '?'}, {what}"
            row.gate_reasons = reasons + row.gate_reasons
            self.log(f"   training run failed: {self.run_link(dag_id, run_id)}")
        if states.get("promote_model") == "success":
            promoted = self._xcom(dag_id, run_id, "promote_model")
            row.promoted = str(promoted["to_version"]) if isinstance(promoted, dict) else None
        self.log(f"   training: gate {row.gate}; tasks {states}")
        for reason in row.gate_reasons[:4]:
            self.log(f"     - {reason}")

    def _champion(self) -> str | None:
        from airflow_mlops.hooks.mlflow_registry import MlflowHook

        alias = str((self.usecase.serving.get("model") or {}).get("alias") or "champion")
        return MlflowHook().alias_version(self.usecase.registered_model_name, alias)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
