"""The pipeline configuration in ``include/config/pipeline.yaml`` (light: read by DAG files while parsing)."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from airflow_mlops import settings
from airflow_mlops.core.batches import month_bounds, parse_month


@cache
def load(path: str | None = None) -> dict[str, Any]:
    """The parsed config; ``path`` defaults to ``include/config/pipeline.yaml`` (``MLOPS_CONFIG`` overrides)."""
    import os

    import yaml

    target = Path(path or os.environ.get("MLOPS_CONFIG") or settings.include_dir() / "config" / "pipeline.yaml")
    try:
        data = yaml.safe_load(target.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read the pipeline config {target}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{target} must hold a mapping of sections (ingest, validation, ...)")
    return data


def section(name: str, path: str | None = None) -> dict[str, Any]:
    value = load(path).get(name)
    if not isinstance(value, dict):
        raise ValueError(f"the pipeline config has no '{name}' section")
    return value


def schedule_months(path: str | None = None) -> list[datetime]:
    """The start of every month from ``ingest.schedule_first_month`` to ``schedule_last_month``."""
    ingest = section("ingest", path)
    first, last = parse_month(ingest["schedule_first_month"]), parse_month(ingest["schedule_last_month"])
    if last < first:
        raise ValueError(f"ingest.schedule_last_month {last} is before schedule_first_month {first}")
    starts, month = [], first
    while month <= last:
        start, end = month_bounds(month)
        starts.append(start)
        month = f"{end.year:04d}-{end.month:02d}"
    return starts
