"""Process groups of the servers the suite starts (embedded Airflow components, the serving process)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the whole group led by ``pid``; a group already gone is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pid: int) -> bool:
    """Whether any process of the group led by ``pid`` is alive (a zombie leader of ours is reaped)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still "exists"; reap it if it is our child.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return False
    except ChildProcessError:
        pass
    # A zombie nobody reaps (its parent died and PID 1 does not reap, as in some containers) keeps the group
    # "existing" forever: where /proc tells, the group is alive only if a member is not a zombie.
    members = _group_states(pid)
    return members is None or any(state != "Z" for state in members)


def _group_states(pgid: int) -> list[str] | None:
    """The states (``R``, ``S``, ``Z``, ...) of the processes of group ``pgid`` from /proc; None without /proc."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    states = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid):
            states.append(fields[0])
    return states


def descendants(pid: int) -> list:
    """The processes ``pid`` started, recursively (``psutil.Process``), whatever their process group (BentoML runs
    each worker in a group of its own)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def process_running(process) -> bool:
    """``process`` (``psutil.Process``) runs: it exists and is not a zombie."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_all(processes: list, timeout: float = 10.0) -> None:
    """SIGKILL each of ``processes`` (``psutil.Process``) still running, and wait up to ``timeout`` for them."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(map(process_running, processes)):
        time.sleep(0.1)
