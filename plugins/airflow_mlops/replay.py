"""Land the real 2013 flights month by month, as an upstream system would.

    python -m airflow_mlops.replay land 2013-03                  # a good batch
    python -m airflow_mlops.replay land 2013-04 --corrupt duplicate_keys
    python -m airflow_mlops.replay corruptions                   # list the kinds of broken batches

A batch lands as ``landing/<month>/flights.csv`` and ``weather.csv``, then its ``_SUCCESS`` marker (with the
sha256 of each file), then the ``landing/_READY`` flag that rings the landing watcher.
"""

from __future__ import annotations

import argparse
import json
import sys

from airflow_mlops.core.batches import SUCCESS_MARKER, count_csv_rows, parse_month


def land(month: str, corrupt: str | None = None, ring: bool = True, lake_root: str | None = None) -> dict:
    """Land one month in ``landing/``; returns what was written (uris, hashes, rows)."""
    from airflow_mlops.assets import LANDING_FLAG
    from airflow_mlops.core.replay_source import batch_files
    from airflow_mlops.hooks.lake import LakeHook

    month = parse_month(month)
    lake = LakeHook(root_url=lake_root)
    lake.ensure_zones()
    folder = lake.path("landing", month)
    records = {
        name: lake.write_file(folder / name, data, rows=count_csv_rows(data))
        for name, data in batch_files(month, corrupt).items()
    }
    marker = {"month": month, "corrupt": corrupt, "files": {n: r.to_dict() for n, r in records.items()}}
    lake.write_file(folder / SUCCESS_MARKER, json.dumps(marker, indent=2).encode(), rows=len(records))
    if ring:
        lake.path("landing", LANDING_FLAG).write_text(month)
    return marker


def main(argv: list[str] | None = None) -> int:
    from airflow_mlops.core.replay_source import CORRUPTIONS

    parser = argparse.ArgumentParser(prog="python -m airflow_mlops.replay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    land_cmd = sub.add_parser("land", help="land one month of 2013 in the lake's landing zone")
    land_cmd.add_argument("month", help="YYYY-MM, e.g. 2013-03")
    land_cmd.add_argument("--corrupt", choices=sorted(CORRUPTIONS), help="land a realistically broken batch")
    land_cmd.add_argument("--no-ring", action="store_true", help="do not write the landing/_READY flag")
    land_cmd.add_argument("--lake", help="lake root URL (default: MLOPS_LAKE or $MLOPS_HOME/lake)")
    sub.add_parser("corruptions", help="list the kinds of broken batches")
    args = parser.parse_args(argv)

    if args.command == "corruptions":
        for name, make in sorted(CORRUPTIONS.items()):
            print(f"{name:16s} {make.__doc__}")
        return 0
    try:
        marker = land(args.month, args.corrupt, ring=not args.no_ring, lake_root=args.lake)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for rec in marker["files"].values():
        print(f"landed {rec['uri']}  rows={rec['rows']}  sha256={rec['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
