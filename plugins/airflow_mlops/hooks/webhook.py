"""A chat webhook (Slack's incoming webhooks, or anything taking the same JSON): where it is, and posting to it.

The URL lives in an Airflow HTTP connection, never in code or ``mlops.yaml`` (a Slack webhook's path is its secret).
The standard library posts (``urllib``): no HTTP client to install for a notification.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook


class WebhookHook(BaseHook):
    """Post JSON to the webhook of an HTTP connection.

    The URL: the connection's ``host`` when it holds a whole URL (``https://hooks.slack.com/services/...``), else
    ``<schema or http>://<host>[:<port>]``; then the extra ``endpoint`` (a path), if any. A ``password`` is sent as
    a bearer token. The extra ``timeout`` (seconds, default 10) bounds each post.

    :param webhook_conn_id: the HTTP connection of the webhook.
    """

    conn_name_attr = "webhook_conn_id"
    default_conn_name = "mlops_webhook"
    conn_type = "http"
    hook_name = "Webhook"

    def __init__(self, webhook_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.webhook_conn_id = webhook_conn_id

    @cached_property
    def _conn(self) -> Any:
        return self.get_connection(self.webhook_conn_id)

    @cached_property
    def url(self) -> str:
        conn = self._conn
        if not conn.host:
            raise ValueError(f"connection {self.webhook_conn_id} has no host: set the webhook's URL as its host")
        base = conn.host if "://" in conn.host else f"{conn.schema or 'http'}://{conn.host}"
        if conn.port and "://" not in conn.host:
            base = f"{base}:{conn.port}"
        endpoint = str((conn.extra_dejson or {}).get("endpoint") or "")
        return f"{base.rstrip('/')}/{endpoint.lstrip('/')}" if endpoint else base

    def post_json(self, payload: dict[str, Any]) -> int:
        """POST ``payload`` as JSON; returns the HTTP status.

        :raises OSError: the webhook is unreachable or answers with an error status (``urllib.error.HTTPError``).
        """
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if self._conn.password:
            headers["Authorization"] = f"Bearer {self._conn.password}"
        timeout = float((self._conn.extra_dejson or {}).get("timeout", 10))
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the URL is the connection's)
            return int(response.status)
