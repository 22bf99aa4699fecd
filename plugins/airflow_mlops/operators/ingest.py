"""Move landed batches from ``landing/`` into ``raw/``, content-addressed, idempotently."""

from __future__ import annotations

import json
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_mlops.core.batches import (
    SUCCESS_MARKER,
    Batch,
    FileRecord,
    batch_hash,
    check_kind,
    count_rows,
    parse_period,
    period_kind,
    periods_to_ingest,
    sha256_bytes,
)
from airflow_mlops.exceptions import BatchNotFoundError
from airflow_mlops.hooks.lake import LakeHook
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context, ObjectStoragePath


def batch_files_of(files: Sequence[str] | str, primary: str | None) -> tuple[list[str], str]:
    """The batch's file names and its primary file (default: the first), checked; rendered templates accepted.

    :param files: the file names (a list, or its JSON / comma-separated rendering).
    :param primary: the file whose rows and hash identify the batch; blank: the first of ``files``.
    :raises AirflowFailException: no files, a duplicate, or a primary file that is not one of them.
    """
    from airflow.sdk.exceptions import AirflowFailException

    if isinstance(files, str):
        text = files.strip()
        names = json.loads(text) if text.startswith("[") else text.split(",")
    else:
        names = list(files)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise AirflowFailException("no batch files configured: pass files=[...] (e.g. the use case's source.files)")
    if len(set(names)) != len(names):
        raise AirflowFailException(f"batch files listed twice: {names}")
    if any("/" in n or n.startswith(".") or n == SUCCESS_MARKER for n in names):
        raise AirflowFailException(f"batch files must be plain file names in landing/<period>/, not {names}")
    chosen = names[0] if is_blank(primary) else str(primary).strip()
    if chosen not in names:
        raise AirflowFailException(f"the primary file {chosen!r} is not one of the batch files {names}")
    return names, chosen


class IngestBatchOperator(BaseOperator):
    """Ingest batches from ``landing/<period>/`` into ``raw/<period>/<sha12>/`` and return them for validation.

    A period is a month (``YYYY-MM``) or a day (``YYYY-MM-DD``), as ``period_kind`` says. Which periods a run
    ingests:

    * ``period`` set (a run triggered with ``{"month": "2013-03"}`` or ``{"period": "2024-05-17"}``): that period —
      the landed batch if one is waiting, otherwise the newest batch already in ``raw/`` (so a period can be
      re-validated on demand);
    * a scheduled (or backfill) run: its data interval's period, if a batch for it is waiting; else nothing;
    * any other run (the landing Asset, a manual run without a period): every complete batch waiting.

    A batch is complete once its ``_SUCCESS`` marker exists; if the marker lists sha256 per file, the bytes
    are checked against it. Re-ingesting the same bytes is a no-op; the landed copy is removed only after
    ``raw/`` is committed, so a crash at any point is repaired by a retry.

    :param usecase: a use-case folder: ``files``, ``primary`` and ``period_kind`` default to its ``source``.
    :param files: the files a batch consists of, CSV or Parquet (templated).
    :param primary: the file whose rows and hash identify the batch downstream; default the first of ``files``
        (templated).
    :param period_kind: ``month`` or ``day``: one batch per period; landing folders of the other kind are ignored.
    :param period: the period to ingest (templated); empty means "decide from the run".
    :param month: the former name of ``period`` (templated); used when ``period`` is empty.
    :param lake_root: lake root URL; default from ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :return: (XCom) a list of batches: period (and month, for monthly ones), batch_id, sha256, uri, rows, primary
        and a record per file.
    :raises BatchNotFoundError: a named period is neither landed nor in ``raw/``, or a landed batch lacks a file.
    :raises AirflowFailException: bad arguments (no files, unknown primary file, unknown period kind, a period of
        another kind).
    """

    template_fields = ("period", "month", "files", "primary")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        usecase: str | None = None,
        files: Sequence[str] | str | None = None,
        primary: str | None = None,
        period_kind: str | None = None,
        period: str | None = None,
        month: str | None = None,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.usecase = usecase
        self.files = files
        self.primary = primary
        self.period_kind = period_kind
        self.period = period
        self.month = month
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)

    def execute(self, context: Context) -> list[dict]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        try:
            files_arg, primary_arg, kind_arg = self.files, self.primary, self.period_kind
            if self.usecase:
                from airflow_mlops.usecase import config

                source = config.load(self.usecase).source
                files_arg = files_arg or list(source.files)
                primary_arg = primary_arg or source.primary
                kind_arg = kind_arg or source.period
            kind = check_kind(kind_arg or "month")
            files, primary = batch_files_of(files_arg or [], primary_arg)
            requested = None if is_blank(self.period) else str(self.period)
            if requested is None and not is_blank(self.month):
                requested = str(self.month)
            run_type = getattr(context.get("dag_run"), "run_type", "") or ""
            self.lake.ensure_zones()
            pending = self._pending_periods(kind)
            periods, explicit = periods_to_ingest(
                requested, str(getattr(run_type, "value", run_type)), context.get("data_interval_start"), pending, kind
            )
        except ValueError as err:  # a bad period or kind: retrying cannot fix it
            raise AirflowFailException(str(err)) from err
        self.log.info("periods to ingest: %s (pending in landing/: %s)", periods or "none", pending or "none")

        batches = []
        for period in periods:
            batch = self._ingest_period(period, files, primary, explicit=explicit)
            if batch is not None:
                batches.append(batch.to_dict())
        if not batches:
            raise AirflowSkipException(
                f"nothing to ingest: no complete batch waiting in landing/ for {periods or f'any {kind}'}"
            )
        return batches

    def _pending_periods(self, kind: str) -> list[str]:
        landing = self.lake.path("landing")
        periods = []
        for entry in landing.iterdir() if landing.exists() else []:
            if (entry / SUCCESS_MARKER).exists():
                try:
                    period = parse_period(entry.name)
                except ValueError:
                    self.log.warning("ignoring %s: not a YYYY-MM or YYYY-MM-DD batch folder", entry)
                    continue
                if period_kind(period) != kind:
                    self.log.warning("ignoring %s: this pipeline's batches are of one %s each", entry, kind)
                    continue
                periods.append(period)
        return sorted(periods)

    def _ingest_period(self, period: str, files: list[str], primary: str, *, explicit: bool) -> Batch | None:
        landing = self.lake.path("landing", period)
        if (landing / SUCCESS_MARKER).exists():
            return self._move_landed(period, landing, files, primary)
        if not explicit:
            self.log.info("%s: no complete batch in landing/, nothing to do", period)
            return None
        latest = self._latest_raw(period, primary)
        if latest is None:
            raise BatchNotFoundError(f"no batch for {period}: nothing in landing/{period}/ nor in raw/{period}/")
        self.log.info("%s: nothing landed; re-using the newest raw batch %s", period, latest.batch_id)
        return latest

    def _move_landed(self, period: str, landing: ObjectStoragePath, files: list[str], primary: str) -> Batch:
        marker = json.loads((landing / SUCCESS_MARKER).read_bytes() or b"{}")
        expected = marker.get("files", {}) if isinstance(marker, dict) else {}
        missing = [name for name in files if not (landing / name).exists()]
        if missing:
            raise BatchNotFoundError(f"landing/{period}/ is marked complete but has no {', '.join(missing)}")
        payloads: dict[str, bytes] = {}
        for name in files:
            payloads[name] = (landing / name).read_bytes()
            want = expected.get(name, {}).get("sha256")
            if want and want != sha256_bytes(payloads[name]):
                raise ValueError(
                    f"landing/{period}/{name} does not match the sha256 in its _SUCCESS marker: "
                    "the transfer is incomplete or the file was changed after landing"
                )
        digest = batch_hash({name: sha256_bytes(data) for name, data in payloads.items()})
        target = self.lake.path("raw", period, digest[:12])
        manifest = self.lake.read_manifest(target)
        if manifest and manifest.get("sha256") == digest:
            self.log.info("%s: these bytes were ingested before (%s); nothing to write", period, target)
            batch = _batch_from_manifest(manifest, primary)
        else:
            records = {
                name: self.lake.write_file(target / name, data, rows=count_rows(name, data))
                for name, data in payloads.items()
            }
            batch = Batch(period=period, sha256=digest, uri=self.lake.url(target), files=records, primary=primary)
            self.lake.write_manifest(
                target,
                list(records.values()),
                **batch.period_fields(),
                sha256=digest,
                batch_id=batch.batch_id,
                uri=batch.uri,
                primary=primary,
                source=self.lake.url(landing),
            )
        self.lake.remove_tree(landing)
        self.log.info("%s: ingested batch %s (%d rows) into %s", period, batch.batch_id, batch.rows, batch.uri)
        return batch

    def _latest_raw(self, period: str, primary: str) -> Batch | None:
        folder = self.lake.path("raw", period)
        manifests = [m for m in (self.lake.read_manifest(d) for d in folder.iterdir()) if m] if folder.exists() else []
        if not manifests:
            return None
        return _batch_from_manifest(max(manifests, key=lambda m: m["written_at"]), primary)


def _batch_from_manifest(manifest: dict, primary: str | None = None) -> Batch:
    """The batch a ``raw/`` manifest commits; ``primary`` (the configured one) wins over the recorded one."""
    files = {name: FileRecord(**rec) for name, rec in manifest["files"].items()}
    period = manifest.get("period") or manifest["month"]
    return Batch(
        period=period,
        sha256=manifest["sha256"],
        uri=manifest["uri"],
        files=files,
        primary=primary or manifest.get("primary"),
    )
