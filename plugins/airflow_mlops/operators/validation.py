"""Validate a batch with Great Expectations: publish it to ``validated/`` or quarantine it with its report."""

from __future__ import annotations

import json
import tempfile
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_mlops import settings
from airflow_mlops.assets import VALIDATED_BATCH
from airflow_mlops.core.batches import Batch, month_bounds
from airflow_mlops.exceptions import BatchValidationError
from airflow_mlops.hooks.lake import LakeHook
from airflow_mlops.links import REPORT_XCOM_KEY, DataDocsLink

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_mlops.core.validation import ValidationReport

#: Suite file per frame of a batch (frame name = file name without ``.csv``).
DEFAULT_SUITES = {"flights": "flights_batch.json", "weather": "weather_batch.json", "planes": "planes_batch.json"}


class ValidateBatchOperator(BaseOperator):
    """Run the batch's expectation suites; on success publish Parquet to ``validated/<month>/``.

    On failure the batch, its GX result (JSON) and its Data Docs page go to ``quarantine/<month>/<sha12>/``,
    ``validated/`` is left untouched and the task fails once (no retries) with ``BatchValidationError``
    naming every failed expectation with its counts. Either way the task links to its Data Docs page.

    :param batch: a batch as returned by ``IngestBatchOperator`` (templated; usually mapped from its XCom).
    :param suites: frame name → suite file in ``expectations_dir`` (templated).
    :param expectations_dir: folder with the suites; default ``include/expectations``.
    :param lake_root: lake root URL; default from ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :return: (XCom) month, batch_id, status, uri, sha256, rows and the report's lake key.
    :raises BatchValidationError: the batch failed; it is quarantined.
    """

    template_fields = ("batch", "suites", "expectations_dir")
    operator_extra_links = (DataDocsLink(),)
    ui_color = "#eaf7ea"

    def __init__(
        self,
        *,
        batch: dict | str,
        suites: dict[str, str] | None = None,
        expectations_dir: str | None = None,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [VALIDATED_BATCH])
        super().__init__(**kwargs)
        self.batch = batch
        self.suites = suites if suites is not None else dict(DEFAULT_SUITES)
        self.expectations_dir = expectations_dir
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)

    def execute(self, context: Context) -> dict:
        from airflow_mlops.core import validation

        batch = Batch.from_dict(json.loads(self.batch) if isinstance(self.batch, str) else self.batch)
        folder = Path(self.expectations_dir) if self.expectations_dir else settings.include_dir() / "expectations"
        suites = {frame: validation.load_suite(folder / name) for frame, name in self.suites.items()}

        frames, notes = {}, []
        for name, record in batch.files.items():
            frame, note = validation.read_csv_tolerant(self.lake.read_verified(record), name)
            frames[name.rsplit(".", 1)[0]] = frame
            if note:
                notes.append(note)
        frames = validation.prepare_batch(frames)
        start, end = month_bounds(batch.month)
        self.log.info("validating %s (%d rows) against %s", batch.batch_id, batch.rows, ", ".join(self.suites.values()))
        with tempfile.TemporaryDirectory(prefix="data-docs-") as docs:
            report = validation.validate_batch(
                batch.batch_id,
                frames,
                suites,
                {"year": start.year, "month": start.month},
                docs_dir=Path(docs),
                run_time=start,
                notes=tuple(notes),
                fingerprint=batch.sha256,
            )
            docs_root = self.lake.path("reports", "data_docs")
            self.lake.upload_tree(Path(docs) / "static", docs_root / "static", overwrite=False)
            self.lake.upload_tree(Path(docs) / "validations", docs_root / "validations")
            self.lake.upload_tree(Path(docs) / "expectations", docs_root / "expectations")
        page = (
            next((s.docs_page for s in report.suites if not s.success and s.docs_page), None)
            or report.suites[0].docs_page
        )
        report_key = f"reports/data_docs/{page}" if page else None
        context["ti"].xcom_push(key=REPORT_XCOM_KEY, value=report_key)
        context["ti"].xcom_push(key="validation", value=report.summary())
        if report_key:
            self.log.info("Data Docs: %s", self.lake.url(self.lake.path(report_key)))

        if not report.success:
            where = self._quarantine(batch, report, page)
            self.log.error("batch %s quarantined in %s", batch.batch_id, where)
            raise BatchValidationError(report.failure_message())

        result = self._publish(batch, frames, report, start, end)
        result["report_key"] = report_key
        context["outlet_events"][VALIDATED_BATCH].extra = {
            k: result[k] for k in ("month", "batch_id", "sha256", "rows", "uri", "interval_start", "interval_end")
        }
        return result

    def _publish(self, batch: Batch, frames: dict, report: ValidationReport, start, end) -> dict:
        target = self.lake.path("validated", batch.month)
        manifest = self.lake.read_manifest(target)
        if manifest and manifest.get("batch_sha256") == batch.sha256:
            self.log.info("%s: batch %s was published before; validated/ unchanged", batch.month, batch.batch_id)
        else:
            records = []
            for name, frame in frames.items():
                derived = [c for c in frame.columns if str(c).startswith("_")]
                data = frame.drop(columns=derived).to_parquet(index=False)
                records.append(self.lake.write_file(target / f"{name}.parquet", data, rows=len(frame)))
            manifest = self.lake.write_manifest(
                target,
                records,
                month=batch.month,
                batch_id=batch.batch_id,
                batch_sha256=batch.sha256,
                source=batch.uri,
                validation=report.summary(),
            )
        flights = manifest["files"]["flights.parquet"]
        return {
            "month": batch.month,
            "batch_id": batch.batch_id,
            "status": "validated",
            "uri": self.lake.url(target),
            "sha256": flights["sha256"],
            "rows": flights["rows"],
            "files": {
                name: {"uri": rec["uri"], "sha256": rec["sha256"], "rows": rec["rows"]}
                for name, rec in manifest["files"].items()
            },
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
        }

    def _quarantine(self, batch: Batch, report: ValidationReport, page: str | None) -> str:
        target: ObjectStoragePath = self.lake.path("quarantine", batch.month, batch.sha256[:12])
        records = [
            self.lake.write_file(target / name, self.lake.read_verified(rec), rows=rec.rows)
            for name, rec in batch.files.items()
        ]
        result = json.dumps(report.result_json(), indent=2, default=str).encode()
        records.append(self.lake.write_file(target / "validation_result.json", result, rows=len(report.failures)))
        if page:
            # The copy keeps working next to the batch: its relative links resolve into the Data Docs site.
            html = self.lake.path("reports", "data_docs", page).read_text()
            base = f'<base href="../../../reports/data_docs/{page.rsplit("/", 1)[0]}/">'
            html = html.replace("<head>", f"<head>\n{base}", 1)
            records.append(self.lake.write_file(target / "data_docs.html", html.encode(), rows=0))
        self.lake.write_manifest(
            target,
            records,
            month=batch.month,
            batch_id=batch.batch_id,
            batch_sha256=batch.sha256,
            source=batch.uri,
            validation=report.summary(),
        )
        return self.lake.url(target)
