"""The embedded serving process's start lock: two callers at once (a deploy task's retry and ``make up`` after a
crash) start one server, and both get its pid."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from airflow_mlops.hooks.bentoml_process import ServingProcess, free_port

from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
USECASE = ROOT / "examples" / "flight_delay"
CALLERS = 4


def serve_commands(port: int) -> list[int]:
    """Pids of the ``bentoml serve`` processes (not their workers) listening on ``port``, from ``/proc``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if any(arg.endswith(b"bentoml") for arg in argv) and b"serve" in argv and str(port).encode() in argv:
            found.append(int(entry.name))
    return found


def test_callers_at_once_start_one_server(tmp_path):
    port = free_port()
    make = lambda: ServingProcess(  # noqa: E731 - one object per caller, as separate processes would have
        usecase=USECASE, port=port, home=tmp_path, lake_root=(tmp_path / "lake").as_uri()
    )
    barrier = threading.Barrier(CALLERS)
    pids: list[int] = []
    errors: list[BaseException] = []

    def call() -> None:
        process = make()
        barrier.wait()
        try:
            pids.append(process.start())
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(CALLERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        assert len(pids) == CALLERS and len(set(pids)) == 1, pids
        assert serve_commands(port) == pids[:1]
        assert make().pid() == pids[0]
    finally:
        make().stop(grace=10)
        for pid in serve_commands(port):  # servers started past a broken lock, which the pid file does not know
            os.killpg(pid, signal.SIGKILL)
    assert make().pid() is None
    wait_for(lambda: serve_commands(port) == [], timeout=10, what="no server left on the port")
