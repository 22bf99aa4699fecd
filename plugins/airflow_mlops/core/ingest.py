"""Ingest: batches landed in ``landing/<period>/`` moved into ``raw/<period>/<sha12>/``, content-addressed.

Works through a ``LakeHook`` (any object with its API: ``path``, ``url``, ``read_manifest``, ``write_file``,
``write_manifest``, ``remove_tree``). A batch is complete once its ``_SUCCESS`` marker exists; if the marker lists
sha256 per file, the bytes are checked against it. Re-ingesting the same bytes is a no-op; the landed copy is
removed only after ``raw/`` is committed, and a run records the periods it takes (``claim_periods``, in
``landing/_claims/``) before moving any, so a retry of a try killed after the move still returns those batches:
a crash at any point is repaired by a retry.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.batches import (
    SUCCESS_MARKER,
    Batch,
    FileRecord,
    batch_hash,
    check_kind,
    count_rows,
    newest_committed,
    parse_period,
    period_kind,
    sha256_bytes,
)
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)


class BatchMissing(LookupError):
    """A batch asked for by name is not in the lake, or a batch marked complete lacks a file."""


def batch_files_of(files: Sequence[str] | str, primary: str | None) -> tuple[list[str], str]:
    """The batch's file names and its primary file (default: the first), checked; rendered templates accepted.

    :param files: the file names (a list, or its JSON / comma-separated rendering).
    :param primary: the file whose rows and hash identify the batch; blank: the first of ``files``.
    :raises ValueError: no files, a duplicate, a name that is not a plain file name, or an unknown primary file.
    """
    if isinstance(files, str):
        text = files.strip()
        names = json.loads(text) if text.startswith("[") else text.split(",")
    else:
        names = list(files)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError("no batch files configured: pass files=[...] (e.g. the use case's source.files)")
    if len(set(names)) != len(names):
        raise ValueError(f"batch files listed twice: {names}")
    if any("/" in n or n.startswith(".") or n == SUCCESS_MARKER for n in names):
        raise ValueError(f"batch files must be plain file names in landing/<period>/, not {names}")
    chosen = names[0] if is_blank(primary) else str(primary).strip()
    if chosen not in names:
        raise ValueError(f"the primary file {chosen!r} is not one of the batch files {names}")
    return names, chosen


def ingest_settings(
    files: Sequence[str] | str | None, primary: str | None, kind: str | None, source: Any = None
) -> tuple[list[str], str, str]:
    """The files, primary file and period kind to ingest: the arguments, else the use case's ``source``.

    :param files: the files of a batch (see ``batch_files_of``); empty: ``source.files``.
    :param primary: the primary file; empty: ``source.primary``, else the first file.
    :param kind: ``month`` or ``day``; empty: ``source.period``, else ``month``.
    :param source: the use case's ``source`` settings, or None.
    :raises ValueError: see ``batch_files_of``; an unknown period kind.
    """
    if source is not None:
        files = files or list(source.files)
        primary = primary or source.primary
        kind = kind or source.period
    names, chosen = batch_files_of(files or [], primary)
    return names, chosen, check_kind(kind or "month")


def requested_period(period: str | None, month: str | None) -> str | None:
    """The period a run names: ``period``, else the former ``month`` argument, else None (rendered blanks too)."""
    for value in (period, month):
        if not is_blank(value):
            return str(value)
    return None


def pending_periods(lake: Any, kind: str) -> list[str]:
    """The periods of ``kind`` with a complete batch (its ``_SUCCESS`` marker) in ``landing/``, oldest first."""
    landing = lake.path("landing")
    periods = []
    for entry in landing.iterdir() if landing.exists() else []:
        if (entry / SUCCESS_MARKER).exists():
            try:
                period = parse_period(entry.name)
            except ValueError:
                log.warning("ignoring %s: not a YYYY-MM or YYYY-MM-DD batch folder", entry)
                continue
            if period_kind(period) != kind:
                log.warning("ignoring %s: this pipeline's batches are of one %s each", entry, kind)
                continue
            periods.append(period)
    return sorted(periods)


#: Where runs record the periods they take (a folder of ``landing/`` with no ``_SUCCESS``: never a batch).
CLAIMS = "_claims"
#: Claims older than this are removed by later runs (a retry comes within hours).
CLAIM_RETENTION = timedelta(days=7)


def claim_periods(lake: Any, run_key: str, periods: list[str], *, now: datetime | None = None) -> list[str]:
    """Record that the run ``run_key`` takes ``periods``; returns the periods an earlier try of it took.

    A try killed after moving a batch to ``raw/`` but before returning it leaves ``landing/`` empty; its retry
    gets those periods here and returns their committed batches instead of finding nothing to ingest.

    :param run_key: the run's identity, the same for each of its tries (e.g. ``dag_id/run_id``).
    :param periods: the periods this try found waiting in ``landing/``.
    """
    now = now or datetime.now(UTC)
    folder = lake.path("landing", CLAIMS)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', run_key)}.json"
    earlier = json.loads(path.read_bytes()).get("periods", []) if path.exists() else []
    taken = sorted(set(earlier) | set(periods))
    if taken != earlier:
        body = {"run": run_key, "periods": taken, "claimed_at": now.isoformat()}
        lake.write_file(path, json.dumps(body).encode(), rows=len(taken))
    for other in folder.iterdir() if folder.exists() else []:
        if other.name.endswith(".json") and other.name != path.name:
            try:
                stale = datetime.fromisoformat(json.loads(other.read_bytes())["claimed_at"]) < now - CLAIM_RETENTION
            except (ValueError, KeyError, TypeError, FileNotFoundError):
                continue
            if stale:
                other.unlink(missing_ok=True)
    return sorted(set(earlier) - set(periods))


def ingest_period(lake: Any, period: str, files: list[str], primary: str, *, explicit: bool) -> Batch | None:
    """The batch of ``period``: the landed one moved into ``raw/``; if none landed and the period was asked for by
    name (``explicit``), the newest one already in ``raw/`` (for re-validation); else None.

    :raises BatchMissing: an explicit period with no batch at all, or a landed batch lacking a file.
    :raises ValueError: a landed file does not match the sha256 in its marker (the transfer may still complete).
    """
    landing = lake.path("landing", period)
    if (landing / SUCCESS_MARKER).exists():
        return move_landed(lake, period, files, primary)
    if not explicit:
        log.info("%s: no complete batch in landing/, nothing to do", period)
        return None
    latest = latest_raw(lake, period, primary)
    if latest is None:
        raise BatchMissing(f"no batch for {period}: nothing in landing/{period}/ nor in raw/{period}/")
    log.info("%s: nothing landed; re-using the newest raw batch %s", period, latest.batch_id)
    return latest


def _landed_files(landing: Any, period: str, files: list[str]) -> dict[str, bytes]:
    """The landed files' bytes, each checked against the sha256 its ``_SUCCESS`` marker lists (if any)."""
    marker = json.loads((landing / SUCCESS_MARKER).read_bytes() or b"{}")
    expected = marker.get("files", {}) if isinstance(marker, dict) else {}
    missing = [name for name in files if not (landing / name).exists()]
    if missing:
        raise BatchMissing(f"landing/{period}/ is marked complete but has no {', '.join(missing)}")
    payloads: dict[str, bytes] = {}
    for name in files:
        payloads[name] = (landing / name).read_bytes()
        want = expected.get(name, {}).get("sha256")
        if want and want != sha256_bytes(payloads[name]):
            raise ValueError(
                f"landing/{period}/{name} does not match the sha256 in its _SUCCESS marker: "
                "the transfer is incomplete or the file was changed after landing"
            )
    return payloads


def move_landed(lake: Any, period: str, files: list[str], primary: str) -> Batch:
    """Commit the landed batch of ``period`` to ``raw/<period>/<sha12>/`` (unless the same bytes are there), then
    remove it from ``landing/``."""
    landing = lake.path("landing", period)
    payloads = _landed_files(landing, period, files)
    digest = batch_hash({name: sha256_bytes(data) for name, data in payloads.items()})
    target = lake.path("raw", period, digest[:12])
    manifest = lake.read_manifest(target)
    if manifest and manifest.get("sha256") == digest:
        log.info("%s: these bytes were ingested before (%s); nothing to write", period, target)
        batch = batch_from_manifest(manifest, primary)
    else:
        records = {
            name: lake.write_file(target / name, data, rows=count_rows(name, data)) for name, data in payloads.items()
        }
        batch = Batch(period=period, sha256=digest, uri=lake.url(target), files=records, primary=primary)
        lake.write_manifest(
            target,
            list(records.values()),
            **batch.period_fields(),
            sha256=digest,
            batch_id=batch.batch_id,
            uri=batch.uri,
            primary=primary,
            source=lake.url(landing),
        )
    lake.remove_tree(landing)
    log.info("%s: ingested batch %s (%d rows) into %s", period, batch.batch_id, batch.rows, batch.uri)
    return batch


def latest_raw(lake: Any, period: str, primary: str) -> Batch | None:
    """The newest batch committed in ``raw/<period>/`` (by commit time, ``newest_committed``), or None."""
    folder = lake.path("raw", period)
    manifests = {str(d): lake.read_manifest(d) for d in folder.iterdir()} if folder.exists() else {}
    newest = newest_committed({name: m for name, m in manifests.items() if m})
    return None if newest is None else batch_from_manifest(manifests[newest], primary)


def batch_from_manifest(manifest: dict, primary: str | None = None) -> Batch:
    """The batch a ``raw/`` manifest commits; ``primary`` (the configured one) wins over the recorded one."""
    files = {name: FileRecord(**rec) for name, rec in manifest["files"].items()}
    return Batch(
        period=manifest.get("period") or manifest["month"],
        sha256=manifest["sha256"],
        uri=manifest["uri"],
        files=files,
        primary=primary or manifest.get("primary"),
    )
