"""Waiting on a condition: what a test waits for is a predicate it observes, under a deadline, never a pause."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.5) -> T:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    The pause between two polls only paces the polling; the test goes on as soon as the condition holds. The
    predicate may raise (an ``AssertionError`` when what it watches can no longer happen, e.g. a process exited):
    that ends the wait.

    :param predicate: the condition, observed (a file exists, an endpoint answers, a run finished...).
    :param timeout: seconds before giving up.
    :param what: the condition in words, for the failure's message.
    :param every: seconds between polls.
    :raises AssertionError: the condition did not hold within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s"
        time.sleep(every)
