"""``python -m airflow_mlops``: the use-case command line.

* ``check <folder> [<folder> ...]`` validates use-case folders (``airflow_mlops.usecase.checks``): prints
  ``ok <name>`` for a valid one, else every problem as ``<folder>/<file>: <key>: why``; exits 1 on any problem.
* ``new <name> [--into DIR]`` copies the use-case template into ``DIR/<name>`` (default DIR: ``MLOPS_PROJECTS``,
  else ``./examples``) with its ``name`` set, refuses an existing folder, and says what to edit next.

Light: the checks import what they need when they run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "usecase" / "template"
_NAME_LINE = re.compile(r"^name:.*$", re.MULTILINE)


def _check(folders: Sequence[str]) -> int:
    """Check each folder; print the result. :param folders: use-case folders. :return: the exit code."""
    from airflow_mlops.usecase.checks import check
    from airflow_mlops.usecase.config import load

    failed = 0
    for folder in folders:
        problems = check(folder)
        if not problems:
            print(f"ok {load(folder).name}")
            continue
        failed += 1
        where = Path(folder).parent if Path(folder).is_file() else Path(folder)
        for problem in problems:
            # "<file>: ..." relative to the folder: prefix the folder so that the line names the file to open.
            first = problem.split(":", 1)[0]
            print(str(where / problem) if first and not Path(first).is_absolute() else problem)
    return 1 if failed else 0


def _projects_dir() -> Path:
    return Path(os.environ.get("MLOPS_PROJECTS") or "examples")


def _new(name: str, into: str | None) -> int:
    """Copy the template into ``into/name``. :param name: the use case's name. :param into: the parent folder.

    :return: the exit code.
    """
    from airflow_mlops.usecase.config import NAME

    if not NAME.match(name):
        print(f"error: {name!r} is not a use-case name: it must match {NAME.pattern}", file=sys.stderr)
        return 2
    parent = Path(into) if into else _projects_dir()
    target = parent / name
    if target.exists():
        print(f"error: {target} already exists; choose another name or remove it first", file=sys.stderr)
        return 1
    parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(TEMPLATE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    config = target / "mlops.yaml"
    text, count = _NAME_LINE.subn(f"name: {name}", config.read_text(), count=1)
    if count != 1:
        print(f"error: the template's {config.name} has no name line", file=sys.stderr)
        return 1
    config.write_text(text)
    print(
        f"created {target} (the template: next-day sales per store from daily batches of sales.csv)\n"
        "\n"
        "Edit, in this order:\n"
        f"  1. {target / 'mlops.yaml'}: source (your files, period, event time), label, features.views "
        "(key, timestamp, fields), model.features, gate, serving.request\n"
        f"  2. {target / 'usecase.py'}: build_features, label_rows, entity_keys (and outcomes, demo_batches)\n"
        f"  3. {target / 'expectations'}/: one Great Expectations suite per batch file (+ training_set.json)\n"
        f"  4. {target / 'serving' / 'canned_requests.json'}: requests valid for serving.request\n"
        "\n"
        "Then check it (each problem names the file and the key):\n"
        f"  python -m airflow_mlops check {target}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. :param argv: the arguments (default ``sys.argv[1:]``). :return: the exit code."""
    parser = argparse.ArgumentParser(prog="python -m airflow_mlops", description="airflow-mlops use cases")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate use-case folders (mlops.yaml, usecase.py, suites, ...)")
    check.add_argument("folders", nargs="+", metavar="folder", help="a use-case folder (holding mlops.yaml)")
    new = commands.add_parser("new", help="create a use-case folder from the template")
    new.add_argument("name", help="the use case's name ([a-z][a-z0-9_]*): prefixes its DAGs, Assets, lake, model")
    new.add_argument("--into", metavar="DIR", help="the parent folder (default: MLOPS_PROJECTS, else ./examples)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.folders)
    return _new(args.name, args.into)


if __name__ == "__main__":
    sys.exit(main())
