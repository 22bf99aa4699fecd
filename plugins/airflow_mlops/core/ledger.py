"""The promotion ledger: an append-only, numbered history of every move of a serving alias.

Entry ``seq`` n is the n-th move of the alias; ``to_version`` of the newest entry is where the alias must
point. The storage (see ``MlflowHook``) makes "append entry n" atomic and exclusive, which turns a
promotion into a compare-and-set: it may only be appended by someone who read entry n-1 as the newest.
This module is the pure part: entries, replay, and what a promotion or rollback is allowed to do.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

PROMOTE, ROLLBACK = "promote", "rollback"


class LedgerConflict(Exception):
    """The alias is not where the caller expected it (someone else promoted or rolled back first)."""


@dataclass(frozen=True)
class LedgerEntry:
    """One move of ``alias`` of registered model ``model`` from ``from_version`` to ``to_version``."""

    seq: int
    action: str
    model: str
    alias: str
    from_version: str | None
    to_version: str
    triggered_by: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] | None = None
    reason: str | None = None
    timestamp: str = ""
    #: A human's approval of a promotion (``core.approval.record``: decision, approver, comment, at, mode);
    #: None: promoted without one (approval ``auto``, or ``manual_if`` with no condition holding).
    approval: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.action not in (PROMOTE, ROLLBACK):
            raise ValueError(f"unknown ledger action {self.action!r}")
        if self.seq < 1:
            raise ValueError("ledger sequence numbers start at 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerEntry:
        return cls(
            seq=int(data["seq"]),
            action=data["action"],
            model=data["model"],
            alias=data["alias"],
            from_version=None if data.get("from_version") in (None, "") else str(data["from_version"]),
            to_version=str(data["to_version"]),
            triggered_by=dict(data.get("triggered_by") or {}),
            gate=data.get("gate"),
            reason=data.get("reason"),
            timestamp=data.get("timestamp", ""),
            approval=data.get("approval"),
        )


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def head(entries: list[LedgerEntry]) -> LedgerEntry | None:
    return max(entries, key=lambda e: e.seq) if entries else None


def check_sequence(entries: list[LedgerEntry]) -> None:
    """Raise ``ValueError`` if the ledger has gaps or an entry that does not start where the previous ended."""
    ordered = sorted(entries, key=lambda e: e.seq)
    for i, entry in enumerate(ordered, start=1):
        if entry.seq != i:
            raise ValueError(f"ledger sequence has a gap or duplicate at {i} (found {entry.seq})")
        if i > 1 and entry.from_version != ordered[i - 2].to_version:
            raise ValueError(
                f"ledger entry {entry.seq} moves from version {entry.from_version} but entry {i - 1} "
                f"left the alias at {ordered[i - 2].to_version}"
            )


def history(entries: list[LedgerEntry]) -> list[str]:
    """The stack of versions the alias has held that are still "live": a rollback pops the newest one.

    ``[1, 2, 3]`` after promoting 1, 2 and 3; a rollback then gives ``[1, 2]``; a further rollback ``[1]``.
    """
    stack: list[str] = []
    for entry in sorted(entries, key=lambda e: e.seq):
        if entry.action == PROMOTE:
            if not stack and entry.from_version is not None:
                stack.append(entry.from_version)
            stack.append(entry.to_version)
        else:
            while stack and stack[-1] != entry.to_version:
                stack.pop()
            if not stack:
                stack.append(entry.to_version)
    return stack


def rollback_target(entries: list[LedgerEntry]) -> str:
    """The champion before the current one; raises ``LedgerConflict`` if there is none."""
    stack = history(entries)
    if len(stack) < 2:
        raise LedgerConflict(
            f"nothing to roll back to: the ledger holds {len(stack)} live version(s) ({', '.join(stack) or 'none'})"
        )
    return stack[-2]


def expected_state(entries: list[LedgerEntry], alias_now: str | None) -> str | None:
    """Where the alias stands according to the ledger, reconciled with where it actually points.

    The alias may lag the ledger (a promoter crashed or is between claiming and moving it); then the ledger
    wins. An alias on a version the ledger never mentions was moved by hand: that is a conflict, since the
    gate's comparison and the audit trail would both be wrong.
    """
    last = head(entries)
    if last is None:
        return alias_now
    if alias_now is None or alias_now == last.to_version:
        return last.to_version
    known = {e.to_version for e in entries} | {e.from_version for e in entries if e.from_version}
    if alias_now in known:
        return last.to_version
    raise LedgerConflict(
        f"alias '{last.alias}' points at version {alias_now}, which the promotion ledger never put there "
        f"(its last entry #{last.seq} moved it to {last.to_version}): it was moved by hand. "
        "Restore it or record the change with a rollback to the version you want."
    )


def same_trigger(entry: LedgerEntry, triggered_by: dict[str, Any]) -> bool:
    """Whether ``entry`` was written by the same Airflow task run (a retry must not append twice)."""
    keys = ("dag_id", "run_id", "task_id")
    return all(triggered_by.get(k) for k in keys) and all(
        entry.triggered_by.get(k) == triggered_by.get(k) for k in keys
    )
