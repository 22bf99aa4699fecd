"""Run an Airflow component with the stack's heavy libraries imported first, so the tasks it forks inherit them.

    python -m airflow_mlops.preload scheduler        # what `make up` runs for the embedded scheduler

The LocalExecutor forks its workers from the scheduler and each task from a worker (the Celery worker forks
its pool the same way), so every task otherwise imports pandas, scikit-learn, MLflow, Great Expectations, Feast
and Evidently again: 5-30 s per task on a small, busy host, more than most tasks' own work. Imported once here,
they are shared copy-on-write by every forked task. Only modules are imported (no clients, threads or
connections are created), which keeps the fork safe.

``MLOPS_PRELOAD_MODULES`` (comma-separated) replaces the default list; empty disables the preload. DAG parsing
is untouched: the DAG processor never preloads, and DAG files still must not import these modules.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import warnings

DEFAULT_MODULES = (
    "pandas",
    "pyarrow.parquet",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.metrics",
    "mlflow",
    "mlflow.sklearn",
    "great_expectations",
    "feast",
    "evidently",
    "duckdb",
    "httpx",
)


def modules() -> list[str]:
    value = os.environ.get("MLOPS_PRELOAD_MODULES")
    if value is None:
        return list(DEFAULT_MODULES)
    return [m.strip() for m in value.split(",") if m.strip()]


def preload(names: list[str] | None = None) -> dict[str, float]:
    """Import ``names``; returns seconds per module. A module that fails to import is reported, not fatal."""
    took: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules() if names is None else names:
            started = time.perf_counter()
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001 - a missing optional module only costs the preload
                print(f"airflow_mlops.preload: cannot import {name}: {err}", file=sys.stderr, flush=True)
                continue
            took[name] = time.perf_counter() - started
    return took


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m airflow_mlops.preload <airflow command ...>", file=sys.stderr)
        return 2
    took = preload()
    if took:
        total = sum(took.values())
        print(
            f"airflow_mlops.preload: {len(took)} modules in {total:.1f} s before `airflow {' '.join(args)}`", flush=True
        )
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *args]
    return airflow_main() or 0


if __name__ == "__main__":
    sys.exit(main())
