"""Notifications of a use case's events, through Airflow's notifier interface: by email and to a chat webhook.

A use case asks for them in ``mlops.yaml`` (``notifications``: an SMTP connection and recipients, an HTTP
connection holding a Slack-compatible webhook's URL, the events it wants); no address of a server and no secret in
code. The events (``EVENTS``) and where they fire:

- ``quarantine``: a batch failed validation and was quarantined (``ValidateBatchOperator``);
- ``gate_rejected``: the gate rejected a candidate (``ModelGateOperator``);
- ``retrain_requested``: the retraining policy asked for a retrain (``RetrainingPolicyOperator``);
- ``approval_waiting``: a candidate waits for a person's approval (the approval step calls :func:`notify_event`);
- ``promoted`` / ``rolled_back``: ``champion`` moved (``MlflowPromoteModelOperator``, ``MlflowRollbackModelOperator``);
- ``task_failed``: any task of the use case's DAGs failed (:class:`MlopsNotifier`, every DAG's
  ``on_failure_callback``).

Each message says what happened, why, and links to the task's log, the DAG run and the report when there is one.
Delivery never fails the task: a channel that cannot deliver is logged (a warning naming the connection and the
cause) and skipped. Light: the SMTP provider and the use case's config are imported when a message is sent.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.notifier import BaseNotifier

from airflow_mlops.usecase.config import NOTIFICATION_EVENTS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from airflow.sdk import Context

    from airflow_mlops.usecase.config import UseCase

log = logging.getLogger(__name__)

#: Every event a use case may be notified of (``notifications.events``), in the loop's order.
EVENTS = NOTIFICATION_EVENTS
QUARANTINE, GATE_REJECTED, RETRAIN_REQUESTED, APPROVAL_WAITING, PROMOTED, ROLLED_BACK, TASK_FAILED = EVENTS
#: Each event's headline.
TITLES = {
    QUARANTINE: "Batch quarantined",
    GATE_REJECTED: "Model rejected by the gate",
    RETRAIN_REQUESTED: "Retraining requested",
    APPROVAL_WAITING: "Model waiting for approval",
    PROMOTED: "Model promoted to champion",
    ROLLED_BACK: "Champion rolled back",
    TASK_FAILED: "Task failed",
}
#: Slack's limit on a section's text (longer reasons are cut, the links always fit).
_SLACK_TEXT = 2900


@dataclass(frozen=True)
class Message:
    """One notification: the use case, the event, what happened, why, and links (label → absolute URL)."""

    usecase: str
    event: str
    what: str
    why: tuple[str, ...] = ()
    links: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{TITLES.get(self.event, self.event)} — {self.usecase}"

    @property
    def subject(self) -> str:
        return f"[mlops {self.usecase}] {TITLES.get(self.event, self.event)}: {self.what}"[:200].splitlines()[0]

    def text(self) -> str:
        """Plain text: what, why (one line each), the links."""
        lines = [f"{self.title} ({self.event})", "", self.what]
        if self.why:
            lines += ["", "Why:", *(f"- {reason}" for reason in self.why)]
        if self.links:
            lines += ["", *(f"{label}: {url}" for label, url in self.links.items())]
        return "\n".join(lines)

    def html(self) -> str:
        """The email's body."""
        parts = [f"<h3>{html.escape(self.title)}</h3>", f"<p>{html.escape(self.what)}</p>"]
        if self.why:
            items = "".join(f"<li>{html.escape(reason)}</li>" for reason in self.why)
            parts.append(f"<p><b>Why</b></p><ul>{items}</ul>")
        if self.links:
            links = " · ".join(
                f'<a href="{html.escape(url, quote=True)}">{html.escape(label)}</a>'
                for label, url in self.links.items()
            )
            parts.append(f"<p>{links}</p>")
        parts.append(f"<p><small>event: {html.escape(self.event)}</small></p>")
        return "\n".join(parts)

    def slack(self) -> dict[str, Any]:
        """Slack-compatible JSON: ``text`` (the fallback every webhook shows) and ``blocks``."""
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": self.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": self.what[:_SLACK_TEXT]}},
        ]
        if self.why:
            why = "\n".join(f"• {reason}" for reason in self.why)
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Why*\n{why}"[:_SLACK_TEXT]}})
        elements = [{"type": "mrkdwn", "text": f"event `{self.event}`"}]
        elements += [{"type": "mrkdwn", "text": f"<{url}|{label}>"} for label, url in self.links.items()]
        blocks.append({"type": "context", "elements": elements[:10]})
        return {"text": self.text()[:_SLACK_TEXT], "blocks": blocks}


def airflow_url(path: str = "") -> str:
    """An absolute URL of the Airflow UI (``[api] base_url``): ``path`` (``/dags/...``, ``/mlops/lake/...``)
    appended; an absolute ``path`` is returned as is."""
    if "://" in path:
        return path
    from airflow.sdk.configuration import conf

    base = conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")
    return f"{base}/{path.lstrip('/')}" if path else base


def run_links(context: Mapping[str, Any]) -> dict[str, str]:
    """The task's log and its DAG run in the Airflow UI, from a task's context; ``{}`` without a task instance."""
    from urllib.parse import quote

    ti = context.get("ti")
    if ti is None:
        return {}
    run = airflow_url(f"/dags/{ti.dag_id}/runs/{quote(str(ti.run_id))}")
    task = getattr(ti, "log_url", None) or f"{run}/tasks/{ti.task_id}"
    return {"Task log": task, "DAG run": run}


def build_message(
    usecase: str,
    event: str,
    context: Mapping[str, Any],
    what: str,
    why: str | Iterable[str] | None = None,
    links: Mapping[str, str | None] | None = None,
) -> Message:
    """The message of ``event``: the given links (relative ones made absolute, empty ones dropped), then the run's.

    :param why: one reason or several (e.g. the gate's reasons, the failed expectations).
    """
    reasons = (why,) if isinstance(why, str) else tuple(str(r) for r in (why or ()))
    given = {label: airflow_url(url) for label, url in (links or {}).items() if url}
    return Message(usecase, event, str(what), tuple(r for r in reasons if r), {**given, **run_links(context)})


def deliver(settings: Mapping[str, Any], message: Message, context: Mapping[str, Any]) -> list[str]:
    """Send ``message`` through each channel of a use case's ``notifications`` settings; never raises.

    :return: the channels that delivered (``email``, ``webhook``); a failed one is logged as a warning.
    """
    delivered = []
    for channel, send in (("email", _send_email), ("webhook", _send_webhook)):
        target = settings.get(channel)
        if not target:
            continue
        try:
            send(target, message, context)
        except Exception as err:  # a notification must never fail the task it reports on
            log.warning(
                "notification %s of %s not delivered by %s (connection %s): %s: %s",
                message.event,
                message.usecase,
                channel,
                target.get("conn_id"),
                type(err).__name__,
                err,
            )
        else:
            delivered.append(channel)
            log.info("notification %s of %s delivered by %s", message.event, message.usecase, channel)
    return delivered


def _send_email(target: Mapping[str, Any], message: Message, context: Mapping[str, Any]) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(
        to=list(target["to"]),
        from_email=target.get("from_email"),
        subject=message.subject,
        html_content=message.html(),
        smtp_conn_id=target["conn_id"],
    )
    notifier.notify(context)  # not notifier(context): the message is final, not a template to render


def _send_webhook(target: Mapping[str, Any], message: Message, context: Mapping[str, Any]) -> None:
    from airflow_mlops.hooks.webhook import WebhookHook

    WebhookHook(webhook_conn_id=target["conn_id"]).post_json(message.slack())


class MlopsNotifier(BaseNotifier):
    """Notify a use case's channels (its ``notifications`` settings) of an event; never raises.

    As a callback (``on_failure_callback=MlopsNotifier(usecase)``, as every DAG of the factory has) it reports the
    failed task (``task_failed``: the task, its try and the exception); called by :func:`notify_event` it reports
    an event of the loop. A use case without ``notifications``, or not asking for the event, is not notified.

    :param usecase: the use-case folder (holding ``mlops.yaml``).
    :param event: one of ``EVENTS``; default ``task_failed``.
    :param what: what happened (templated); default, for ``task_failed``, the task and its try.
    :param why: why: a reason or a list of them (templated); default, for ``task_failed``, the exception.
    :param links: label → URL of what to look at (a report, an MLflow page); relative URLs are the Airflow UI's.
    """

    template_fields = ("what", "why")

    def __init__(
        self,
        usecase: str | Path,
        event: str = TASK_FAILED,
        what: str | None = None,
        why: str | list[str] | tuple[str, ...] | None = None,
        links: Mapping[str, str | None] | None = None,
        **kwargs: Any,
    ) -> None:
        if event not in EVENTS:
            raise ValueError(f"{event!r} is not a notification event (expected one of {', '.join(EVENTS)})")
        super().__init__(**kwargs)
        self.usecase = str(usecase)
        self.event = event
        self.what = what
        self.why = why
        self.links = dict(links or {})

    def notify(self, context: Context) -> list[str]:  # type: ignore[override]
        """Send the event's message; returns the channels that delivered (none: logged, never raised)."""
        try:
            from airflow_mlops.usecase import config

            usecase = config.load(self.usecase)
            settings = usecase.notifications
            if not settings or self.event not in settings["events"]:
                return []
            what, why = self.what, self.why
            if self.event == TASK_FAILED:
                what, why = what or _failed_task(context), why or _exception(context)
            message = build_message(usecase.name, self.event, context, what or TITLES[self.event], why, self.links)
            return deliver(settings, message, context)
        except Exception as err:
            log.warning("notification %s of %s not sent: %s: %s", self.event, self.usecase, type(err).__name__, err)
            return []


def notify_event(
    usecase: UseCase | str | Path,
    event: str,
    context: Mapping[str, Any],
    *,
    what: str,
    why: str | Iterable[str] | None = None,
    links: Mapping[str, str | None] | None = None,
) -> list[str]:
    """Notify ``usecase``'s channels of ``event``, from a task (``MlopsBaseOperator.notify`` calls this); never raises.

    The approval step calls it with ``APPROVAL_WAITING`` when a candidate starts waiting, e.g.
    ``notify_event(folder, APPROVAL_WAITING, context, what="model v7 waits for approval", why=gate["reasons"],
    links={"MLflow version": url})``.

    :param usecase: the use case (its folder, or its loaded config).
    :param event: one of ``EVENTS``.
    :param context: the task's context (its task instance gives the run's links).
    :param what: what happened, one sentence.
    :param why: the reasons (the gate's, the failed expectations, the policy's triggers).
    :param links: label → URL of the report or page to look at; relative URLs are the Airflow UI's.
    :return: the channels that delivered.
    :raises ValueError: ``event`` is not one of ``EVENTS`` (a bug in the caller, not a delivery failure).
    """
    reasons = why if why is None or isinstance(why, str) else list(why)
    notifier = MlopsNotifier(getattr(usecase, "folder", usecase), event, what=what, why=reasons, links=links)
    return notifier.notify(context)  # not notifier(context): what and why are final text, not templates


def ledger_move(entry: Any, version_url: str | None = None) -> dict[str, Any]:
    """The notification of a move of the promotion ledger (``core.ledger.LedgerEntry``): ``event`` (``promoted`` or
    ``rolled_back``), ``what``, ``why`` (the gate's reasons or its override; the rollback's reason) and ``links``.

    :param version_url: the moved-to version's MLflow page, if known.
    """
    from airflow_mlops.core.ledger import PROMOTE

    what = f"{entry.model}@{entry.alias} moved from v{entry.from_version or 'none'} to v{entry.to_version}"
    links = {"MLflow model version": version_url}
    if entry.action != PROMOTE:
        return {"event": ROLLED_BACK, "what": what, "why": entry.reason or "rollback", "links": links}
    gate = entry.gate or {}
    why = [f"gate overridden: {gate.get('force_reason')}"] if gate.get("forced") else list(gate.get("reasons") or [])
    return {"event": PROMOTED, "what": what, "why": why or ["approved by the gate"], "links": links}


def _failed_task(context: Mapping[str, Any]) -> str:
    ti = context.get("ti")
    if ti is None:
        return "a task failed"
    mapped = f" (map index {ti.map_index})" if getattr(ti, "map_index", -1) not in (None, -1) else ""
    return f"task {ti.task_id}{mapped} of DAG {ti.dag_id} failed on try {ti.try_number} (run {ti.run_id})"


def _exception(context: Mapping[str, Any]) -> str | None:
    error = context.get("exception")
    return f"{type(error).__name__}: {error}" if error is not None else None
