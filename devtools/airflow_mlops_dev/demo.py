"""The main job: replay a use case period by period through the whole MLOps loop (embedded profile by default;
``MLOPS_PROFILE=production`` runs it on the production profile's native services).

    python -m airflow_mlops_dev.demo --usecase examples/<name>                    # its schedule (daily: a window)
    python -m airflow_mlops_dev.demo --usecase examples/<name> --periods 2013-01:2013-03 --corrupt   # no broken batch
    python -m airflow_mlops_dev.demo --usecase examples/<name> --corrupt 2013-07:out_of_range       # that one instead
    python -m airflow_mlops_dev.demo --usecase examples/<name> --fresh         # forget an earlier replay, start over

``make demo`` replays the reference example (the Makefile's ``EXAMPLE``); ``make demo EXAMPLE=<name>`` the example
``examples/<name>``. Without ``--usecase``: ``MLOPS_USECASE``, else the first use case of the projects folder.

The periods: ``--periods`` (``FIRST:LAST`` ranges and lists; ``--months`` is the same), by default the use case's
demo range (its module's ``DEMO_PERIODS``, else ``source.schedule`` first..last) — for a daily use case its first
days (``replay_source.default_periods``: the days its policy waits for a first model, then six weeks), since a
range of years would take hours. One period first lands broken (quarantined, then re-sent corrected): by default
the first of the use case's ``CORRUPTIONS`` a third of the way into the live steps; ``--corrupt PERIOD[:KIND]``
picks others, ``--corrupt`` alone none; a use case without ``CORRUPTIONS`` has none.

Backfill, then live: ``--backfill N`` lands the first N periods at once (default for a daily use case: the days its
first model needs, ``monitoring.policy.bootstrap`` + 1; for a monthly one none): one ingest run validates them all,
one features run builds them, one outcomes event asks the policy for the first model. Then live steps of ``--step
N`` periods (default 7 days, or 1 month): land them, ring once, wait for features, send their requests, announce
their outcomes in one event, wait for monitoring and any retrain.

It starts the embedded Airflow (and leaves it running for you to explore; ``make down`` stops it), unpauses the
use case's DAGs (``<name>_ingest_validate``, ...) and replays the steps (see ``airflow_mlops_dev.replay_loop``). It
prints a step-by-step table with the task's live metric (classification: ROC AUC, regression: RMSE) and writes
``reports/replay/`` in the use case's lake: ``summary.json``, ``replay.png`` and ``index.html`` (linking every
report). Re-running continues an interrupted replay, or prints the finished one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_mlops.usecase.config import UseCase


@dataclass(frozen=True)
class DemoPlan:
    """What a replay will do: the use case, its periods, the broken deliveries, how the periods are grouped (the
    first ``backfill`` at once, then ``step`` at a time), and a note on the defaults."""

    usecase: UseCase
    periods: list[str]
    corrupt: dict[str, str]
    note: str | None = None
    backfill: int = 0
    step: int = 1

    @property
    def steps(self) -> list[list[str]]:
        """The periods of each step, in order (``replay_source.plan_steps``)."""
        from airflow_mlops_dev import replay_source

        return replay_source.plan_steps(self.periods, self.backfill, self.step)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m airflow_mlops_dev.demo``."""
    out = argparse.ArgumentParser(prog="python -m airflow_mlops_dev.demo", description=__doc__.split("\n")[0])
    out.add_argument("--usecase", help="the use-case folder (default: MLOPS_USECASE, else the first use case)")
    out.add_argument(
        "--periods",
        "--months",
        dest="periods",
        nargs="+",
        metavar="FIRST[:LAST]",
        help="periods to replay, in order: ranges and lists (default: source.schedule; daily: its first days)",
    )
    out.add_argument(
        "--corrupt",
        nargs="*",
        default=None,
        metavar="PERIOD[:KIND]",
        help="periods that first land broken (quarantined, then re-sent corrected); none with an empty list. "
        "Kinds: python -m airflow_mlops_dev.replay corruptions --usecase <folder>",
    )
    out.add_argument(
        "--backfill",
        type=int,
        default=None,
        metavar="N",
        help="land the first N periods at once (default: daily, the days of the policy's first model; monthly: 0)",
    )
    out.add_argument(
        "--step",
        type=int,
        default=None,
        metavar="N",
        help="periods per live step: landed at once, one outcomes event (default: 7 days, or 1 month)",
    )
    out.add_argument("--fresh", action="store_true", help="stop everything and delete MLOPS_HOME first")
    out.add_argument("--timeout", type=float, default=900.0, help="seconds any one step may take")
    out.add_argument("--traffic-concurrency", type=int, default=2, help="clients sending the period's requests")
    return out


def plan(args: argparse.Namespace) -> DemoPlan:
    """The use case, periods and corruptions the arguments ask for (see the module's docstring).

    :param args: parsed by :func:`parser`.
    :raises ValueError: a bad use case, period or corruption (the message says which).
    """
    from airflow_mlops_dev import replay_source

    usecase = replay_source.load_usecase(args.usecase)
    kind = usecase.source.period
    note = None
    if args.periods:
        periods = replay_source.period_range(args.periods, kind)
    else:
        periods, note = replay_source.default_periods(usecase)
    backfill = replay_source.default_backfill(usecase, periods) if args.backfill is None else args.backfill
    step = replay_source.default_step(usecase) if args.step is None else args.step
    replay_source.plan_steps(periods, backfill, step)  # checks both
    if args.corrupt == []:  # --corrupt alone: no broken delivery (the use case's CORRUPTIONS are not read)
        corrupt = {}
    elif args.corrupt is None:
        corrupt = replay_source.default_corrupt(periods, replay_source.corruptions(usecase), backfill)
    else:
        corrupt = replay_source.parse_corrupt(args.corrupt, replay_source.corruptions(usecase), kind)
    chosen = {p: k for p, k in corrupt.items() if p in periods}
    return DemoPlan(usecase, periods, chosen, note, min(backfill, len(periods)), step)


def remaining_steps(demo: DemoPlan, done: list[str]) -> list[list[str]]:
    """The steps of ``demo`` still to replay after the periods ``done`` (a prefix of its periods): whole steps
    replayed are left out; what is left of a step interrupted part-way is a step of its own.

    :param demo: the plan.
    :param done: the periods already replayed, in order.
    """
    finished = set(done)
    out = []
    for step in demo.steps:
        left = [p for p in step if p not in finished]
        if left:
            out.append(left)
    return out


def _previous(lake: Any) -> dict | None:
    from airflow_mlops_dev.replay_loop import REPLAY_ZONE

    path = lake.path(REPLAY_ZONE, "summary.json")
    return json.loads(path.read_bytes()) if path.exists() else None


def _print_outputs(stack: Any, lake: Any, usecase: UseCase, keys: dict[str, str]) -> None:
    from airflow_mlops.links import report_url

    print()
    for name, key in keys.items():
        print(f"{name:13s} {lake.url(lake.path(key))}")
    # The lake reports app serves MLOPS_LAKE; a use case's lake is its <name>/ folder.
    page = report_url(f"{usecase.name}/{keys['index.html']}")
    print(f"in the UI:    {stack.url}{page}  (log in first)")


def _example_request(usecase: UseCase) -> str:
    """A canned request of the use case as JSON, for the ``curl`` hint (empty if it has none)."""
    from airflow_mlops.core.serving_schemas import ServingSettings

    try:
        return json.dumps(ServingSettings.from_usecase(usecase).canned()["single"][0])
    except (ValueError, KeyError, IndexError):
        return ""


def _projects_env(usecase: UseCase) -> None:
    """Make the use case one of the deployed ones (the DAG factory reads ``MLOPS_PROJECTS``) for the stack started
    here, when it lives elsewhere."""
    from airflow_mlops.usecase import config

    if usecase.folder.resolve() not in {p.resolve() for p in config.discover()}:
        os.environ["MLOPS_PROJECTS"] = str(usecase.folder.parent)
        print(f"== MLOPS_PROJECTS={usecase.folder.parent} (the use case's parent folder)", flush=True)


def _stop_serving() -> None:
    """Stop the embedded serving process of every use case under the projects folder."""
    from airflow_mlops.usecase import config
    from airflow_mlops_dev.serving import embedded

    for folder in config.discover():
        try:
            embedded(folder).stop()
        except ValueError:  # a use case whose config does not load has no server
            continue


def main(argv: list[str] | None = None) -> int:
    """Run the replay (see the module's docstring); returns the exit status."""
    from airflow_mlops import settings
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase import config
    from airflow_mlops_dev.devstack import ADMIN_USER, AirflowClient, Stack, profile_env
    from airflow_mlops_dev.replay_loop import MemorySampler, PeriodRow, Replay, ReplayError, span
    from airflow_mlops_dev.replay_report import metric_label, stage_totals, table_lines, write_outputs
    from airflow_mlops_dev.serving import embedded

    args = parser().parse_args(argv)
    try:
        demo = plan(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    usecase, periods = demo.usecase, demo.periods
    steps = demo.steps
    live = len(steps) - (1 if demo.backfill else 0)
    print(
        f"== {usecase.name}: {len(periods)} {usecase.source.period}s {periods[0]}..{periods[-1]} in {len(steps)} steps"
        + (f" (a backfill of {demo.backfill}, then" if demo.backfill else " (")
        + f" {live} live steps of {demo.step})"
        + (f"; broken deliveries: {', '.join(f'{p} ({k})' for p, k in demo.corrupt.items())}" if demo.corrupt else ""),
        flush=True,
    )
    if demo.note:
        print(f"== {demo.note}", flush=True)
    _projects_env(usecase)

    stack = Stack.from_env()
    if args.fresh:
        print(f"== --fresh: stopping everything and deleting {stack.home}", flush=True)
        _stop_serving()
        stack.down()
        shutil.rmtree(stack.home, ignore_errors=True)
    # This driver reads the registry and the lake as the tasks do: on the production profile, the MLflow server.
    os.environ.update(profile_env())
    lake = LakeHook(root_url=config.lake_url(usecase))
    previous = _previous(lake) if lake.path().exists() else None
    done = [PeriodRow.from_dict(p) for p in (previous or {}).get("periods") or (previous or {}).get("months") or []]
    done_periods = [period for r in done for period in r.covered]
    if done_periods and done_periods != periods[: len(done_periods)]:
        print(
            f"error: {lake.root_url} already holds a replay of {span(done_periods)} ({len(done_periods)} "
            f"{usecase.source.period}s); it cannot continue as {span(periods)} ({len(periods)}). Start over with "
            "--fresh (or make clean).",
            file=sys.stderr,
        )
        return 2
    todo = remaining_steps(demo, done_periods)

    print(f"== starting Airflow ({stack.profile} profile) in {stack.home} ...", flush=True)
    stack.up()
    print(f"   Airflow UI: {stack.url}  login {ADMIN_USER} / {stack.admin_password()}", flush=True)
    client = AirflowClient(stack.url, ADMIN_USER, stack.admin_password())
    replay = Replay(
        client,
        lake,
        usecase,
        airflow_url=stack.url,
        corrupt=demo.corrupt,
        traffic_concurrency=args.traffic_concurrency,
        timeout=args.timeout,
        log=lambda line: print(line, flush=True),
    )
    try:
        replay.prepare()
    except ReplayError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    if done_periods:
        print(
            f"== {span(done_periods)} already replayed in {lake.root_url}; continuing with "
            + (f"{span([p for step in todo for p in step])} ({len(todo)} steps)" if todo else "nothing")
        )

    rows = list(done)
    meta = dict((previous or {}).get("meta") or {})
    meta.update(
        usecase=usecase.name,
        description=usecase.description,
        dags=dict(replay.dags),
        metric=replay.metric,
        airflow_url=stack.url,
    )
    wall = float(meta.get("wall_seconds", 0.0))
    peak = float(meta.get("peak_rss_gib", 0.0))
    started = time.monotonic()
    status = 0
    serving = embedded(usecase.folder)

    def roots() -> dict[str, int]:
        pid = serving.pid()
        return {**stack.pids(), **({"serving": pid} if pid else {})}

    def record_peak() -> None:
        """The peak so far (of this invocation or an earlier one of an interrupted replay) and its breakdown."""
        if memory.peak_bytes / 2**30 >= peak:
            meta.update(peak_rss_gib=round(memory.peak_bytes / 2**30, 2), peak_breakdown=memory.breakdown_gib())

    with MemorySampler(roots) as memory:
        try:
            for step in todo:
                rows.append(replay.run_step(step, backfill=bool(demo.backfill) and step == steps[0]))
                meta.update(
                    periods_label=f"{usecase.name} {rows[0].covered[0]}..{rows[-1].period}",
                    backfill=demo.backfill,
                    step=demo.step,
                    wall_seconds=round(wall + time.monotonic() - started, 1),
                    mlops_home=str(settings.mlops_home()),
                )
                record_peak()
                write_outputs(lake, rows, meta)  # after every period: an interrupted replay resumes here
        except (ReplayError, TimeoutError, ValueError) as err:
            print(f"\nerror: {err}\nlogs: {stack.home / 'logs'}", file=sys.stderr)
            status = 1
    if not rows:
        return status
    record_peak()
    keys = write_outputs(lake, rows, meta)

    print()
    print("\n".join(table_lines(rows, replay.metric)))
    totals = stage_totals(rows)
    print(
        f"\n{sum(len(r.covered) for r in rows)} {usecase.source.period}s in {len(rows)} steps in "
        f"{meta.get('wall_seconds', 0):.0f} s (per stage: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in totals.items())
        + f"); peak memory of Airflow + serving + this driver {meta['peak_rss_gib']:.2f} GiB"
        + f"; live metric: {metric_label(replay.metric)}"
    )
    _print_outputs(stack, lake, usecase, keys)
    if serving.pid():
        example = _example_request(usecase)
        print(f"\nThe champion of {usecase.name} answers on {serving.url}")
        if example:
            print(
                f"  curl -s -X POST {serving.url}/predict -H 'Content-Type: application/json' -d '{{\"rows\": [{example}]}}'"
            )
    print(f"Airflow UI: {stack.url}  login {ADMIN_USER} / {stack.admin_password()}   stop everything: make down")
    return status


if __name__ == "__main__":
    sys.exit(main())
