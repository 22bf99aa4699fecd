"""Full replay of a use case: wall time and peak memory of the main job, with a per-stage breakdown (issue 7).

    .venv/bin/python benchmarks/bench_replay.py [--usecase examples/flight_delay] [--periods 2013-01:2013-12] [--keep]

Runs ``python -m airflow_mlops_dev.demo`` in a fresh temporary MLOPS_HOME on free ports (the embedded Airflow, the
use case's serving process, everything real), then prints the wall time, the seconds per stage summed over the
periods, and the peak resident memory of Airflow + serving + the driver, against the targets (<= 10 minutes,
<= 4 GiB, set for the flights year). Without ``--periods``: the demo's default (the use case's schedule; a window of
a daily one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 600.0
TARGET_GIB = 4.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--usecase", default=str(ROOT / "examples" / "flight_delay"), help="the use-case folder")
    parser.add_argument("--periods", "--months", dest="periods", default=None, help="FIRST:LAST (default: the demo's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary MLOPS_HOME (and its stack) running")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    for name in [k for k in os.environ if k.startswith(("AIRFLOW", "MLFLOW"))]:
        del os.environ[name]
    from airflow_mlops.usecase import config

    usecase = config.load(args.usecase)
    os.environ.update(
        MLOPS_HOME=str(home),
        MLOPS_LAKE=(home / "lake").as_uri(),
        MLOPS_AIRFLOW_PORT=str(_free_port()),
        **{f"MLOPS_SERVING_PORT__{usecase.name.upper()}": str(_free_port())},
    )
    from airflow_mlops_dev import demo
    from airflow_mlops_dev.devstack import Stack
    from airflow_mlops_dev.serving import embedded

    started = time.perf_counter()
    status = 1
    try:
        status = demo.main(
            ["--usecase", str(usecase.folder), "--corrupt", *(["--periods", args.periods] if args.periods else [])]
        )
        total = time.perf_counter() - started
        summary = json.loads((home / "lake" / usecase.name / "reports" / "replay" / "summary.json").read_text())
    finally:
        if not args.keep:
            embedded(usecase.folder).stop()
            Stack.from_env().down()
            if status == 0:
                shutil.rmtree(home, ignore_errors=True)
            else:
                print(f"kept {home} (logs, lake) to see what failed", file=sys.stderr)
    meta = summary["meta"]
    periods = summary["periods"]
    print()
    print(f"replay of {usecase.name}: {len(periods)} periods ({meta.get('periods_label')}), exit status {status}")
    print(
        f"  wall time of the periods   {meta['wall_seconds']:7.0f} s   (target <= {TARGET_SECONDS:.0f} s: "
        f"{meta['wall_seconds'] / TARGET_SECONDS:.2f}x of budget)"
    )
    print(f"  incl. stack start/prepare  {total:7.0f} s")
    print(
        f"  peak RSS (Airflow+serving) {meta['peak_rss_gib']:7.2f} GiB (target <= {TARGET_GIB:.0f} GiB: "
        f"{meta['peak_rss_gib'] / TARGET_GIB:.2f}x of budget)"
    )
    print("  per stage (sum over periods):")
    for stage, seconds in meta["stage_seconds"].items():
        share = seconds / meta["wall_seconds"] if meta["wall_seconds"] else 0.0
        print(f"    {stage:12s} {seconds:7.0f} s  {share:5.1%}")
    retrains = sum(1 for p in periods if p.get("retrain"))
    promotions = sum(1 for p in periods if p.get("promoted"))
    print(f"  retrains {retrains}, promotions {promotions}, final champion v{periods[-1].get('champion_version')}")
    return status


if __name__ == "__main__":
    sys.exit(main())
