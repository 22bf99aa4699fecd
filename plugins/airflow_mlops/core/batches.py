"""Batches: one month of upstream data, named by its month and addressed by the hash of its bytes."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

_MONTH = re.compile(r"^(\d{4})-(\d{1,2})(?:$|-|T)")

#: Name of the marker an upstream system writes into ``landing/<month>/`` after the data files.
SUCCESS_MARKER = "_SUCCESS"
#: Name of the manifest that commits a directory of the lake; readers trust only files it lists.
MANIFEST = "_manifest.json"


def parse_month(value: str) -> str:
    """Normalise ``'2013-03'`` (also accepts ``'2013-3'`` and ``'2013-03-01...'``) and reject anything else."""
    match = _MONTH.match(str(value).strip())
    if not match:
        raise ValueError(f"not a month: {value!r} (expected YYYY-MM, e.g. 2013-03)")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        raise ValueError(f"not a month: {value!r} (month {month} is outside 1..12)")
    return f"{year:04d}-{month:02d}"


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The month's data interval ``[start, end)`` in UTC."""
    year, mon = (int(p) for p in parse_month(month).split("-"))
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    return start, end


def month_of(moment: datetime) -> str:
    """The month a data interval starting at ``moment`` covers (its UTC month)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


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


def months_to_ingest(
    requested: str | None, run_type: str, interval_start: datetime | None, pending: list[str]
) -> tuple[list[str], bool]:
    """Which months a run ingests, and whether they were asked for by name (then a missing one is an error).

    A named month wins; a scheduled or backfill run takes its data interval's month; any other run (a
    landing event, a manual run without a month) takes every batch waiting in ``landing/``.
    """
    if requested and requested.strip() not in ("", "None"):
        return [parse_month(requested)], True
    if run_type in ("scheduled", "backfill") and interval_start is not None:
        return [month_of(interval_start)], False
    return sorted(pending), False


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
    """One ingested batch: small enough for XCom, enough to find and verify every byte of it."""

    month: str
    sha256: str
    uri: str
    files: dict[str, FileRecord] = field(default_factory=dict)

    @property
    def batch_id(self) -> str:
        return f"{self.month}-{self.sha256[:12]}"

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files.values())

    def to_dict(self) -> dict:
        return {
            "month": self.month,
            "batch_id": self.batch_id,
            "sha256": self.sha256,
            "uri": self.uri,
            "rows": self.rows,
            "files": {name: rec.to_dict() for name, rec in self.files.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Batch:
        files = {name: FileRecord(**rec) for name, rec in data["files"].items()}
        return cls(month=data["month"], sha256=data["sha256"], uri=data["uri"], files=files)
