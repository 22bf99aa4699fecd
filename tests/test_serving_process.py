"""The embedded serving process's start lock: callers at once (a deploy task's retry and ``make up`` after a crash)
start one server, and all get its pid. Its processes are found by the ``MLOPS_HOME`` they inherit: BentoML retitles
its arbiter ``circusd`` and runs each worker in a process group of its own."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import suppress
from pathlib import Path

import psutil
from production_fixtures import processes_with

from airflow_mlops.hooks.bentoml_process import ServingProcess, free_port

from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
USECASE = ROOT / "examples" / "flight_delay"
CALLERS = 4


def started_servers(home: Path) -> list[int]:
    """Of the processes started for ``home``, those no other of them started: the servers, not their workers."""
    found = processes_with(home)
    return sorted(pid for pid in found if psutil.Process(pid).ppid() not in found)


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
        assert started_servers(tmp_path) == pids[:1]
        assert make().pid() == pids[0]
    finally:
        make().stop(grace=10)
        for pid in processes_with(tmp_path):  # servers started past a broken lock, which the pid file does not know
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert make().pid() is None
    wait_for(lambda: processes_with(tmp_path) == [], timeout=10, what="no server or worker left")
