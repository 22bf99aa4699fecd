"""The lake as monitoring reads and writes it: committed partitions, the champion's cached reference, the
period's traffic, reports and the retraining policy's decisions. Every read is of committed files (a manifest lists
them) with their sha256 checked; every write is atomic (``LakeHook``).
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

from airflow_mlops.hooks.lake import LakeHook

if TYPE_CHECKING:
    from datetime import datetime

    import pandas as pd
    from airflow.sdk import ObjectStoragePath

    from airflow_mlops.core.drift import ReferenceProfile

PROFILE_FILE = "profile.json"
SAMPLE_FILE = "sample.parquet"


class MonitoringLakeHook(LakeHook):
    """``LakeHook`` plus the reads and writes of the monitoring stage.

    :param root_url: the lake root; default ``MLOPS_LAKE`` or ``file://$MLOPS_HOME/lake``.
    :param lake_conn_id: Airflow connection with the storage credentials; none for a local lake.
    """

    hook_name = "MLOps lake (monitoring)"

    def partition_frames(self, zone: str, period: str) -> dict[str, pd.DataFrame] | None:
        """The Parquet files of the committed ``<zone>/<period>/`` by file stem; None if it is not committed.

        :param zone: e.g. ``validated`` or ``features``.
        :param period: the partition's period.
        """
        import pandas as pd

        manifest = self.read_manifest(self.path(zone, period))
        if manifest is None:
            return None
        return {
            name.rsplit(".", 1)[0]: pd.read_parquet(io.BytesIO(self.read_verified(record)))
            for name, record in sorted((manifest.get("files") or {}).items())
            if name.endswith(".parquet")
        }

    def window_partitions(self, zone: str, periods: list[str] | tuple[str, ...]) -> dict[str, dict[str, pd.DataFrame]]:
        """The committed ``<zone>/<period>/`` of each of ``periods`` (a monitoring window) by period; a period not
        committed is left out.

        :param zone: e.g. ``validated`` or ``features``.
        :param periods: the window's periods.
        """
        found = {period: self.partition_frames(zone, period) for period in periods}
        return {period: frames for period, frames in found.items() if frames is not None}

    def read_committed_frame(self, uri: str, sha256: str) -> pd.DataFrame:
        """The Parquet file at ``uri``, which its folder's manifest must commit with ``sha256``.

        :param uri: the file's URI (e.g. a training-set snapshot).
        :param sha256: the hash it was recorded with.
        :raises ValueError: not committed, or committed with another hash.
        """
        import pandas as pd
        from airflow.sdk import ObjectStoragePath

        path = ObjectStoragePath(uri, conn_id=self.lake_conn_id)
        record = ((self.read_manifest(path.parent) or {}).get("files") or {}).get(path.name)
        if record is None or record["sha256"] != sha256:
            raise ValueError(f"{path} is not committed with sha256 {sha256[:12]}")
        return pd.read_parquet(io.BytesIO(self.read_verified({**record, "uri": str(path)})))

    def cached_reference(
        self, folder: ObjectStoragePath, expected: dict[str, Any]
    ) -> tuple[ReferenceProfile, pd.DataFrame] | None:
        """The reference committed in ``folder`` if its manifest records every ``expected`` item; else None.

        :param folder: ``monitoring/reference/<model>/<version>/``.
        :param expected: what the cached reference must have been built from (hash, settings, columns).
        """
        import pandas as pd

        from airflow_mlops.core.drift import ReferenceProfile

        manifest = self.read_manifest(folder)
        if not manifest or any(str(manifest.get(k)) != str(v) for k, v in expected.items()):
            return None
        files = manifest["files"]
        profile = ReferenceProfile.from_dict(json.loads(self.read_verified(files[PROFILE_FILE])))
        return profile, pd.read_parquet(io.BytesIO(self.read_verified(files[SAMPLE_FILE])))

    def save_reference(
        self, folder: ObjectStoragePath, profile: ReferenceProfile, sample: pd.DataFrame, **meta: Any
    ) -> None:
        """Commit the profile and the sample in ``folder``, ``meta`` in its manifest.

        :param folder: ``monitoring/reference/<model>/<version>/``.
        :param profile: the reference profile.
        :param sample: the reference sample.
        :param meta: what ``cached_reference`` checks later.
        """
        buffer = io.BytesIO()
        sample.to_parquet(buffer, index=False)
        records = [
            self.write_file(folder / PROFILE_FILE, profile.to_json(), rows=len(profile.columns)),
            self.write_file(folder / SAMPLE_FILE, buffer.getvalue(), rows=len(sample)),
        ]
        self.write_manifest(folder, records, **meta)

    def traffic(self, zone: str, start: datetime, end: datetime, **where: Any) -> pd.DataFrame:
        """The logged predictions of events in ``[start, end)`` (``where``: ``core.drift.event_times`` options).

        :param zone: the inference log's zone.
        :param start: the period's start (UTC).
        :param end: the period's end (UTC).
        """
        from airflow_mlops.core.drift import select_period
        from airflow_mlops.core.inference_log import read_inference_log

        return select_period(read_inference_log(self, zone=zone, events=(start, end)), start, end, **where)

    def records(self, folder: ObjectStoragePath) -> dict[str, dict[str, Any]]:
        """The JSON records in ``folder`` by name (without ``.json``); hidden and temporary files skipped.

        :param folder: e.g. ``monitoring/policy/<model>/``.
        """
        if not folder.exists():
            return {}
        return {
            path.name.removesuffix(".json"): json.loads(path.read_bytes())
            for path in folder.iterdir()
            if path.name.endswith(".json") and not path.name.startswith((".", "_"))
        }

    def write_record(self, folder: ObjectStoragePath, name: str, record: dict[str, Any]) -> None:
        """Write ``record`` as ``<folder>/<name>.json`` (atomically).

        :param folder: the records' folder.
        :param name: the record's name.
        :param record: JSON-ready content.
        """
        self.write_file(folder / f"{name}.json", json.dumps(record, indent=2, sort_keys=True).encode(), rows=1)
