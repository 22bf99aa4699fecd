"""The training stage on both profiles: where the production profile's extra time goes (issue 23, point 6).

    .venv/bin/python benchmarks/bench_profiles.py [--periods 2013-01:2013-02] [--profiles embedded production]

For each profile, in a fresh temporary MLOPS_HOME on free ports, runs the main job
(``python -m airflow_mlops_dev.demo``) over the periods (default January and February: February bootstraps the
first model, so one training run goes through train → evaluate → gate → register → infra-validate → promote →
deploy). The production profile runs natively against this machine's PostgreSQL (127.0.0.1:5432) and Redis
(127.0.0.1:6379), with databases and a Redis index of its own, dropped afterwards. Then prints, per task of that
training run, the time from queued to started (the executor's pickup: LocalExecutor or a Celery worker) and the
task's duration, for each profile, and the ratios; the training stage's wall time; the peak memory (PSS) of the
stack's processes (Airflow components, the Celery worker, the MLflow server, serving, the driver; PostgreSQL and
Redis are the machine's services and not counted) against the 4 GiB target, with each process tree's share at that
peak; and the target of the training stage (production ≤ 1.5× embedded).

Each profile runs in a subprocess of its own (``--one PROFILE --json FILE``), so no state carries over.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The tests' helpers for this machine's PostgreSQL and Redis (a database of one's own, a Redis index claimed).
sys.path.insert(0, str(ROOT / "tests"))
from production_fixtures import PG_URL, REDIS_URL, pg_admin, redis_database  # noqa: E402

from airflow_mlops.hooks.bentoml_process import free_port  # noqa: E402

TARGET_RATIO = 1.5
TARGET_GIB = 4.0


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_one(profile: str, periods: str, out: Path) -> int:
    """The main job on ``profile``; the training run's task timings and the stack's figures to ``out`` (JSON)."""
    home = Path(tempfile.mkdtemp(prefix=f"bench-{profile}-"))
    for name in [k for k in os.environ if k.startswith(("AIRFLOW", "MLFLOW", "MLOPS_"))]:
        del os.environ[name]
    folder = home / "projects" / "flight_delay"
    shutil.copytree(ROOT / "examples" / "flight_delay", folder, ignore=shutil.ignore_patterns("__pycache__"))
    os.environ.update(
        MLOPS_HOME=str(home),
        MLOPS_LAKE=(home / "lake").as_uri(),
        MLOPS_PROJECTS=str(folder.parent),
        MLOPS_AIRFLOW_PORT=str(free_port()),
        MLOPS_SERVING_PORT__FLIGHT_DELAY=str(free_port()),
    )
    databases: dict[str, str] = {}
    cleanup = contextlib.ExitStack()
    if profile == "production":
        suffix = uuid.uuid4().hex[:10]
        databases = {"MLOPS_AIRFLOW_DB": f"mlops_bench_af_{suffix}", "MLOPS_MLFLOW_DB": f"mlops_bench_mlf_{suffix}"}
        redis_db = cleanup.enter_context(redis_database())
        os.environ.update(
            MLOPS_PROFILE="production",
            MLOPS_POSTGRES_URL=PG_URL,
            MLOPS_REDIS_URL=REDIS_URL,
            MLOPS_CELERY_REDIS_DB=str(redis_db),
            MLOPS_FEAST_REDIS_DB=str(redis_db),
            MLOPS_MLFLOW_PORT=str(free_port()),
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT=str(free_port()),
            **databases,
        )
    from airflow_mlops_dev import demo
    from airflow_mlops_dev.devstack import ADMIN_USER, AirflowClient, Stack
    from airflow_mlops_dev.serving import embedded

    stack = Stack.from_env()
    status = 1
    try:
        status = demo.main(["--usecase", str(folder), "--periods", periods, "--corrupt"])
        summary = json.loads((home / "lake" / "flight_delay" / "reports" / "replay" / "summary.json").read_text())
        client = AirflowClient(stack.url, ADMIN_USER, stack.admin_password())
        dag_id = summary["meta"]["dags"]["training"]
        runs = [p["runs"]["training"] for p in summary["periods"] if (p.get("runs") or {}).get("training")]
        tasks = []
        if runs:
            for ti in client.task_instances(dag_id, runs[0]):
                tasks.append(
                    {
                        "task_id": ti["task_id"],
                        "state": ti["state"],
                        "pickup_s": _seconds(ti.get("queued_when"), ti.get("start_date")),
                        "run_s": ti.get("duration"),
                        "start": ti.get("start_date"),
                        "end": ti.get("end_date"),
                    }
                )
        tasks.sort(key=lambda t: t["start"] or "")
        run_span = _seconds(min(t["start"] for t in tasks if t["start"]), max(t["end"] for t in tasks if t["end"]))
        out.write_text(
            json.dumps(
                {
                    "profile": profile,
                    "status": status,
                    "stage_seconds": summary["meta"]["stage_seconds"],
                    "wall_seconds": summary["meta"]["wall_seconds"],
                    "peak_rss_gib": summary["meta"]["peak_rss_gib"],
                    "peak_breakdown": summary["meta"].get("peak_breakdown", {}),
                    "training_run_span_s": run_span,
                    "tasks": tasks,
                },
                indent=2,
            )
        )
    finally:
        embedded(folder).stop()
        stack.down()
        for database in databases.values():
            pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        cleanup.close()  # the Redis index flushed
        shutil.rmtree(home, ignore_errors=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--periods", default="2013-01:2013-02", help="FIRST:LAST (default: the first model's months)")
    parser.add_argument("--profiles", nargs="+", default=["embedded", "production"], choices=["embedded", "production"])
    parser.add_argument("--one", choices=["embedded", "production"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args.one, args.periods, args.json)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for profile in args.profiles:
            out = Path(tmp) / f"{profile}.json"
            command = [sys.executable, __file__, "--one", profile, "--periods", args.periods, "--json", str(out)]
            done = subprocess.run(command, check=False)
            if done.returncode != 0 or not out.is_file():
                print(f"{profile}: the main job failed (exit {done.returncode})", file=sys.stderr)
                return 1
            results[profile] = json.loads(out.read_text())

    print()
    print(f"training stage of the first model ({args.periods}), per profile")
    for profile, result in results.items():
        print(
            f"  {profile:10s} training stage {result['stage_seconds']['training']:6.0f} s  (run span "
            f"{result['training_run_span_s']:.0f} s)  peak memory (PSS) {result['peak_rss_gib']:.2f} GiB "
            f"(target <= {TARGET_GIB:.0f} GiB: {result['peak_rss_gib'] / TARGET_GIB:.2f}x)"
        )
        parts = result["peak_breakdown"]
        print(
            "    at the peak (PSS by process tree): "
            + ", ".join(f"{name} {part['gib']:.2f} GiB ({part['processes']} proc.)" for name, part in parts.items())
        )
    if len(results) == 2:
        emb, prod = results["embedded"], results["production"]
        ratio = prod["stage_seconds"]["training"] / emb["stage_seconds"]["training"]
        print(f"  production / embedded training stage: {ratio:.2f}x (target <= {TARGET_RATIO}x)")
        print()
        print(f"  {'task':28s} {'pickup emb':>10s} {'pickup prod':>11s} {'run emb':>8s} {'run prod':>9s} {'ratio':>6s}")
        by_task = {t["task_id"]: t for t in prod["tasks"]}
        for task in emb["tasks"]:
            other = by_task.get(task["task_id"], {})

            def fmt(value):
                return f"{value:.1f}" if isinstance(value, (int, float)) else "-"

            run_ratio = f"{other['run_s'] / task['run_s']:.2f}" if task.get("run_s") and other.get("run_s") else "-"
            print(
                f"  {task['task_id']:28s} {fmt(task['pickup_s']):>10s} {fmt(other.get('pickup_s')):>11s} "
                f"{fmt(task['run_s']):>8s} {fmt(other.get('run_s')):>9s} {run_ratio:>6s}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
