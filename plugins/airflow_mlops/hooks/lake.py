"""The data lake: one root addressed by ``ObjectStoragePath`` (``file://`` locally, ``s3://`` in production)."""

from __future__ import annotations

import json
import uuid
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops import settings
from airflow_mlops.core.batches import MANIFEST, FileRecord, commit_stamp, sha256_bytes

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


class LakeHook(BaseHook):
    """Read and write the lake; every file written is recorded with its sha256 and row count.

    Writes are atomic per file (a temporary sibling, then a rename), and a directory is committed by its
    ``_manifest.json``, written last: readers trust only the files a manifest lists, so a crash mid-write
    never exposes a partial batch.

    :param root_url: the lake root; default ``MLOPS_LAKE`` or ``file://$MLOPS_HOME/lake``.
    :param lake_conn_id: Airflow connection with the storage credentials (e.g. ``aws_default`` for S3);
        default ``MLOPS_LAKE_CONN_ID``; none for a local lake.
    """

    conn_name_attr = "lake_conn_id"
    hook_name = "MLOps lake"

    def __init__(self, root_url: str | None = None, lake_conn_id: str | None = None) -> None:
        super().__init__()
        self.root_url = (root_url or settings.lake_url()).rstrip("/")
        self.lake_conn_id = lake_conn_id or settings.lake_conn_id()

    @cached_property
    def root(self) -> ObjectStoragePath:
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(self.root_url, conn_id=self.lake_conn_id)

    def path(self, *parts: str) -> ObjectStoragePath:
        return self.root.joinpath(*parts)

    def url(self, path: ObjectStoragePath) -> str:
        return str(path)

    def key(self, path: ObjectStoragePath) -> str:
        """The path relative to the lake root, e.g. ``reports/data_docs/index.html``."""
        return str(path).removeprefix(str(self.root)).lstrip("/")

    def ensure_zones(self) -> None:
        for zone in settings.LAKE_ZONES:
            self.path(zone).mkdir(parents=True, exist_ok=True)

    # -- files ---------------------------------------------------------------------------------------------
    def write_file(self, path: ObjectStoragePath, data: bytes, rows: int) -> FileRecord:
        """Write ``data`` atomically and return its record (uri, sha256, rows, bytes)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        tmp.replace(path) if path.protocol in ("file", "local", "") else tmp.rename(path)
        record = FileRecord(name=path.name, uri=self.url(path), sha256=sha256_bytes(data), rows=rows, bytes=len(data))
        self.log.debug("wrote %s (%d rows, %d bytes, sha256 %s)", record.uri, rows, len(data), record.sha256[:12])
        return record

    def read_verified(self, record: FileRecord | dict) -> bytes:
        """Read a recorded file and check its bytes still hash to the record."""
        rec = FileRecord(**record) if isinstance(record, dict) else record
        from airflow.sdk import ObjectStoragePath

        data = ObjectStoragePath(rec.uri, conn_id=self.lake_conn_id).read_bytes()
        if sha256_bytes(data) != rec.sha256:
            raise ValueError(f"{rec.uri} no longer matches its recorded sha256 {rec.sha256[:12]}: the lake was altered")
        return data

    def upload_tree(self, local_dir: Path, target: ObjectStoragePath, overwrite: bool = True) -> list[str]:
        """Copy a local folder (e.g. rendered Data Docs) into the lake; returns the keys written."""
        written = []
        for source in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            copy = target.joinpath(*source.relative_to(local_dir).parts)
            if not overwrite and copy.exists():
                continue
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(source.read_bytes())
            written.append(self.key(copy))
        return written

    def remove_tree(self, path: ObjectStoragePath) -> None:
        if path.exists():
            path.rmdir(recursive=True)

    # -- manifests -----------------------------------------------------------------------------------------
    def write_manifest(self, directory: ObjectStoragePath, files: list[FileRecord], **meta: Any) -> dict:
        """Commit ``directory``: list its files with hashes and rows, plus ``meta``; written last, atomically.

        ``written_at`` is the commit's time to the microsecond (``core.batches.commit_stamp``), increasing from one
        commit to the next; order manifests with ``core.batches.manifest_order`` / ``newest_committed``.
        """
        manifest = {
            "written_at": commit_stamp(),
            **meta,
            "files": {rec.name: rec.to_dict() for rec in files},
        }
        payload = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        self.write_file(directory / MANIFEST, payload, rows=len(files))
        return manifest

    def read_manifest(self, directory: ObjectStoragePath) -> dict | None:
        path = directory / MANIFEST
        if not path.exists():
            return None
        return json.loads(path.read_bytes())

    def committed_periods(self, zone: str, kind: str | None = None) -> list[str]:
        """The periods (``YYYY-MM`` months and ``YYYY-MM-DD`` days) committed (manifest written) in ``zone``.

        Oldest first (months before days when a zone holds both). Folders named otherwise (a report, a temporary
        file, ``2013-3``) are not partitions.

        :param zone: e.g. ``validated``.
        :param kind: only periods of this kind (``month`` or ``day``); None: both.
        """
        from airflow_mlops.core.batches import check_kind, parse_period, period_kind

        if kind is not None:
            check_kind(kind)
        folder = self.path(zone)
        periods = []
        for entry in folder.iterdir() if folder.exists() else []:
            try:
                period = parse_period(entry.name)
            except ValueError:
                continue  # not a period folder
            if period == entry.name and (kind is None or period_kind(period) == kind) and (entry / MANIFEST).exists():
                periods.append(period)
        return sorted(periods, key=lambda p: (len(p), p))

    #: The name monthly code uses; it lists day partitions too.
    committed_months = committed_periods
