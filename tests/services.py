"""The services a test needs from this machine (PostgreSQL, Redis): absent by design, the test skips; there, it runs.

A test skips only when nothing listens where the service should be (the connection is refused): a machine without
the service is a supported setup, and the skip message says what the test needs and why it is skipped. Any other
error (authentication, a failed query, a timeout after connecting) is the test's failure: the service is there and
does not work, which is what a test is for.
"""

from __future__ import annotations

import socket

import pytest


def require_service(name: str, host: str, port: int, needed_for: str) -> None:
    """Skip the calling test (or fixture) when nothing listens on ``host:port``; return when something does.

    :param name: the service, e.g. ``PostgreSQL``.
    :param host: where it listens, e.g. ``127.0.0.1``.
    :param port: e.g. ``5432``.
    :param needed_for: what needs it, e.g. ``the production profile (Airflow's metadata database)``.
    :raises OSError: something other than a refused connection (a timeout, an unreachable host): not skipped.
    """
    try:
        with socket.create_connection((host, port), timeout=10):
            return
    except ConnectionRefusedError:
        pytest.skip(
            f"{needed_for} needs {name} on {host}:{port}, and nothing listens there: this machine runs no {name}, "
            f"so the test is skipped (start {name} there to run it)"
        )
