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


def servers(home: Path) -> dict[int, int]:
    """The processes started for ``home`` (pid -> parent pid), from ``/proc``: the servers and their workers, found
    by the ``MLOPS_HOME`` they inherit (BentoML renames its arbiter ``circusd``, so the command line would not do)."""
    mark = f"MLOPS_HOME={home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or a zombie
    return found


def started_servers(home: Path) -> list[int]:
    """Of ``servers(home)``, those no other of them started."""
    found = servers(home)
    return sorted(pid for pid, parent in found.items() if parent not in found)


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
        for pid in servers(tmp_path):  # servers started past a broken lock, which the pid file does not know
            os.kill(pid, signal.SIGKILL)
    assert make().pid() is None
    wait_for(lambda: servers(tmp_path) == {}, timeout=10, what="no server or worker left")
