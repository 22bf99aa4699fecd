"""Notifications: each event of the loop reaches a real SMTP server and a real webhook receiver (both started here, on
free ports), through the operators that fire them; a failed task is reported by the DAGs' failure callback; a
notifier that cannot deliver is logged and never fails the task."""

from __future__ import annotations

import email
import email.policy
import html
import json
import logging
import shutil
import socket
import socketserver
import threading
from collections import defaultdict
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import FLIGHTS
from training_fixtures import task_context

SMTP_CONN, WEBHOOK_CONN = "mlops_test_smtp", "mlops_test_webhook"
WEBHOOK_PATH = "/services/T000/B000/not-a-secret"
TO = ["ml-team@example.test", "oncall@example.test"]


# -- a real SMTP server and a real webhook receiver ------------------------------------------------------------------
class _Inbox:
    """What a receiver got, with a wait on a condition (no sleeps)."""

    def __init__(self) -> None:
        self.items: list = []
        self._cond = threading.Condition()

    def add(self, item) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> list:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= count, timeout), f"got {len(self.items)} of {count}"
            return list(self.items)


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for a client that sends mail: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        self.reply("220 localhost test SMTP")
        sender, recipients = None, []
        for raw in self.rfile:
            command = raw.decode().rstrip("\r\n")
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 localhost")
            elif verb == "MAIL":
                sender, recipients = command.split(":", 1)[1].strip(), []
                self.reply("250 OK")
            elif verb == "RCPT":
                recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                for data in self.rfile:
                    if data in (b".\r\n", b".\n"):
                        break
                    lines.append(data[1:] if data.startswith(b"..") else data)
                message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                self.server.inbox.add({"from": sender, "to": recipients, "message": message})
                self.reply("250 OK: queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            else:
                self.reply("502 Command not implemented")


class _WebhookHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.inbox.add({"path": self.path, "json": json.loads(body), "type": self.headers["Content-Type"]})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


def _serve(server) -> tuple[_Inbox, int]:
    server.inbox = _Inbox()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.inbox, server.server_address[1]


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
    server.daemon_threads = True
    inbox, port = _serve(server)
    yield SimpleNamespace(inbox=inbox, port=port)
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook_receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WebhookHandler)
    inbox, port = _serve(server)
    yield SimpleNamespace(inbox=inbox, port=port)
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    """A free port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _connections(monkeypatch, smtp_port: int, webhook_port: int) -> None:
    """The use case's connections, as a deployment sets them (here: environment variables, JSON)."""
    smtp = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": smtp_port,
        "extra": {"from_email": "mlops@example.test", "disable_ssl": True, "disable_tls": True, "timeout": 10},
    }
    webhook = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": webhook_port,
        "schema": "http",
        "extra": {"endpoint": WEBHOOK_PATH, "timeout": 10},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{SMTP_CONN.upper()}", json.dumps(smtp))
    monkeypatch.setenv(f"AIRFLOW_CONN_{WEBHOOK_CONN.upper()}", json.dumps(webhook))


@pytest.fixture
def notified(tmp_path) -> Path:
    """The flight_delay use case copied, with a ``notifications`` section naming the test's connections."""
    folder = tmp_path / "usecase"
    shutil.copytree(FLIGHTS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((folder / "mlops.yaml").read_text())
    raw["notifications"] = {"email": {"conn_id": SMTP_CONN, "to": TO}, "webhook": {"conn_id": WEBHOOK_CONN}}
    raw["monitoring"]["policy"]["bootstrap"] = {"min_months": 1}
    (folder / "mlops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


@pytest.fixture
def channels(monkeypatch, smtp_server, webhook_receiver):
    _connections(monkeypatch, smtp_server.port, webhook_receiver.port)
    monkeypatch.setenv("MLFLOW_UI_URL", "http://mlflow.test:5000")  # the MLflow pages the messages link to
    return SimpleNamespace(mail=smtp_server.inbox, hooks=webhook_receiver.inbox)


def _body(message) -> str:
    """The email's text (its HTML unescaped)."""
    return html.unescape(message.get_body(preferencelist=("html", "plain")).get_content())


def _check_delivered(channels, count: int, event: str, *expected: str) -> tuple:
    """The ``count``-th email and webhook post are ``event``'s and each holds every ``expected`` text."""
    mail = channels.mail.wait_for(count)[count - 1]
    post = channels.hooks.wait_for(count)[count - 1]
    message = mail["message"]
    assert sorted(mail["to"]) == sorted(TO) and message["From"] == "mlops@example.test"
    assert "flight_delay" in message["Subject"]
    body = _body(message)
    assert f"event: {event}" in body and "flight_delay" in body
    assert post["path"] == WEBHOOK_PATH and post["type"] == "application/json"
    payload = post["json"]
    text = payload["text"]
    assert f"({event})" in text and "flight_delay" in text
    assert [b["type"] for b in payload["blocks"]][0] == "header" and payload["blocks"][-1]["type"] == "context"
    for needle in expected:
        assert needle in body, (needle, body)
        assert needle in text, (needle, text)
    return message, payload


# -- every event, through the code that fires it -----------------------------------------------------------------
def test_a_rejected_candidate_is_reported_with_the_gate_s_reasons(notified, channels, mlflow_store):
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.gate import ModelGateOperator

    client = MlflowHook().client
    run = client.create_run(MlflowHook().get_or_create_experiment("notify-gate"))
    evaluation = {"run_id": run.info.run_id, "model_uri": "models:/m/1", "registered_model_name": "flight_delay"}
    context = task_context("model_gate", "manual__gate", dag_id="flight_delay_training")
    decision = ModelGateOperator(task_id="model_gate", evaluation=evaluation, usecase=str(notified)).execute(context)
    assert decision["approved"] is False

    message, payload = _check_delivered(channels, 1, "gate_rejected", run.info.run_id, decision["reasons"][0])
    assert message["Subject"].startswith("[mlops flight_delay] Model rejected by the gate")
    body = _body(message)
    # links: the candidate's MLflow run, the task's log and the DAG run in the Airflow UI
    assert run.info.run_id in body and "/dags/flight_delay_training/runs/manual__gate/tasks/model_gate" in body
    links = payload["blocks"][-1]["elements"]
    assert any(e["text"].startswith("<http://mlflow.test:5000/#/experiments/") for e in links)
    assert any("|DAG run>" in e["text"] for e in links) and any("|Task log>" in e["text"] for e in links)


def test_promotion_and_rollback_are_reported(notified, channels, mlflow_store):
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.registry import MlflowPromoteModelOperator, MlflowRollbackModelOperator

    name = "flight_delay"
    client = MlflowHook().client
    experiment = MlflowHook().get_or_create_experiment("notify-registry")
    client.create_registered_model(name)
    versions = []
    for _ in range(2):
        run = client.create_run(experiment)
        versions.append(client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version)
    v1, v2 = map(str, versions)
    for version, expected in ((v1, None), (v2, v1)):
        gate = {"approved": True, "champion_version": expected, "reasons": [f"roc_auc of v{version} passes its floor"]}
        registered = {"name": name, "version": version, "run_id": "r", "gate": gate}
        MlflowPromoteModelOperator(task_id="promote_model", registered=registered, usecase=str(notified)).execute(
            task_context("promote_model", f"manual__promote_{version}")
        )
    _check_delivered(channels, 1, "promoted", f"from vnone to v{v1}", f"roc_auc of v{v1} passes its floor")
    _check_delivered(channels, 2, "promoted", f"from v{v1} to v{v2}")

    MlflowRollbackModelOperator(
        task_id="rollback_model", registered_model_name=name, reason="bad canary", usecase=str(notified)
    ).execute(task_context("rollback_model", "manual__rollback", dag_id="flight_delay_rollback"))
    message, _ = _check_delivered(channels, 3, "rolled_back", f"from v{v2} to v{v1}", "bad canary")
    assert "Champion rolled back" in message["Subject"] and f"/models/{name}/versions/{v1}" in _body(message)


def test_a_retrain_request_is_reported_with_the_policy_s_triggers(notified, channels, mlflow_store, tmp_path):
    import pandas as pd

    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.monitoring import RetrainingPolicyOperator

    from features_fixtures import seed_validated

    lake = LakeHook(root_url=(tmp_path / "lake").as_uri())
    lake.ensure_zones()
    seed_validated(lake, "2013-04", frames={"flights": pd.DataFrame({"flight_id": ["a"]})})
    op = RetrainingPolicyOperator(
        task_id="retraining_policy",
        drift=None,
        performance=None,
        month="2013-04",
        lake_root=lake.root_url,
        usecase=str(notified),
    )
    context = task_context("retraining_policy", "asset_triggered__2013-04", dag_id="flight_delay_monitoring")
    context["outlet_events"] = defaultdict(lambda: SimpleNamespace(extra=None))
    decision = op.execute(context)
    assert decision["retrain"] is True
    _check_delivered(channels, 1, "retrain_requested", "retraining of flight_delay requested", decision["reasons"][0])


def test_a_quarantined_batch_is_reported_with_its_failed_expectations(notified, channels, lake, tmp_path):
    from test_dag_ingest_validate import DAILY_FILES, SUITES, USECASE_PY, _daily_frames, _ingest, _land_daily

    from airflow_mlops.exceptions import BatchValidationError
    from airflow_mlops.operators.validation import ValidateBatchOperator

    sensors = tmp_path / "sensors"
    (sensors / "expectations").mkdir(parents=True)
    (sensors / "usecase.py").write_text(USECASE_PY)
    for stem, suite in SUITES.items():
        (sensors / "expectations" / f"{stem}.json").write_text(json.dumps(suite))
    frames = _daily_frames()
    frames["readings.csv"].loc[::5, "value"] = 999.0
    _land_daily(lake, frames)
    (batch,) = _ingest(lake)
    validate = ValidateBatchOperator(
        task_id="validate_batch",
        batch=batch,
        files=DAILY_FILES,
        primary="readings.csv",
        period_kind="day",
        expectations_dir=str(sensors / "expectations"),
        timestamp_columns={"readings.csv": "at"},
        module_file=str(sensors / "usecase.py"),
        lake_root=lake.root_url,
        usecase=str(notified),
    )
    with pytest.raises(BatchValidationError):
        validate.execute(task_context("validate_batch", "manual__quarantine", dag_id="flight_delay_ingest_validate"))
    message, _ = _check_delivered(
        channels, 1, "quarantine", f"{batch['batch_id']} quarantined", "expect_column_values_to_be_between"
    )
    assert message["Subject"].startswith("[mlops flight_delay] Batch quarantined")
    assert "/mlops/lake/" in _body(message) and "Data Docs" in _body(message)  # the batch's Data Docs page


def test_an_approval_waiting_is_reported_by_the_function_the_approval_step_calls(notified, channels):
    from airflow_mlops.notifications import APPROVAL_WAITING, notify_event

    delivered = notify_event(
        notified,
        APPROVAL_WAITING,
        task_context("await_approval", "manual__approve", dag_id="flight_delay_training"),
        what="flight_delay v7 waits for a person's approval",
        why=["the gate approved it", "approval.mode is manual"],
        links={"MLflow model version": "http://mlflow.test/#/models/flight_delay/versions/7"},
    )
    assert delivered == ["email", "webhook"]
    message, _ = _check_delivered(channels, 1, "approval_waiting", "v7 waits", "approval.mode is manual")
    assert "http://mlflow.test/#/models/flight_delay/versions/7" in _body(message)


def test_an_event_the_use_case_does_not_ask_for_is_not_sent(notified, channels):
    from airflow_mlops.notifications import PROMOTED, notify_event

    raw = yaml.safe_load((notified / "mlops.yaml").read_text())
    raw["notifications"]["events"] = ["task_failed"]
    (notified / "mlops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert notify_event(notified, PROMOTED, task_context("promote_model"), what="v2 is champion") == []
    assert channels.mail.items == [] and channels.hooks.items == []


@pytest.mark.slow
def test_a_failed_task_is_reported_by_the_dags_failure_callback(notified, channels, airflow_db):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    from airflow_mlops.usecase import config
    from airflow_mlops.usecase.factory import on_failure

    def breaks():
        raise ValueError("the upstream file is missing")

    usecase = config.load(notified)
    with DAG(
        dag_id="notify_failure_test",
        schedule=None,
        start_date=datetime(2025, 1, 1),
        default_args={"retries": 0, "on_failure_callback": on_failure(usecase)},
    ) as dag:
        PythonOperator(task_id="breaks", python_callable=breaks)
    # dag.test() runs DAGs of the configured bundles: this one, defined here, is written to the metadata DB first
    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    bag = DagBag(collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, next(iter(manager.get_all_dag_bundles())).name, None)
    run = dag.test()
    assert str(getattr(run.state, "value", run.state)) == "failed"

    message, _ = _check_delivered(
        channels, 1, "task_failed", "task breaks of DAG notify_failure_test failed", "ValueError: the upstream file"
    )
    assert "/dags/notify_failure_test/runs/" in _body(message) and "/tasks/breaks" in _body(message)


def test_the_factory_wires_the_failure_callback_only_when_asked(notified):
    from airflow_mlops.notifications import MlopsNotifier
    from airflow_mlops.usecase import config
    from airflow_mlops.usecase.factory import dags_for

    dags = dags_for(config.load(notified))
    assert all(
        isinstance(cb, MlopsNotifier) for dag in dags.values() for t in dag.tasks for cb in t.on_failure_callback
    )
    assert all(t.on_failure_callback for dag in dags.values() for t in dag.tasks)
    plain = dags_for(config.load(FLIGHTS))
    assert not any(t.on_failure_callback for dag in plain.values() for t in dag.tasks)


# -- a notifier that cannot deliver ------------------------------------------------------------------------------
def test_an_unreachable_notifier_is_logged_and_the_task_succeeds(notified, monkeypatch, mlflow_store, caplog):
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.gate import ModelGateOperator

    _connections(monkeypatch, _closed_port(), _closed_port())
    client = MlflowHook().client
    run = client.create_run(MlflowHook().get_or_create_experiment("notify-unreachable"))
    evaluation = {"run_id": run.info.run_id, "model_uri": "models:/m/1", "registered_model_name": "flight_delay"}
    with caplog.at_level(logging.WARNING, logger="airflow_mlops.notifications"):
        decision = ModelGateOperator(task_id="model_gate", evaluation=evaluation, usecase=str(notified)).execute(
            task_context("model_gate", "manual__unreachable")
        )
    assert decision["approved"] is False  # the task's own result, whatever the notifiers did
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"not delivered by email (connection {SMTP_CONN})" in w and "Connection" in w for w in warnings)
    assert any(f"not delivered by webhook (connection {WEBHOOK_CONN})" in w for w in warnings)


def test_a_missing_connection_or_a_webhook_error_is_logged_not_raised(notified, monkeypatch, smtp_server, caplog):
    from airflow_mlops.notifications import PROMOTED, notify_event

    class _Refusing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.send_error(500, "webhook down")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _connections(monkeypatch, smtp_server.port, server.server_address[1])
        monkeypatch.delenv(f"AIRFLOW_CONN_{SMTP_CONN.upper()}")
        with caplog.at_level(logging.WARNING, logger="airflow_mlops.notifications"):
            assert notify_event(notified, PROMOTED, task_context("promote_model"), what="v2 is champion") == []
    finally:
        server.shutdown()
        server.server_close()
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"connection {SMTP_CONN}" in warnings and "HTTP Error 500" in warnings


def test_the_notifications_section_is_checked(notified):
    from airflow_mlops.usecase import config

    raw = yaml.safe_load((notified / "mlops.yaml").read_text())
    for section, message in (
        ({"email": {"conn_id": "x", "to": "nobody"}}, "notifications.email.to: must be an address"),
        ({"webhook": {"conn_id": "x", "url": "https://hooks.example/secret"}}, "notifications.webhook: must be"),
        ({"events": ["promoted"]}, "notifications: names no channel"),
        ({"webhook": {"conn_id": "x"}, "events": ["deployed"]}, "notifications.events: 'deployed' is not an event"),
    ):
        raw["notifications"] = section
        with pytest.raises(config.UseCaseConfigError, match=message):
            config.parse(raw, notified / "mlops.yaml")
    raw["notifications"] = {"email": {"conn_id": "smtp_default", "to": "a@example.test"}}
    parsed = config.parse(raw, notified / "mlops.yaml").notifications
    assert parsed["email"]["to"] == ["a@example.test"] and "task_failed" in parsed["events"]
