"""Event-driven scheduling on a flag file in the lake, for any ``ObjectStoragePath`` (file://, s3://, ...)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


class LakeFlagTrigger(BaseEventTrigger):
    """Fire once when a flag file appears in the lake, then delete the flag.

    An upstream system writes its data first and the flag last (e.g. ``landing/_READY``), so the flag never
    points at half-written data, and deleting it never deletes data. Used in an ``AssetWatcher`` it re-arms
    after each event; two batches landing within one poll give one event, so consumers should take every
    pending batch rather than one.

    :param flag_url: the flag's URL, e.g. ``file:///…/lake/landing/_READY``.
    :param lake_conn_id: connection with the storage credentials, if any.
    :param poke_interval: seconds between polls.
    """

    def __init__(self, *, flag_url: str, lake_conn_id: str | None = None, poke_interval: float = 5.0) -> None:
        super().__init__()
        self.flag_url = flag_url
        self.lake_conn_id = lake_conn_id
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"flag_url": self.flag_url, "lake_conn_id": self.lake_conn_id, "poke_interval": self.poke_interval},
        )

    def _take_flag(self) -> str | None:
        from airflow.sdk import ObjectStoragePath

        flag = ObjectStoragePath(self.flag_url, conn_id=self.lake_conn_id)
        if not flag.exists():
            return None
        note = flag.read_text(errors="replace").strip()[:1000]
        flag.unlink()
        return note

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            note = await asyncio.to_thread(self._take_flag)
            if note is not None:
                self.log.info("flag %s found and taken (note: %r)", self.flag_url, note)
                yield TriggerEvent({"flag": self.flag_url, "note": note})
                return
            await asyncio.sleep(self.poke_interval)
