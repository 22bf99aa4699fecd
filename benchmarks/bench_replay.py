"""Full-year replay: wall time and peak memory of the main job, with a per-stage breakdown (issue 7).

    .venv/bin/python benchmarks/bench_replay.py [--months 2013-01:2013-12] [--keep]

Runs ``python -m airflow_mlops.demo`` in a fresh temporary MLOPS_HOME on free ports (the embedded Airflow, the
serving process, everything real), then prints the wall time, the seconds per stage summed over the months,
and the peak resident memory of Airflow + serving + the driver, against the targets (<= 10 minutes, <= 4 GiB).
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

TARGET_SECONDS = 600.0
TARGET_GIB = 4.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--months", default="2013-01:2013-12")
    parser.add_argument("--keep", action="store_true", help="keep the temporary MLOPS_HOME (and its stack) running")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    for name in [k for k in os.environ if k.startswith(("AIRFLOW", "MLFLOW"))]:
        del os.environ[name]
    os.environ.update(
        MLOPS_HOME=str(home),
        MLOPS_LAKE=(home / "lake").as_uri(),
        MLOPS_AIRFLOW_PORT=str(_free_port()),
        MLOPS_SERVING_PORT=str(_free_port()),
    )
    from airflow_mlops import demo
    from airflow_mlops.devstack import Stack
    from airflow_mlops.serving_process import embedded

    started = time.perf_counter()
    status = 1
    try:
        status = demo.main(["--months", args.months, "--corrupt"])
        total = time.perf_counter() - started
        summary = json.loads((home / "lake" / "reports" / "replay" / "summary.json").read_text())
    finally:
        if not args.keep:
            embedded().stop()
            Stack.from_env().down()
            if status == 0:
                shutil.rmtree(home, ignore_errors=True)
            else:
                print(f"kept {home} (logs, lake) to see what failed", file=sys.stderr)
    meta = summary["meta"]
    months = summary["months"]
    print()
    print(f"replay of {len(months)} months ({args.months}), exit status {status}")
    print(
        f"  wall time of the months    {meta['wall_seconds']:7.0f} s   (target <= {TARGET_SECONDS:.0f} s: "
        f"{meta['wall_seconds'] / TARGET_SECONDS:.2f}x of budget)"
    )
    print(f"  incl. stack start/prepare  {total:7.0f} s")
    print(
        f"  peak RSS (Airflow+serving) {meta['peak_rss_gib']:7.2f} GiB (target <= {TARGET_GIB:.0f} GiB: "
        f"{meta['peak_rss_gib'] / TARGET_GIB:.2f}x of budget)"
    )
    print("  per stage (sum over months):")
    for stage, seconds in meta["stage_seconds"].items():
        share = seconds / meta["wall_seconds"] if meta["wall_seconds"] else 0.0
        print(f"    {stage:12s} {seconds:7.0f} s  {share:5.1%}")
    retrains = sum(1 for m in months if m.get("retrain"))
    promotions = sum(1 for m in months if m.get("promoted"))
    print(f"  retrains {retrains}, promotions {promotions}, final champion v{months[-1].get('champion_version')}")
    return status


if __name__ == "__main__":
    sys.exit(main())
