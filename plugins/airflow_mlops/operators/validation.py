"""Validate a batch with Great Expectations: publish it to ``validated/`` or quarantine it with its report."""

from __future__ import annotations

import json
import tempfile
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_mlops.core.batches import Batch, check_kind, file_stem, period_bounds
from airflow_mlops.exceptions import BatchValidationError
from airflow_mlops.hooks.lake import LakeHook
from airflow_mlops.links import REPORT_XCOM_KEY, DataDocsLink
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from datetime import datetime

    from airflow.sdk import Asset, Context, ObjectStoragePath

    from airflow_mlops.core.validation import ValidationReport

#: The user function ``module_file`` is searched for by default (optional there: without it, no derived columns).
PREPARE_FUNCTION = "prepare_validation"
#: The keys of a batch's ``validated_batch`` Asset event (``month`` only for a monthly batch).
EXTRA_KEYS = ("period", "month", "batch_id", "sha256", "rows", "uri", "interval_start", "interval_end")


class ValidateBatchOperator(BaseOperator):
    """Run the batch's expectation suites; on success publish Parquet to ``validated/<period>/``.

    A batch covers one period: a month (``YYYY-MM``) or a day (``YYYY-MM-DD``). Each of its files is read (CSV
    or Parquet) into a frame named by the file's stem, its timestamp columns parsed, and the frames handed to the
    use case's ``prepare_validation(frames) -> frames`` (from ``module_file``, resolved when the task runs), which
    may add columns a suite checks (named ``_...``, never published). Each file is then validated against its
    suite, with the batch's period as suite parameters (``period``, ``year``, ``month`` and, daily, ``day``).

    On success every file is published as ``validated/<period>/<stem>.parquet`` and the ``validated_batch`` Asset
    event carries the primary file's rows and sha256. On failure the batch, its GX result (JSON) and its Data Docs
    page go to ``quarantine/<period>/<sha12>/``, ``validated/`` is left untouched and the task fails once (no
    retries) with ``BatchValidationError`` naming every failed expectation with its counts. Either way the task
    links to its Data Docs page. A batch without a configured file, an unknown primary file, a missing suite file
    or a failing ``prepare_validation`` fail the task once (``AirflowFailException``) naming it.

    :param batch: a batch as returned by ``IngestBatchOperator`` (templated; usually mapped from its XCom).
    :param files: the files the batch must hold (templated); default: the batch's own files.
    :param primary: the file whose rows and sha256 identify the published batch (templated); default: the one the
        batch names, else the first of ``files``.
    :param period_kind: ``month`` or ``day``: a batch of the other kind fails; default: the batch's own.
    :param suites: batch file (its name or stem) → suite JSON, relative to ``expectations_dir`` or absolute
        (templated); a file without an entry is published unvalidated. Default: ``<file stem>.json`` in
        ``expectations_dir`` for every file.
    :param expectations_dir: the suites folder (templated), e.g. the use case's ``expectations/``; needed unless every
        suite is given by an absolute path.
    :param timestamp_columns: batch file (name or stem) → column(s) parsed as UTC timestamps before validation.
    :param timestamp_format: their format (``pandas.to_datetime``); default ISO 8601, None: inferred.
    :param module_file: the use case's Python module (templated); None: no ``prepare_validation``.
    :param prepare_function: the function of ``module_file`` that prepares frames for validation; the default one
        may be absent from the module, another name must exist.
    :param validated_asset: the Asset whose event announces a published batch (also the default outlet); default the
        reference pipeline's ``validated_batch``.
    :param lake_root: lake root URL; default from ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :return: (XCom) period (and month, for a monthly batch), batch_id, status, uri, primary, sha256 and rows of the
        primary file, every published file, the interval and the report's lake key.
    :raises BatchValidationError: the batch failed; it is quarantined.
    :raises AirflowFailException: the configuration does not fit the batch (see above).
    """

    template_fields = ("batch", "files", "primary", "suites", "expectations_dir", "module_file")
    operator_extra_links = (DataDocsLink(),)
    ui_color = "#eaf7ea"

    def __init__(
        self,
        *,
        batch: dict | str,
        files: Sequence[str] | None = None,
        primary: str | None = None,
        period_kind: str | None = None,
        suites: Mapping[str, str] | None = None,
        expectations_dir: str | None = None,
        timestamp_columns: Mapping[str, str | Sequence[str]] | None = None,
        timestamp_format: str | None = "ISO8601",
        module_file: str | None = None,
        prepare_function: str = PREPARE_FUNCTION,
        validated_asset: Asset | None = None,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        if validated_asset is None:
            from airflow_mlops.assets import VALIDATED_BATCH

            validated_asset = VALIDATED_BATCH
        kwargs.setdefault("outlets", [validated_asset])
        super().__init__(**kwargs)
        self.validated_asset = validated_asset
        self.batch = batch
        self.files = files
        self.primary = primary
        self.period_kind = period_kind
        self.suites = suites
        self.expectations_dir = expectations_dir
        self.timestamp_columns = timestamp_columns
        self.timestamp_format = timestamp_format
        self.module_file = module_file
        self.prepare_function = prepare_function
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id

    @cached_property
    def lake(self) -> LakeHook:
        return LakeHook(root_url=self.lake_root, lake_conn_id=self.lake_conn_id)

    # -- configuration, checked before any data is read ----------------------------------------------------------
    def _files_and_primary(self, batch: Batch) -> tuple[list[str], str]:
        from airflow.sdk.exceptions import AirflowFailException

        files = list(batch.files) if self.files is None else [str(f) for f in self.files]
        if not files:
            raise AirflowFailException(f"batch {batch.batch_id} has no files to validate")
        missing = [name for name in files if name not in batch.files]
        if missing:
            raise AirflowFailException(
                f"batch {batch.batch_id} has no {', '.join(missing)} (it holds {', '.join(batch.files) or 'no file'})"
            )
        stems = [file_stem(name) for name in files]
        clash = sorted({s for s in stems if stems.count(s) > 1})
        if clash:
            raise AirflowFailException(f"batch files share a name without extension ({', '.join(clash)}): rename one")
        primary = next(str(p) for p in (self.primary, batch.primary, files[0]) if not is_blank(p))
        if primary not in files:
            raise AirflowFailException(f"the primary file {primary!r} is not one of the batch files {files}")
        return files, primary

    def _by_file(self, mapping: Mapping[str, Any], files: list[str], what: str) -> dict[str, Any]:
        """``mapping`` keyed by batch file name; its keys may be file names or stems."""
        from airflow.sdk.exceptions import AirflowFailException

        by_stem = {file_stem(name): name for name in files}
        out = {}
        for key, value in mapping.items():
            name = key if key in files else by_stem.get(key)
            if name is None:
                raise AirflowFailException(f"{what} names {key!r}, which is not one of the batch files {files}")
            out[name] = value
        return out

    def _suites(self, files: list[str]) -> dict[str, dict]:
        """Batch file → loaded suite JSON."""
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_mlops.core import validation

        if is_blank(self.expectations_dir) and any(not Path(str(p)).is_absolute() for p in (self.suites or {}).values()):
            raise AirflowFailException("suites given by relative path need expectations_dir (the use case's expectations/)")
        if is_blank(self.expectations_dir) and self.suites is None:
            raise AirflowFailException("no suites: pass expectations_dir (the use case's expectations/) or suites")
        folder = Path(self.expectations_dir or ".")
        if self.suites is None:
            paths = {name: folder / f"{file_stem(name)}.json" for name in files}
        else:
            paths = {name: folder / str(path) for name, path in self._by_file(self.suites, files, "suites").items()}
        suites = {}
        for name, path in paths.items():
            if not path.is_file():
                raise AirflowFailException(f"no expectation suite for {name}: {path} does not exist")
            try:
                suites[name] = validation.load_suite(path)
            except ValueError as err:
                raise AirflowFailException(str(err)) from err
        return suites

    def _prepare_function(self) -> Callable[[dict], dict] | None:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_mlops.usecase import UserCodeError, load_function

        if is_blank(self.module_file):
            return None
        try:
            fn = load_function(
                self.module_file, self.prepare_function, arity=1, required=self.prepare_function != PREPARE_FUNCTION
            )
        except UserCodeError as err:
            raise AirflowFailException(str(err)) from err
        if fn is None:
            self.log.info("%s has no %s(): no columns derived for validation", self.module_file, PREPARE_FUNCTION)
        return fn

    def execute(self, context: Context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_mlops.core import validation

        try:
            batch = Batch.from_dict(json.loads(self.batch) if isinstance(self.batch, str) else self.batch)
            start, end = period_bounds(batch.period)
            if self.period_kind is not None and batch.kind != check_kind(self.period_kind):
                raise ValueError(
                    f"batch {batch.batch_id} covers a {batch.kind}; this pipeline's batches are by {self.period_kind}"
                )
        except (KeyError, TypeError, ValueError) as err:
            raise AirflowFailException(f"not a batch of this pipeline: {err!r}") from err
        files, primary = self._files_and_primary(batch)
        suites = self._suites(files)
        prepare = self._prepare_function()
        timestamps = self._by_file(self.timestamp_columns or {}, files, "timestamp_columns")

        frames, notes = {}, []
        for name in files:
            frame, note = validation.read_frame_tolerant(self.lake.read_verified(batch.files[name]), name)
            frames[file_stem(name)] = frame
            if note:
                notes.append(note)
        try:
            frames = validation.prepare_batch(
                frames,
                prepare,
                {file_stem(name): cols for name, cols in timestamps.items()},
                self.timestamp_format,
            )
        except Exception as err:
            where = f"{self.prepare_function}() of {self.module_file}" if prepare else "parsing timestamps"
            raise AirflowFailException(f"{where} failed on batch {batch.batch_id}: {err!r}") from err
        self.log.info(
            "validating %s (%d rows) against %s",
            batch.batch_id,
            batch.rows,
            ", ".join(s["name"] for s in suites.values()),
        )
        with tempfile.TemporaryDirectory(prefix="data-docs-") as docs:
            report = validation.validate_batch(
                batch.batch_id,
                frames,
                {file_stem(name): suite for name, suite in suites.items()},
                validation.batch_parameters(batch.period),
                docs_dir=Path(docs),
                run_time=start,
                notes=tuple(notes),
                fingerprint=batch.sha256,
            )
            docs_root = self.lake.path("reports", "data_docs")
            self.lake.upload_tree(Path(docs) / "static", docs_root / "static", overwrite=False)
            self.lake.upload_tree(Path(docs) / "validations", docs_root / "validations")
            self.lake.upload_tree(Path(docs) / "expectations", docs_root / "expectations")
        page = next((s.docs_page for s in report.suites if not s.success and s.docs_page), None) or next(
            (s.docs_page for s in report.suites if s.docs_page), None
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

        result = self._publish(batch, frames, primary, report, start, end)
        result["report_key"] = report_key
        context["outlet_events"][self.validated_asset].extra = {k: result[k] for k in EXTRA_KEYS if k in result}
        return result

    def _publish(
        self,
        batch: Batch,
        frames: dict,
        primary: str,
        report: ValidationReport,
        start: datetime,
        end: datetime,
    ) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_mlops.core.validation import published_frame

        target = self.lake.path("validated", batch.period)
        manifest = self.lake.read_manifest(target)
        if manifest and manifest.get("batch_sha256") == batch.sha256:
            self.log.info("%s: batch %s was published before; validated/ unchanged", batch.period, batch.batch_id)
        else:
            records = []
            for name, frame in frames.items():
                data = published_frame(frame).to_parquet(index=False)
                records.append(self.lake.write_file(target / f"{name}.parquet", data, rows=len(frame)))
            manifest = self.lake.write_manifest(
                target,
                records,
                **batch.period_fields(),
                batch_id=batch.batch_id,
                batch_sha256=batch.sha256,
                primary=f"{file_stem(primary)}.parquet",
                source=batch.uri,
                validation=report.summary(),
            )
        published = f"{file_stem(primary)}.parquet"
        head = manifest["files"].get(published)
        if head is None:
            raise AirflowFailException(
                f"validated/{batch.period}/ holds no {published} (it holds {', '.join(manifest['files'])}): it was "
                "published from this batch under another file list; publish the batch again after removing it"
            )
        return {
            **batch.period_fields(),
            "batch_id": batch.batch_id,
            "status": "validated",
            "uri": self.lake.url(target),
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

    def _quarantine(self, batch: Batch, report: ValidationReport, page: str | None) -> str:
        target: ObjectStoragePath = self.lake.path("quarantine", batch.period, batch.sha256[:12])
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
            **batch.period_fields(),
            batch_id=batch.batch_id,
            batch_sha256=batch.sha256,
            source=batch.uri,
            validation=report.summary(),
        )
        return self.lake.url(target)
