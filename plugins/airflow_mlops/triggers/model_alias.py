"""Wait in the triggerer for a registered model's alias to point at a new version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def read_alias(tracking_uri: str, registry_uri: str, name: str, alias: str) -> str | None:
    """The version ``name@alias`` points at, or ``None`` if the alias (or the model) does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


class ModelAliasTrigger(BaseTrigger):
    """Fire once ``registered_model_name@alias`` points at a version other than ``from_version``.

    :param tracking_uri: MLflow tracking URI (resolved by the sensor from its connection).
    :param registry_uri: MLflow registry URI.
    :param registered_model_name: the model.
    :param alias: the alias to watch, e.g. ``champion``.
    :param from_version: the version to move away from; ``None``: fire as soon as the alias exists.
    :param poll_interval: seconds between registry reads.
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        registry_uri: str,
        registered_model_name: str,
        alias: str,
        from_version: str | None = None,
        poll_interval: float = 30.0,
    ) -> None:
        super().__init__()
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.registered_model_name = registered_model_name
        self.alias = alias
        self.from_version = from_version
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "tracking_uri": self.tracking_uri,
                "registry_uri": self.registry_uri,
                "registered_model_name": self.registered_model_name,
                "alias": self.alias,
                "from_version": self.from_version,
                "poll_interval": self.poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                version = await asyncio.to_thread(
                    read_alias, self.tracking_uri, self.registry_uri, self.registered_model_name, self.alias
                )
            except Exception as err:  # noqa: BLE001 - reported to the task, which fails with it
                yield TriggerEvent({"status": "error", "message": f"{type(err).__name__}: {err}"})
                return
            if version is not None and version != self.from_version:
                self.log.info(
                    "%s@%s moved from %s to %s", self.registered_model_name, self.alias, self.from_version, version
                )
                yield TriggerEvent({"status": "moved", "version": version, "from_version": self.from_version})
                return
            await asyncio.sleep(self.poll_interval)
