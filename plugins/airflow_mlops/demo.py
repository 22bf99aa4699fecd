"""The main job: replay 2013 month by month through the whole MLOps loop (embedded profile by default;
``MLOPS_PROFILE=production`` runs it on the production profile's native services).

    python -m airflow_mlops.demo                                   # 2013-01..2013-12, May first lands broken
    python -m airflow_mlops.demo --months 2013-01:2013-03 --corrupt   # three months, no broken delivery
    python -m airflow_mlops.demo --corrupt 2013-07:out_of_range       # another broken month
    python -m airflow_mlops.demo --fresh                              # forget an earlier replay and start over

It starts the embedded Airflow (and leaves it running for you to explore; ``make down`` stops it), unpauses the
pipeline, and for each month lands the batch, waits for validation and features, sends the month's flights
through the serving endpoint, announces the outcomes and waits for monitoring and any retrain (see
``airflow_mlops.replay_loop``). It prints a month-by-month table and writes ``reports/replay/`` in the lake:
``summary.json``, ``replay.png`` and ``index.html`` (linking every report). Re-running continues an interrupted
replay, or prints the finished one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from airflow_mlops.core.batches import parse_month

DEFAULT_CORRUPT = "2013-05:duplicate_keys"


def month_range(specs: list[str]) -> list[str]:
    """``['2013-01:2013-03', '2013-07']`` -> every month named, in order, without duplicates."""
    out: list[str] = []
    for spec in specs:
        first, _, last = spec.partition(":")
        start, end = parse_month(first), parse_month(last or first)
        year, mon = (int(p) for p in start.split("-"))
        while f"{year:04d}-{mon:02d}" <= end:
            month = f"{year:04d}-{mon:02d}"
            if month not in out:
                out.append(month)
            year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return sorted(out)


def parse_corrupt(specs: list[str]) -> dict[str, str]:
    """``['2013-05', '2013-07:out_of_range']`` -> month -> corruption kind (default duplicate_keys)."""
    from airflow_mlops.core.replay_source import CORRUPTIONS

    out = {}
    for spec in specs:
        month, _, kind = spec.partition(":")
        kind = kind or "duplicate_keys"
        if kind not in CORRUPTIONS:
            raise SystemExit(f"unknown corruption {kind!r}; kinds: {', '.join(sorted(CORRUPTIONS))}")
        out[parse_month(month)] = kind
    return out


def _previous(lake) -> dict | None:
    from airflow_mlops.replay_loop import REPLAY_ZONE

    path = lake.path(REPLAY_ZONE, "summary.json")
    return json.loads(path.read_bytes()) if path.exists() else None


def _print_outputs(stack, lake, keys: dict[str, str]) -> None:
    from airflow_mlops.links import report_url

    print()
    for name, key in keys.items():
        print(f"{name:13s} {lake.url(lake.path(key))}")
    print(f"in the UI:    {stack.url}{report_url(keys['index.html'])}  (log in first)")


def main(argv: list[str] | None = None) -> int:
    from airflow_mlops import settings
    from airflow_mlops.devstack import ADMIN_USER, AirflowClient, Stack, profile_env
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.replay_loop import MemorySampler, MonthRow, ReplayError, YearReplay
    from airflow_mlops.replay_report import stage_totals, table_lines, write_outputs
    from airflow_mlops.serving_process import embedded

    parser = argparse.ArgumentParser(prog="python -m airflow_mlops.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--months", nargs="+", default=["2013-01:2013-12"], metavar="MONTH[:LAST]", help="months to replay, in order"
    )
    parser.add_argument(
        "--corrupt",
        nargs="*",
        default=[DEFAULT_CORRUPT],
        metavar="MONTH[:KIND]",
        help="months that first land broken (quarantined, then re-sent corrected); none with an empty list. "
        "Kinds: python -m airflow_mlops.replay corruptions",
    )
    parser.add_argument("--fresh", action="store_true", help="stop everything and delete MLOPS_HOME first")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds any one step may take")
    parser.add_argument("--traffic-concurrency", type=int, default=2, help="clients sending the month's flights")
    args = parser.parse_args(argv)
    months = month_range(args.months)
    corrupt = {m: k for m, k in parse_corrupt(args.corrupt).items() if m in months}

    stack = Stack.from_env()
    if args.fresh:
        print(f"== --fresh: stopping everything and deleting {stack.home}", flush=True)
        embedded().stop()
        stack.down()
        shutil.rmtree(stack.home, ignore_errors=True)
    # This driver reads the registry and the lake as the tasks do: on the production profile, the MLflow server.
    os.environ.update(profile_env())
    lake = LakeHook()
    previous = _previous(lake) if lake.path().exists() else None
    done = [MonthRow.from_dict(m) for m in (previous or {}).get("months", [])]
    done_months = [r.month for r in done]
    if done_months and done_months != months[: len(done_months)]:
        print(
            f"error: {stack.home} already holds a replay of {', '.join(done_months)}; it cannot continue as "
            f"{', '.join(months)}. Start over with --fresh (or make clean).",
            file=sys.stderr,
        )
        return 2
    todo = months[len(done_months) :]

    print(f"== starting Airflow ({stack.profile} profile) in {stack.home} ...", flush=True)
    stack.up()
    client = AirflowClient(stack.url, ADMIN_USER, stack.admin_password())
    replay = YearReplay(
        client,
        lake,
        airflow_url=stack.url,
        corrupt=corrupt,
        traffic_concurrency=args.traffic_concurrency,
        timeout=args.timeout,
        log=lambda line: print(line, flush=True),
    )
    replay.prepare()
    if done_months:
        print(f"== {', '.join(done_months)} already replayed in {stack.home}; continuing with {todo or 'nothing'}")

    rows = list(done)
    meta = dict((previous or {}).get("meta") or {})
    wall = float(meta.get("wall_seconds", 0.0))
    peak = float(meta.get("peak_rss_gib", 0.0))
    started = time.monotonic()
    status = 0

    def roots() -> list[int]:
        serving = embedded().pid()
        return [*stack.pids().values(), *([serving] if serving else [])]

    with MemorySampler(roots) as memory:
        try:
            for month in todo:
                rows.append(replay.run_month(month))
                meta.update(
                    airflow_url=stack.url,
                    months_label=f"{rows[0].month}..{rows[-1].month}",
                    wall_seconds=round(wall + time.monotonic() - started, 1),
                    peak_rss_gib=round(max(peak, memory.peak_bytes / 2**30), 2),
                    mlops_home=str(settings.mlops_home()),
                )
                keys = write_outputs(lake, rows, meta)  # after every month: an interrupted replay resumes here
        except (ReplayError, TimeoutError) as err:
            print(f"\nerror: {err}\nlogs: {stack.home / 'logs'}", file=sys.stderr)
            status = 1
    if not rows:
        return status
    meta.update(peak_rss_gib=round(max(peak, memory.peak_bytes / 2**30), 2), airflow_url=stack.url)
    keys = write_outputs(lake, rows, meta)

    print()
    print("\n".join(table_lines(rows)))
    totals = stage_totals(rows)
    print(
        f"\n{len(rows)} months in {meta.get('wall_seconds', 0):.0f} s (per stage: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in totals.items())
        + f"); peak memory of Airflow + serving + this driver {meta['peak_rss_gib']:.2f} GiB"
    )
    _print_outputs(stack, lake, keys)
    serving = embedded()
    if serving.pid():
        print(
            f"\nThe champion answers on {serving.url}:\n  curl -s -X POST {serving.url}/predict -H 'Content-Type: "
            'application/json\' -d \'{"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH", '
            '"scheduled_departure": "2013-12-31T05:15:00", "tailnum": "N14228"}\''
        )
    print(f"Airflow UI: {stack.url}  login {ADMIN_USER} / {stack.admin_password()}   stop everything: make down")
    return status


if __name__ == "__main__":
    sys.exit(main())
