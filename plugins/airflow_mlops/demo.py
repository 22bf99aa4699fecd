"""The main job on the embedded profile: batches land, the real scheduler ingests and validates them.

    python -m airflow_mlops.demo                       # Jan–Mar 2013 plus a broken April
    python -m airflow_mlops.demo --months 2013-01 2013-02 --corrupt 2013-04:out_of_range

It starts the embedded Airflow if it is not running (and leaves it running for you to explore; ``make down``
stops it), lands the batches as an upstream system would, rings the landing flag, unpauses the pipeline and
waits for every batch to be validated or quarantined, then prints a table and where each report is.
"""

from __future__ import annotations

import argparse
import sys
import time

from airflow_mlops.core.batches import batch_hash
from airflow_mlops.devstack import ADMIN_USER, AirflowClient, Stack

INGEST_DAG = "mlops_ingest_validate"


def _outcome(lake, month: str, digest: str) -> dict:
    """What became of one landed batch, read from the lake's manifests."""
    validated = lake.read_manifest(lake.path("validated", month))
    quarantine = lake.path("quarantine", month, digest[:12])
    if validated and validated.get("batch_sha256") == digest:
        suites = validated["validation"]["suites"]
        return {
            "status": "validated",
            "failed": [],
            "where": lake.url(lake.path("validated", month)),
            "report": f"reports/data_docs/{suites[0]['docs_page']}",
        }
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


def main(argv: list[str] | None = None) -> int:
    from airflow_mlops import replay
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.links import report_url

    parser = argparse.ArgumentParser(prog="python -m airflow_mlops.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--months", nargs="+", default=["2013-01", "2013-02", "2013-03"], help="good months to land")
    parser.add_argument(
        "--corrupt",
        nargs="*",
        default=["2013-04:duplicate_keys"],
        metavar="MONTH:KIND",
        help="broken batches to land (kinds: python -m airflow_mlops.replay corruptions)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the pipeline")
    args = parser.parse_args(argv)

    stack = Stack.from_env()
    print(f"== starting the embedded Airflow in {stack.home} ...", flush=True)
    stack.up()
    client = AirflowClient(stack.url, ADMIN_USER, stack.admin_password())
    client.wait_dag(INGEST_DAG)
    lake = LakeHook()

    print("== landing batches as the upstream system would", flush=True)
    landed = []
    batches = [(m, None) for m in args.months] + [tuple(c.split(":", 1)) for c in args.corrupt]
    for month, kind in batches:
        marker = replay.land(month, corrupt=kind, ring=False)
        digest = batch_hash({name: rec["sha256"] for name, rec in marker["files"].items()})
        rows = marker["files"]["flights.csv"]["rows"]
        landed.append((marker["month"], kind, digest, rows))
        print(f"   landed {marker['month']}{' (' + kind + ')' if kind else ''}: {rows} flights, batch {digest[:12]}")
    lake.path("landing", "_READY").write_text(" ".join(m for m, *_ in landed))  # ring once, after the data

    client.unpause(INGEST_DAG)
    print(f"== waiting for the scheduler (UI: {stack.url}/dags/{INGEST_DAG}) ...", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        outcomes = {(m, d): _outcome(lake, m, d) for m, _, d, _ in landed}
        if all(o["status"] != "pending" for o in outcomes.values()):
            break
        time.sleep(3)
    else:
        print(
            f"error: not every batch was processed within {args.timeout:.0f} s; see {stack.home / 'logs'}",
            file=sys.stderr,
        )
        return 1
    client.wait_idle(INGEST_DAG, timeout=args.timeout)

    print()
    print(f"{'month':8s} {'flights':>8s}  {'batch':12s}  {'result':11s}  failing expectations")
    for month, _kind, digest, rows in landed:
        o = outcomes[(month, digest)]
        print(f"{month:8s} {rows:8d}  {digest[:12]}  {o['status']:11s}  {', '.join(o['failed']) or '-'}")
    print()
    for month, _kind, digest, _ in landed:
        o = outcomes[(month, digest)]
        print(f"{month} {o['status'].lower()}: {o['where']}")
        if o["report"]:
            print(f"    Data Docs: {stack.url}{report_url(o['report'])}")
    print("\nA quarantined batch fails its validation task on purpose: nothing downstream of it runs.")
    print(f"Airflow UI: {stack.url}  login {ADMIN_USER} / {stack.admin_password()}   stop it with: make down")
    return 0 if all(o["status"] != "pending" for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
