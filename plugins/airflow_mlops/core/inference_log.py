"""The inference log: every answered prediction, buffered in memory and committed to the lake as Parquet parts.

Layout under the use case's lake root (one committed directory per flushed part, so concurrent workers never
rewrite each other's manifest)::

    inference_log/<YYYY-MM-DD>/<HHMMSSffffff>-<pid>-<seq>/predictions.parquet
    inference_log/<YYYY-MM-DD>/<HHMMSSffffff>-<pid>-<seq>/_manifest.json     (written last: the commit)

The day is the UTC date of the prediction. One row per answered request (``log_records``): ``request_id``,
``batch_id`` (the batch's request id, or the request id itself), ``timestamp`` (``datetime64[us, UTC]``), every
request field as ``input_<field>``, ``event_timestamp`` (the request's event time, UTC), the use case's id
column, every model feature under its training-set name, ``defaults_used``, ``prediction`` (a probability for a
classification, the value for a regression), ``label`` (a classification's decision, else null), ``threshold``,
``model_name``, ``model_version``, ``latency_ms``. Each manifest records the part's rows, the span of its
prediction times (``first`` / ``last``), of its requests' event times (``event_first`` / ``event_last``) and
its model versions. Readers (the monitoring stage) use ``read_inference_log``: only parts a manifest commits are
read, and a period's monitoring reads only the parts whose requests may fall in that period.

``InferenceLogBuffer`` takes rows from request threads without blocking on the lake; a background thread writes a
part every ``flush_rows`` rows or ``flush_interval_s`` seconds, and ``close()`` writes what is left, so a clean
shutdown loses nothing. A failed write keeps the rows for the next attempt.

A killed server (SIGKILL, OOM) loses no answered request either when the buffer has a ``spool`` folder (the
serving process gives it one, see ``serving_service``): each append is written to a local segment file before the
answer leaves (``InferenceLogSpool``: length-prefixed pickles, flushed to the OS, locked by its live process), and a
segment is deleted once its rows are committed. The next buffer on the same spool folder commits the segments of
dead processes first (``recover``), skipping request ids a committed part already holds, so a crash between a part's
commit and its segment's deletion does not log a request twice.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import struct
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PART_FILE = "predictions.parquet"
DEFAULT_ZONE = "inference_log"


class InferenceLogBuffer:
    """Collect rows; ``writer(rows)`` commits them from a background thread (or on ``flush`` / ``close``)."""

    def __init__(
        self,
        writer: Callable[[list[dict[str, Any]]], Any],
        flush_rows: int = 500,
        flush_interval_s: float = 10.0,
        spool: InferenceLogSpool | None = None,
    ) -> None:
        """:param spool: where appended rows are kept on local disk until committed (None: in memory only). The
        segments dead processes left there are committed (``InferenceLogSpool.recover``) before this returns."""
        if flush_rows < 1 or flush_interval_s <= 0:
            raise ValueError("flush_rows must be >= 1 and flush_interval_s > 0")
        self.writer = writer
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.spool = spool
        self.recovered_rows = spool.recover(writer) if spool is not None else 0
        self._rows: list[dict[str, Any]] = []
        self._writing = 0  # rows taken out of the buffer by a flush whose write has not returned yet
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.written_rows = 0
        self.written_parts = 0
        self.failed_flushes = 0
        self._thread = threading.Thread(target=self._run, name="inference-log-flusher", daemon=True)
        self._thread.start()

    def append(self, rows: list[dict[str, Any]]) -> None:
        if self._closed.is_set():
            raise RuntimeError("the inference log is closed")
        with self._lock:
            if self.spool is not None:
                self.spool.append(rows)  # on disk before the answer leaves
            self._rows.extend(rows)
            full = len(self._rows) >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Rows answered but not yet committed: buffered, plus those a flush is writing right now."""
        return self.stats()["pending"]

    def flush(self) -> int:
        """Write everything buffered now; returns rows written (0 if nothing, or the write failed)."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
                self._writing = len(rows)
                # The segments holding exactly these rows: a new one takes the appends from here on.
                segments = self.spool.rotate() if self.spool is not None and rows else []
            if not rows:
                return 0
            try:
                self.writer(rows)
            except Exception:  # noqa: BLE001 - kept for the next flush; an answer never fails for the log
                log.exception("inference log: writing %d rows failed; they stay buffered", len(rows))
                with self._lock:
                    self.failed_flushes += 1
                    self._rows[:0] = rows
                    self._writing = 0
                    if self.spool is not None:
                        self.spool.keep(segments)
                return 0
            if self.spool is not None:
                self.spool.release(segments)
            with self._lock:
                self.written_rows += len(rows)
                self.written_parts += 1
                self._writing = 0
            return len(rows)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if self._closed.is_set():
                break
            self.flush()

    def close(self, timeout: float = 30.0) -> int:
        """Stop the flusher and write what is left (retrying a failed write until ``timeout``)."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            if not self.flush():
                time.sleep(0.5)
        left = self.pending
        if left:
            log.error("inference log: %d rows could not be written before shutdown", left)
        elif self.spool is not None:
            self.spool.close()
        return left

    def stats(self) -> dict[str, int]:
        """One consistent snapshot: a row is either pending or written, never neither while a write runs."""
        with self._lock:
            return {
                "pending": len(self._rows) + self._writing,
                "written_rows": self.written_rows,
                "written_parts": self.written_parts,
                "failed_flushes": self.failed_flushes,
                "recovered_rows": self.recovered_rows,
            }


_LENGTH = struct.Struct(">Q")


class InferenceLogSpool:
    """Rows answered but not yet committed, on local disk: one segment file at a time takes the appends.

    A segment is ``<folder>/<ns>-<pid>-<seq>.spool``: records of a length (8 bytes) and a pickled list of rows,
    written with one ``write`` each and flushed to the OS (a killed process loses nothing; a crashed host may).
    Every segment a live buffer holds is locked (``fcntl.flock``, released by the kernel when the process dies), so
    ``recover`` takes only the segments of dead processes, whichever worker of a server runs it.

    :param folder: the spool folder (one per use case and inference-log zone; local disk, not the lake).
    """

    SUFFIX = ".spool"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seq = 0
        self._kept: list[tuple[Path, Any]] = []  # rotated segments whose rows are not committed yet
        self._active = self._open()

    def _open(self) -> tuple[Path, Any]:
        import fcntl

        self._seq += 1
        path = self.folder / f"{time.time_ns()}-{os.getpid()}-{self._seq:06d}{self.SUFFIX}"
        handle = path.open("ab", buffering=0)
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return path, handle

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` to the active segment (the caller serializes appends)."""
        data = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
        self._active[1].write(_LENGTH.pack(len(data)) + data)

    def rotate(self) -> list[tuple[Path, Any]]:
        """The segments holding every row appended so far (kept ones, then the active one); a new one is active."""
        taken, self._kept = [*self._kept, self._active], []
        self._active = self._open()
        return taken

    def keep(self, segments: list[tuple[Path, Any]]) -> None:
        """Their rows were not committed: they stay (locked) for the next flush."""
        self._kept[:0] = segments

    def release(self, segments: list[tuple[Path, Any]]) -> None:
        """Their rows are committed: delete them."""
        for path, handle in segments:
            path.unlink(missing_ok=True)
            handle.close()

    def close(self) -> None:
        """Nothing is pending: delete the segments still held."""
        self.release([*self._kept, self._active])
        self._kept = []

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The rows of a segment; a record cut short by the kill (the last one) is not there: its answer never left."""
        data, rows, at = path.read_bytes(), [], 0
        while at + _LENGTH.size <= len(data):
            (size,) = _LENGTH.unpack_from(data, at)
            if at + _LENGTH.size + size > len(data):
                break
            rows.extend(pickle.loads(data[at + _LENGTH.size : at + _LENGTH.size + size]))
            at += _LENGTH.size + size
        return rows

    def recover(self, writer: Callable[[list[dict[str, Any]]], Any]) -> int:
        """Commit the segments dead processes left, then delete them; returns the rows committed.

        Rows whose request id a committed part already holds (the segment's part was committed, its deletion was
        not) are skipped: ``writer`` must be a ``LakePartWriter`` (its lake and zone are read for that), or any
        callable without them (then nothing is skipped).
        """
        import fcntl

        recovered = 0
        for path in sorted(self.folder.glob(f"*{self.SUFFIX}")):
            if path == self._active[0]:
                continue
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                continue
            with handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process holds it
                rows = self.read(path)
                if rows:
                    rows = _not_committed(writer, rows)
                if rows:
                    writer(rows)
                    recovered += len(rows)
                    log.warning("inference log: committed %d rows a killed server left in %s", len(rows), path)
                path.unlink(missing_ok=True)
        return recovered


def _not_committed(writer: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` minus those whose request id is in a committed part of their days (``LakePartWriter`` only)."""
    lake, zone = getattr(writer, "lake", None), getattr(writer, "zone", None)
    if lake is None or zone is None:
        return rows
    import pandas as pd

    days = sorted({pd.to_datetime(r["timestamp"], utc=True).strftime("%Y-%m-%d") for r in rows})
    committed = read_inference_log(lake, zone, days=days)
    known = set(committed["request_id"]) if "request_id" in committed.columns else set()
    return [r for r in rows if r["request_id"] not in known]


def log_records(
    frame: pd.DataFrame,
    ids: list[Any],
    rows: list[dict[str, Any]],
    answers: list[Any],
    *,
    id_column: str,
    features: list[str],
    batch_id: str | None,
    latency_ms: float,
) -> list[dict[str, Any]]:
    """The inference-log rows of answered requests (see the module docstring for the columns).

    :param frame: the requests' ``request_frame`` (their fields, then ``event_timestamp``).
    :param ids: per request, the use case's id.
    :param rows: per request, the feature row it was scored on.
    :param answers: per request, its answer (``serving_schemas.Prediction``: ``request_id``, ``prediction``,
        ``label``, ``threshold``, ``model_name``, ``model_version``, ``defaults_used``).
    :param id_column: the use case's id column (``features.id_column``).
    :param features: the model's features, logged under their training-set names.
    :param batch_id: the batch's request id; None: each request is its own batch.
    :param latency_ms: the time the answer took (the whole batch's for a batch).
    """
    now = datetime.now(UTC)
    inputs = [c for c in frame.columns if c != "event_timestamp"]
    # Column lists, not DataFrame.to_dict("records") (pandas' per-row access is the cost on a few rows).
    columns = {name: [_plain(v) for v in frame[name].tolist()] for name in frame.columns}
    events = columns.get("event_timestamp") or [None] * len(frame)
    out = []
    for i, (rid, row, answer) in enumerate(zip(ids, rows, answers, strict=True)):
        record: dict[str, Any] = {
            "request_id": answer.request_id,
            "batch_id": batch_id or answer.request_id,
            "timestamp": now,
        }
        record.update({f"input_{name}": columns[name][i] for name in inputs})
        record["event_timestamp"] = events[i]
        record[id_column] = rid
        record.update({name: row.get(name) for name in features})
        record.update(
            {
                "defaults_used": ",".join(answer.defaults_used),
                "prediction": answer.prediction,
                "label": answer.label,
                "threshold": answer.threshold,
                "model_name": answer.model_name,
                "model_version": answer.model_version,
                "latency_ms": latency_ms,
            }
        )
        out.append(record)
    return out


def _plain(value: Any) -> Any:
    """A pandas missing value (NaT, NaN) as None; anything else as it is."""
    try:
        import pandas as pd

        return None if pd.isna(value) else value
    except (TypeError, ValueError):  # a list or an array: kept
        return value


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Log rows as a frame; every time column (``timestamp``, ``event_timestamp``, a datetime request field)
    becomes ``datetime64[us, UTC]``."""
    import pandas as pd

    frame = pd.DataFrame.from_records(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).astype("datetime64[us, UTC]")
    for column in frame.columns:
        values = frame[column]
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            frame[column] = values.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
        elif values.dtype == object:
            present = values.dropna()
            if len(present) and all(isinstance(v, datetime) and v.tzinfo is not None for v in present):
                frame[column] = pd.to_datetime(values, utc=True).astype("datetime64[us, UTC]")
    return frame


class LakePartWriter:
    """Commit rows as parts of ``<zone>/<day>/<part>/`` through a ``LakeHook`` (any object with its API)."""

    def __init__(self, lake: Any, zone: str = DEFAULT_ZONE) -> None:
        self.lake = lake
        self.zone = zone
        self._seq = 0

    def __call__(self, rows: list[dict[str, Any]]) -> list[str]:
        from airflow_mlops.core.drift import event_times

        frame = to_frame(rows)
        days = frame["timestamp"].dt.strftime("%Y-%m-%d")
        written = []
        for day in sorted(days.unique()):
            part = frame[days == day].reset_index(drop=True)
            self._seq += 1
            name = f"{datetime.now(UTC):%H%M%S%f}-{os.getpid()}-{self._seq:06d}"
            folder = self.lake.path(self.zone, day, name)
            buffer = io.BytesIO()
            part.to_parquet(buffer, index=False)
            record = self.lake.write_file(folder / PART_FILE, buffer.getvalue(), rows=len(part))
            events = event_times(part).dropna()
            span = (
                {"event_first": events.min().isoformat(), "event_last": events.max().isoformat()} if len(events) else {}
            )
            self.lake.write_manifest(
                folder,
                [record],
                rows=len(part),
                first=part["timestamp"].min().isoformat(),
                last=part["timestamp"].max().isoformat(),
                model_versions=sorted({str(v) for v in part["model_version"]}),
                **span,
            )
            written.append(str(folder))
        return written


def committed_parts(
    lake: Any, zone: str = DEFAULT_ZONE, days: list[str] | None = None, events: tuple[Any, Any] | None = None
) -> list[dict[str, Any]]:
    """Manifests of committed parts (in day order), each with ``path``; uncommitted parts are ignored.

    :param days: only parts of these UTC days (of the predictions).
    :param events: ``(start, end)``, tz-aware: only parts that may hold a request whose event time is in
        ``[start, end)``. Each part's manifest records the span of its requests' event times (``event_first`` / ``event_last``,
        see ``core.drift.event_times``); a part without one (or with no event time) is kept.
    """
    import pandas as pd

    start, end = (pd.Timestamp(events[0]), pd.Timestamp(events[1])) if events is not None else (None, None)
    root = lake.path(zone)
    if not root.exists():
        return []
    found = []
    for day_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if days is not None and day_dir.name not in days:
            continue
        for part in sorted(p for p in day_dir.iterdir() if p.is_dir()):
            manifest = lake.read_manifest(part)
            if manifest is None or PART_FILE not in manifest.get("files", {}):
                continue
            if start is not None and "event_first" in manifest and "event_last" in manifest:
                if pd.Timestamp(manifest["event_last"]) < start or pd.Timestamp(manifest["event_first"]) >= end:
                    continue
            found.append({**manifest, "path": str(part), "day": day_dir.name})
    return found


def read_inference_log(
    lake: Any, zone: str = DEFAULT_ZONE, days: list[str] | None = None, events: tuple[Any, Any] | None = None
) -> pd.DataFrame:
    """All committed predictions, hashes verified, ordered by timestamp; optionally only the parts of some UTC
    ``days`` or those that may hold requests whose event time is in ``events = (start, end)`` (``committed_parts``:
    a period's monitoring reads that period's parts, not the whole log; the rows still need ``select_period``)."""
    import pandas as pd

    frames = [
        pd.read_parquet(io.BytesIO(lake.read_verified(part["files"][PART_FILE])))
        for part in committed_parts(lake, zone, days, events)
    ]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable").reset_index(drop=True)
