"""Land a use case's demo batches period by period, as an upstream system would.

    python -m airflow_mlops_dev.replay land 2013-03 --usecase examples/<name>        # a good batch
    python -m airflow_mlops_dev.replay land 2013-04 --usecase examples/<name> --corrupt <kind>
    python -m airflow_mlops_dev.replay corruptions --usecase examples/<name>         # the use case's broken batches
    python -m airflow_mlops_dev.replay land 2012-01-02 --no-ring ...; python -m airflow_mlops_dev.replay ring ...  # one run

The batch is the use case's ``demo_batches(period)`` (``airflow_mlops_dev.replay_source``). It lands in the use
case's lake as ``<lake>/<name>/landing/<period>/<file>`` for every file of ``source.files``, then its ``_SUCCESS``
marker (with the sha256 and rows of each file), then the ``landing/_READY`` flag that rings the use case's landing
watcher (which starts ``<name>_ingest_validate``; it takes every batch waiting, so several periods landed with
``--no-ring`` and then one ``ring`` make one run). Without ``--usecase``: ``MLOPS_USECASE``, else the first use
case of the projects folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_mlops.core.batches import SUCCESS_MARKER, count_rows

if TYPE_CHECKING:
    from airflow_mlops.usecase.config import UseCase


def land(
    period: str,
    corrupt: str | None = None,
    ring: bool = True,
    lake_root: str | None = None,
    usecase: UseCase | str | Path | None = None,
) -> dict:
    """Land one period of the use case in its ``landing/``; returns the marker written (files with uri, sha256, rows).

    :param period: the period, of the use case's kind (``YYYY-MM`` or ``YYYY-MM-DD``).
    :param corrupt: a kind of the use case's ``CORRUPTIONS``: land that broken delivery instead.
    :param ring: write the ``landing/_READY`` flag (the landing watcher then starts an ingest run).
    :param lake_root: the use case's lake root; default ``<MLOPS_LAKE>/<name>`` (``config.lake_url``).
    :param usecase: the use case or its folder (default ``replay_source.default_usecase``).
    :raises ValueError: a bad period, a period outside the demo data, an unknown corruption.
    """
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase import config
    from airflow_mlops_dev import replay_source

    uc = replay_source.load_usecase(usecase)
    period = replay_source.check_period(uc, period)
    files = replay_source.batch_files(period, corrupt, uc)
    lake = LakeHook(root_url=lake_root or config.lake_url(uc))
    lake.ensure_zones()
    folder = lake.path("landing", period)
    records = {name: lake.write_file(folder / name, data, rows=count_rows(name, data)) for name, data in files.items()}
    marker = {
        "usecase": uc.name,
        "period": period,
        **({"month": period} if uc.source.period == "month" else {}),
        "corrupt": corrupt,
        "files": {name: record.to_dict() for name, record in records.items()},
    }
    lake.write_file(folder / SUCCESS_MARKER, json.dumps(marker, indent=2).encode(), rows=len(records))
    if ring:
        ring_flag(uc, lake_root=lake.root_url, note=period)
    return marker


def ring_flag(usecase: UseCase | str | Path | None = None, lake_root: str | None = None, note: str = "") -> None:
    """Write the use case's ``landing/_READY`` flag: its landing watcher starts one ``<name>_ingest_validate`` run,
    which takes every complete batch waiting in ``landing/`` (land several with ``ring=False``, then ring once).

    :param usecase: the use case or its folder (default ``replay_source.default_usecase``).
    :param lake_root: the use case's lake root; default ``<MLOPS_LAKE>/<name>``.
    :param note: the flag's content (the watcher logs it), e.g. the periods landed.
    """
    from airflow_mlops.assets import LANDING_FLAG
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase import config
    from airflow_mlops_dev import replay_source

    uc = replay_source.load_usecase(usecase)
    lake = LakeHook(root_url=lake_root or config.lake_url(uc))
    flag = lake.path("landing", LANDING_FLAG)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text(note or "ready")


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module's docstring); returns the exit status."""
    from airflow_mlops_dev import replay_source

    parser = argparse.ArgumentParser(prog="python -m airflow_mlops_dev.replay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    land_cmd = sub.add_parser("land", help="land one period of a use case's demo data in its lake's landing zone")
    land_cmd.add_argument("period", help="YYYY-MM (monthly use case) or YYYY-MM-DD (daily)")
    land_cmd.add_argument("--corrupt", metavar="KIND", help="land a realistically broken batch (see: corruptions)")
    land_cmd.add_argument("--no-ring", action="store_true", help="do not write the landing/_READY flag")
    land_cmd.add_argument("--lake", help="the use case's lake root URL (default: MLOPS_LAKE/<name>)")
    kinds_cmd = sub.add_parser("corruptions", help="list the use case's kinds of broken batches")
    ring_cmd = sub.add_parser("ring", help="write landing/_READY: one ingest run takes every batch waiting")
    ring_cmd.add_argument("--lake", help="the use case's lake root URL (default: MLOPS_LAKE/<name>)")
    for cmd in (land_cmd, kinds_cmd, ring_cmd):
        cmd.add_argument("--usecase", help="the use-case folder (default: MLOPS_USECASE, else the first use case)")
    args = parser.parse_args(argv)

    try:
        usecase = replay_source.load_usecase(args.usecase)
        kinds = replay_source.corruptions(usecase)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "ring":
        ring_flag(usecase, lake_root=args.lake, note="ring")
        print(f"rang the landing flag of {usecase.name}")
        return 0
    if args.command == "corruptions":
        if not kinds:
            print(f"{usecase.name} declares no CORRUPTIONS")
        for name, make in kinds.items():
            print(f"{name:22s} {(make.__doc__ or '').strip().splitlines()[0] if make.__doc__ else ''}")
        return 0
    if args.corrupt is not None and args.corrupt not in kinds:
        land_cmd.error(f"unknown corruption {args.corrupt!r} for {usecase.name}; kinds: {', '.join(kinds) or 'none'}")
    try:
        marker = land(args.period, args.corrupt, ring=not args.no_ring, lake_root=args.lake, usecase=usecase)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for record in marker["files"].values():
        print(f"landed {record['uri']}  rows={record['rows']}  sha256={record['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
