"""The tests' own helpers: the skip policy for services (``services``) and waiting on a condition (``waiting``)."""

from __future__ import annotations

import socket
import threading

import pytest

from services import require_service
from waiting import wait_for


def test_a_service_skips_only_when_nothing_listens():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert require_service("Thing", "127.0.0.1", port, "this test") is None  # it listens: the test runs
    # The socket closed: nothing listens on the port any more, the connection is refused.
    with pytest.raises(pytest.skip.Exception, match=rf"this test needs Thing on 127.0.0.1:{port}, and nothing listens"):
        require_service("Thing", "127.0.0.1", port, "this test")


def test_wait_for_returns_the_condition_s_value_once_it_holds_and_fails_when_it_never_does():
    happened = threading.Event()
    threading.Thread(target=happened.set).start()
    assert wait_for(lambda: happened.is_set() and "done", 30, "the thread ran", every=0.01) == "done"
    with pytest.raises(AssertionError, match="never: not after 0 s"):
        wait_for(lambda: None, 0, "never", every=0.01)
