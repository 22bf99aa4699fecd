"""Batch validation with Great Expectations 1.x: suites kept as JSON, results reduced to a small report.

A suite is a GX 1.x suite kept as JSON, one per batch file (a use case's ``expectations/<file stem>.json``).
Values that depend on the batch (its period) are suite parameters: ``{"$PARAMETER": "month"}``
(``batch_parameters`` lists them). Before GX sees a batch, its timestamp columns are parsed and an optional
user function (a use case's ``prepare_validation``) may add columns a suite checks; those derived columns'
names start with ``_`` and are never published.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import pandas as pd

log = logging.getLogger(__name__)

#: Columns whose names start with this are derived for validation only (by ``prepare_validation``): never published.
DERIVED_PREFIX = "_"


@dataclass(frozen=True)
class ExpectationFailure:
    """One failed expectation, with the counts a data engineer needs to judge it."""

    expectation: str
    column: str | None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    observed_value: Any = None
    error: str | None = None

    def describe(self) -> str:
        target = f"({self.column})" if self.column else ""
        if self.error:
            detail = f"could not be evaluated: {self.error}"
        elif self.unexpected_count is not None:
            detail = f"{self.unexpected_count} unexpected"
            if self.unexpected_percent is not None:
                detail += f" ({self.unexpected_percent:.2f} %)"
        else:
            detail = f"observed {self.observed_value!r}"
        return f"{self.expectation}{target}: {detail}"


@dataclass(frozen=True)
class SuiteOutcome:
    suite: str
    success: bool
    evaluated: int
    failures: tuple[ExpectationFailure, ...]
    gx_result: Any = field(repr=False, compare=False)
    docs_page: str | None = None

    @cached_property
    def result(self) -> dict:
        """The full GX result as JSON; converted on first use (only a quarantined batch needs it)."""
        return self.gx_result.to_json_dict()

    def summary(self) -> dict:
        return {
            "suite": self.suite,
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": [asdict(f) for f in self.failures],
            "docs_page": self.docs_page,
        }


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one batch against all its suites."""

    batch_id: str
    suites: tuple[SuiteOutcome, ...]
    notes: tuple[str, ...] = ()

    @property
    def success(self) -> bool:
        return all(s.success for s in self.suites)

    @property
    def failures(self) -> list[tuple[str, ExpectationFailure]]:
        return [(s.suite, f) for s in self.suites for f in s.failures]

    def failure_message(self) -> str:
        lines = [f"batch {self.batch_id} failed validation ({len(self.failures)} expectation(s) failed):"]
        lines += [f"  - [{suite}] {failure.describe()}" for suite, failure in self.failures]
        lines += [f"  - note: {note}" for note in self.notes]
        return "\n".join(lines)

    def summary(self) -> dict:
        """Small, JSON-ready: what goes to XCom and into manifests."""
        return {
            "batch_id": self.batch_id,
            "success": self.success,
            "notes": list(self.notes),
            "suites": [s.summary() for s in self.suites],
        }

    def result_json(self) -> dict:
        """The full GX results of every suite: what is saved next to a quarantined batch."""
        return {
            "batch_id": self.batch_id,
            "success": self.success,
            "notes": list(self.notes),
            "results": {s.suite: s.result for s in self.suites},
        }


def _config_key(config: Any) -> str:
    """An expectation configuration's identity within one suite: its type and arguments."""
    return json.dumps([config.type, config.kwargs], sort_keys=True, default=str)


def load_suite(path: str | Path) -> dict:
    """Read a GX 1.x expectation suite kept as JSON; fail with the path named if it is not one."""
    path = Path(path)
    try:
        suite = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read expectation suite {path}: {err}") from err
    if not isinstance(suite, dict) or "name" not in suite or not isinstance(suite.get("expectations"), list):
        raise ValueError(f"{path} is not a GX suite: it needs a 'name' and a list of 'expectations'")
    return suite


def read_csv_tolerant(data: bytes, name: str) -> tuple[pd.DataFrame, str | None]:
    """Parse an upstream CSV; an unreadable file becomes an empty frame and a note, so GX still reports on it.

    :param data: the file's bytes.
    :param name: the file's name (for the note).
    """
    import pandas as pd

    try:
        return pd.read_csv(io.BytesIO(data), low_memory=False), None
    except pd.errors.EmptyDataError:
        return pd.DataFrame(), f"{name} is empty (0 data bytes)"
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        return pd.DataFrame(), f"{name} could not be parsed: {err}"


def read_frame_tolerant(data: bytes, name: str) -> tuple[pd.DataFrame, str | None]:
    """Parse an upstream batch file, CSV or Parquet (by its name); an unreadable one becomes an empty frame and a note.

    :param data: the file's bytes.
    :param name: the file's name (``.parquet``/``.pq``: Parquet; anything else: CSV).
    """
    import pandas as pd

    from airflow_mlops.core.batches import is_parquet

    if not is_parquet(name):
        return read_csv_tolerant(data, name)
    if not data:
        return pd.DataFrame(), f"{name} is empty (0 data bytes)"
    try:
        return pd.read_parquet(io.BytesIO(data)), None
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        return pd.DataFrame(), f"{name} could not be parsed: {err}"


def parse_timestamps(frame: pd.DataFrame, columns: str | Sequence[str], format: str | None = "ISO8601") -> pd.DataFrame:
    """UTC timestamps in ``columns`` (those present); unparseable values become NaT, which null checks then catch.

    :param frame: the frame (not modified).
    :param columns: the column(s) to parse.
    :param format: the ``pandas.to_datetime`` format; None lets pandas infer it.
    """
    import pandas as pd

    present = [c for c in ([columns] if isinstance(columns, str) else columns) if c in frame.columns]
    if not present:
        return frame
    frame = frame.copy()
    for column in present:
        frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce", format=format).astype(
            "datetime64[us, UTC]"
        )
    return frame


def prepare_batch(
    frames: dict[str, pd.DataFrame],
    prepare: Callable[[dict[str, pd.DataFrame]], dict[str, pd.DataFrame]] | None = None,
    timestamps: Mapping[str, str | Sequence[str]] | None = None,
    timestamp_format: str | None = "ISO8601",
) -> dict[str, pd.DataFrame]:
    """Type a batch for validation, then hand it to the use case's ``prepare`` function, if any.

    :param frames: frame name (file stem) → frame, as read from the batch's files.
    :param prepare: ``prepare_validation(frames) -> frames``: adds the columns a suite checks (derived columns
        start with ``_`` and are never published); it gets every frame and must return every frame.
    :param timestamps: frame name → column(s) parsed as UTC timestamps before ``prepare`` runs.
    :param timestamp_format: the format of those columns (``pandas.to_datetime``); None: inferred.
    :raises TypeError: ``prepare`` did not return a mapping of DataFrames.
    :raises ValueError: ``prepare`` dropped frames of the batch.
    """
    import pandas as pd

    timestamps = timestamps or {}
    prepared = {
        name: parse_timestamps(frame, timestamps[name], timestamp_format) if name in timestamps else frame
        for name, frame in frames.items()
    }
    if prepare is None:
        return prepared
    where = getattr(prepare, "__qualname__", repr(prepare))
    out = prepare(dict(prepared))
    if not isinstance(out, dict) or not all(isinstance(f, pd.DataFrame) for f in out.values()):
        raise TypeError(f"{where}() must return a dict of frame name -> pandas DataFrame, not {type(out).__name__}")
    dropped = sorted(set(prepared) - set(out))
    if dropped:
        raise ValueError(f"{where}() must return every frame of the batch; it dropped {', '.join(dropped)}")
    return out


def batch_parameters(period: str) -> dict[str, Any]:
    """The suite parameters of a batch of ``period``: ``period``, ``year``, ``month`` and, for a daily batch,
    ``day`` (all of its start, UTC); a suite pins the batch to its period with ``{"$PARAMETER": "month"}``.

    :param period: ``YYYY-MM`` or ``YYYY-MM-DD``.
    """
    from airflow_mlops.core.batches import parse_period, period_bounds, period_kind

    period = parse_period(period)
    start = period_bounds(period)[0]
    params: dict[str, Any] = {"period": period, "year": start.year, "month": start.month}
    if period_kind(period) == "day":
        params["day"] = start.day
    return params


def published_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the columns derived for validation (names starting with ``_``).

    :param frame: a prepared frame.
    """
    derived = [c for c in frame.columns if str(c).startswith(DERIVED_PREFIX)]
    return frame.drop(columns=derived) if derived else frame


def _failure(result: dict) -> ExpectationFailure:
    config = result.get("expectation_config", {})
    kwargs = config.get("kwargs", {})
    column = kwargs.get("column") or (",".join(kwargs["column_list"]) if "column_list" in kwargs else None)
    details = result.get("result") or {}
    error = None
    info = result.get("exception_info") or {}
    # GX nests exception info per metric when a metric cannot be computed (e.g. a missing column).
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for item in infos:
        if item.get("raised_exception") or item.get("exception_message"):
            error = str(item.get("exception_message") or "raised an exception").splitlines()[-1][:300]
            break
    return ExpectationFailure(
        expectation=config.get("type", "?"),
        column=column,
        unexpected_count=details.get("unexpected_count"),
        unexpected_percent=details.get("unexpected_percent"),
        observed_value=details.get("observed_value"),
        error=error,
    )


class _GxRuntime:
    """One ephemeral GX context per process, with its data source, batch definitions and suites built once.

    Building these objects costs GX about as much as validating a month (store round trips, freshness checks,
    serialization), and none of them depends on the batch: only the dataframe and the suite parameters do.
    Suites are cached by content, so an edited suite file is picked up on the next call.
    """

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas("batch")
        self._definitions: dict[str, Any] = {}
        self._suites: dict[str, Any] = {}
        self._stored_suites: dict[str, str] = {}  # suite name -> content key of the version in the store
        self._docs_dir: Path | None = None

    def batch_definition(self, frame_name: str) -> Any:
        if frame_name not in self._definitions:
            asset = self.source.add_dataframe_asset(frame_name)
            self._definitions[frame_name] = asset.add_batch_definition_whole_dataframe("whole")
        return self._definitions[frame_name]

    @staticmethod
    def _key(suite_json: dict) -> str:
        return hashlib.sha256(json.dumps(suite_json, sort_keys=True, default=str).encode()).hexdigest()

    def suite(self, suite_json: dict) -> Any:
        import great_expectations as gx

        key = self._key(suite_json)
        if key not in self._suites:
            self._suites[key] = gx.ExpectationSuite(**copy.deepcopy(suite_json))
        return self._suites[key]

    def validate(
        self,
        frame_name: str,
        frame: pd.DataFrame,
        suite_json: dict,
        parameters: dict[str, Any],
        fingerprint: str | None = None,
    ) -> Any:
        """Run one suite on one frame with GX's public ``Batch.validate`` (no checkpoint, no stores).

        Pass/fail first (``BOOLEAN_ONLY``: no unexpected-value lists to compute), then only the expectations
        that failed again with ``DETAIL_FORMAT`` for their counts and examples; a passing batch, the common
        case, pays for the verdicts alone. Pandas copy-on-write is on during the run (a public pandas option):
        GX filters the whole frame for each column check, which otherwise copies every column of it each time.
        GX is used as shipped: none of its classes or module settings is changed. With a ``fingerprint`` (the
        batch's sha256 as the lake recorded it), the result's ``batch_markers`` also carry ``batch_sha256``.
        """
        import great_expectations as gx
        import pandas as pd

        # GX's public path: the batch of this frame, then ``Batch.validate`` (a suite, then each failed expectation).
        batch = self.batch_definition(frame_name).get_batch(batch_parameters={"dataframe": frame})
        # pandas 3 always copies on write (and deprecates the option).
        cow = pd.option_context("mode.copy_on_write", True) if pd.__version__[0] == "2" else contextlib.nullcontext()
        with cow:
            suite = self.suite(suite_json)
            result = batch.validate(suite, result_format=VERDICT_FORMAT, expectation_parameters=parameters)
            failed = [i for i, outcome in enumerate(result.results) if not outcome.success]
            if failed:  # the failed expectations again, as one suite: one more pass over the batch, not one each
                again = gx.ExpectationSuite(
                    name=f"{suite.name}.failed",
                    expectations=[copy.copy(result.results[i].expectation_config.to_domain_obj()) for i in failed],
                )
                detail = batch.validate(again, result_format=DETAIL_FORMAT, expectation_parameters=parameters)
                by_config: dict[str, list[Any]] = {}  # GX does not keep the suite's order: match by configuration
                for outcome in detail.results:
                    by_config.setdefault(_config_key(outcome.expectation_config), []).append(outcome)
                for i in failed:
                    found = by_config.get(_config_key(result.results[i].expectation_config))
                    if found:
                        result.results[i] = found.pop(0)
        if fingerprint is not None:
            result.meta["batch_markers"] = {**(result.meta.get("batch_markers") or {}), "batch_sha256": fingerprint}
        return result

    def render_docs(self, docs_dir: Path, results: list[tuple[dict, Any]], run_id: Any) -> None:
        """Render the validation pages of ``results`` (and their suites' pages) into ``docs_dir``.

        Only these pages and the static assets are built, not the site index; the results are taken out of
        the in-memory store again so a long-lived process does not accumulate them.
        """
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        if docs_dir != self._docs_dir:
            config = {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
            if self._docs_dir is None:
                self.context.add_data_docs_site(site_name="lake", site_config=config)
            else:
                self.context.update_data_docs_site(site_name="lake", site_config=config)
            self._docs_dir = docs_dir
        store = self.context.validation_results_store
        identifiers = []
        for suite_json, result in results:
            suite = self.suite(suite_json)
            key = self._key(suite_json)
            if self._stored_suites.get(suite.name) != key:  # the suite's own page, linked from the result's
                self.context.suites.add_or_update(suite)
                self._stored_suites[suite.name] = key
            suite_id = ExpectationSuiteIdentifier(name=suite.name)
            result_id = ValidationResultIdentifier(
                expectation_suite_identifier=suite_id, run_id=run_id, batch_identifier=result.batch_id
            )
            store.set(result_id, result)
            identifiers += [result_id, suite_id]
        try:
            self.context.build_data_docs(site_names=["lake"], resource_identifiers=identifiers, build_index=False)
        finally:
            for identifier in identifiers[::2]:
                store.remove_key(identifier)


#: Every expectation is judged with the cheapest format, which carries no counts.
VERDICT_FORMAT = {"result_format": "BOOLEAN_ONLY"}
#: A failed one is re-run for its unexpected count and percentage (what the failure message names) and up to
#: 20 example values (for the quarantined report); SUMMARY/COMPLETE would add value counts and row indexes.
DETAIL_FORMAT = {"result_format": "BASIC"}

_runtime: _GxRuntime | None = None
_runtime_lock = threading.Lock()


def validate_batch(
    batch_id: str,
    frames: dict[str, pd.DataFrame],
    suites: dict[str, dict],
    parameters: dict[str, Any],
    docs_dir: Path | None = None,
    run_time: datetime | None = None,
    notes: tuple[str, ...] = (),
    fingerprint: str | None = None,
) -> ValidationReport:
    """Run each suite on its frame (``suites`` maps a frame name to a suite) and collect the outcomes.

    With ``docs_dir``, GX Data Docs pages for the run are rendered there (static pages, no index). ``run_time``
    fixes the run's identity so that re-validating the same batch rewrites the same pages. ``fingerprint``, the
    batch's content hash as the lake recorded it, goes into each result's ``batch_markers`` (``batch_sha256``)
    next to GX's own hash of the frame (``pandas_data_fingerprint``). The GX context is built once per process
    and reused (calls are serialized); GX's classes and settings are used as shipped, never changed.

    :param batch_id: the batch's id (the run's name, in every message and page).
    :param frames: frame name → prepared frame.
    :param suites: frame name → suite JSON (``load_suite``).
    :param parameters: the suite parameters (``batch_parameters``).
    :param docs_dir: where to render the Data Docs pages; None: none rendered.
    :param run_time: the run's time (its identity); None: now.
    :param notes: notes on the batch (unreadable files) carried into the report.
    :param fingerprint: the batch's sha256, recorded in the results' ``batch_markers``.
    :raises ValueError: a suite has no frame.
    """
    global _runtime
    from great_expectations.constants import DATAFRAME_REPLACEMENT_STR
    from great_expectations.core.run_identifier import RunIdentifier

    missing = sorted(set(suites) - set(frames))
    if missing:
        raise ValueError(f"no frame for suite(s) of {', '.join(missing)}")
    with _runtime_lock:
        if _runtime is None:
            _runtime = _GxRuntime()
        run_id = RunIdentifier(run_name=batch_id, run_time=run_time)
        results = []
        for frame_name, suite_json in suites.items():
            result = _runtime.validate(frame_name, frames[frame_name], suite_json, parameters, fingerprint)
            result.meta.update(
                run_id=run_id,
                validation_time=run_id.run_time,
                batch_parameters={"dataframe": DATAFRAME_REPLACEMENT_STR},
            )
            results.append((suite_json, result))
        if docs_dir is not None:
            _runtime.render_docs(docs_dir, results, run_id)

    outcomes = []
    for suite_json, result in results:
        name = suite_json["name"]
        failed = tuple(_failure(r.to_json_dict()) for r in result.results if not r.success)
        page = None
        if docs_dir is not None:
            pages = sorted((docs_dir / "validations" / name / batch_id).rglob("*.html"))
            page = str(pages[-1].relative_to(docs_dir)) if pages else None
        outcomes.append(
            SuiteOutcome(
                suite=name,
                success=bool(result.success),
                evaluated=len(result.results),
                failures=failed,
                gx_result=result,
                docs_page=page,
            )
        )
        log.info(
            "suite %s on %s: %s (%d expectations, %d failed)",
            name,
            batch_id,
            "passed" if result.success else "FAILED",
            len(result.results),
            len(failed),
        )
    return ValidationReport(batch_id=batch_id, suites=tuple(outcomes), notes=tuple(notes))
