"""What the validate step writes to the lake: Data Docs, a valid batch published, a bad one quarantined.

Works through a ``LakeHook`` (any object with its API: ``path``, ``url``, ``read_manifest``, ``read_verified``,
``write_file``, ``write_manifest``, ``upload_tree``). Every directory is committed by its manifest, written last.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.batches import Batch, file_stem, period_bounds

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from airflow_mlops.core.validation import ValidationReport

log = logging.getLogger(__name__)

#: Where the Data Docs site lives in the lake.
DATA_DOCS = ("reports", "data_docs")


class PublishConflict(ValueError):
    """``validated/<period>/`` holds this batch published under another file list."""


def upload_data_docs(lake: Any, docs_dir: Path) -> None:
    """Copy the Data Docs pages rendered into ``docs_dir`` into the lake's site (static assets once).

    :param lake: the lake (a ``LakeHook``).
    :param docs_dir: the local folder ``validate_batch`` rendered into.
    """
    root = lake.path(*DATA_DOCS)
    lake.upload_tree(docs_dir / "static", root / "static", overwrite=False)
    lake.upload_tree(docs_dir / "validations", root / "validations")
    lake.upload_tree(docs_dir / "expectations", root / "expectations")


def report_page(report: ValidationReport) -> str | None:
    """The Data Docs page to link: a failed suite's, else the first suite's (relative to the site)."""
    pages = [s.docs_page for s in report.suites if not s.success and s.docs_page]
    pages += [s.docs_page for s in report.suites if s.docs_page]
    return pages[0] if pages else None


def publish_validated(
    lake: Any, batch: Batch, frames: dict[str, pd.DataFrame], primary: str, report: ValidationReport
) -> dict:
    """Publish every frame as ``validated/<period>/<stem>.parquet`` (derived columns dropped), then its manifest;
    the same batch published before is left as it is.

    :param lake: the lake (a ``LakeHook``).
    :param batch: the batch validated.
    :param frames: frame name → prepared frame.
    :param primary: the file whose rows and sha256 identify the published batch.
    :param report: the validation report (kept in the manifest).
    :return: the step's result: the period fields, batch_id, status, uri, primary, its sha256 and rows, every
        published file and the interval.
    :raises PublishConflict: the period holds this batch published without ``primary``.
    """
    from airflow_mlops.core.validation import published_frame

    target = lake.path("validated", batch.period)
    published = f"{file_stem(primary)}.parquet"
    manifest = lake.read_manifest(target)
    if manifest and manifest.get("batch_sha256") == batch.sha256:
        log.info("%s: batch %s was published before; validated/ unchanged", batch.period, batch.batch_id)
    else:
        records = [
            lake.write_file(target / f"{name}.parquet", published_frame(frame).to_parquet(index=False), rows=len(frame))
            for name, frame in frames.items()
        ]
        manifest = lake.write_manifest(
            target,
            records,
            **batch.period_fields(),
            batch_id=batch.batch_id,
            batch_sha256=batch.sha256,
            primary=published,
            source=batch.uri,
            validation=report.summary(),
        )
    head = manifest["files"].get(published)
    if head is None:
        raise PublishConflict(
            f"validated/{batch.period}/ holds no {published} (it holds {', '.join(manifest['files'])}): it was "
            "published from this batch under another file list; publish the batch again after removing it"
        )
    start, end = period_bounds(batch.period)
    return {
        **batch.period_fields(),
        "batch_id": batch.batch_id,
        "status": "validated",
        "uri": lake.url(target),
        "primary": published,
        "sha256": head["sha256"],
        "rows": head["rows"],
        "files": {
            name: {"uri": rec["uri"], "sha256": rec["sha256"], "rows": rec["rows"]}
            for name, rec in manifest["files"].items()
        },
        "interval_start": start.isoformat(),
        "interval_end": end.isoformat(),
    }


def quarantine_batch(lake: Any, batch: Batch, report: ValidationReport, page: str | None) -> str:
    """Copy the batch, its GX results (JSON) and its Data Docs page to ``quarantine/<period>/<sha12>/``.

    :param lake: the lake (a ``LakeHook``).
    :param batch: the batch that failed.
    :param report: its validation report.
    :param page: its Data Docs page (relative to the site), if one was rendered.
    :return: the quarantine folder's URL.
    """
    target = lake.path("quarantine", batch.period, batch.sha256[:12])
    records = [
        lake.write_file(target / name, lake.read_verified(rec), rows=rec.rows) for name, rec in batch.files.items()
    ]
    result = json.dumps(report.result_json(), indent=2, default=str).encode()
    records.append(lake.write_file(target / "validation_result.json", result, rows=len(report.failures)))
    if page:
        # The copy keeps working next to the batch: its relative links resolve into the Data Docs site.
        html = lake.path(*DATA_DOCS, page).read_text()
        base = f'<base href="../../../{"/".join(DATA_DOCS)}/{page.rsplit("/", 1)[0]}/">'
        html = html.replace("<head>", f"<head>\n{base}", 1)
        records.append(lake.write_file(target / "data_docs.html", html.encode(), rows=0))
    lake.write_manifest(
        target,
        records,
        **batch.period_fields(),
        batch_id=batch.batch_id,
        batch_sha256=batch.sha256,
        source=batch.uri,
        validation=report.summary(),
    )
    return lake.url(target)
