"""Validate a batch with Great Expectations: publish it to ``validated/`` or quarantine it with its report."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.exceptions import BatchValidationError
from airflow_mlops.links import REPORT_XCOM_KEY, DataDocsLink, report_url
from airflow_mlops.operators.base import MlopsBaseOperator
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from airflow.sdk import Asset, Context

    from airflow_mlops.core.batches import Batch
    from airflow_mlops.core.validation import ValidationReport
    from airflow_mlops.core.validation_setup import ValidationSetup

#: The user function ``module_file`` is searched for by default (optional there: without it, no derived columns).
PREPARE_FUNCTION = "prepare_validation"
#: The keys of a batch's ``validated_batch`` Asset event (``month`` only for a monthly batch).
EXTRA_KEYS = ("period", "month", "batch_id", "sha256", "rows", "uri", "interval_start", "interval_end")


class ValidateBatchOperator(MlopsBaseOperator):
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
    :param lake_root: lake root URL; default the use case's lake (``usecase``), else ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :param kwargs: ``MlopsBaseOperator``'s and ``BaseOperator``'s arguments (e.g. ``usecase``).
    :return: (XCom) period (and month, for a monthly batch), batch_id, status, uri, primary, sha256 and rows of the
        primary file, every published file, the interval and the report's lake key. Also pushed: the Data Docs
        page's lake key (``report_key``, the task's link) and the report's summary (``validation``).
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
        super().__init__(lake_root=lake_root, lake_conn_id=lake_conn_id, **kwargs)
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

    def _prepare_function(self) -> Callable[[dict], dict] | None:
        """The use case's ``prepare_validation`` (or the named function); None without ``module_file``."""
        from airflow_mlops.usecase import UserCodeError, load_function

        if is_blank(self.module_file):
            return None
        try:
            fn = load_function(
                self.module_file, self.prepare_function, arity=1, required=self.prepare_function != PREPARE_FUNCTION
            )
        except UserCodeError as err:
            self.fail(str(err))
        if fn is None:
            self.log.info("%s has no %s(): no columns derived for validation", self.module_file, PREPARE_FUNCTION)
        return fn

    def _prepared(self, batch: Batch, frames: dict, setup: ValidationSetup, prepare: Callable | None) -> dict:
        """The frames typed, then prepared by ``prepare``; a failing user function fails the task once."""
        from airflow_mlops.core.validation import prepare_batch

        try:
            return prepare_batch(frames, prepare, setup.timestamps_by_frame, self.timestamp_format)
        except Exception as err:
            where = f"{self.prepare_function}() of {self.module_file}" if prepare else "parsing timestamps"
            self.fail(f"{where} failed on batch {batch.batch_id}: {err!r}")

    def _validated(self, batch: Batch, frames: dict, setup: ValidationSetup, notes: list) -> ValidationReport:
        """The batch's report; its Data Docs pages rendered and uploaded to the lake's site."""
        from airflow_mlops.core import publish, validation
        from airflow_mlops.core.batches import period_bounds

        names = ", ".join(s["name"] for s in setup.suites.values())
        self.log.info("validating %s (%d rows) against %s", batch.batch_id, batch.rows, names)
        with tempfile.TemporaryDirectory(prefix="data-docs-") as docs:
            report = validation.validate_batch(
                batch.batch_id,
                frames,
                setup.suites_by_frame,
                validation.batch_parameters(batch.period),
                docs_dir=Path(docs),
                run_time=period_bounds(batch.period)[0],
                notes=tuple(notes),
                fingerprint=batch.sha256,
            )
            publish.upload_data_docs(self.lake, Path(docs))
        return report

    def _push_report(self, context: Context, report: ValidationReport, page: str | None) -> str | None:
        """Push the Data Docs page's lake key (the task's link) and the report's summary; return the key."""
        from airflow_mlops.core.publish import DATA_DOCS

        report_key = f"{'/'.join(DATA_DOCS)}/{page}" if page else None
        context["ti"].xcom_push(key=REPORT_XCOM_KEY, value=report_key)
        context["ti"].xcom_push(key="validation", value=report.summary())
        if report_key:
            self.log.info("Data Docs: %s", self.lake.url(self.lake.path(report_key)))
        return report_key

    def execute(self, context: Context) -> dict:
        from airflow_mlops.core import publish, validation_setup

        batch = self.checked(validation_setup.load_batch, self.batch, self.period_kind)
        setup = self.checked(
            validation_setup.ValidationSetup.resolve,
            batch,
            files=self.files,
            primary=self.primary,
            suites=self.suites,
            expectations_dir=self.expectations_dir,
            timestamp_columns=self.timestamp_columns,
        )
        prepare = self._prepare_function()
        frames, notes = validation_setup.read_frames(self.lake.read_verified, batch, setup.files)
        frames = self._prepared(batch, frames, setup, prepare)
        report = self._validated(batch, frames, setup, notes)
        page = publish.report_page(report)
        report_key = self._push_report(context, report, page)
        if not report.success:
            where = publish.quarantine_batch(self.lake, batch, report, page)
            self.log.error("batch %s quarantined in %s", batch.batch_id, where)
            docs = {"Data Docs": report_url(report_key, self.lake_url) if report_key else None}
            why = [f"[{suite}] {failure.describe()}" for suite, failure in report.failures]
            self.notify(context, "quarantine", what=f"{batch.batch_id} quarantined in {where}", why=why, links=docs)
            raise BatchValidationError(report.failure_message())
        try:
            result = publish.publish_validated(self.lake, batch, frames, setup.primary, report)
        except publish.PublishConflict as err:
            self.fail(str(err))
        result["report_key"] = report_key
        context["outlet_events"][self.validated_asset].extra = {k: result[k] for k in EXTRA_KEYS if k in result}
        return result
