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
    count_csv_rows,
    months_to_ingest,
    parse_month,
    sha256_bytes,
)
from airflow_mlops.exceptions import BatchNotFoundError
from airflow_mlops.hooks.lake import LakeHook

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

DEFAULT_BATCH_FILES = ("flights.csv", "weather.csv", "planes.csv")


class IngestBatchOperator(BaseOperator):
    """Ingest batches from ``landing/<month>/`` into ``raw/<month>/<sha12>/`` and return them for validation.

    Which months a run ingests:

    * ``month`` set (a run triggered with ``{"month": "2013-03"}``): that month — the landed batch if one is
      waiting, otherwise the newest batch already in ``raw/`` (so a month can be re-validated on demand);
    * a scheduled (or backfill) run: its data interval's month, if a batch for it is waiting; else nothing;
    * any other run (the landing Asset, a manual run without a month): every complete batch waiting.

    A batch is complete once its ``_SUCCESS`` marker exists; if the marker lists sha256 per file, the bytes
    are checked against it. Re-ingesting the same bytes is a no-op; the landed copy is removed only after
    ``raw/`` is committed, so a crash at any point is repaired by a retry.

    :param month: the month to ingest, ``YYYY-MM`` (templated); empty means "decide from the run".
    :param files: the files a batch consists of (templated).
    :param lake_root: lake root URL; default from ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :return: (XCom) a list of batches: month, batch_id, sha256, uri, rows and a record per file.
    :raises BatchNotFoundError: a named month is neither landed nor in ``raw/``.
    """

    template_fields = ("month", "files")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        month: str | None = None,
        files: tuple[str, ...] | list[str] = DEFAULT_BATCH_FILES,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.month = month
        self.files = files
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)

    def execute(self, context: Context) -> list[dict]:
        from airflow.sdk.exceptions import AirflowSkipException

        self.lake.ensure_zones()
        pending = self._pending_months()
        run_type = getattr(context.get("dag_run"), "run_type", "") or ""
        months, explicit = months_to_ingest(
            self.month, str(getattr(run_type, "value", run_type)), context.get("data_interval_start"), pending
        )
        self.log.info("months to ingest: %s (pending in landing/: %s)", months or "none", pending or "none")

        batches = []
        for month in months:
            batch = self._ingest_month(month, explicit=explicit)
            if batch is not None:
                batches.append(batch.to_dict())
        if not batches:
            raise AirflowSkipException(
                f"nothing to ingest: no complete batch waiting in landing/ for {months or 'any month'}"
            )
        return batches

    def _pending_months(self) -> list[str]:
        landing = self.lake.path("landing")
        months = []
        for entry in landing.iterdir() if landing.exists() else []:
            if (entry / SUCCESS_MARKER).exists():
                try:
                    months.append(parse_month(entry.name))
                except ValueError:
                    self.log.warning("ignoring %s: not a YYYY-MM batch folder", entry)
        return sorted(months)

    def _ingest_month(self, month: str, *, explicit: bool) -> Batch | None:
        landing = self.lake.path("landing", month)
        if (landing / SUCCESS_MARKER).exists():
            return self._move_landed(month, landing)
        if not explicit:
            self.log.info("%s: no complete batch in landing/, nothing to do", month)
            return None
        latest = self._latest_raw(month)
        if latest is None:
            raise BatchNotFoundError(f"no batch for {month}: nothing in landing/{month}/ nor in raw/{month}/")
        self.log.info("%s: nothing landed; re-using the newest raw batch %s", month, latest.batch_id)
        return latest

    def _move_landed(self, month: str, landing: ObjectStoragePath) -> Batch:
        marker = json.loads((landing / SUCCESS_MARKER).read_bytes() or b"{}")
        expected = marker.get("files", {}) if isinstance(marker, dict) else {}
        payloads: dict[str, bytes] = {}
        for name in self.files:
            source = landing / name
            if not source.exists():
                raise BatchNotFoundError(f"landing/{month}/ is marked complete but has no {name}")
            payloads[name] = source.read_bytes()
            want = expected.get(name, {}).get("sha256")
            if want and want != sha256_bytes(payloads[name]):
                raise ValueError(
                    f"landing/{month}/{name} does not match the sha256 in its _SUCCESS marker: "
                    "the transfer is incomplete or the file was changed after landing"
                )
        digest = batch_hash({name: sha256_bytes(data) for name, data in payloads.items()})
        target = self.lake.path("raw", month, digest[:12])
        manifest = self.lake.read_manifest(target)
        if manifest and manifest.get("sha256") == digest:
            self.log.info("%s: these bytes were ingested before (%s); nothing to write", month, target)
            batch = _batch_from_manifest(manifest)
        else:
            records = {
                name: self.lake.write_file(target / name, data, rows=count_csv_rows(data))
                for name, data in payloads.items()
            }
            batch = Batch(month=month, sha256=digest, uri=self.lake.url(target), files=records)
            self.lake.write_manifest(
                target,
                list(records.values()),
                month=month,
                sha256=digest,
                batch_id=batch.batch_id,
                uri=batch.uri,
                source=self.lake.url(landing),
            )
        self.lake.remove_tree(landing)
        self.log.info("%s: ingested batch %s (%d rows) into %s", month, batch.batch_id, batch.rows, batch.uri)
        return batch

    def _latest_raw(self, month: str) -> Batch | None:
        folder = self.lake.path("raw", month)
        manifests = [m for m in (self.lake.read_manifest(d) for d in folder.iterdir()) if m] if folder.exists() else []
        if not manifests:
            return None
        return _batch_from_manifest(max(manifests, key=lambda m: m["written_at"]))


def _batch_from_manifest(manifest: dict) -> Batch:
    files = {name: FileRecord(**rec) for name, rec in manifest["files"].items()}
    return Batch(month=manifest["month"], sha256=manifest["sha256"], uri=manifest["uri"], files=files)
