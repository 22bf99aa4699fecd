"""Batches: one period (a month or a day) of upstream data, named by its period and addressed by the hash of its bytes.

A period is written ``YYYY-MM`` (a month) or ``YYYY-MM-DD`` (a day); its form tells its kind. Periods of one
kind sort chronologically as strings, and lake partitions (``landing/<period>/``, ``validated/<period>/``...)
are named by them.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

#: The kinds of period a batch may cover.
PERIOD_KINDS = ("month", "day")
PeriodKind = Literal["month", "day"]

_MONTH = re.compile(r"^(\d{4})-(\d{1,2})(?:$|-|T)")
_DAY = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:$|T|\s)")
_EXACT = re.compile(r"^(\d{4})-(\d{1,2})(?:-(\d{1,2}))?$")

#: Name of the marker an upstream system writes into ``landing/<period>/`` after the data files.
SUCCESS_MARKER = "_SUCCESS"
#: Name of the manifest that commits a directory of the lake; readers trust only files it lists.
MANIFEST = "_manifest.json"

_stamp_lock = threading.Lock()
_last_stamp: datetime | None = None
#: The order of a manifest without a (readable) ``written_at``: before every stamped one.
_UNSTAMPED = datetime.min.replace(tzinfo=UTC)


def commit_stamp() -> str:
    """The ``written_at`` of a manifest committed now: UTC, ISO 8601 to the microsecond.

    Strictly increasing within a process: a commit in the same microsecond as the one before it (or after the
    clock stepped back) is stamped one microsecond after it, so of two commits one after the other, the second
    is always the newer. (Manifests of earlier versions were stamped to the second; ``manifest_order`` orders
    them with these.)
    """
    global _last_stamp
    with _stamp_lock:
        now = datetime.now(UTC)
        if _last_stamp is not None and now <= _last_stamp:
            now = _last_stamp + timedelta(microseconds=1)
        _last_stamp = now
    return now.isoformat(timespec="microseconds")


def manifest_order(manifest: Mapping) -> tuple[datetime, bool]:
    """The sort key of a committed manifest by its commit time: the later commit is the greater key.

    ``written_at`` is parsed, not compared as text (stamps of different precision or offset do not sort as
    strings). A stamp to the second (an earlier version's manifest) stands for the start of its second, and of
    two manifests stamped at the same instant, one to the second and one to the microsecond, the latter is the
    newer (it was written by the later version). A manifest without ``written_at`` is older than any stamped one.

    :param manifest: a parsed ``_manifest.json``.
    :raises ValueError: ``written_at`` is not an ISO 8601 time.
    """
    stamp = manifest.get("written_at")
    if not stamp:
        return _UNSTAMPED, False
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError as err:
        raise ValueError(f"a manifest's written_at is not an ISO 8601 time: {stamp!r}") from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment, "." in str(stamp)


def newest_committed(manifests: Mapping[str, Mapping]) -> str | None:
    """Of ``{name: manifest}``, the name whose manifest was committed last (``manifest_order``); ties (only
    possible between stamps to the second) go to the greater name, so the answer never depends on listing order.
    None when there is none.

    :param manifests: e.g. folder URI → its parsed manifest.
    """
    if not manifests:
        return None
    return max(manifests, key=lambda name: (manifest_order(manifests[name]), name))


def check_kind(kind: str) -> PeriodKind:
    """``kind`` if it is a period kind (``month`` or ``day``); a ValueError naming the choices otherwise.

    :param kind: the kind to check.
    """
    if kind not in PERIOD_KINDS:
        raise ValueError(f"not a period kind: {kind!r} (expected one of {', '.join(PERIOD_KINDS)})")
    return kind  # type: ignore[return-value]


def _month(year: int, month: int, value: str) -> str:
    if not 1 <= month <= 12:
        raise ValueError(f"not a month: {value!r} (month {month} is outside 1..12)")
    return f"{year:04d}-{month:02d}"


def _day(year: int, month: int, day: int, value: str) -> str:
    try:
        return date(year, month, day).isoformat()
    except ValueError as err:
        raise ValueError(f"not a day: {value!r} ({err})") from err


def parse_period(value: str, kind: str | None = None) -> str:
    """Normalise a period: ``'2013-3'`` → ``'2013-03'`` (a month), ``'2013-3-5'`` → ``'2013-03-05'`` (a day).

    Without ``kind`` the string's form decides, and only ``YYYY-MM`` or ``YYYY-MM-DD`` is accepted. With ``kind``
    the value is read as that kind: ``'month'`` also takes a day or a timestamp and returns its month (as
    ``parse_month`` always did), ``'day'`` also takes a timestamp (``'2013-03-05T10:00'``) and returns its date.

    :param value: the text to read.
    :param kind: ``month``, ``day`` or None (from the form).
    :raises ValueError: not a period (of that kind); the message names the value and the expected form.
    """
    text = str(value).strip()
    if kind is None:
        match = _EXACT.match(text)
        if not match:
            raise ValueError(f"not a period: {value!r} (expected YYYY-MM for a month or YYYY-MM-DD for a day)")
        year, mon, day = match.groups()
        if day is None:
            return _month(int(year), int(mon), value)
        return _day(int(year), int(mon), int(day), value)
    if check_kind(kind) == "month":
        match = _MONTH.match(text)
        if not match:
            raise ValueError(f"not a month: {value!r} (expected YYYY-MM, e.g. 2013-03)")
        return _month(int(match.group(1)), int(match.group(2)), value)
    match = _DAY.match(text)
    if not match:
        raise ValueError(f"not a day: {value!r} (expected YYYY-MM-DD, e.g. 2013-03-05)")
    return _day(int(match.group(1)), int(match.group(2)), int(match.group(3)), value)


def period_kind(period: str) -> PeriodKind:
    """``'month'`` for ``YYYY-MM``, ``'day'`` for ``YYYY-MM-DD``.

    :param period: a period string.
    :raises ValueError: not a period.
    """
    return "month" if len(parse_period(period)) == 7 else "day"


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """The period's data interval ``[start, end)`` in UTC.

    :param period: ``YYYY-MM`` or ``YYYY-MM-DD``.
    """
    normal = parse_period(period)
    if len(normal) == 7:
        year, mon = (int(p) for p in normal.split("-"))
        start = datetime(year, mon, 1, tzinfo=UTC)
        return start, datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    start = datetime.combine(date.fromisoformat(normal), datetime.min.time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def period_of(moment: datetime, kind: str) -> str:
    """The period of ``kind`` that contains ``moment`` (its UTC month or day; a naive moment is taken as UTC).

    :param moment: e.g. a data interval's start.
    :param kind: ``month`` or ``day``.
    """
    check_kind(kind)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    if kind == "month":
        return f"{moment.year:04d}-{moment.month:02d}"
    return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"


def shift_period(period: str, steps: int) -> str:
    """The period ``steps`` periods of the same kind after ``period`` (before it when negative).

    :param period: ``YYYY-MM`` or ``YYYY-MM-DD``.
    :param steps: how many periods to move.
    """
    normal = parse_period(period)
    if len(normal) == 7:
        year, mon = (int(p) for p in normal.split("-"))
        index = year * 12 + (mon - 1) + steps
        return f"{index // 12:04d}-{index % 12 + 1:02d}"
    return (date.fromisoformat(normal) + timedelta(days=steps)).isoformat()


def previous_periods(period: str, count: int) -> list[str]:
    """``count`` periods before ``period``, oldest first (``previous_periods('2013-03', 2) == ['2013-01', '2013-02']``).

    :param period: the period (its form gives the kind).
    :param count: how many earlier periods (0 or more).
    """
    if count < 0:
        raise ValueError(f"count must be 0 or more, not {count}")
    return [shift_period(period, -back) for back in range(count, 0, -1)]


def window_periods(end: str, count: int) -> list[str]:
    """The trailing ``count`` periods ending with ``end`` (inclusive), oldest first.

    :param end: the newest period of the window (its form gives the kind).
    :param count: the window's length (1 or more).
    """
    if count < 1:
        raise ValueError(f"a window needs at least 1 period, not {count}")
    return [*previous_periods(end, count - 1), parse_period(end)]


def schedule_periods(first: str, last: str) -> list[datetime]:
    """The start (UTC) of every period from ``first`` to ``last`` inclusive; both of one kind.

    :param first: the first scheduled period, ``YYYY-MM`` or ``YYYY-MM-DD``.
    :param last: the last one, of the same kind.
    :raises ValueError: not periods, of different kinds, or ``last`` before ``first``.
    """
    first, last = parse_period(first), parse_period(last)
    if period_kind(first) != period_kind(last):
        raise ValueError(f"the schedule's first period {first} and last period {last} are not of one kind")
    if last < first:
        raise ValueError(f"the schedule's last period {last} is before its first period {first}")
    starts, period = [], first
    while period <= last:
        starts.append(period_bounds(period)[0])
        period = shift_period(period, 1)
    return starts


def periods_to_ingest(
    requested: str | None,
    run_type: str,
    interval_start: datetime | None,
    pending: list[str],
    kind: str = "month",
) -> tuple[list[str], bool]:
    """Which periods a run ingests, and whether they were asked for by name (then a missing one is an error).

    A named period wins (read as ``kind``); a scheduled or backfill run takes its data interval's period of
    ``kind``; any other run (a landing event, a manual run without a period) takes every batch waiting in
    ``landing/``.

    :param requested: the period asked for (blank: none).
    :param run_type: the DAG run's type (``scheduled``, ``backfill``, ``manual``, ``asset_triggered``...).
    :param interval_start: the run's data interval start.
    :param pending: the periods with a complete batch waiting in ``landing/``.
    :param kind: the batches' period kind, ``month`` or ``day``.
    """
    check_kind(kind)
    if requested and requested.strip() not in ("", "None", "null"):
        return [parse_period(requested, kind)], True
    if run_type in ("scheduled", "backfill") and interval_start is not None:
        return [period_of(interval_start, kind)], False
    return sorted(pending), False


# -- months (the names the monthly code has always used) -------------------------------------------------------
def parse_month(value: str) -> str:
    """Normalise ``'2013-03'`` (also accepts ``'2013-3'`` and ``'2013-03-01...'``) and reject anything else.

    :param value: the text to read.
    """
    return parse_period(value, "month")


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The month's data interval ``[start, end)`` in UTC.

    :param month: ``YYYY-MM``.
    """
    return period_bounds(parse_month(month))


def month_of(moment: datetime) -> str:
    """The month a data interval starting at ``moment`` covers (its UTC month).

    :param moment: the data interval's start.
    """
    return period_of(moment, "month")


def months_to_ingest(
    requested: str | None, run_type: str, interval_start: datetime | None, pending: list[str]
) -> tuple[list[str], bool]:
    """``periods_to_ingest`` for monthly batches.

    :param requested: the month asked for (blank: none).
    :param run_type: the DAG run's type.
    :param interval_start: the run's data interval start.
    :param pending: the months with a complete batch waiting in ``landing/``.
    """
    return periods_to_ingest(requested, run_type, interval_start, pending, "month")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def batch_hash(file_hashes: dict[str, str]) -> str:
    """One hash for a batch of files: the sha256 of its sorted ``name:sha256`` lines."""
    lines = "".join(f"{name}:{digest}\n" for name, digest in sorted(file_hashes.items()))
    return sha256_bytes(lines.encode())


def count_csv_rows(data: bytes) -> int:
    """Data rows of a CSV payload: its lines minus the header (0 for an empty file)."""
    if not data.strip():
        return 0
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    return max(lines - 1, 0)


def is_parquet(name: str) -> bool:
    """Whether a batch file is Parquet (by its name: ``.parquet`` or ``.pq``); any other file is read as CSV.

    :param name: the file's name.
    """
    return name.lower().endswith((".parquet", ".pq"))


def count_rows(name: str, data: bytes) -> int:
    """Data rows of a batch file: a Parquet file's row count from its footer, else CSV lines minus the header.

    An unreadable Parquet file counts 0 rows (validation then reports on it).

    :param name: the file's name (its suffix tells the format).
    :param data: the file's bytes.
    """
    if not is_parquet(name):
        return count_csv_rows(data)
    import io

    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(io.BytesIO(data)).metadata.num_rows)
    except Exception:  # noqa: BLE001 - a broken file is validation's to report, not ingestion's
        return 0


def file_stem(name: str) -> str:
    """A batch file's frame name: its name without the extension (``daily.csv`` → ``daily``).

    :param name: the file's name.
    """
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


@dataclass(frozen=True)
class FileRecord:
    """A file in the lake with what identifies its content."""

    name: str
    uri: str
    sha256: str
    rows: int
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Batch:
    """One ingested batch: small enough for XCom, enough to find and verify every byte of it.

    ``period`` is ``YYYY-MM`` or ``YYYY-MM-DD``; ``primary`` names the file whose rows and hash identify the
    batch downstream (None: the first of ``files``).
    """

    period: str
    sha256: str
    uri: str
    files: dict[str, FileRecord] = field(default_factory=dict)
    primary: str | None = None

    @property
    def batch_id(self) -> str:
        return f"{self.period}-{self.sha256[:12]}"

    @property
    def kind(self) -> PeriodKind:
        """``month`` or ``day``, from the period's form."""
        return period_kind(self.period)

    @property
    def month(self) -> str | None:
        """The period of a monthly batch (what monthly code has always read); None for a daily one."""
        return self.period if self.kind == "month" else None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files.values())

    def period_fields(self) -> dict[str, str]:
        """``{"period": ...}``, plus ``"month"`` for a monthly batch: the keys manifests and Asset extras carry."""
        return {"period": self.period, **({"month": self.period} if self.kind == "month" else {})}

    def to_dict(self) -> dict:
        return {
            **self.period_fields(),
            "batch_id": self.batch_id,
            "sha256": self.sha256,
            "uri": self.uri,
            "rows": self.rows,
            "primary": self.primary,
            "files": {name: rec.to_dict() for name, rec in self.files.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Batch:
        """Read ``to_dict``'s output, or a raw manifest (older ones name only ``month``).

        :param data: the dict.
        """
        files = {name: FileRecord(**rec) for name, rec in data["files"].items()}
        period = data.get("period") or data["month"]
        return cls(period=period, sha256=data["sha256"], uri=data["uri"], files=files, primary=data.get("primary"))
