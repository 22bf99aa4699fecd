"""Move landed batches from ``landing/`` into ``raw/``, content-addressed, idempotently."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops.core.ingest import batch_files_of, batch_from_manifest
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

__all__ = ["IngestBatchOperator", "batch_files_of"]
#: The former name of ``core.ingest.batch_from_manifest``.
_batch_from_manifest = batch_from_manifest


class IngestBatchOperator(MlopsBaseOperator):
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
    :param lake_root: lake root URL; default the use case's lake (``usecase``), else ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    :param kwargs: ``MlopsBaseOperator``'s and ``BaseOperator``'s arguments.
    :return: (XCom) a list of batches: period (and month, for monthly ones), batch_id, sha256, uri, rows, primary
        and a record per file.
    :raises BatchNotFoundError: a named period is neither landed nor in ``raw/``, or a landed batch lacks a file.
    :raises AirflowFailException: bad arguments (no files, unknown primary file, unknown period kind, a period of
        another kind) or a broken use-case config.
    :raises AirflowSkipException: nothing to ingest.
    :raises ValueError: a landed file does not match its marker's sha256 (retried: the transfer may complete).
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
        super().__init__(usecase=usecase, lake_root=lake_root, lake_conn_id=lake_conn_id, **kwargs)
        self.files = files
        self.primary = primary
        self.period_kind = period_kind
        self.period = period
        self.month = month

    def _periods(self, context: Context, kind: str) -> tuple[list[str], bool]:
        """The periods this run ingests and whether they were asked for by name (see above)."""
        from airflow_mlops.core import ingest
        from airflow_mlops.core.batches import periods_to_ingest

        run_type = getattr(context.get("dag_run"), "run_type", "") or ""
        self.lake.ensure_zones()
        pending = ingest.pending_periods(self.lake, kind)
        periods, explicit = self.checked(
            periods_to_ingest,
            ingest.requested_period(self.period, self.month),
            str(getattr(run_type, "value", run_type)),
            context.get("data_interval_start"),
            pending,
            kind,
        )
        self.log.info("periods to ingest: %s (pending in landing/: %s)", periods or "none", pending or "none")
        return periods, explicit

    def execute(self, context: Context) -> list[dict]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core import ingest
        from airflow_mlops.exceptions import BatchNotFoundError

        source = self.usecase_config.source if self.usecase_config is not None else None
        files, primary, kind = self.checked(ingest.ingest_settings, self.files, self.primary, self.period_kind, source)
        periods, explicit = self._periods(context, kind)
        ti = context["ti"]
        taken_before = ingest.claim_periods(self.lake, f"{ti.dag_id}/{ti.run_id}", periods)
        if taken_before:
            self.log.info("an earlier try of this run took %s: returning their committed batches", taken_before)
        batches = []
        for period in sorted({*periods, *taken_before}):
            if period in taken_before:
                batch = ingest.latest_raw(self.lake, period, primary)
            else:
                try:
                    batch = ingest.ingest_period(self.lake, period, files, primary, explicit=explicit)
                except ingest.BatchMissing as err:
                    raise BatchNotFoundError(str(err)) from err
            if batch is not None:
                batches.append(batch.to_dict())
        if not batches:
            raise AirflowSkipException(
                f"nothing to ingest: no complete batch waiting in landing/ for {periods or f'any {kind}'}"
            )
        return batches
